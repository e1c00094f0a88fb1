"""Prompt layout: segments -> the ``(9, columns)`` grid, every task format of SPEC §6, and the task table.

Pure layout code: no model, no randomness (templates are parameters with fixed defaults, SPEC §13.6).
Output parsing (SPEC §5.5) lives in :mod:`mimo_audio.output` and is re-exported here.

The grid (SPEC §4.1)
--------------------
Row 0 is the text channel, rows 1..C the audio channels (C = 8). Every ``G = group_size = 4`` columns form
one group, which is one LM position; only column 0 of a group's text row is read, the other three hold
the filler ``-100``. Rows 1..C hold the channel's empty id (``E``: 1024, 1024, 128, …) except in audio
groups, which carry one patch of G frames. Worked example, ``T("x") + A(codes with 5 frames)`` where the
5 frames ``f0..f4`` are padded to 8 by repeating ``f4``::

    column  0  1  2  3 | 4    5  6  7 | 8     9  10 11 | 12    13 14 15 | 16   17 18 19
    row 0   x  -  -  - | sosp -  -  - | empty -  -  -  | empty -  -  -  | eosp -  -  -      (- = -100)
    rows 1+ E  E  E  E | E    E  E  E | f0    f1 f2 f3 | f4    f4 f4 f4 | E    E  E  E

Segments, each tokenized on its own (BPE does not merge across segment boundaries):

- ``T(s)``: text; ``n`` tokens -> ``4n`` columns (empty string -> 0 columns).
- ``A(codes)``: ``<|sosp|>``, one ``<|empty|>`` group per patch, ``<|eosp|>``.
- ``S(text, codes)`` (SPEC §4.4): ``<|sostm|>``, then 5 text tokens / 5 patches alternately (``<|eot|>``
  appended to the last text chunk), leftover text, leftover patches, ``<|eostm|>``. For 7 text tokens
  ``a..g`` and 12 patches ``p0..p11`` the text row reads::

      sostm a b c d e | empty×5 (p0..p4) | f g eot | empty×5 (p5..p9) | empty×2 (p10, p11) | eostm

Use :class:`PromptBuilder` (tokenizer + layout) to build task prompts::

    pb = PromptBuilder(tokenizer, lm_config)           # or PromptBuilder(tokenizer, (empty_ids, 4))
    grid = pb.asr(codes)                               # LongTensor (9, 4·groups)
    grid = pb.build("tts", text="Hello there.")        # by task name
    stops = stop_ids("tts", tokenizer.ids); preset = task_spec("tts").preset
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import PromptError
from .output import Layout, OutputParser, ParsedDelta, ParsedOutput, parse_output, split_thinking
from .text import SpecialIds, TextTokenizer

__all__ = [
    "Layout", "PromptBuilder", "TaskSpec", "TASKS", "task_spec", "stop_ids", "chat_task",
    "text_grid", "audio_grid", "stream_grid", "pad_codes", "check_codes", "normalize_tts_text",
    "detect_language", "multiple_choice", "parse_output", "OutputParser", "ParsedOutput", "ParsedDelta",
    "split_thinking", "FILLER",
]

FILLER = -100

# ---------------------------------------------------------------------------------------------------------
# Template data (SPEC §6.1). The reference picks ASR/TTS templates at random; we take a fixed default.
# ---------------------------------------------------------------------------------------------------------
ASR_TEMPLATES: dict[str, tuple[str, ...]] = {
    "zh": ("请将这段语音转换为文字", "帮我识别这个音频文件中的内容", "把这段录音转成文本", "请转录这段语音",
           "将音频内容转换成文字格式", "识别并转写这段语音", "把语音内容写成文字", "转录这个音频片段",
           "将这段对话转换为文本", "麻烦帮我把这段录音整理成详细的文字记录"),
    "en": ("Please transcribe this audio file", "Convert this speech recording to text",
           "Transcribe the following voice message", "Turn this audio into readable text",
           "Please convert the recording to written format", "Transcribe what you hear in this audio",
           "Convert this spoken content to text", "Please write down what is said in this recording",
           "Transcribe this voice recording", "Could you please help me transcribe this important recording?",
           "Would you mind converting this voice message into a readable text format?",
           "I'd really appreciate it if you could turn this audio file into a written document"),
}
TTS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "zh": ("请将这段文字转换为语音", "帮我把这个文本读出来", "将这些文字生成音频", "请朗读这段内容", "把这段话转换成语音文件",
           "生成这段文字的语音版本", "请用语音播报这些内容", "将文本转换为可听的音频", "帮我朗读这段文字", "把这些内容念出来"),
    "en": ("Please convert this text to speech", "Turn this writing into audio", "Generate speech from this text",
           "Read this content out loud", "Convert these words to voice", "Create an audio version of this text",
           "Please vocalize this content", "Turn this text into audible format",
           "Help me convert this writing to speech", "Make this text into spoken audio"),
}
#: Fixed defaults: the eval toolkit's ASR templates, the first TTS template of each language (no "：: ").
DEFAULT_ASR_TEMPLATE = {"en": "Transcribe the following voice message.", "zh": "请将这段语音转换为文字"}
DEFAULT_TTS_TEMPLATE = {"en": TTS_TEMPLATES["en"][0], "zh": TTS_TEMPLATES["zh"][0]}
TTS_USER_FORMAT = "{template}: {text}"
TTS_INSTRUCT_FORMAT = "{template}: {text}({instruct})"
SYS_STYLE = "你需要根据指定的风格指令和文本内容来生成语音。"
SYS_STYLE_CLONE = "你需要根据指定的风格指令和文本内容来生成和语音prompt具有相同音色的语音。你的音色应该是："
VOICE_INTRO = "Your voice should be:"
DEFAULT_SYSTEM_PROMPT = "You are MiMo-Audio, a friendly AI assistant and your response needs to be concise."
NO_THINK = "<think>\n\n</think>\n"
THINK = "<think>\n"
ICL_PREFIX = "[Int]:{instruction}\n"
MC_SUFFIX = "Make a choice from the given {n} choices."


def detect_language(text: str) -> str:
    """``"zh"`` if ``text`` has a CJK unified ideograph (U+4E00–U+9FFF), else ``"en"`` (SPEC §6.1)."""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def normalize_tts_text(text: str) -> str:
    """The reference's capitalisation rule for text to be spoken (SPEC §6).

    All-upper or all-lower text becomes ``str.capitalize()`` (first character upper, the rest lower); mixed
    case and text without cased letters are unchanged::

        >>> normalize_tts_text("THIS ONE IS SHOUTED."), normalize_tts_text("hello there"), normalize_tts_text("iPhone 5")
        ('This one is shouted.', 'Hello there', 'iPhone 5')
    """
    return text.capitalize() if (text.isupper() or text.islower()) else text


def multiple_choice(question: str, choices: Sequence[str]) -> str:
    """The few-shot audio-QA question with its choices (SPEC §6.3 item 14)::

        >>> multiple_choice("Who speaks?", ["a man", "a woman"])
        'Who speaks?\\n\\nChoice: \\na man\\na woman\\n\\nMake a choice from the given 2 choices.'
    """
    if not choices:
        raise PromptError("multiple_choice needs at least one choice; pass the answer options as a list")
    body = "".join(f"{c}\n" for c in choices)
    return f"{question}\n\nChoice: \n{body}\n{MC_SUFFIX.format(n=len(choices))}"


# ---------------------------------------------------------------------------------------------------------
# Pure segment functions (Layout, which the output parser shares, lives in output.py)
# ---------------------------------------------------------------------------------------------------------
def text_grid(ids: Sequence[int], layout: Layout) -> torch.Tensor:
    """``T``: each token followed by G−1 fillers on row 0, empty ids below. ``[t0, t1]`` with G = 4 gives::

        row 0   t0 -100 -100 -100 t1 -100 -100 -100
        row c   E_c (8 columns)
    """
    n, g = len(ids), layout.group_size
    grid = torch.empty(1 + layout.channels, n * g, dtype=torch.long)
    row0 = torch.full((n, g), FILLER, dtype=torch.long)
    if n:
        row0[:, 0] = torch.tensor([int(i) for i in ids], dtype=torch.long)
    grid[0] = row0.reshape(-1)
    grid[1:] = layout.empty_column()
    return grid


def check_codes(codes, layout: Layout, what: str = "audio") -> torch.Tensor:
    """Validate audio codes ``(frames, C)``: integers, at least one frame, each below its channel's empty id."""
    if codes is None:
        raise PromptError(f"{what} is missing; pass the audio (encoded codes of shape (frames, {layout.channels}))")
    t = torch.as_tensor(codes)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise PromptError(
            f"{what} must be integer codes of shape (frames, {layout.channels}), got a {t.dtype} tensor; "
            "encode the waveform with AudioTokenizer.encode first"
        )
    if t.dim() != 2 or t.shape[1] != layout.channels:
        raise PromptError(
            f"{what} codes must have shape (frames, {layout.channels}), got {tuple(t.shape)}; "
            f"encode with num_quantizers={layout.channels}"
        )
    if t.shape[0] == 0:
        raise PromptError(f"{what} has no frames; pass a non-empty clip")
    t = t.to(torch.long)
    limit = torch.tensor(layout.empty_ids, dtype=torch.long)
    bad = (t < 0) | (t >= limit)
    if bad.any():
        frame, ch = (int(x) for x in bad.nonzero()[0])
        raise PromptError(
            f"{what} code {int(t[frame, ch])} at frame {frame}, channel {ch} is outside [0, {int(limit[ch])}); "
            "pass codes from the audio tokenizer (first 8 codebooks)"
        )
    return t


