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

import inspect
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .batch import SAMPLE_RATE, Engine, Piece, Reply, RequestStream, Speech, TaskRequest
from .checkpoint import INSTRUCT_ID, TOKENIZER_ID
from .errors import AudioInputError, MimoAudioError, PromptError, is_int

__all__ = ["MimoAudio", "Piece", "Reply", "RequestStream", "Speech", "TaskRequest"]
#: clips longer than this are transcribed in pieces cut at silences (MimoAudio.transcribe_long)
LONG_AUDIO_PIECE_SECONDS = 30.0


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
        stream_left_context / stream_lookahead: the streaming decoder's windows in code frames (SPEC §2.7);
        compile: wrap the generation step functions with ``torch.compile`` (CUDA graphs on CUDA); None reads
            ``MIMO_AUDIO_COMPILE`` (default off). Eager and compiled give the same tokens.
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
        compile: bool | None = None,
    ):
        from .generate import compile_enabled

        self.lm = lm
        self.codec = codec
        self.text = text_tokenizer
        self.ids = text_tokenizer.ids
        self.stream_chunk_frames = int(stream_chunk_frames)
        self.stream_left_context = int(stream_left_context)
        self.stream_lookahead = int(stream_lookahead)
        self.compile = compile_enabled(compile)

    @property
    def engine(self) -> Engine:
        """The parts the batch core runs on (:class:`~mimo_audio.batch.Engine`)."""
        return Engine(self.lm, self.codec, self.text, self.stream_chunk_frames, self.stream_left_context,
                      self.stream_lookahead, self.compile)

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = INSTRUCT_ID,
        tokenizer: str | os.PathLike = TOKENIZER_ID,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quantize: str | None = None,
        **options,
    ) -> MimoAudio:
        """Load the LM (and its text tokenizer) from ``model`` and the audio tokenizer from ``tokenizer``.

        Both are hub ids or local folders; ``model="mini"`` loads the small model shipped in the package with its
        own audio tokenizer (docs/mini.md). ``model`` may also be a LoRA adapter folder (a LoRA run's
        ``OUTPUT/final/``: ``adapter_config.json`` naming its base): the base is loaded and the adapter merged into
        its weights (peft; needs the train extra). ``device`` defaults to CUDA when available; ``dtype`` to the
        checkpoint's. ``quantize`` ``"int8"``/``"int4"`` quantizes the LM's linear layers while loading (torchao;
        see docs/usage.md); the audio tokenizer stays unquantized. ``options`` go to the constructor (streaming
        windows, ``compile=``).
        """
        from .checkpoint import (
            adapter_base,
            default_tokenizer,
            is_adapter,
            parse_device,
            parse_dtype,
            resolve,
        )
        from .codec import AudioTokenizer
        from .config import check_kind, read_config_json
        from .lm import MimoAudioLM
        from .quantize import check_scheme
        from .text import TextTokenizer

        dev = parse_device(device)
        dt = parse_dtype(dtype)
        check_scheme(quantize, dev, dt)  # an impossible scheme fails before anything is read
        tokenizer = default_tokenizer(model, tokenizer)  # --model mini: the mini audio tokenizer too
        folder = resolve(model)
        adapter = None
        if is_adapter(folder):  # a LoRA run's final/: load its base, merge the adapter into the weights
            adapter, folder = folder, adapter_base(folder)
        if (folder / "config.json").is_file():  # a tokenizer folder given as the model is named as such
            check_kind(read_config_json(folder / "config.json"), "lm", folder / "config.json")
        text_tokenizer = TextTokenizer.from_folder(adapter if adapter and (adapter / "tokenizer.json").is_file()
                                                   else folder)
        if adapter is None:
            lm = MimoAudioLM.from_pretrained(folder, device=dev, dtype=dt, empty_id=text_tokenizer.ids.empty,
                                             quantize=quantize)
        else:
            from .quantize import quantize_model
            from .train.lora import apply_adapter

            lm = MimoAudioLM.from_pretrained(folder, device=dev, dtype=dt, empty_id=text_tokenizer.ids.empty)
            lm = quantize_model(apply_adapter(lm, adapter), quantize)  # quantize the merged weights
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
            wav = load_audio(audio, sample_rate=sample_rate, target_rate=self.sample_rate,
                             max_seconds=self.codec.config.max_audio_seconds)
        except AudioInputError as exc:
            msg = str(exc)
            raise type(exc)(msg if msg.startswith(what) else f"{what}: {msg}") from None  # keeps AudioTooLongError
        channels = len(self.lm.config.speech_zeroemb_idx)
        codes = self.codec.encode_loaded(wav, channels)
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
        from .generate import GenerationConfig
        from .sampling import GREEDY

        text, local = spec.samplers
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
        if not is_int(max_new_tokens) or max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if seed is not None and not is_int(seed):
            raise PromptError(f"seed must be an integer or None, got {seed!r}")
        room = self.max_positions - prompt_groups
        if room < 1:
            raise PromptError(
                f"the prompt takes {prompt_groups} positions but the model has {self.max_positions} "
                "(max_position_embeddings); shorten it: less or shorter audio, fewer examples, a shorter history"
            )
        return GenerationConfig(
            text=text, local=local, max_new_tokens=int(min(max_new_tokens, room)),
            min_new_tokens=int(spec.min_new_tokens or 0), stop_ids=spec.stop_ids(self.ids),
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
        - ``"audio_qa"`` (Base model, SPEC §6.3.13-14): ``audio``, ``question=""``, ``examples=None`` (dicts with
          ``audio``, ``question``, ``answer``: the few-shot form)

        Common: ``seed``, ``max_new_tokens`` (LM steps; one step is a text token or 0.16 s of audio), ``greedy``,
        text-sampler ``temperature``/``top_k``/``top_p``, patch-sampler ``audio_temperature``/``audio_top_k``/
        ``audio_top_p`` (task presets of SPEC §5.3 otherwise; setting one turns sampling on for a greedy preset),
        ``sample_rate`` for array audio.
        Raises :class:`AudioInputError` / :class:`PromptError` naming the problem.
        """
        from .tasks import command_of, get_task

        name = command_of(task)  # the command (transcribe, speak, ...) of a command name or an alias (asr, tts, ...)
        build = getattr(self, f"_prep_{name}")
        try:  # check the keywords before calling, so a TypeError raised inside is not mistaken for one
            inspect.signature(build).bind(sample_rate=sample_rate, **kwargs)
        except TypeError as exc:
            raise PromptError(f"{name}: {exc}") from None
        prompt_task, grid, extra = build(sample_rate=sample_rate, **kwargs)
        spec = get_task(prompt_task)
        task_max_new = extra.get("max_new")  # a task's own default limit (continuation: its seconds)
        groups = int(grid.shape[1]) // int(self.lm.config.group_size)
        config = self._config(
            spec, seed=seed, max_new_tokens=max_new_tokens if max_new_tokens is not None else task_max_new,
            default_max_new=4096, greedy=greedy, temperature=temperature, top_k=top_k,
            top_p=top_p, audio_temperature=audio_temperature, audio_top_k=audio_top_k, audio_top_p=audio_top_p,
            prompt_groups=groups,
        )
        return TaskRequest(
            task=name, grid=grid, config=config, audio_out=spec.reply == "speech", span_open=bool(spec.audio_open),
            prompt_groups=groups, max_audio_frames=extra.get("max_audio_frames"),
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
        clips = [audio] if _is_one_audio(audio) else audio
        if not _is_one_audio(audio) and (not isinstance(audio, (list, tuple)) or not audio):
            raise PromptError("understand needs an audio clip or a non-empty list of clips")
        self._check_fits_context([self._seconds(a, sample_rate) for a in clips])
        if _is_one_audio(audio):
            codes = self._codes(audio, sample_rate, "audio")
        else:
            codes = [self._codes(a, sample_rate, f"audio clip {i}") for i, a in enumerate(audio)]
        return "understand", self.prompts.understand(codes, question, thinking=thinking), {}

    def _prep_chat(self, messages, *, reply: str = "speech", voice=None, system_prompt: str | None = None,
                   thinking: bool = False, sample_rate=None):
        from .tasks import chat_task

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
        from .tasks import check_examples

        encoded = []
        for k, ex in enumerate(check_examples(examples)):
            t = ex["transcript"]
            encoded.append({"input": self._codes(ex.get("input"), sample_rate, f"example {k} input"),
                            "output": self._codes(ex.get("output"), sample_rate, f"example {k} output"),
                            "transcript": t})
        codes = self._codes(audio, sample_rate, "audio")
        return "few_shot", self.prompts.few_shot(encoded, codes, instruction=instruction), {}

    def _prep_audio_qa(self, audio, question: str = "", *, examples=None, sample_rate=None):
        codes = self._codes(audio, sample_rate, "audio")
        if not examples:
            return "audio_qa", self.prompts.audio_qa(codes, question), {}
        if not isinstance(examples, (list, tuple)):
            raise PromptError("examples must be a list of dicts {'audio', 'question', 'answer'}")
        encoded = []
        for k, ex in enumerate(examples):
            if not isinstance(ex, dict):
                raise PromptError(f"example {k} must be a dict with 'audio', 'question' and 'answer'")
            encoded.append({**ex, "audio": self._codes(ex.get("audio"), sample_rate, f"example {k} audio")})
        return "audio_qa_few_shot", self.prompts.audio_qa_few_shot(encoded, codes, question), {}

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
        for index, piece in RequestStream(self.engine, requests, decode=decode, emit=False):
            if piece.done:
                replies[index] = piece.reply
        return replies  # type: ignore[return-value]

    def stream(self, requests: Sequence[TaskRequest], *, capacity: int | None = None) -> RequestStream:
        """Run prepared requests as one batch, streaming: iterate to get ``(index, Piece)`` as pieces are made.

        Audio pieces come from the codec's streaming decoder; the last piece of each request has
        ``done=True`` and the complete :class:`Reply`. ``cancel(index)`` stops one request; ``add(request)``
        admits another into the running batch (``capacity``: slots allocated up front).
        """
        return RequestStream(self.engine, requests, decode="stream", emit=True, capacity=capacity)

    # ------------------------------------------------------------------------------------ task methods
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

    def transcribe(self, audio, *, max_seconds: float | None = None, allow_truncated: bool = False,
                   progress=None, **kw) -> str | list[str]:
        """Speech recognition (Instruct model). ``audio``: one clip, or a list of clips (one batch -> list).

        Options: ``language="en"|"zh"`` (prompt template language; recognition works for both), ``template=``,
        ``sample_rate=`` for arrays, plus the common generation options (see :meth:`prepare`). A clip longer than
        :data:`LONG_AUDIO_PIECE_SECONDS` is transcribed by :meth:`transcribe_long` (split at silences, read as a
        stream); ``max_seconds``, ``allow_truncated`` and ``progress`` apply to those.
        """
        items, batched = _as_list(audio, _is_one_audio)
        # long clips, and with allow_truncated every clip (the streamed reader is the one that allows it)
        long = [allow_truncated or self._seconds(a, kw.get("sample_rate")) > LONG_AUDIO_PIECE_SECONDS
                for a in items]
        if not any(long):
            reqs, batched = self._transcribe_requests(audio, kw)
            texts = [r.text for r in self.run(reqs)]
            return texts if batched else texts[0]
        texts = [self.transcribe_long(a, max_seconds=max_seconds, allow_truncated=allow_truncated,
                                      progress=progress, **kw) if is_long else self.transcribe(a, **kw)
                 for a, is_long in zip(items, long)]
        return texts if batched else texts[0]

    def transcribe_long(self, audio, *, piece_seconds: float = LONG_AUDIO_PIECE_SECONDS, batch_size: int = 8,
                        max_seconds: float | None = None, allow_truncated: bool = False, progress=None,
                        **kw) -> str:
        """Transcribe audio of any length: it is read as a stream and cut at silences into pieces of at most
        ``piece_seconds`` (:func:`mimo_audio.audio.iter_pieces`), transcribed ``batch_size`` pieces at a time, and
        the texts joined. Memory stays bounded by a few pieces and one batch, however long the recording.
        ``max_seconds`` (None: no limit) caps the input's duration; ``progress(done_seconds, total_seconds)`` is
        called after each batch."""
        from .audio import iter_pieces
        from .output import join_transcript

        if not is_int(batch_size) or batch_size < 1:
            raise PromptError(f"batch_size must be a positive integer, got {batch_size!r}")
        rate = kw.pop("sample_rate", None)
        total = self._seconds(audio, rate)
        text, batch, done = "", [], 0.0

        def flush():
            nonlocal text, done
            reqs = [self.prepare("transcribe", audio=(piece, self.sample_rate), **kw) for piece in batch]
            for r in self.run(reqs):
                text = join_transcript(text, r.text or "")
            done += sum(p.size for p in batch) / self.sample_rate
            batch.clear()
            if progress is not None:
                progress(done, max(total, done))

        for _, piece in iter_pieces(audio, rate, piece_seconds=piece_seconds, target_rate=self.sample_rate,
                                    max_seconds=max_seconds, allow_truncated=allow_truncated):
            batch.append(piece)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return text

    def _check_fits_context(self, seconds: list[float]) -> None:
        """Refuse audio longer than the model's context before encoding it, saying so in seconds."""
        per_second = self.frames_per_second / self.lm.config.group_size  # LM positions per second of audio
        fits = self.max_positions / per_second
        total = sum(seconds)
        if total * per_second > self.max_positions:
            raise PromptError(
                f"the audio is {total:.0f} s long, but the model's context holds at most about {fits:.0f} s of "
                f"audio ({self.max_positions} positions of {1 / per_second:.2f} s, prompt included); understand "
                "does not split audio: cut it into shorter clips and ask about each, or transcribe it first "
                "(transcribe splits long audio) and ask about the text")

    def _seconds(self, audio, sample_rate=None) -> float:
        """The duration of one audio argument from its header or shape (0.0 when it cannot be told: the normal
        path then names the problem)."""
        from .audio import probe_audio

        try:
            if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
                frames, _, rate = probe_audio(audio)
                return frames / rate if rate > 0 else 0.0
            if isinstance(audio, tuple) and len(audio) == 2 and not isinstance(audio[1], (list, torch.Tensor)):
                samples, rate = audio
                return max(getattr(samples, "shape", (len(samples),))) / float(rate)
            if sample_rate:
                return max(getattr(audio, "shape", (len(audio),))) / float(sample_rate)
        except (AudioInputError, TypeError, ValueError, ZeroDivisionError):
            pass
        return 0.0

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
