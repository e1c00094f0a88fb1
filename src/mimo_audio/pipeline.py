"""MimoAudio: every task of MiMo-Audio over the codec, the LM, the prompt builders and the generator.

One object holds the three models (audio tokenizer, LM, text tokenizer) and no conversation state: every
call builds its prompt from its arguments alone (a chat history is the list of messages you pass).

Two layers:

* the **batch core** used by every task method and by the server's batcher::

      req = mimo.prepare("transcribe", audio="a.wav")      # validates, encodes audio, builds the prompt grid
      replies = mimo.run([req, ...])                        # one generation batch -> list[Reply]
      stream = mimo.stream([req, ...])                      # iterable of (index, Piece); stream.cancel(i)

* the **task methods** (``transcribe``, ``speak``, ``understand``, ``chat``, ``few_shot``,
  ``continue_speech``) and their ``stream_*`` twins, thin over the core. A list argument runs as one batch.

Audio arguments accept a path, raw file bytes, a ``(samples, sample_rate)`` pair, or an array/tensor with
``sample_rate=`` (see :func:`mimo_audio.audio.load_audio`).

Decoding: the non-streaming path decodes the reply's whole code sequence at once (no 60 s windows, SPEC §13.7);
streaming pieces go through the codec's streaming decoder, whose windowed context means their concatenation
equals the whole-sequence decode only approximately. Pass ``decode="stream"`` to :meth:`MimoAudio.run` to decode
exactly as a stream would (bit-identical to the concatenated pieces).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .errors import AudioInputError, MimoAudioError, PromptError

SAMPLE_RATE = 24000
DEFAULT_MODEL = "XiaomiMiMo/MiMo-Audio-7B-Instruct"
BASE_MODEL = "XiaomiMiMo/MiMo-Audio-7B-Base"
DEFAULT_TOKENIZER = "XiaomiMiMo/MiMo-Audio-Tokenizer"
#: default generation limits in LM steps (a text token or 4 audio frames = 0.16 s); ``max_new_tokens=`` overrides
#: (the model's positions always cap them).
DEFAULT_MAX_NEW = {"transcribe": 2048, "understand": 2048, "chat": 4096, "speak": 4096, "few_shot": 4096}


# ================================================================================================ results
@dataclass
class Reply:
    """What a task produced.

    ``text``: the generated text (special markers removed, SPEC §5.5); for thinking runs it includes the
    ``<think>…</think>`` section (see :attr:`answer` / :attr:`thinking`). ``audio``: FloatTensor (samples,) at
    ``sample_rate`` (24 kHz) or None for text-only tasks. ``codes``: the generated audio codes (frames, 8) or None.
    ``finish_reason``: "stop" (a stop token), "length" (max_new_tokens or the model's positions) or "cancelled".
    ``prompt_tokens`` / ``new_tokens`` count LM positions (groups of 4 audio frames).
    """

    text: str
    audio: torch.Tensor | None = None
    sample_rate: int = SAMPLE_RATE
    codes: torch.Tensor | None = None
    finish_reason: str = "stop"
    task: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def thinking(self) -> str:
        """The content of a ``<think>…</think>`` section at the start of :attr:`text` ("" when there is none)."""
        head, sep, _ = self.text.partition("</think>")
        return head.replace("<think>", "", 1).strip() if sep else ""

    @property
    def answer(self) -> str:
        """:attr:`text` without a leading ``<think>…</think>`` section."""
        _, sep, tail = self.text.partition("</think>")
        return tail.strip() if sep else self.text

    @property
    def duration(self) -> float:
        """Seconds of audio (0.0 for text replies)."""
        return 0.0 if self.audio is None else self.audio.numel() / self.sample_rate

    def as_message(self) -> dict:
        """This reply as an assistant message for the next :meth:`MimoAudio.chat` call.

        The generated codes travel with it (key ``"codes"``), so the history is not re-encoded.
        """
        msg: dict[str, Any] = {"role": "assistant", "text": self.answer}
        if self.codes is not None and self.codes.numel():
            msg["codes"] = self.codes
            if self.audio is not None and self.audio.numel():
                msg["audio"] = (self.audio, self.sample_rate)
        return msg

    def save(self, path: str | os.PathLike) -> str:
        """Write :attr:`audio` to ``path`` (.wav/.flac, atomically); returns the path."""
        if self.audio is None:
            raise MimoAudioError("this reply has no audio to save (the task produced text only)")
        from .audio import save_audio

        return str(save_audio(path, self.audio, self.sample_rate))


@dataclass
class Speech(Reply):
    """A reply that always carries audio (what :meth:`MimoAudio.speak` returns)."""


@dataclass
class Piece:
    """One streamed increment of a reply.

    ``text``: the new text (may be ""); ``audio``: new samples at 24 kHz or None; ``done``: the last piece of
    this request, with the complete :class:`Reply` in ``reply``. ``index``: the request's position in its batch.
    Concatenating every piece's ``text`` gives ``reply.text``; concatenating the audio gives ``reply.audio``.
    """

    text: str = ""
    audio: torch.Tensor | None = None
    done: bool = False
    reply: Reply | None = None
    index: int = 0


# ================================================================================================ request
@dataclass
class TaskRequest:
    """A validated, ready-to-run request: the prompt grid, its generation config and how to read the output.

    Made by :meth:`MimoAudio.prepare`; run by :meth:`MimoAudio.run` / :meth:`MimoAudio.stream`.
    """

    task: str
    grid: torch.Tensor  # (9, 4 * prompt_groups) LongTensor, on the CPU
    config: Any  # generate.GenerationConfig
    audio_out: bool  # the reply carries speech
    span_open: bool  # the prompt ends inside an open <|sostm|> span (audio starts at the first new group)
    max_audio_frames: int | None = None  # trim the reply's audio to this many code frames (continuation)
    info: dict = field(default_factory=dict)

    @property
    def prompt_groups(self) -> int:
        return int(self.grid.shape[1]) // 4


# ================================================================================================ audio args
def _is_one_audio(x: Any) -> bool:
    """True if ``x`` is one audio argument (not a list of them)."""
    if isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, torch.Tensor)):
        return True
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], (int, float, np.integer)) and not isinstance(
        x[1], bool
    ):
        return not isinstance(x[0], (str, os.PathLike))
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(v, (int, float, np.number)) for v in x[:16])
    return False


def _as_list(x: Any, one) -> tuple[list, bool]:
    """``(items, batched)``: a single item (``one(x)`` is true) becomes a one-item list."""
    if one(x):
        return [x], False
    if isinstance(x, (list, tuple)):
        if not x:
            raise PromptError("an empty list was passed; give at least one item")
        return list(x), True
    return [x], False


# ================================================================================================ MimoAudio
class MimoAudio:
    """MiMo-Audio tasks over an audio tokenizer (codec), the LM and its text tokenizer.

    Load with :meth:`from_pretrained`, or pass already-loaded models: ``MimoAudio(lm, codec, text_tokenizer)``.

    Args:
        stream_chunk_frames: code frames gathered before the streaming decoder runs (latency vs. cost);
        stream_left_context / stream_lookahead: the streaming decoder's windows in code frames (SPEC §2.7).
    """

    def __init__(
        self,
        lm,
        codec,
        text_tokenizer,
        *,
        stream_chunk_frames: int = 20,
        stream_left_context: int = 250,
        stream_lookahead: int = 40,
    ):
        self.lm = lm
        self.codec = codec
        self.text = text_tokenizer
        self.ids = text_tokenizer.ids
        self.stream_chunk_frames = int(stream_chunk_frames)
        self.stream_left_context = int(stream_left_context)
        self.stream_lookahead = int(stream_lookahead)

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        tokenizer: str | os.PathLike = DEFAULT_TOKENIZER,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **options,
    ) -> MimoAudio:
        """Load the LM (and its text tokenizer) from ``model`` and the audio tokenizer from ``tokenizer``.

        Both are hub ids or local folders. ``device`` defaults to CUDA when available; ``dtype`` to the
        checkpoint's. ``options`` go to the constructor (streaming windows).
        """
        from .checkpoint import parse_device, parse_dtype, resolve
        from .codec import AudioTokenizer
        from .lm import MimoAudioLM
        from .text import TextTokenizer

        dev = parse_device(device)
        dt = parse_dtype(dtype)
        folder = resolve(model)
        text_tokenizer = TextTokenizer.from_folder(folder)
        lm = MimoAudioLM.from_pretrained(folder, device=dev, dtype=dt, empty_id=text_tokenizer.ids.empty)
        codec = AudioTokenizer.from_pretrained(tokenizer, device=dev, dtype=dt)
        return cls(lm, codec, text_tokenizer, **options)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.codec, "sample_rate", SAMPLE_RATE))

    @property
    def max_positions(self) -> int:
        return int(self.lm.config.max_position_embeddings)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / int(self.codec.samples_per_code)

    def __repr__(self) -> str:
        return f"MimoAudio(lm={type(self.lm).__name__}, device={self.device}, text={self.text!r})"

    # ------------------------------------------------------------------------------------ helpers
    @property
    def prompts(self):
        """The :class:`~mimo_audio.prompt.PromptBuilder` for this model's tokenizer and layout."""
        pb = getattr(self, "_prompts", None)
        if pb is None:
            from .prompt import PromptBuilder

            pb = self._prompts = PromptBuilder(self.text, self.lm.config)
        return pb

    def encode(self, audio: Any, *, sample_rate: int | None = None, what: str = "audio") -> torch.Tensor:
        """One audio argument -> codes ``(frames, 8)`` on the CPU (a path, bytes, a ``(samples, rate)`` pair, or an
        array/tensor with ``sample_rate=``)."""
        from .audio import load_audio

        if isinstance(audio, (list, tuple)) and not _is_one_audio(audio):
            raise AudioInputError(f"{what}: expected one audio clip, got a list of {len(audio)} items")
        try:
            wav = load_audio(audio, sample_rate=sample_rate, target_rate=self.sample_rate)
        except AudioInputError as exc:
            msg = str(exc)
            raise AudioInputError(msg if msg.startswith(what) else f"{what}: {msg}") from None
        channels = len(self.lm.config.speech_zeroemb_idx)
        codes = self.codec.encode(wav, sample_rate=self.sample_rate, num_quantizers=channels)
        return codes.to("cpu", torch.long)

    def _codes(self, audio: Any, sample_rate: int | None, what: str) -> torch.Tensor:
        if audio is None:
            raise PromptError(f"{what} is missing; pass a path, a (samples, sample_rate) pair or an array with sample_rate=")
        return self.encode(audio, sample_rate=sample_rate, what=what)

    def _message(self, i: int, m: Any, sample_rate: int | None) -> Any:
        """A chat message with its audio encoded (``"codes"`` given by :meth:`Reply.as_message` are used as is)."""
        if not isinstance(m, dict):
            return m  # the prompt builder names the problem
        out = {k: v for k, v in m.items() if k not in ("audio", "codes")}
        if m.get("codes") is not None:
            out["audio"] = torch.as_tensor(m["codes"]).to("cpu", torch.long)
        elif m.get("audio") is not None:
            out["audio"] = self._codes(m["audio"], sample_rate, f"message {i} audio")
        return out

    def _config(self, spec, *, seed, max_new_tokens, default_max_new, greedy, temperature, top_k, top_p,
                audio_temperature, audio_top_k, audio_top_p, prompt_groups):
        from .generate import PRESETS, GenerationConfig
        from .prompt import stop_ids
        from .sampling import GREEDY

        text, local = PRESETS[spec.preset]
        try:
            if greedy:
                text, local = GREEDY, GREEDY
            text_changes = {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))
                            if v is not None}
            local_changes = {k: v for k, v in (("temperature", audio_temperature), ("top_k", audio_top_k),
                                               ("top_p", audio_top_p)) if v is not None}
            # an explicit setting turns sampling on for a preset that is greedy (asr, few-shot, qa)
            text = replace(text, do_sample=True, **text_changes) if text_changes else text
            local = replace(local, do_sample=True, **local_changes) if local_changes else local
        except ValueError as exc:
            raise PromptError(f"bad sampling setting: {exc}") from None
        if max_new_tokens is None:
            max_new_tokens = spec.max_new_tokens or default_max_new
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise PromptError(f"seed must be an integer or None, got {seed!r}")
        room = self.max_positions - prompt_groups
        if room < 1:
            raise PromptError(
                f"the prompt takes {prompt_groups} positions but the model has {self.max_positions} "
                "(max_position_embeddings); shorten it: less or shorter audio, fewer examples, a shorter history"
            )
        return GenerationConfig(
            text=text, local=local, max_new_tokens=int(min(max_new_tokens, room)),
            min_new_tokens=int(spec.min_new_tokens or 0), stop_ids=stop_ids(spec.name, self.ids),
            seed=None if seed is None else int(seed),
        )

    # ------------------------------------------------------------------------------------ batch core
    def prepare(
        self,
        task: str,
        *,
        seed: int | None = None,
        max_new_tokens: int | None = None,
        greedy: bool = False,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        audio_temperature: float | None = None,
        audio_top_k: int | None = None,
        audio_top_p: float | None = None,
        sample_rate: int | None = None,
        **kwargs,
    ) -> TaskRequest:
        """Validate one request, encode its audio and build its prompt and generation config.

        ``task`` and its keyword arguments:

        - ``"transcribe"``: ``audio``, ``language="en"`` (template language), ``template=None``
        - ``"speak"``: ``text``, ``instruct=None``, ``voice=None``, ``natural=False``, ``template=None``,
          ``normalize=True`` (the reference's capitalisation of all-upper/all-lower text)
        - ``"understand"``: ``audio`` (one clip or a list of clips), ``question``, ``thinking=False``
        - ``"chat"``: ``messages``, ``reply="speech"|"text"``, ``voice=None``, ``system_prompt=None``,
          ``thinking=False`` (text replies only)
        - ``"few_shot"``: ``examples`` (dicts with ``input``, ``output``, ``transcript``), ``audio``,
          ``instruction=None``
        - ``"continue"``: ``audio``, ``seconds=10.0``, ``transcript=None`` (the prompt audio's words, optional)

        Common: ``seed``, ``max_new_tokens`` (LM steps; one step is a text token or 0.16 s of audio), ``greedy``,
        text-sampler ``temperature``/``top_k``/``top_p``, patch-sampler ``audio_temperature``/``audio_top_k``/
        ``audio_top_p`` (task presets of SPEC §5.3 otherwise; setting one turns sampling on for a greedy preset),
        ``sample_rate`` for array audio.
        Raises :class:`AudioInputError` / :class:`PromptError` naming the problem.
        """
        from .prompt import task_spec

        builders = {
            "transcribe": self._prep_transcribe, "speak": self._prep_speak, "understand": self._prep_understand,
            "chat": self._prep_chat, "few_shot": self._prep_few_shot, "continue": self._prep_continue,
        }
        alias = {"few-shot": "few_shot", "continue_speech": "continue", "continuation": "continue",
                 "asr": "transcribe", "tts": "speak"}
        name = alias.get(task, task)
        if name not in builders:
            raise PromptError(f"unknown task {task!r}; use one of {', '.join(builders)}")
        try:
            prompt_task, grid, extra = builders[name](sample_rate=sample_rate, **kwargs)
        except TypeError as exc:  # wrong keyword for the task
            raise PromptError(f"{name}: {exc}") from None
        spec = task_spec(prompt_task)
        groups = int(grid.shape[1]) // int(self.lm.config.group_size)
        config = self._config(
            spec, seed=seed, max_new_tokens=max_new_tokens if max_new_tokens is not None else extra.pop("max_new", None),
            default_max_new=DEFAULT_MAX_NEW.get(name, 4096), greedy=greedy, temperature=temperature, top_k=top_k,
            top_p=top_p, audio_temperature=audio_temperature, audio_top_k=audio_top_k, audio_top_p=audio_top_p,
            prompt_groups=groups,
        )
        extra.pop("max_new", None)
        return TaskRequest(
            task=name, grid=grid, config=config, audio_out=spec.reply == "speech", span_open=bool(spec.audio_open),
            max_audio_frames=extra.pop("max_audio_frames", None), info={"prompt_task": prompt_task, **extra},
        )

    def _prep_transcribe(self, audio, *, language: str = "en", template: str | None = None, sample_rate=None):
        codes = self._codes(audio, sample_rate, "audio")
        return "asr", self.prompts.asr(codes, template=template, language=language), {}

    def _prep_speak(self, text, *, instruct: str | None = None, voice=None, natural: bool = False,
                    template: str | None = None, normalize: bool = True, sample_rate=None):
        if not isinstance(text, str) or not text.strip():
            raise PromptError("the text to speak is empty; pass a non-empty string")
        v = None if voice is None else self._codes(voice, sample_rate, "voice")
        pb = self.prompts
        if natural:
            if instruct is not None:
                raise PromptError("natural=True takes the description inside the text; do not also pass instruct=")
            return "tts_natural", pb.tts_natural(text, voice=v, normalize=normalize), {}
        if instruct is not None:
            return "tts_instruct", pb.tts_instruct(text, instruct, voice=v, template=template, normalize=normalize), {}
        return "tts", pb.tts(text, voice=v, template=template, normalize=normalize), {}

    def _prep_understand(self, audio, question: str, *, thinking: bool = False, sample_rate=None):
        if isinstance(question, str) and not question.strip():
            raise PromptError("the question is empty; pass a question or instruction, e.g. 'Describe the audio.'")
        if _is_one_audio(audio):
            codes = self._codes(audio, sample_rate, "audio")
        else:
            if not isinstance(audio, (list, tuple)) or not audio:
                raise PromptError("understand needs an audio clip or a non-empty list of clips")
            codes = [self._codes(a, sample_rate, f"audio clip {i}") for i, a in enumerate(audio)]
        return "understand", self.prompts.understand(codes, question, thinking=thinking), {}

    def _prep_chat(self, messages, *, reply: str = "speech", voice=None, system_prompt: str | None = None,
                   thinking: bool = False, sample_rate=None):
        from .prompt import chat_task

        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise PromptError("messages must be a list of dicts {'role': 'user'|'assistant'|'system', 'text': ..., "
                              "'audio': ...}")
        task = chat_task(messages, reply)
        msgs = [self._message(i, m, sample_rate) for i, m in enumerate(messages)]
        pb = self.prompts
        if reply == "speech":
            if thinking:
                raise PromptError("thinking=True applies to text replies; use reply='text' or drop thinking")
            v = None if voice is None else self._codes(voice, sample_rate, "voice")
            return task, pb.dialogue_multiturn(msgs, voice=v, system_prompt=system_prompt), {}
        if voice is not None:
            raise PromptError("voice= applies to speech replies; use reply='speech' or drop voice")
        return task, pb.build(task, messages=msgs, thinking=thinking, system_prompt=system_prompt), {}

    def _prep_few_shot(self, examples, audio, *, instruction: str | None = None, sample_rate=None):
        from .prompt import check_examples

        encoded = []
        for k, ex in enumerate(check_examples(examples)):
            t = ex["transcript"]
            encoded.append({"input": self._codes(ex.get("input"), sample_rate, f"example {k} input"),
                            "output": self._codes(ex.get("output"), sample_rate, f"example {k} output"),
                            "transcript": t})
        codes = self._codes(audio, sample_rate, "audio")
        return "few_shot", self.prompts.few_shot(encoded, codes, instruction=instruction), {}

    def _prep_continue(self, audio, *, seconds: float = 10.0, transcript: str | None = None, sample_rate=None):
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise PromptError(f"seconds must be a number, got {seconds!r}") from None
        if not (math.isfinite(seconds) and seconds > 0):
            raise PromptError(f"seconds must be a positive number, got {seconds!r}")
        codes = self._codes(audio, sample_rate, "audio")
        frames = max(1, math.ceil(seconds * self.frames_per_second))
        g = int(self.lm.config.group_size)
        patches = -(-frames // g)
        # room for the text groups of an interleaved continuation (S schedule: at most 5 text per 5 patches)
        max_new = patches + (patches + 8 if transcript else 8)
        grid = self.prompts.continuation(codes, transcript=transcript)
        return "continuation", grid, {"max_audio_frames": frames, "max_new": max_new}

    def run(self, requests: Sequence[TaskRequest], *, decode: str = "whole") -> list[Reply]:
        """Run prepared requests as one generation batch; one :class:`Reply` per request, in order.

        ``decode``: ``"whole"`` (default) decodes each reply's code sequence at once; ``"stream"`` decodes it
        exactly as :meth:`stream` would (the reply's audio then equals the concatenated streamed pieces).
        """
        if decode not in ("whole", "stream"):
            raise MimoAudioError(f"decode must be 'whole' or 'stream', got {decode!r}")
        replies: list[Reply | None] = [None] * len(requests)
        for index, piece in RequestStream(self, requests, decode=decode, emit=False):
            if piece.done:
                replies[index] = piece.reply
        return replies  # type: ignore[return-value]

    def stream(self, requests: Sequence[TaskRequest]) -> RequestStream:
        """Run prepared requests as one batch, streaming: iterate to get ``(index, Piece)`` as pieces are made.

        Audio pieces come from the codec's streaming decoder; the last piece of each request has
        ``done=True`` and the complete :class:`Reply`. ``cancel(index)`` stops one request.
        """
        return RequestStream(self, requests, decode="stream", emit=True)

    # ------------------------------------------------------------------------------------ task methods
    def _batch(self, task: str, items: list, batched: bool, common: dict, per_item) -> list[TaskRequest]:
        return [self.prepare(task, **per_item(x), **common) for x in items]

    def _one_or_list(self, requests: list[TaskRequest], batched: bool, *, kind=None):
        replies = self.run(requests)
        if kind is not None:
            replies = [kind(**r.__dict__) for r in replies]
        return replies if batched else replies[0]

    def _stream_pieces(self, requests: list[TaskRequest]) -> Iterator[Piece]:
        stream = self.stream(requests)
        try:
            for _, piece in stream:
                yield piece
        finally:
            stream.close()

    # transcribe
    def _transcribe_requests(self, audio, kw):
        items, batched = _as_list(audio, _is_one_audio)
        return [self.prepare("transcribe", audio=a, **kw) for a in items], batched

    def transcribe(self, audio, **kw) -> str | list[str]:
        """Speech recognition (Instruct model). ``audio``: one clip, or a list of clips (one batch -> list).

        Options: ``language="en"|"zh"`` (prompt template language; recognition works for both), ``template=``,
        ``sample_rate=`` for arrays, plus the common generation options (see :meth:`prepare`).
        """
        reqs, batched = self._transcribe_requests(audio, kw)
        texts = [r.text for r in self.run(reqs)]
        return texts if batched else texts[0]

    def stream_transcribe(self, audio, **kw) -> Iterator[Piece]:
        reqs, _ = self._transcribe_requests(audio, kw)
        return self._stream_pieces(reqs)

    # speak
    def _speak_requests(self, text, kw):
        items, batched = _as_list(text, lambda x: isinstance(x, str))
        return [self.prepare("speak", text=t, **kw) for t in items], batched

    def speak(self, text, instruct: str | None = None, voice=None, **kw) -> Speech | list[Speech]:
        """Text to speech (Instruct model) -> :class:`Speech` (``.text``, ``.audio``, ``.sample_rate``).

        Plain; styled with ``instruct="Speak slowly and happily"``; a natural-language description inside the text
        with ``natural=True`` (``"In a breathless young male voice: wait for me!"``); in the voice of a clip with
        ``voice=``. A list of texts runs as one batch and returns a list.
        """
        reqs, batched = self._speak_requests(text, {"instruct": instruct, "voice": voice, **kw})
        return self._one_or_list(reqs, batched, kind=Speech)

    def stream_speak(self, text, instruct: str | None = None, voice=None, **kw) -> Iterator[Piece]:
        reqs, _ = self._speak_requests(text, {"instruct": instruct, "voice": voice, **kw})
        return self._stream_pieces(reqs)

    # understand
    def _understand_requests(self, audio, question, kw):
        if isinstance(question, (list, tuple)):
            if not isinstance(audio, (list, tuple)) or len(audio) != len(question):
                raise PromptError("with a list of questions pass a list of audio (one clip or list of clips each) "
                                  "of the same length")
            return [self.prepare("understand", audio=a, question=q, **kw) for a, q in zip(audio, question)], True
        return [self.prepare("understand", audio=audio, question=question, **kw)], False

    def understand(self, audio, question, thinking: bool = False, **kw) -> str | list[str]:
        """Answer ``question`` about ``audio`` (Instruct model) -> the answer text.

        ``audio`` is one clip or a list of clips asked about together. With ``thinking=True`` the model reasons
        first; the returned text is the answer after ``</think>`` (use :meth:`prepare` + :meth:`run` for the
        full :class:`Reply` with :attr:`Reply.thinking`). A list of questions (with a list of audio) is a batch.
        """
        reqs, batched = self._understand_requests(audio, question, {"thinking": thinking, **kw})
        texts = [r.answer for r in self.run(reqs)]
        return texts if batched else texts[0]

    def stream_understand(self, audio, question, thinking: bool = False, **kw) -> Iterator[Piece]:
        reqs, _ = self._understand_requests(audio, question, {"thinking": thinking, **kw})
        return self._stream_pieces(reqs)

    # chat
    def _chat_requests(self, messages, kw):
        batched = isinstance(messages, (list, tuple)) and bool(messages) and all(
            isinstance(m, (list, tuple)) for m in messages)
        items = list(messages) if batched else [messages]
        return [self.prepare("chat", messages=m, **kw) for m in items], batched

    def chat(self, messages, reply: str = "speech", voice=None, system_prompt: str | None = None,
             thinking: bool = False, **kw) -> Reply | list[Reply]:
        """One assistant turn for a conversation (Instruct model) -> :class:`Reply`.

        ``messages``: ``[{"role": "system"|"user"|"assistant", "text": ..., "audio": ...}, ...]`` ending with a user
        turn; it is the whole history (nothing is kept on this object). Append ``reply.as_message()`` and the next
        user turn to continue. ``reply="speech"`` (spoken dialogue; earlier assistant turns need text and audio)
        or ``"text"``; ``voice=`` a clip for the assistant's voice; ``system_prompt=``; ``thinking=`` (text replies).
        A list of conversations runs as one batch.
        """
        reqs, batched = self._chat_requests(
            messages, {"reply": reply, "voice": voice, "system_prompt": system_prompt, "thinking": thinking, **kw})
        return self._one_or_list(reqs, batched)

    def stream_chat(self, messages, reply: str = "speech", voice=None, system_prompt: str | None = None,
                    thinking: bool = False, **kw) -> Iterator[Piece]:
        reqs, _ = self._chat_requests(
            messages, {"reply": reply, "voice": voice, "system_prompt": system_prompt, "thinking": thinking, **kw})
        return self._stream_pieces(reqs)

    # few-shot
    def _few_shot_requests(self, examples, audio, kw):
        items, batched = _as_list(audio, _is_one_audio)
        return [self.prepare("few_shot", examples=examples, audio=a, **kw) for a in items], batched

    def few_shot(self, examples, audio, instruction: str | None = None, **kw) -> Reply | list[Reply]:
        """In-context speech-to-speech (Base model): transform ``audio`` like the examples -> :class:`Reply`.

        ``examples``: ``[{"input": audio, "output": audio, "transcript": "words of the output"}, ...]``;
        ``instruction`` e.g. ``"Convert the timbre of the input speech to target timbre."``. A list of audio runs
        as one batch with the same examples.
        """
        reqs, batched = self._few_shot_requests(examples, audio, {"instruction": instruction, **kw})
        return self._one_or_list(reqs, batched)

    def stream_few_shot(self, examples, audio, instruction: str | None = None, **kw) -> Iterator[Piece]:
        reqs, _ = self._few_shot_requests(examples, audio, {"instruction": instruction, **kw})
        return self._stream_pieces(reqs)

    # continuation
    def _continue_requests(self, audio, kw):
        items, batched = _as_list(audio, _is_one_audio)
        return [self.prepare("continue", audio=a, **kw) for a in items], batched

    def continue_speech(self, audio, seconds: float = 10.0, **kw) -> Reply | list[Reply]:
        """Continue speech from an audio prompt (Base model) -> :class:`Reply` with up to ``seconds`` of new audio.

        The reply holds the continuation only. ``transcript=`` (the prompt's words) switches to an interleaved
        text+speech continuation that also writes the continuation's text (docs/prompts.md).
        """
        reqs, batched = self._continue_requests(audio, {"seconds": seconds, **kw})
        return self._one_or_list(reqs, batched)

    def stream_continue_speech(self, audio, seconds: float = 10.0, **kw) -> Iterator[Piece]:
        reqs, _ = self._continue_requests(audio, {"seconds": seconds, **kw})
        return self._stream_pieces(reqs)


# ================================================================================================ streaming
class _PushDecoder:
    """Push adapter over ``codec.stream_decode`` (a pull-style generator) for one stream.

    ``stream_decode`` holds audio back until more than ``lookahead`` frames have arrived, then yields exactly one
    piece per further chunk (SPEC §2.7); ``push`` therefore pulls a piece only when one is due, and ``close`` ends
    the input and collects the flushed tail.
    """

    def __init__(self, codec, left_context: int, lookahead: int, chunk_frames: int):
        self._queue: list[torch.Tensor] = []
        self._ended = False
        self._lookahead = lookahead
        self._chunk = max(1, chunk_frames)
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self._seen = 0
        self._gen = codec.stream_decode(self._feed(), left_context=left_context, lookahead=lookahead)

    def _feed(self):
        while True:
            if self._queue:
                yield self._queue.pop(0)
            elif self._ended:
                return
            else:  # would deadlock: stream_decode asked for input that push() did not promise
                raise MimoAudioError("internal error: the streaming decoder asked for more codes than were pushed")

    def _send(self, chunk: torch.Tensor) -> list[torch.Tensor]:
        self._queue.append(chunk)
        self._seen += int(chunk.shape[0])
        if self._seen <= self._lookahead:  # still filling the lookahead: the decoder keeps it all
            return []
        return [next(self._gen)]

    def push(self, codes: torch.Tensor | None) -> list[torch.Tensor]:
        """Add codes ``(frames, C)``; returns the waveform pieces that became ready."""
        if codes is None or codes.shape[0] == 0:
            return []
        self._buffer.append(codes)
        self._buffered += int(codes.shape[0])
        if self._buffered < self._chunk:
            return []
        chunk = torch.cat(self._buffer)
        self._buffer, self._buffered = [], 0
        return self._send(chunk)

    def close(self) -> list[torch.Tensor]:
        """End of the codes: decode what is buffered and flush the held-back tail."""
        out: list[torch.Tensor] = []
        if self._buffer:
            chunk = torch.cat(self._buffer)
            self._buffer, self._buffered = [], 0
            out += self._send(chunk)
        self._ended = True
        out += list(self._gen)
        return out


def _cat(pieces: list[torch.Tensor]) -> torch.Tensor | None:
    pieces = [p.detach().float().cpu() for p in pieces if p is not None and p.numel()]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class _Row:
    """Per-request state of a running batch: output parser, audio decoder, limits."""

    def __init__(self, mimo: MimoAudio, req: TaskRequest, decode: str):
        self.req = req
        self.parser = mimo.prompts.parser(stop_ids=req.config.stop_ids, audio_open=req.span_open)
        self.decoder = None
        if req.audio_out and decode == "stream":
            self.decoder = _PushDecoder(mimo.codec, mimo.stream_left_context, mimo.stream_lookahead,
                                        mimo.stream_chunk_frames)
        self.frames = 0
        self.audio: list[torch.Tensor] = []
        self.finished = False
        self.cancelled = False
        self.full = False  # reached max_audio_frames

    def take_codes(self, codes: torch.Tensor | None) -> torch.Tensor | None:
        """Apply the audio-frame limit (continuation) to new codes."""
        if codes is None or not self.req.audio_out:
            return None
        limit = self.req.max_audio_frames
        if limit is not None:
            codes = codes[: max(0, limit - self.frames)]
            if self.frames + codes.shape[0] >= limit:
                self.full = True
        self.frames += int(codes.shape[0])
        return codes if codes.shape[0] else None


class RequestStream:
    """A running batch of :class:`TaskRequest`: iterate for ``(index, Piece)``; :meth:`cancel` stops one request.

    Made by :meth:`MimoAudio.stream` (and used by :meth:`MimoAudio.run`). Each request ends with exactly one
    piece with ``done=True`` whose ``reply`` is the complete :class:`Reply`.
    """

    def __init__(self, mimo: MimoAudio, requests: Sequence[TaskRequest], *, decode: str = "stream",
                 emit: bool = True):
        from .generate import stream_generate

        requests = list(requests)
        if not requests:
            raise PromptError("no requests to run")
        for i, r in enumerate(requests):
            if not isinstance(r, TaskRequest):
                raise PromptError(f"request {i} is a {type(r).__name__}; make requests with MimoAudio.prepare()")
        self.mimo = mimo
        self.requests = requests
        self.decode = decode
        self.emit = emit
        self.rows = [_Row(mimo, r, decode) for r in requests]
        self._gen = stream_generate(mimo.lm, [r.grid for r in requests], [r.config for r in requests],
                                    empty_id=mimo.ids.empty)
        self._iter: Iterator | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def cancel(self, index: int) -> None:
        """Stop request ``index``: it ends at the next step with ``finish_reason="cancelled"``."""
        row = self.rows[index]
        if not row.finished:
            row.cancelled = True
            self._gen.cancel(index)

    def close(self) -> None:
        """Stop every unfinished request (frees the generation state)."""
        for i, row in enumerate(self.rows):
            if not row.finished:
                self.cancel(i)
        self._gen = None

    def __iter__(self) -> Iterator[tuple[int, Piece]]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[tuple[int, Piece]]:
        gen = self._gen
        while gen is not None and not all(r.finished for r in self.rows):
            try:
                step = gen.step()
            except StopIteration:
                break
            for i, group in enumerate(step):
                row = self.rows[i]
                if row.finished:
                    continue
                if group is None:
                    yield i, self._finish(i)
                    continue
                delta = row.parser.feed(group.detach().to("cpu"))
                codes = row.take_codes(delta.codes)
                audio = self._audio(row, codes)
                if row.full:
                    gen.cancel(i)
                if self.emit and (delta.text or audio is not None):
                    yield i, Piece(text=delta.text, audio=audio, index=i)
            gen = self._gen
        for i, row in enumerate(self.rows):
            if not row.finished:
                yield i, self._finish(i)

    def _audio(self, row: _Row, codes: torch.Tensor | None) -> torch.Tensor | None:
        if row.decoder is None or codes is None:
            return None
        audio = _cat(row.decoder.push(codes))
        if audio is not None:
            row.audio.append(audio)
        return audio

    def _finish(self, i: int) -> Piece:
        row = self.rows[i]
        row.finished = True
        last = row.parser.finish()
        codes = row.take_codes(last.codes)
        audio_parts = []
        if row.decoder is not None:
            if codes is not None:
                audio_parts += row.decoder.push(codes)
            audio_parts += row.decoder.close()
        tail = _cat(audio_parts)
        if tail is not None:
            row.audio.append(tail)
        out = row.parser.output
        req = row.req
        if row.cancelled and not out.stopped:
            reason = "cancelled"
        else:
            reason = "stop" if out.stopped else "length"
        codes_all = out.codes
        if req.max_audio_frames is not None:
            codes_all = codes_all[: req.max_audio_frames]
        wav = None
        if req.audio_out:
            if row.decoder is not None:
                wav = _cat(row.audio)
            elif codes_all.shape[0]:
                wav = self.mimo.codec.decode(codes_all.to(self.mimo.codec.device)).detach().float().cpu()
            if wav is None:
                wav = torch.zeros(0)
        reply = Reply(text=out.text, audio=wav, sample_rate=self.mimo.sample_rate,
                      codes=codes_all if req.audio_out else None, finish_reason=reason, task=req.task,
                      prompt_tokens=req.prompt_groups, new_tokens=out.groups)
        return Piece(text=last.text if self.emit else "", audio=tail if self.emit else None, done=True,
                     reply=reply, index=i)