def pad_codes(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pad ``(frames, C)`` to a multiple of ``group_size`` frames by repeating the last frame (SPEC §1.4)."""
    extra = (-codes.shape[0]) % group_size
    if extra:
        codes = torch.cat([codes, codes[-1:].expand(extra, -1)], dim=0)
    return codes


def audio_grid(codes: torch.Tensor, layout: Layout, *, empty: int, sosp: int | None = None,
               eosp: int | None = None) -> torch.Tensor:
    """``A``: one ``<|empty|>`` group per patch of padded ``codes`` (frames, C); optional sosp/eosp groups.

    With markers, 5 frames give ``sosp | empty (f0..f3) | empty (f4 f4 f4 f4) | eosp`` (16 + 4 columns).
    Without markers (inside ``S``) only the ``<|empty|>`` groups remain. ``codes`` must be validated already.
    """
    g = layout.group_size
    padded = pad_codes(codes, g)
    patches = padded.shape[0] // g
    body = text_grid([empty] * patches, layout)
    body[1:] = padded.T
    parts = []
    if sosp is not None:
        parts.append(text_grid([sosp], layout))
    parts.append(body)
    if eosp is not None:
        parts.append(text_grid([eosp], layout))
    return torch.cat(parts, dim=1)


def stream_grid(text_ids: Sequence[int], codes: torch.Tensor, layout: Layout, ids: SpecialIds, *,
                text_chunk: int = 5, audio_chunk: int = 5, open_span: bool = True, close: bool = True,
                end_text: bool = True) -> torch.Tensor:
    """``S(text, codes)`` (SPEC §4.4): interleaved chunks of ``text_chunk`` tokens and ``audio_chunk`` patches.

    ``open_span``/``close`` add the ``<|sostm|>``/``<|eostm|>`` groups and ``end_text`` appends ``<|eot|>`` to
    the last text chunk (all True for the reference segment; speech continuation turns them off).
    """
    g = layout.group_size
    tokens = [int(i) for i in text_ids]
    chunks = [tokens[i:i + text_chunk] for i in range(0, len(tokens), text_chunk)]
    if end_text:
        if chunks:
            chunks[-1] = [*chunks[-1], ids.eot]
        else:
            chunks = [[ids.eot]]
    padded = pad_codes(codes, g)
    step = audio_chunk * g
    audio = [padded[i:i + step] for i in range(0, padded.shape[0], step)]
    parts = [text_grid([ids.sostm], layout)] if open_span else []
    for i in range(max(len(chunks), len(audio))):
        if i < len(chunks):
            parts.append(text_grid(chunks[i], layout))
        if i < len(audio) and i < len(chunks):
            parts.append(audio_grid(audio[i], layout, empty=ids.empty))
    for a in audio[len(chunks):]:
        parts.append(audio_grid(a, layout, empty=ids.empty))
    if close:
        parts.append(text_grid([ids.eostm], layout))
    return torch.cat(parts, dim=1) if parts else text_grid([], layout)


# ---------------------------------------------------------------------------------------------------------
# Tasks: sampler preset, stop tokens, how the reply is read back (SPEC §5.3, §5.4)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """What a task needs besides its prompt.

    ``stops`` are :class:`~mimo_audio.text.SpecialIds` field names; ``preset`` names a sampler preset of
    SPEC §5.3 (``mimo_audio.generate.PRESETS``); ``audio_open`` tells the output parser whether the prompt
    itself opens the speech span (True), the model must emit ``<|sostm|>`` first (False), or the reference
    rule applies (None); ``model`` is the checkpoint the format was made for.
    """

    name: str
    preset: str
    stops: tuple[str, ...]
    reply: str  # "text" | "speech"
    audio_open: bool | None
    model: str  # "instruct" | "base"
    min_new_tokens: int | None = None
    max_new_tokens: int | None = None


_TEXT_STOPS = ("eos", "im_end")
_SPEECH_STOPS = ("eos", "eostm", "im_end")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("asr", "asr", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("tts", "tts", _SPEECH_STOPS, "speech", True, "instruct"),
    TaskSpec("tts_instruct", "tts", _SPEECH_STOPS, "speech", False, "instruct"),
    TaskSpec("tts_natural", "tts", _SPEECH_STOPS, "speech", False, "instruct"),
    TaskSpec("understand", "audio_understanding", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("dialogue", "spoken_dialogue", _SPEECH_STOPS, "speech", True, "instruct"),
    TaskSpec("dialogue_multiturn", "spoken_dialogue", _SPEECH_STOPS, "speech", True, "instruct"),
    TaskSpec("s2t_dialogue", "spoken_dialogue", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("s2t_dialogue_multiturn", "spoken_dialogue", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("text_dialogue", "text_chat", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("text_dialogue_multiturn", "text_chat", _TEXT_STOPS, "text", False, "instruct"),
    TaskSpec("few_shot", "in_context_learning_s2s", ("eos", "eostm"), "speech", True, "base"),
    TaskSpec("speech_mmlu", "qa", ("eos",), "text", False, "base", 5, 10),
    TaskSpec("speech_mmlu_speech", "qa", ("eos", "eostm"), "speech", True, "base", 10, 25),
    TaskSpec("audio_qa", "qa", ("eos", "sosp"), "text", False, "base"),
    TaskSpec("audio_qa_few_shot", "qa", ("eos", "sosp"), "text", False, "base"),
    TaskSpec("continuation", "default", ("eos", "eosp", "eostm"), "speech", True, "base"),
)}


def task_spec(task: str) -> TaskSpec:
    try:
        return TASKS[task]
    except KeyError:
        raise PromptError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


def stop_ids(task: str, ids: SpecialIds) -> tuple[int, ...]:
    """The stop-token ids of ``task`` (SPEC §5.4), resolved against ``ids``, without duplicates."""
    out: list[int] = []
    for name in task_spec(task).stops:
        v = getattr(ids, name)
        if v is not None and v not in out:
            out.append(v)
    return tuple(out)


def chat_task(messages: Sequence[Mapping], reply: str = "speech") -> str:
    """The multi-turn task for a chat: spoken dialogue, speech-to-text dialogue or text dialogue."""
    if reply == "speech":
        return "dialogue_multiturn"
    if reply != "text":
        raise PromptError(f"reply must be 'speech' or 'text', got {reply!r}")
    spoken = any(m.get("audio") is not None for m in messages if isinstance(m, Mapping) and m.get("role") == "user")
    return "s2t_dialogue_multiturn" if spoken else "text_dialogue_multiturn"


# ---------------------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")


def check_examples(examples) -> list[Mapping]:
    """Validate few-shot examples ``[{"input": audio, "output": audio, "transcript": str}, ...]``.

    A single dict counts as a list of one. Raises :class:`PromptError` naming the example and the fix.
    """
    if isinstance(examples, Mapping):
        examples = [examples]
    if not isinstance(examples, Sequence) or isinstance(examples, (str, bytes)) or not examples:
        raise PromptError("few_shot needs at least one example {'input': audio, 'output': audio, 'transcript': str}")
    for k, ex in enumerate(examples):
        if not isinstance(ex, Mapping):
            raise PromptError(f"example {k} must be a dict with 'input', 'output' and 'transcript'")
        transcript = ex.get("transcript")
        if not isinstance(transcript, str) or not transcript.strip():
            raise PromptError(
                f"example {k} has no transcript; each example needs 'transcript', the text of its output audio "
                "(transcribe it first, e.g. with MimoAudio.transcribe)"
            )
        for key in ("input", "output"):
            if ex.get(key) is None:
                raise PromptError(f"example {k} has no {key!r} audio; each example needs 'input' and 'output'")
    return list(examples)


class PromptBuilder:
    """Builds the ``(1 + C, 4·groups)`` prompt grid of every task (SPEC §6) for one tokenizer and layout.

    Audio arguments are codes ``(frames, C)`` (LongTensor, unpadded; padding repeats the last frame).
    Every task method returns the grid; :meth:`build` calls one by task name. ``T``/``A``/``S`` below are the
    segments of the module docstring.
    """

    def __init__(self, tokenizer: TextTokenizer, layout):
        self.tok = tokenizer
        self.ids: SpecialIds = tokenizer.ids
        self.layout = Layout.of(layout)

    # ----------------------------------------------------------------- segments
    def T(self, text: str) -> torch.Tensor:
        """Text segment: ``text`` tokenized on its own (special tokens in it become single ids)."""
        return text_grid(self.tok.encode(text), self.layout)

    def A(self, codes, what: str = "audio", *, close: bool = True) -> torch.Tensor:
        """Audio segment with ``<|sosp|>`` and (unless ``close=False``) ``<|eosp|>``."""
        c = check_codes(codes, self.layout, what)
        return audio_grid(c, self.layout, empty=self.ids.empty, sosp=self.ids.sosp,
                          eosp=self.ids.eosp if close else None)

    def audio(self, codes, what: str = "audio") -> torch.Tensor:
        """Audio patches without sosp/eosp markers (the form used inside ``S``)."""
        return audio_grid(check_codes(codes, self.layout, what), self.layout, empty=self.ids.empty)

    def S(self, text: str, codes, what: str = "audio", **kw) -> torch.Tensor:
        """Interleaved segment ``S(text, codes)``; keyword arguments go to :func:`stream_grid`."""
        c = check_codes(codes, self.layout, what)
        return stream_grid(self.tok.encode(text), c, self.layout, self.ids, **kw)

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=1) if parts else text_grid([], self.layout)

    def build(self, task: str, **kwargs) -> torch.Tensor:
        """The prompt of ``task`` (a key of :data:`TASKS`); ``kwargs`` are that task method's arguments."""
        task_spec(task)
        return getattr(self, task)(**kwargs)

    # ----------------------------------------------------------------- instruct model
    def asr(self, audio, *, template: str | None = None, language: str = "en") -> torch.Tensor:
        """ASR (SPEC §6.2.1)::

            T("<|im_start|>user\\n") A(audio) T(template) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
            T("<think>\\n\\n</think>\\n")

        ``template`` defaults to :data:`DEFAULT_ASR_TEMPLATE` of ``language`` ("en" or "zh").
        """
        template = _pick(template, DEFAULT_ASR_TEMPLATE, language, "language")
        return self.join([self.T("<|im_start|>user\n"), self.A(audio), self.T(template), self.T("<|im_end|>\n"),
                          self.T("<|im_start|>assistant\n"), self.T(NO_THINK)])

    def _tts_text(self, text: str, normalize: bool) -> str:
        if not isinstance(text, str) or not text.strip():
            raise PromptError("the text to speak is empty; pass a non-empty string")
        return normalize_tts_text(text) if normalize else text

    def _style_system(self, voice) -> list[torch.Tensor]:
        if voice is None:
            return [self.T("<|im_start|>system\n"), self.T(SYS_STYLE), self.T("<|im_end|>\n")]
        return [self.T("<|im_start|>system\n"), self.T(SYS_STYLE_CLONE), self.A(voice, "voice"),
                self.T("<|im_end|>\n")]

    def tts(self, text: str, *, voice=None, template: str | None = None, normalize: bool = True) -> torch.Tensor:
        """Plain TTS (SPEC §6.2.2)::

            T("<|im_start|>user\\n{template}: {text}<|im_end|>\\n") T("<|im_start|>assistant\\n<|sostm|>")

        ``template`` defaults to :data:`DEFAULT_TTS_TEMPLATE` of the text's language. The reference ignores a
        voice prompt here (SPEC §10.1.10); we honour it with the clone system turn before the user turn
        (``T("<|im_start|>system\\n") T(SYS_STYLE_CLONE) A(voice) T("<|im_end|>\\n")``, the vLLM-Omni variant).
        """
        text = self._tts_text(text, normalize)
        template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
        user = TTS_USER_FORMAT.format(template=template, text=text)
        parts = self._style_system(voice) if voice is not None else []
        parts += [self.T(f"<|im_start|>user\n{user}<|im_end|>\n"), self.T("<|im_start|>assistant\n<|sostm|>")]
        return self.join(parts)

    def tts_instruct(self, text: str, instruct: str, *, voice=None, template: str | None = None,
                     normalize: bool = True) -> torch.Tensor:
        """TTS styled by an instruction, optionally in the voice of a prompt clip (SPEC §6.2.3-4)::

            T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
            T("<|im_start|>user\\n{template}: {text}({instruct})<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")

        The model thinks, closes the block and emits ``<|sostm|>`` itself (task ``tts_instruct``).
        """
        text = self._tts_text(text, normalize)
        if not isinstance(instruct, str) or not instruct.strip():
            raise PromptError("instruct is empty; pass a style instruction or use tts() for plain speech")
        template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
        user = TTS_INSTRUCT_FORMAT.format(template=template, text=text, instruct=instruct)
        return self.join([*self._style_system(voice), self.T(f"<|im_start|>user\n{user}<|im_end|>\n"),
                          self.T("<|im_start|>assistant\n" + THINK)])

    def tts_natural(self, text: str, *, voice=None, normalize: bool = True) -> torch.Tensor:
        """Natural-instruction TTS: the description and the words are one string (SPEC §6.2.5)::

            T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
            T("<|im_start|>user\\n{text}<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")
        """
        text = self._tts_text(text, normalize)
        return self.join([*self._style_system(voice), self.T(f"<|im_start|>user\n{text}<|im_end|>\n"),
                          self.T("<|im_start|>assistant\n" + THINK)])

    def understand(self, audio, question: str, *, thinking: bool = False) -> torch.Tensor:
        """Audio understanding (SPEC §6.2.6); ``audio`` is one clip or a list of clips (each its own ``A``)::

            T("<|im_start|>user\\n") A(audio)… T(question) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
            T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")
        """
        if not isinstance(question, str) or not question.strip():
            raise PromptError("the question is empty; pass a question or instruction, e.g. 'Describe the audio.'")
        clips = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not clips:
            raise PromptError("understand needs at least one audio clip")
        parts = [self.T("<|im_start|>user\n")]
        parts += [self.A(c, f"audio clip {i}" if len(clips) > 1 else "audio") for i, c in enumerate(clips)]
        parts += [self.T(question), self.T("<|im_end|>\n"), self.T("<|im_start|>assistant\n"),
                  self.T(THINK if thinking else NO_THINK)]
        return self.join(parts)

    # ----------------------------------------------------------------- dialogue
    def dialogue(self, audio, *, voice=None, system_prompt: str | None = None) -> torch.Tensor:
        """Spoken dialogue, one turn (SPEC §6.2.7): ``dialogue_multiturn([{"role": "user", "audio": audio}])``."""
        return self.dialogue_multiturn([{"role": "user", "audio": audio}], voice=voice, system_prompt=system_prompt)

    def dialogue_multiturn(self, messages: Sequence[Mapping], *, voice=None,
                           system_prompt: str | None = None) -> torch.Tensor:
        """Spoken dialogue from a message list, speech reply (SPEC §6.2.8)::

            [T("<|im_start|>system\\n") T("Your voice should be:") A(voice) T("<|im_end|>\\n")]   # if voice
            user:      T("<|im_start|>user\\n") [T(system_prompt) T("\\n\\n")]  A(audio) [T(text)] T("<|im_end|>\\n")
                       (system prompt only in the first user turn)
            assistant: T("<|im_start|>assistant\\n") S(text, audio) T("<|im_end|>\\n")
            end:       T("<|im_start|>assistant\\n<|sostm|>")

        Messages are mappings ``{"role": "user"|"assistant"|"system", "text": str, "audio": codes}``. A leading
        ``system`` message gives the system prompt. User turns take audio, text or both (the reference uses
        audio); earlier assistant turns need both their text and their audio codes.
        """
        def assistant(i, m):
            text, audio = m.get("text"), m.get("audio")
            if not isinstance(text, str) or not text.strip():
                raise PromptError(
                    f"assistant message {i} has no text; spoken dialogue history needs each earlier reply's "
                    "text and audio (keep the Reply's .text), or use reply='text'"
                )
            if audio is None:
                raise PromptError(
                    f"assistant message {i} has no audio; spoken dialogue history needs each earlier reply's "
                    "audio codes, or use reply='text' for a text conversation"
                )
            return [self.T("<|im_start|>assistant\n"), self.S(text, audio, f"assistant message {i} audio"),
                    self.T("<|im_end|>\n")]

        parts = []
        if voice is not None:
            parts += [self.T("<|im_start|>system\n"), self.T(VOICE_INTRO), self.A(voice, "voice"),
                      self.T("<|im_end|>\n")]
        parts += self._conversation(messages, system_prompt, assistant)
        parts.append(self.T("<|im_start|>assistant\n<|sostm|>"))
        return self.join(parts)

    def s2t_dialogue(self, audio, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
        """Speech-to-text dialogue, one turn (SPEC §6.2.9)::

            T("<|im_start|>user\\n") A(audio) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
        """
        return self.s2t_dialogue_multiturn([{"role": "user", "audio": audio}], thinking=thinking,
                                           system_prompt=system_prompt)

    def s2t_dialogue_multiturn(self, messages: Sequence[Mapping], *, thinking: bool = False,
                               system_prompt: str | None = None) -> torch.Tensor:
        """Dialogue with a text reply (SPEC §6.2.9-10); user turns hold audio and/or text::

            user:      T("<|im_start|>user\\n") [T(system_prompt) T("\\n\\n")] [A(audio)] [T(text)] T("<|im_end|>\\n")
            assistant: T("<|im_start|>assistant\\n") T(text) T("<|im_end|>\\n")
            end:       T("<|im_start|>assistant\\n") T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")

        ``system_prompt`` (not in the reference's text formats) goes where spoken dialogue puts it.
        """
        def assistant(i, m):
            text = m.get("text")
            if not isinstance(text, str) or not text.strip():
                raise PromptError(f"assistant message {i} has no text; pass the earlier reply's text")
            return [self.T("<|im_start|>assistant\n"), self.T(text), self.T("<|im_end|>\n")]

        parts = self._conversation(messages, system_prompt, assistant)
        parts += [self.T("<|im_start|>assistant\n"), self.T(THINK if thinking else NO_THINK)]
        return self.join(parts)

    def text_dialogue(self, text: str, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
        """Text dialogue, one turn (SPEC §6.2.10)::

            T("<|im_start|>user\\n") T(text) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
        """
        return self.s2t_dialogue_multiturn([{"role": "user", "text": text}], thinking=thinking,
                                           system_prompt=system_prompt)

    text_dialogue_multiturn = s2t_dialogue_multiturn

    def _conversation(self, messages, system_prompt, assistant) -> list[torch.Tensor]:
        """The turns of a conversation: user turns (the system prompt goes into the first one) and
        ``assistant(i, message)`` for earlier replies."""
        msgs, system_prompt = self._messages(messages, system_prompt)
        parts, first = [], True
        for i, m in msgs:
            if m["role"] == "user":
                parts += self._user_turn(i, m, system_prompt if first else None)
                first = False
            else:
                parts += assistant(i, m)
        return parts

    def _messages(self, messages, system_prompt):
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise PromptError("messages must be a list of dicts with 'role' and 'text' and/or 'audio'")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise PromptError(f"message {i} is a {type(m).__name__}; pass a dict with 'role', 'text', 'audio'")
            role = m.get("role")
            if role not in ROLES:
                raise PromptError(f"message {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
            if role == "system":
                if out:
                    raise PromptError(f"message {i} is a system message after the conversation started; "
                                      "put the system message first (or pass system_prompt=)")
                if system_prompt:
                    raise PromptError("both a system message and system_prompt= were given; pass only one")
                text = m.get("text")
                if not isinstance(text, str):
                    raise PromptError(f"system message {i} needs a 'text' string")
                system_prompt = text
                continue
            out.append((i, m))
        if not out:
            raise PromptError("the conversation has no user message; add {'role': 'user', ...}")
        if out[-1][1]["role"] != "user":
            raise PromptError("the conversation must end with a user message (the model replies to it); "
                              "drop the trailing assistant message or add the next user turn")
        return out, (system_prompt or None)

    def _user_turn(self, i: int, m: Mapping, system_prompt: str | None) -> list[torch.Tensor]:
        text, audio = m.get("text"), m.get("audio")
        if text is not None and not isinstance(text, str):
            raise PromptError(f"user message {i}: 'text' must be a string")
        has_text = bool(text and text.strip())
        if audio is None and not has_text:
            raise PromptError(f"user message {i} has neither audio nor text; pass 'audio' (speech) or 'text'")
        parts = [self.T("<|im_start|>user\n")]
        if system_prompt:
            parts += [self.T(system_prompt), self.T("\n\n")]
        if audio is not None:
            parts.append(self.A(audio, f"user message {i} audio"))
        if has_text:
            parts.append(self.T(text))
        parts.append(self.T("<|im_end|>\n"))
        return parts

    # ----------------------------------------------------------------- base model
    def few_shot(self, examples: Sequence[Mapping], audio, *, instruction: str | None = None) -> torch.Tensor:
        """In-context speech-to-speech (SPEC §6.3.11); examples are ``{"input", "output", "transcript"}``::

            T("[Int]:{instruction}\\n")
            per example: A(input) T("\\n") S(transcript, output) T(" \\n\\n")
            A(audio) T("\\n") T("<|sostm|>")

        No instruction gives ``T("[Int]:\\n")``.
        """
        examples = check_examples(examples)
        parts = [self.T(ICL_PREFIX.format(instruction=instruction or ""))]
        for k, ex in enumerate(examples):
            transcript = ex["transcript"]
            parts += [self.A(ex["input"], f"example {k} input"), self.T("\n"),
                      self.S(transcript, ex["output"], f"example {k} output"), self.T(" \n\n")]
        parts += [self.A(audio, "query audio"), self.T("\n"), self.T("<|sostm|>")]
        return self.join(parts)

    def _mmlu(self, items: Sequence[Mapping], speech_output: bool) -> torch.Tensor:
        if not items:
            raise PromptError("speech_mmlu needs the prompt items (beginning, shots, test question)")
        kinds, parts = [], []
        for k, it in enumerate(items):
            if not isinstance(it, Mapping):
                raise PromptError(f"item {k} must be a dict with 'text', or 'audio' (+ 'transcript' for answers)")
            audio, text, transcript = it.get("audio"), it.get("text"), it.get("transcript")
            if audio is not None and transcript is not None:
                kinds.append("speech")
                if not transcript.strip():
                    raise PromptError(f"item {k}: the spoken answer's transcript is empty")
                parts.append(self.S(transcript, audio, f"item {k} audio"))
            elif audio is not None:
                kinds.append("speech")
                parts.append(self.A(audio, f"item {k} audio"))
            elif isinstance(text, str):
                kinds.append("text")
                parts.append(self.T(text))
            else:
                raise PromptError(f"item {k} has neither 'text' nor 'audio'")
        prefix = "<Spe>:" if all(k == "speech" for k in kinds) else "[Int]:" if "speech" in kinds else ""
        if speech_output:
            parts.append(self.T("<|sostm|>"))
        return self.join([self.T(prefix), *parts])

    def speech_mmlu(self, items: Sequence[Mapping]) -> torch.Tensor:
        """SpeechMMLU-style few-shot QA with a text answer (SPEC §6.3.12).

        ``items`` in order (the subject's beginning, the shots' questions and answers, the test question), each
        ``{"text": str}`` → ``T``, ``{"audio": codes}`` → ``A``, or ``{"audio": codes, "transcript": str}``
        (a spoken answer) → ``S``. Prefix ``T("<Spe>:")`` if every item is speech, ``T("[Int]:")`` if mixed,
        none if all text. Text items carry their own newlines.
        """
        return self._mmlu(items, False)

    def speech_mmlu_speech(self, items: Sequence[Mapping]) -> torch.Tensor:
        """As :meth:`speech_mmlu`, answered in speech: ``T("<|sostm|>")`` appended."""
        return self._mmlu(items, True)

    def audio_qa(self, audio, question: str = "") -> torch.Tensor:
        """Zero-shot audio QA, base model (SPEC §6.3.13)::

            T("[Int]:") A(audio) [T("Question: {question}")] T("\\nAnswer:")
        """
        parts = [self.T("[Int]:"), self.A(audio)]
        if question:
            parts.append(self.T(f"Question: {question}"))
        parts.append(self.T("\nAnswer:"))
        return self.join(parts)

    def audio_qa_few_shot(self, examples: Sequence[Mapping], audio, question: str) -> torch.Tensor:
        """Few-shot audio QA, base model (SPEC §6.3.14); examples ``{"audio", "question", "answer"}``::

            T("[Int]:") per example: A(audio) T("Question: {q}") T("Answer: {answer}\\n\\n")
            A(audio) T("Question: {question}") T("\\nAnswer:")

        Build multiple-choice questions with :func:`multiple_choice`.
        """
        if not isinstance(question, str) or not question.strip():
            raise PromptError("the question is empty; pass the question (see multiple_choice())")
        parts = [self.T("[Int]:")]
        for k, ex in enumerate(examples):
            if not isinstance(ex, Mapping) or ex.get("audio") is None:
                raise PromptError(f"example {k} needs 'audio', 'question' and 'answer'")
            q, a = ex.get("question"), ex.get("answer")
            if not isinstance(q, str) or not isinstance(a, str) or not a.strip():
                raise PromptError(f"example {k} needs a 'question' and a non-empty 'answer' string")
            parts += [self.A(ex["audio"], f"example {k} audio"), self.T(f"Question: {q}"), self.T(f"Answer: {a}\n\n")]
        parts += [self.A(audio, "query audio"), self.T(f"Question: {question}"), self.T("\nAnswer:")]
        return self.join(parts)

    def continuation(self, audio, *, transcript: str | None = None) -> torch.Tensor:
        """Speech continuation, base model. No published format (SPEC §6.3.15, §12.4); our design:

        - audio only (default): the prompt audio as an *unclosed* audio segment, ``T("<|sosp|>")`` followed by
          its patches and no ``<|eosp|>``. The model continues with more ``<|empty|>`` patch groups, the shape of
          the speech-only data that gives the base model this ability, and needs nothing but the audio. It
          ends by emitting ``<|eosp|>`` (a stop id of the task) or at the length limit.
        - with ``transcript`` (the prompt audio's words): an *open* interleaved span, ``S(transcript, audio)``
          without ``<|eot|>`` and without ``<|eostm|>``, so the model goes on writing text and speech in the
          ``S`` schedule and closes with ``<|eot|>``/``<|eostm|>`` itself. This yields the continuation's text too.

        The reply's audio (parsed with ``audio_open=True``) is the continuation only, without the prompt.
        See docs/prompts.md.
        """
        if transcript is None:
            return self.A(audio, "prompt audio", close=False)
        if not isinstance(transcript, str) or not transcript.strip():
            raise PromptError("transcript is empty; pass the prompt audio's words or None for audio-only")
        return self.S(transcript, audio, "prompt audio", close=False, end_text=False)

    # ----------------------------------------------------------------- output
    def parse(self, generated: torch.Tensor, *, task: str | None = None, stop_ids: Sequence[int] | None = None,
              audio_open: bool | None = None) -> ParsedOutput:
        """:func:`~mimo_audio.output.parse_output` with this builder's tokenizer and layout.

        With ``task``, its stop ids and ``audio_open`` are the defaults.
        """
        stops, audio_open = self._parse_defaults(task, stop_ids, audio_open)
        return parse_output(generated, self.tok, self.layout, stop_ids=stops, audio_open=audio_open)

    def parser(self, *, task: str | None = None, stop_ids: Sequence[int] | None = None,
               audio_open: bool | None = None) -> OutputParser:
        """A streaming :class:`~mimo_audio.output.OutputParser` that agrees with :meth:`parse`."""
        stops, audio_open = self._parse_defaults(task, stop_ids, audio_open)
        return OutputParser(self.tok, self.layout, stop_ids=stops, audio_open=audio_open)

    def _parse_defaults(self, task, stops, audio_open):
        if task is not None:
            spec = task_spec(task)
            stops = stop_ids(task, self.ids) if stops is None else stops
            audio_open = spec.audio_open if audio_open is None else audio_open
        return tuple(stops or ()), audio_open


def _pick(value, table: dict[str, str], key: str, what: str) -> str:
    if value is not None:
        return value
    try:
        return table[key]
    except KeyError:
        raise PromptError(f"unknown {what} {key!r}; use one of {', '.join(table)}") from None
