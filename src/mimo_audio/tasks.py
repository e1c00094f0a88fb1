"""The task table: every task of MiMo-Audio in one place, how to prompt it and how to supervise it.

Interface (stable; the data loader and the trainer use it)::

    from mimo_audio.tasks import TASKS, get_task, TokenGrid, preset
    task = get_task("asr")                        # a name or an alias ("transcribe" -> asr); PromptError otherwise
    grid = task.prompt(pb, audio=codes)           # the inference prompt (SPEC §6), LongTensor [9, 4·groups]
    ex = task.example(pb, audio=codes, text="hello world")   # a supervised example (SPEC §8.3)
    ex.tokens, ex.labels                          # LongTensor [9, T] each; labels are -100 where not supervised
    task.preset, task.stops, task.reply, task.max_new_tokens  # sampler preset name, stop ids, "text"|"speech", limit
    task.stop_ids(tokenizer.ids); task.samplers   # resolved stop ids; (text, patch-decoder) SamplingParams

``pb`` is a :class:`~mimo_audio.prompt.PromptBuilder`, or a :class:`~mimo_audio.text.TextTokenizer` (the released
layout is assumed: empty ids 1024, 1024, 128×6 and G = 4; pass ``layout=`` to :func:`builder` otherwise). Audio
fields are codes ``(frames, C)`` (unpadded LongTensors from the audio tokenizer). The fields of every task are in
docs/tasks.md and in each entry's ``fields``.

Supervision (SPEC §8.3): ``labels`` is a copy of ``tokens`` with every column that is not an assistant response set to
-100 on all nine rows. In chat formats the mask covers each turn from ``<|im_start|>`` through
``<|im_start|>assistant\\n`` plus the think header (the whole ``<think>\\n\\n</think>\\n`` with thinking off, only
``<think>\\n`` with thinking on, so the chain of thought is learned); the response and its ``<|im_end|>\\n`` are
supervised, in every assistant turn of a conversation. A label of column ``j`` is the target that position
``j // G - 1`` predicts (the LM shifts), so the first group of a sequence is never a target.

Worked example: the supervised groups of an ASR example on the test fixture's tiny tokenizer (which spells "hi"
as two tokens; ``·`` = a masked group)::

    >>> from mimo_audio.tasks import demo_builder
    >>> pb = demo_builder()
    >>> ex = get_task("asr").example(pb, audio=torch.zeros(4, 8, dtype=torch.long), text="hi")
    >>> [pb.tok.decode([int(t)]) if s else "·" for t, s in zip(ex.tokens[0, ::4], ex.supervised_groups())][-6:]
    ['·', '·', 'h', 'i', '<|im_end|>', '\\n']

Adding a task is adding one :class:`Task` entry to :data:`TASKS` (see docs/tasks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .errors import PromptError
from .generate import DEFAULT_LOCAL, DEFAULT_TEXT, GenerationConfig
from .output import Layout
from .prompt import FILLER, PromptBuilder, text_grid
from .sampling import SamplingParams
from .text import SpecialIds

__all__ = [
    "Task", "TokenGrid", "Parts", "TASKS", "PROMPT_TASKS", "get_task", "task_spec", "stop_ids", "chat_task", "command_of", "COMMANDS",
    "PRESETS", "preset", "builder", "TaskSpec", "check_examples", "detect_language", "normalize_tts_text",
    "multiple_choice", "RELEASED_LAYOUT",
]

RELEASED_LAYOUT = Layout((1024, 1024, 128, 128, 128, 128, 128, 128), 4)

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
#: what follows a chain of thought in a supervised example: ``<think>\n{reasoning}\n</think>\n{answer}``
THINK_CLOSE = "\n</think>\n"
ICL_PREFIX = "[Int]:{instruction}\n"
MC_SUFFIX = "Make a choice from the given {n} choices."
ROLES = ("system", "user", "assistant")

# ---------------------------------------------------------------------------------------------------------
# Sampler presets (SPEC §5.3, [R] values): name -> (text sampler, patch-decoder sampler)
# ---------------------------------------------------------------------------------------------------------
_S = SamplingParams
PRESETS: dict[str, tuple[SamplingParams, SamplingParams]] = {
    "default": (DEFAULT_TEXT, DEFAULT_LOCAL),
    "asr": (_S(False, 1.0, None, 1.0), _S(True, 0.9, None, 0.95)),
    "tts": (_S(True, 0.6, None, 1.0), _S(True, 0.9, None, 0.95)),
    "spoken_dialogue": (_S(True, 0.6, None, 0.95), _S(True, 0.9, None, 0.95)),
    "audio_understanding": (_S(True, 0.3, None, 0.95), _S(True, 0.9, None, 0.95)),
    "text_chat": (_S(True, 0.4, None, 0.95), _S(True, 0.9, None, 0.95)),
    "in_context_learning_s2s": (_S(False), _S(True, 0.9, None, 0.95)),
    "qa": (_S(False), _S(True, 0.9, None, 0.95)),
}


def preset(name: str, **overrides) -> GenerationConfig:
    """A :class:`~mimo_audio.generate.GenerationConfig` with the named preset's samplers (a preset name of
    :data:`PRESETS` or a task name, whose preset is used); ``overrides`` set any other field."""
    if name not in PRESETS and name in TASKS:
        name = TASKS[name].preset
    if name not in PRESETS:
        raise PromptError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text, local = PRESETS[name]
    return GenerationConfig(**{"text": text, "local": local, **overrides})


# ---------------------------------------------------------------------------------------------------------
# Small text helpers (SPEC §6)
# ---------------------------------------------------------------------------------------------------------
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


def _pick(value, table: dict[str, str], key: str, what: str) -> str:
    if value is not None:
        return value
    try:
        return table[key]
    except KeyError:
        raise PromptError(f"unknown {what} {key!r}; use one of {', '.join(table)}") from None


def _nonempty(value, what: str, fix: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{what} is empty; {fix}")
    return value


# ---------------------------------------------------------------------------------------------------------
# Supervised examples
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenGrid:
    """A training example: ``tokens`` and ``labels``, LongTensors ``[9, T]`` (T a multiple of G).

    ``labels`` equals ``tokens`` on supervised columns and is -100 on all rows elsewhere (SPEC §8.3). Batch with
    ``torch.stack`` after right-padding (ids 0, labels -100, attention mask 0 on the padded groups).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    group_size: int = 4

    @property
    def groups(self) -> int:
        return int(self.tokens.shape[1]) // self.group_size

    def supervised_groups(self) -> list[bool]:
        """One flag per group: is its text token a target (labels not -100)?"""
        return [bool(v) for v in (self.labels[0, :: self.group_size] != FILLER)]


class Parts:
    """Collects segments as context (``ctx``, labels -100) or supervised (``sup``) and joins them into a
    :class:`TokenGrid` (``grid()``); the building block of every example builder."""

    def __init__(self, pb: PromptBuilder):
        self.pb, self.parts = pb, []

    def ctx(self, *grids: torch.Tensor) -> Parts:
        self.parts += [(g, False) for g in grids]
        return self

    def sup(self, *grids: torch.Tensor) -> Parts:
        self.parts += [(g, True) for g in grids]
        return self

    def grid(self) -> TokenGrid:
        if not any(s for _, s in self.parts):
            raise PromptError("the example supervises nothing; it needs a response (answer, audio or assistant turn)")
        tokens = torch.cat([g for g, _ in self.parts], dim=1)
        labels = torch.cat([g if s else torch.full_like(g, FILLER) for g, s in self.parts], dim=1)
        return TokenGrid(tokens, labels, self.pb.layout.group_size)


def builder(tokenizer, layout=None) -> PromptBuilder:
    """A :class:`PromptBuilder` from a tokenizer (``layout`` defaults to the released one), or ``tokenizer``
    itself when it already is one."""
    if isinstance(tokenizer, PromptBuilder):
        return tokenizer
    return PromptBuilder(tokenizer, RELEASED_LAYOUT if layout is None else layout)


def demo_builder() -> PromptBuilder:
    """The builder of the tiny test fixture (tokenizer in ``tests/fixtures/reference-tiny/lm``), for the docs'
    examples; ``MIMO_AUDIO_FIXTURE`` names another fixture folder."""
    import os
    from pathlib import Path

    from .text import TextTokenizer

    root = Path(os.environ.get("MIMO_AUDIO_FIXTURE") or Path(__file__).parents[2] / "tests/fixtures/reference-tiny")
    return PromptBuilder(TextTokenizer.from_folder(root / "lm"), RELEASED_LAYOUT)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces of the chat formats
# ---------------------------------------------------------------------------------------------------------
def _tts_text(text, normalize: bool) -> str:
    _nonempty(text, "the text to speak", "pass a non-empty string")
    return normalize_tts_text(text) if normalize else text


def _style_system(pb, voice) -> list[torch.Tensor]:
    if voice is None:
        return [pb.T("<|im_start|>system\n"), pb.T(SYS_STYLE), pb.T("<|im_end|>\n")]
    return [pb.T("<|im_start|>system\n"), pb.T(SYS_STYLE_CLONE), pb.A(voice, "voice"), pb.T("<|im_end|>\n")]


def _messages(messages, system_prompt, *, final: str):
    """Validated ``[(index, message)]`` without the system message, and the system prompt.

    ``final`` is the role the conversation must end with: "user" for a prompt, "assistant" for an example.
    """
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
    if not out or all(m["role"] != "user" for _, m in out):
        raise PromptError("the conversation has no user message; add {'role': 'user', ...}")
    if final == "user" and out[-1][1]["role"] != "user":
        raise PromptError("the conversation must end with a user message (the model replies to it); "
                          "drop the trailing assistant message or add the next user turn")
    if final == "assistant" and out[-1][1]["role"] != "assistant":
        raise PromptError("a training conversation must end with an assistant message (the supervised reply); "
                          "drop the trailing user message or add the reply")
    return out, (system_prompt or None)


def _user_turn(pb, i: int, m: Mapping, system_prompt: str | None) -> list[torch.Tensor]:
    text, audio = m.get("text"), m.get("audio")
    if text is not None and not isinstance(text, str):
        raise PromptError(f"user message {i}: 'text' must be a string")
    has_text = bool(text and text.strip())
    if audio is None and not has_text:
        raise PromptError(f"user message {i} has neither audio nor text; pass 'audio' (speech) or 'text'")
    parts = [pb.T("<|im_start|>user\n")]
    if system_prompt:
        parts += [pb.T(system_prompt), pb.T("\n\n")]
    if audio is not None:
        parts.append(pb.A(audio, f"user message {i} audio"))
    if has_text:
        parts.append(pb.T(text))
    parts.append(pb.T("<|im_end|>\n"))
    return parts


def _conversation(pb, messages, system_prompt, assistant, *, final: str = "user", out: Parts | None = None):
    """The turns of a conversation. For a prompt (``out`` None) returns the grids; for an example adds user
    turns as context to ``out`` and lets ``assistant(i, message, last, out)`` add each reply."""
    msgs, system_prompt = _messages(messages, system_prompt, final=final)
    parts, first = [], True
    for k, (i, m) in enumerate(msgs):
        if m["role"] == "user":
            turn = _user_turn(pb, i, m, system_prompt if first else None)
            first = False
            if out is None:
                parts += turn
            else:
                out.ctx(*turn)
        elif out is None:
            parts += assistant(i, m)
        else:
            assistant(i, m, k == len(msgs) - 1, out)
    return parts


def _speech_reply(pb, i, m, what="assistant message") -> tuple[str, object]:
    text, audio = m.get("text"), m.get("audio")
    if not isinstance(text, str) or not text.strip():
        raise PromptError(
            f"{what} {i} has no text; spoken dialogue history needs each earlier reply's "
            "text and audio (keep the Reply's .text), or use reply='text'"
        )
    if audio is None:
        raise PromptError(
            f"{what} {i} has no audio; spoken dialogue history needs each earlier reply's "
            "audio codes, or use reply='text' for a text conversation"
        )
    return text, audio


def _text_reply(i, m) -> str:
    text = m.get("text")
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"assistant message {i} has no text; pass the earlier reply's text")
    return text


def _think_parts(pb, out: Parts, thinking, reasoning, what: str) -> str:
    """Add the think header of an assistant turn as context; return the text that opens the supervised reply
    (the chain of thought and ``\\n</think>\\n`` with thinking on, nothing otherwise).

    ``thinking`` None (no think block: history turns of a prompt, SPEC §6.2.9), False (the no-think block,
    masked) or True (``<think>\\n`` masked, ``reasoning`` and the close supervised)."""
    if thinking is None:
        if reasoning:
            raise PromptError(f"{what}: reasoning given but thinking is off; pass thinking=True")
        return ""
    if not thinking:
        if reasoning:
            raise PromptError(f"{what}: reasoning given with thinking=False; pass thinking=True")
        out.ctx(pb.T(NO_THINK))
        return ""
    out.ctx(pb.T(THINK))
    reasoning = reasoning or ""
    if not isinstance(reasoning, str):
        raise PromptError(f"{what}: reasoning must be a string (the chain of thought)")
    return reasoning.strip() + THINK_CLOSE


def _reply_text(pb, out: Parts, head: str, text: str) -> None:
    """The supervised text of a reply: ``head`` (chain of thought) + ``text``, then ``<|im_end|>\\n``."""
    out.sup(pb.T(head + text), pb.T("<|im_end|>\n"))


# ---------------------------------------------------------------------------------------------------------
# Instruct-model tasks: prompt builders (SPEC §6.2) and example builders (SPEC §8.3)
# ---------------------------------------------------------------------------------------------------------
def asr_prompt(pb, audio, *, template: str | None = None, language: str = "en") -> torch.Tensor:
    """ASR (SPEC §6.2.1)::

        T("<|im_start|>user\\n") A(audio) T(template) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
        T("<think>\\n\\n</think>\\n")

    ``template`` defaults to :data:`DEFAULT_ASR_TEMPLATE` of ``language`` ("en" or "zh").
    """
    template = _pick(template, DEFAULT_ASR_TEMPLATE, language, "language")
    return pb.join([pb.T("<|im_start|>user\n"), pb.A(audio), pb.T(template), pb.T("<|im_end|>\n"),
                    pb.T("<|im_start|>assistant\n"), pb.T(NO_THINK)])


def asr_example(pb, audio, text: str, *, template: str | None = None, language: str = "en") -> TokenGrid:
    """The ASR prompt (masked) + ``T(text) T("<|im_end|>\\n")`` (supervised)."""
    _nonempty(text, "the transcript", "pass the words spoken in the audio as text=")
    out = Parts(pb).ctx(asr_prompt(pb, audio, template=template, language=language))
    _reply_text(pb, out, "", text)
    return out.grid()


def tts_prompt(pb, text: str, *, voice=None, template: str | None = None, normalize: bool = True) -> torch.Tensor:
    """Plain TTS (SPEC §6.2.2)::

        T("<|im_start|>user\\n{template}: {text}<|im_end|>\\n") T("<|im_start|>assistant\\n<|sostm|>")

    ``template`` defaults to :data:`DEFAULT_TTS_TEMPLATE` of the text's language. The reference ignores a
    voice prompt here (SPEC §10.1.10); we honour it with the clone system turn before the user turn
    (``T("<|im_start|>system\\n") T(SYS_STYLE_CLONE) A(voice) T("<|im_end|>\\n")``, the vLLM-Omni variant).
    """
    return pb.join([*_tts_head(pb, text, voice, template, normalize)[0], pb.T("<|im_start|>assistant\n<|sostm|>")])


def _tts_head(pb, text, voice, template, normalize):
    text = _tts_text(text, normalize)
    template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
    user = TTS_USER_FORMAT.format(template=template, text=text)
    parts = _style_system(pb, voice) if voice is not None else []
    return [*parts, pb.T(f"<|im_start|>user\n{user}<|im_end|>\n")], text


def _speech_response(pb, out: Parts, head: str, text: str, audio, what: str) -> None:
    """A spoken reply: [chain of thought] ``S(text, audio)`` ``T("<|im_end|>\\n")``, all supervised."""
    if head:
        out.sup(pb.T(head))
    out.sup(pb.S(text, audio, what), pb.T("<|im_end|>\n"))


def tts_example(pb, text: str, audio, *, voice=None, template: str | None = None, normalize: bool = True,
                transcript: str | None = None) -> TokenGrid:
    """Plain TTS: the prompt up to ``<|im_start|>assistant\\n`` (masked), ``S(transcript, audio)``
    ``T("<|im_end|>\\n")`` (supervised; the span's ``<|sostm|>`` included). ``transcript`` defaults to the text as
    it appears in the user turn (normalised when ``normalize``)."""
    head, spoken = _tts_head(pb, text, voice, template, normalize)
    out = Parts(pb).ctx(*head, pb.T("<|im_start|>assistant\n"))
    _speech_response(pb, out, "", transcript or spoken, audio, "audio")
    return out.grid()


def tts_instruct_prompt(pb, text: str, instruct: str, *, voice=None, template: str | None = None,
                        normalize: bool = True) -> torch.Tensor:
    """TTS styled by an instruction, optionally in the voice of a prompt clip (SPEC §6.2.3-4)::

        T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
        T("<|im_start|>user\\n{template}: {text}({instruct})<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")

    The model thinks, closes the block and emits ``<|sostm|>`` itself (task ``tts_instruct``).
    """
    return pb.join([*_tts_instruct_head(pb, text, instruct, voice, template, normalize)[0],
                    pb.T("<|im_start|>assistant\n" + THINK)])


def _tts_instruct_head(pb, text, instruct, voice, template, normalize):
    text = _tts_text(text, normalize)
    _nonempty(instruct, "instruct", "pass a style instruction or use tts() for plain speech")
    template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
    user = TTS_INSTRUCT_FORMAT.format(template=template, text=text, instruct=instruct)
    return [*_style_system(pb, voice), pb.T(f"<|im_start|>user\n{user}<|im_end|>\n")], text


def tts_instruct_example(pb, text: str, instruct: str, audio, *, reasoning: str | None = None, voice=None,
                         template: str | None = None, normalize: bool = True,
                         transcript: str | None = None) -> TokenGrid:
    """Instruct TTS: the prompt through ``<|im_start|>assistant\\n<think>\\n`` (masked; thinking is always on
    in this format), then ``T("{reasoning}\\n</think>\\n")`` ``S(transcript, audio)`` ``T("<|im_end|>\\n")``
    (supervised). Without ``reasoning`` the supervised head is ``"\\n</think>\\n"`` (an empty thought)."""
    head, spoken = _tts_instruct_head(pb, text, instruct, voice, template, normalize)
    out = Parts(pb).ctx(*head, pb.T("<|im_start|>assistant\n" + THINK))
    _speech_response(pb, out, (reasoning or "").strip() + THINK_CLOSE, transcript or spoken, audio, "audio")
    return out.grid()


def tts_natural_prompt(pb, text: str, *, voice=None, normalize: bool = True) -> torch.Tensor:
    """Natural-instruction TTS: the description and the words are one string (SPEC §6.2.5)::

        T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
        T("<|im_start|>user\\n{text}<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")
    """
    text = _tts_text(text, normalize)
    return pb.join([*_style_system(pb, voice), pb.T(f"<|im_start|>user\n{text}<|im_end|>\n"),
                    pb.T("<|im_start|>assistant\n" + THINK)])


def tts_natural_example(pb, text: str, audio, transcript: str, *, reasoning: str | None = None, voice=None,
                        normalize: bool = True) -> TokenGrid:
    """Natural-instruction TTS; ``transcript`` is the words actually spoken (the text also holds the description).
    Masking as :func:`tts_instruct_example`."""
    _nonempty(transcript, "transcript", "pass the words spoken in the audio (text also holds the description)")
    out = Parts(pb).ctx(tts_natural_prompt(pb, text, voice=voice, normalize=normalize))
    _speech_response(pb, out, (reasoning or "").strip() + THINK_CLOSE, transcript, audio, "audio")
    return out.grid()


def _understand_user(pb, audio, question) -> list[torch.Tensor]:
    _nonempty(question, "the question", "pass a question or instruction, e.g. 'Describe the audio.'")
    clips = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    if not clips:
        raise PromptError("understand needs at least one audio clip")
    parts = [pb.T("<|im_start|>user\n")]
    parts += [pb.A(c, f"audio clip {i}" if len(clips) > 1 else "audio") for i, c in enumerate(clips)]
    return [*parts, pb.T(question), pb.T("<|im_end|>\n"), pb.T("<|im_start|>assistant\n")]


def understand_prompt(pb, audio, question: str, *, thinking: bool = False) -> torch.Tensor:
    """Audio understanding (SPEC §6.2.6); ``audio`` is one clip or a list of clips (each its own ``A``)::

        T("<|im_start|>user\\n") A(audio)… T(question) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
        T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")
    """
    return pb.join([*_understand_user(pb, audio, question), pb.T(THINK if thinking else NO_THINK)])


def understand_example(pb, audio, question: str, answer: str, *, thinking: bool = False,
                       reasoning: str | None = None) -> TokenGrid:
    """Audio understanding: the prompt (masked, its think header included), then
    ``T("{reasoning}\\n</think>\\n{answer}")`` with thinking or ``T(answer)`` without, and ``T("<|im_end|>\\n")``
    (supervised). Also the instruct form of audio captioning (``question`` "Describe the audio.", ``answer`` the
    caption)."""
    _nonempty(answer, "the answer", "pass the reply text as answer=")
    out = Parts(pb).ctx(*_understand_user(pb, audio, question))
    head = _think_parts(pb, out, bool(thinking), reasoning, "understand")
    _reply_text(pb, out, head, answer)
    return out.grid()


# ----------------------------------------------------------------- dialogue
def dialogue_multiturn_prompt(pb, messages: Sequence[Mapping], *, voice=None,
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
        text, audio = _speech_reply(pb, i, m)
        return [pb.T("<|im_start|>assistant\n"), pb.S(text, audio, f"assistant message {i} audio"),
                pb.T("<|im_end|>\n")]

    parts = _voice_block(pb, voice)
    parts += _conversation(pb, messages, system_prompt, assistant)
    parts.append(pb.T("<|im_start|>assistant\n<|sostm|>"))
    return pb.join(parts)


def _voice_block(pb, voice) -> list[torch.Tensor]:
    if voice is None:
        return []
    return [pb.T("<|im_start|>system\n"), pb.T(VOICE_INTRO), pb.A(voice, "voice"), pb.T("<|im_end|>\n")]


def dialogue_multiturn_example(pb, messages: Sequence[Mapping], *, voice=None,
                               system_prompt: str | None = None) -> TokenGrid:
    """Spoken dialogue: the conversation of :func:`dialogue_multiturn_prompt` ending with an assistant message.
    Every assistant turn is ``T("<|im_start|>assistant\\n")`` (masked) ``S(text, audio) T("<|im_end|>\\n")``
    (supervised); voice block, system prompt and user turns are masked."""
    out = Parts(pb).ctx(*_voice_block(pb, voice))

    def assistant(i, m, last, out):
        text, audio = _speech_reply(pb, i, m)
        out.ctx(pb.T("<|im_start|>assistant\n"))
        _speech_response(pb, out, "", text, audio, f"assistant message {i} audio")

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()


def dialogue_prompt(pb, audio, *, voice=None, system_prompt: str | None = None) -> torch.Tensor:
    """Spoken dialogue, one turn (SPEC §6.2.7): ``dialogue_multiturn([{"role": "user", "audio": audio}])``."""
    return dialogue_multiturn_prompt(pb, [{"role": "user", "audio": audio}], voice=voice, system_prompt=system_prompt)


def dialogue_example(pb, audio, answer: str, answer_audio, *, voice=None, system_prompt: str | None = None):
    """One spoken exchange: user ``audio``, reply ``answer`` (text) spoken as ``answer_audio``."""
    return dialogue_multiturn_example(pb, [{"role": "user", "audio": audio},
                                           {"role": "assistant", "text": answer, "audio": answer_audio}],
                                      voice=voice, system_prompt=system_prompt)


def s2t_dialogue_multiturn_prompt(pb, messages: Sequence[Mapping], *, thinking: bool = False,
                                  system_prompt: str | None = None) -> torch.Tensor:
    """Dialogue with a text reply (SPEC §6.2.9-10); user turns hold audio and/or text::

        user:      T("<|im_start|>user\\n") [T(system_prompt) T("\\n\\n")] [A(audio)] [T(text)] T("<|im_end|>\\n")
        assistant: T("<|im_start|>assistant\\n") T(text) T("<|im_end|>\\n")
        end:       T("<|im_start|>assistant\\n") T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")

    ``system_prompt`` (not in the reference's text formats) goes where spoken dialogue puts it.
    """
    def assistant(i, m):
        return [pb.T("<|im_start|>assistant\n"), pb.T(_text_reply(i, m)), pb.T("<|im_end|>\n")]

    parts = _conversation(pb, messages, system_prompt, assistant)
    parts += [pb.T("<|im_start|>assistant\n"), pb.T(THINK if thinking else NO_THINK)]
    return pb.join(parts)


def s2t_dialogue_multiturn_example(pb, messages: Sequence[Mapping], *, thinking: bool = False,
                                   system_prompt: str | None = None) -> TokenGrid:
    """Text-reply dialogue ending with an assistant message; every assistant turn supervised.

    Assistant turn: ``T("<|im_start|>assistant\\n")`` + think header (masked) + ``T([reasoning \\n</think>\\n] text)``
    ``T("<|im_end|>\\n")`` (supervised). The think header follows the message's ``"thinking"`` (None: no block,
    False: the no-think block, True: ``<think>\\n`` and the message's ``"reasoning"`` supervised). Without the key
    the last assistant turn takes ``thinking`` (as the prompt's final turn) and earlier turns have no block (as the
    prompt's history turns, SPEC §6.2.9).
    """
    out = Parts(pb)

    def assistant(i, m, last, out):
        text = _text_reply(i, m)
        out.ctx(pb.T("<|im_start|>assistant\n"))
        think = m.get("thinking", bool(thinking) if last else None)
        head = _think_parts(pb, out, think, m.get("reasoning"), f"assistant message {i}")
        _reply_text(pb, out, head, text)

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()


def s2t_dialogue_prompt(pb, audio, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
    """Speech-to-text dialogue, one turn (SPEC §6.2.9)::

        T("<|im_start|>user\\n") A(audio) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
    """
    return s2t_dialogue_multiturn_prompt(pb, [{"role": "user", "audio": audio}], thinking=thinking,
                                         system_prompt=system_prompt)


def s2t_dialogue_example(pb, audio, answer: str, *, thinking: bool = False, reasoning: str | None = None,
                         system_prompt: str | None = None) -> TokenGrid:
    reply = {"role": "assistant", "text": answer, "thinking": bool(thinking), "reasoning": reasoning}
    return s2t_dialogue_multiturn_example(pb, [{"role": "user", "audio": audio}, reply], system_prompt=system_prompt)


def text_dialogue_prompt(pb, text: str, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
    """Text dialogue, one turn (SPEC §6.2.10)::

        T("<|im_start|>user\\n") T(text) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
    """
    return s2t_dialogue_multiturn_prompt(pb, [{"role": "user", "text": text}], thinking=thinking,
                                         system_prompt=system_prompt)


def text_dialogue_example(pb, text: str, answer: str, *, thinking: bool = False, reasoning: str | None = None,
                          system_prompt: str | None = None) -> TokenGrid:
    reply = {"role": "assistant", "text": answer, "thinking": bool(thinking), "reasoning": reasoning}
    return s2t_dialogue_multiturn_example(pb, [{"role": "user", "text": text}, reply], system_prompt=system_prompt)


def chat_example(pb, messages: Sequence[Mapping], *, voice=None, system_prompt: str | None = None,
                 thinking: bool = False) -> TokenGrid:
    """A chat of SPEC §8.4 (the data loader's chat JSONL): each assistant message with ``"audio"`` is spoken
    (``S(text, audio)``, as in spoken dialogue), one without is text (with its ``thinking``/``reasoning``); all
    assistant turns supervised. Text-only replies with ``voice`` are refused (the voice block is for speech)."""
    out = Parts(pb).ctx(*_voice_block(pb, voice))

    def assistant(i, m, last, out):
        out.ctx(pb.T("<|im_start|>assistant\n"))
        if m.get("audio") is not None:
            text, audio = _speech_reply(pb, i, m)
            head = _think_parts(pb, out, m.get("thinking"), m.get("reasoning"), f"assistant message {i}")
            _speech_response(pb, out, head, text, audio, f"assistant message {i} audio")
        else:
            think = m.get("thinking", bool(thinking) if last else None)
            head = _think_parts(pb, out, think, m.get("reasoning"), f"assistant message {i}")
            _reply_text(pb, out, head, _text_reply(i, m))

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()


# ---------------------------------------------------------------------------------------------------------
# Base-model formats (SPEC §6.3)
# ---------------------------------------------------------------------------------------------------------
def _icl_pairs(pb, examples) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(pb.A(ex["input"], f"example {k} input"), pb.T("\n"), pb.S(ex["transcript"], ex["output"],
                                                                      f"example {k} output"))
            for k, ex in enumerate(check_examples(examples))]


def few_shot_prompt(pb, examples: Sequence[Mapping], audio, *, instruction: str | None = None) -> torch.Tensor:
    """In-context speech-to-speech (SPEC §6.3.11); examples are ``{"input", "output", "transcript"}``::

        T("[Int]:{instruction}\\n")
        per example: A(input) T("\\n") S(transcript, output) T(" \\n\\n")
        A(audio) T("\\n") T("<|sostm|>")

    No instruction gives ``T("[Int]:\\n")``.
    """
    parts = [pb.T(ICL_PREFIX.format(instruction=instruction or ""))]
    for a, nl, s in _icl_pairs(pb, examples):
        parts += [a, nl, s, pb.T(" \n\n")]
    parts += [pb.A(audio, "query audio"), pb.T("\n"), pb.T("<|sostm|>")]
    return pb.join(parts)


def few_shot_example(pb, examples: Sequence[Mapping], audio, output, transcript: str, *,
                     instruction: str | None = None) -> TokenGrid:
    """Few-shot S2S: the prompt's examples and query (masked), then ``S(transcript, output)`` (supervised): only
    the query's answer is learned. Use task ``icl`` to learn every pair of a sequence."""
    out = Parts(pb).ctx(pb.T(ICL_PREFIX.format(instruction=instruction or "")))
    for a, nl, s in _icl_pairs(pb, examples):
        out.ctx(a, nl, s, pb.T(" \n\n"))
    _nonempty(transcript, "transcript", "pass the words of the output audio")
    out.ctx(pb.A(audio, "query audio"), pb.T("\n")).sup(pb.S(transcript, output, "output audio"))
    return out.grid()


def icl_example(pb, examples: Sequence[Mapping], *, instruction: str | None = None) -> TokenGrid:
    """Pre-training few-shot sequence: several input→output pairs in the few-shot layout, every output
    ``S(transcript, output)`` supervised (the prefix, inputs and separators masked)::

        T("[Int]:{instruction}\\n") per pair: A(input) T("\\n") S(transcript, output)* T(" \\n\\n")   (* supervised)
    """
    out = Parts(pb).ctx(pb.T(ICL_PREFIX.format(instruction=instruction or "")))
    for a, nl, s in _icl_pairs(pb, examples):
        out.ctx(a, nl).sup(s).ctx(pb.T(" \n\n"))
    return out.grid()


def _mmlu_parts(pb, items) -> list[torch.Tensor]:
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
            parts.append(pb.S(transcript, audio, f"item {k} audio"))
        elif audio is not None:
            kinds.append("speech")
            parts.append(pb.A(audio, f"item {k} audio"))
        elif isinstance(text, str):
            kinds.append("text")
            parts.append(pb.T(text))
        else:
            raise PromptError(f"item {k} has neither 'text' nor 'audio'")
    prefix = "<Spe>:" if all(k == "speech" for k in kinds) else "[Int]:" if "speech" in kinds else ""
    return [pb.T(prefix), *parts]


def speech_mmlu_prompt(pb, items: Sequence[Mapping]) -> torch.Tensor:
    """SpeechMMLU-style few-shot QA with a text answer (SPEC §6.3.12).

    ``items`` in order (the subject's beginning, the shots' questions and answers, the test question), each
    ``{"text": str}`` → ``T``, ``{"audio": codes}`` → ``A``, or ``{"audio": codes, "transcript": str}``
    (a spoken answer) → ``S``. Prefix ``T("<Spe>:")`` if every item is speech, ``T("[Int]:")`` if mixed,
    none if all text. Text items carry their own newlines.
    """
    return pb.join(_mmlu_parts(pb, items))


def speech_mmlu_speech_prompt(pb, items: Sequence[Mapping]) -> torch.Tensor:
    """As :func:`speech_mmlu_prompt`, answered in speech: ``T("<|sostm|>")`` appended."""
    return pb.join([*_mmlu_parts(pb, items), pb.T("<|sostm|>")])


def _eos(pb) -> torch.Tensor:
    return text_grid([pb.ids.eos], pb.layout)


def speech_mmlu_example(pb, items: Sequence[Mapping], answer: str) -> TokenGrid:
    """The prompt (masked), ``T(answer)`` and eos (supervised)."""
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(*_mmlu_parts(pb, items)).sup(pb.T(answer), _eos(pb)).grid()


def speech_mmlu_speech_example(pb, items: Sequence[Mapping], answer: str, answer_audio) -> TokenGrid:
    """The prompt without its final ``<|sostm|>`` (masked), ``S(answer, answer_audio)`` (supervised)."""
    return Parts(pb).ctx(*_mmlu_parts(pb, items)).sup(pb.S(answer, answer_audio, "answer audio")).grid()


def audio_qa_prompt(pb, audio, question: str = "") -> torch.Tensor:
    """Zero-shot audio QA, base model (SPEC §6.3.13)::

        T("[Int]:") A(audio) [T("Question: {question}")] T("\\nAnswer:")
    """
    parts = [pb.T("[Int]:"), pb.A(audio)]
    if question:
        parts.append(pb.T(f"Question: {question}"))
    parts.append(pb.T("\nAnswer:"))
    return pb.join(parts)


def audio_qa_example(pb, audio, answer: str, question: str = "") -> TokenGrid:
    """The prompt (masked), ``T(" {answer}")`` and eos (supervised; the space as in the few-shot answers)."""
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(audio_qa_prompt(pb, audio, question)).sup(pb.T(" " + answer), _eos(pb)).grid()


def _qa_shots(pb, examples, audio, question) -> list[torch.Tensor]:
    _nonempty(question, "the question", "pass the question (see multiple_choice())")
    parts = [pb.T("[Int]:")]
    for k, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or ex.get("audio") is None:
            raise PromptError(f"example {k} needs 'audio', 'question' and 'answer'")
        q, a = ex.get("question"), ex.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or not a.strip():
            raise PromptError(f"example {k} needs a 'question' and a non-empty 'answer' string")
        parts += [pb.A(ex["audio"], f"example {k} audio"), pb.T(f"Question: {q}"), pb.T(f"Answer: {a}\n\n")]
    return [*parts, pb.A(audio, "query audio"), pb.T(f"Question: {question}"), pb.T("\nAnswer:")]


def audio_qa_few_shot_prompt(pb, examples: Sequence[Mapping], audio, question: str) -> torch.Tensor:
    """Few-shot audio QA, base model (SPEC §6.3.14); examples ``{"audio", "question", "answer"}``::

        T("[Int]:") per example: A(audio) T("Question: {q}") T("Answer: {answer}\\n\\n")
        A(audio) T("Question: {question}") T("\\nAnswer:")

    Build multiple-choice questions with :func:`multiple_choice`.
    """
    return pb.join(_qa_shots(pb, examples, audio, question))


def audio_qa_few_shot_example(pb, examples: Sequence[Mapping], audio, question: str, answer: str) -> TokenGrid:
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(*_qa_shots(pb, examples, audio, question)).sup(pb.T(" " + answer), _eos(pb)).grid()


def continuation_prompt(pb, audio, *, transcript: str | None = None) -> torch.Tensor:
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
        return pb.A(audio, "prompt audio", close=False)
    _nonempty(transcript, "transcript", "pass the prompt audio's words or None for audio-only")
    return pb.S(transcript, audio, "prompt audio", close=False, end_text=False)


def continuation_example(pb, audio, *, transcript: str | None = None) -> TokenGrid:
    """Speech continuation (pre-training, audio only): ``A(audio)`` with sosp and eosp, every column supervised
    (the speech-only data of SPEC §8.2). With ``transcript``: the whole ``S(transcript, audio)`` span, i.e. the
    interleaved format."""
    if transcript is None:
        return Parts(pb).sup(pb.A(audio, "audio")).grid()
    return interleaved_example(pb, transcript, audio)


# ---------------------------------------------------------------------------------------------------------
# Pre-training formats without chat templates (our layout; SPEC §8.2 names the data, not the sequences)
# ---------------------------------------------------------------------------------------------------------
def interleaved_example(pb, text: str, audio) -> TokenGrid:
    """Interleaved speech-text: one ``S(text, audio)`` span (SPEC §4.4), every column supervised."""
    _nonempty(text, "text", "pass the words of the audio")
    return Parts(pb).sup(pb.S(text, audio, "audio")).grid()


def asr_pair_example(pb, audio, text: str) -> TokenGrid:
    """Plain ASR pair: ``A(audio)`` (masked), ``T(text)`` + eos (supervised)."""
    _nonempty(text, "the transcript", "pass the words spoken in the audio as text=")
    return Parts(pb).ctx(pb.A(audio, "audio")).sup(pb.T(text), _eos(pb)).grid()


def tts_pair_example(pb, text: str, audio) -> TokenGrid:
    """Plain TTS pair: ``T(text)`` (masked), ``A(audio)`` with sosp/eosp (supervised)."""
    _nonempty(text, "the text", "pass the words spoken in the audio as text=")
    return Parts(pb).ctx(pb.T(text)).sup(pb.A(audio, "audio")).grid()


def caption_example(pb, audio, caption: str) -> TokenGrid:
    """Audio captioning pair: ``A(audio)`` (masked), ``T(caption)`` + eos (supervised)."""
    _nonempty(caption, "the caption", "pass a description of the audio as caption=")
    return Parts(pb).ctx(pb.A(audio, "audio")).sup(pb.T(caption), _eos(pb)).grid()


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------
_TEXT_STOPS = ("eos", "im_end")
_SPEECH_STOPS = ("eos", "eostm", "im_end")


@dataclass(frozen=True)
class Task:
    """One task: how to prompt it, how to supervise it, how to sample it and read its reply.

    ``stops`` are :class:`~mimo_audio.text.SpecialIds` field names (SPEC §5.4); ``preset`` a key of
    :data:`PRESETS` (SPEC §5.3); ``reply`` "text" or "speech"; ``audio_open`` tells the output parser whether the
    prompt opens the speech span (True), the model emits ``<|sostm|>`` first (False) or the reference rule applies
    (None); ``model`` the checkpoint the format was made for ("instruct", "base"; "pretrain" for training-only
    formats, which have no prompt); ``command`` the pipeline/CLI command that serves it and ``aliases`` further
    names for that command; ``max_new_tokens`` the default generation limit in LM steps.
    """

    name: str
    preset: str
    stops: tuple[str, ...]
    reply: str
    audio_open: bool | None
    model: str
    build_example: Callable[..., TokenGrid]
    build_prompt: Callable[..., torch.Tensor] | None = None
    min_new_tokens: int | None = None
    max_new_tokens: int | None = 4096
    command: str | None = None
    aliases: tuple[str, ...] = ()
    doc: str = ""
    fields: tuple[str, ...] = field(default=())

    @property
    def samplers(self) -> tuple[SamplingParams, SamplingParams]:
        return PRESETS[self.preset]

    def stop_ids(self, ids: SpecialIds) -> tuple[int, ...]:
        """The stop-token ids (SPEC §5.4), resolved against ``ids``, without duplicates."""
        out: list[int] = []
        for name in self.stops:
            v = getattr(ids, name)
            if v is not None and v not in out:
                out.append(v)
        return tuple(out)

    def prompt(self, pb, *args, **kwargs) -> torch.Tensor:
        """The inference prompt grid; ``pb`` a PromptBuilder or a TextTokenizer."""
        if self.build_prompt is None:
            raise PromptError(f"task {self.name!r} is a training format; it has no prompt (use .example)")
        return self.build_prompt(builder(pb), *args, **kwargs)

    def example(self, pb, *args, **kwargs) -> TokenGrid:
        """A supervised example :class:`TokenGrid` (SPEC §8.3); ``pb`` a PromptBuilder or a TextTokenizer."""
        return self.build_example(builder(pb), *args, **kwargs)

    def config(self, **overrides) -> GenerationConfig:
        """:func:`preset` of this task; pass ``stop_ids=task.stop_ids(ids)`` for the stops."""
        return preset(self.preset, **{"max_new_tokens": self.max_new_tokens or 4096,
                                      "min_new_tokens": self.min_new_tokens or 0, **overrides})


#: The old name of the entry type (prompt.TaskSpec).
TaskSpec = Task

_I, _B, _P = "instruct", "base", "pretrain"
TASKS: dict[str, Task] = {t.name: t for t in (
    # instruct model: user tasks
    Task("asr", "asr", _TEXT_STOPS, "text", False, _I, asr_example, asr_prompt, max_new_tokens=2048,
         command="transcribe", aliases=("asr",), doc="speech recognition", fields=("audio", "text")),
    Task("tts", "tts", _SPEECH_STOPS, "speech", True, _I, tts_example, tts_prompt, command="speak",
         aliases=("tts",), doc="text to speech, optionally in a voice", fields=("text", "audio", "voice")),
    Task("tts_instruct", "tts", _SPEECH_STOPS, "speech", False, _I, tts_instruct_example, tts_instruct_prompt,
         command="speak", doc="TTS styled by an instruction (thinks first), optionally in a voice",
         fields=("text", "instruct", "audio", "reasoning", "voice")),
    Task("tts_natural", "tts", _SPEECH_STOPS, "speech", False, _I, tts_natural_example, tts_natural_prompt,
         command="speak", doc="TTS from a natural description + words in one text",
         fields=("text", "audio", "transcript", "reasoning", "voice")),
    Task("understand", "audio_understanding", _TEXT_STOPS, "text", False, _I, understand_example,
         understand_prompt, max_new_tokens=2048, command="understand",
         doc="audio question answering / captioning, thinking on or off",
         fields=("audio", "question", "answer", "thinking", "reasoning")),
    Task("dialogue", "spoken_dialogue", _SPEECH_STOPS, "speech", True, _I, dialogue_example, dialogue_prompt,
         command="chat", doc="spoken dialogue, speech reply", fields=("audio", "answer", "answer_audio", "voice")),
    Task("dialogue_multiturn", "spoken_dialogue", _SPEECH_STOPS, "speech", True, _I, dialogue_multiturn_example,
         dialogue_multiturn_prompt, command="chat", doc="multi-turn spoken dialogue", fields=("messages", "voice")),
    Task("s2t_dialogue", "spoken_dialogue", _TEXT_STOPS, "text", False, _I, s2t_dialogue_example,
         s2t_dialogue_prompt, command="chat", doc="speech in, text reply",
         fields=("audio", "answer", "thinking", "reasoning")),
    Task("s2t_dialogue_multiturn", "spoken_dialogue", _TEXT_STOPS, "text", False, _I,
         s2t_dialogue_multiturn_example, s2t_dialogue_multiturn_prompt, command="chat",
         doc="multi-turn dialogue, text replies", fields=("messages", "thinking")),
    Task("text_dialogue", "text_chat", _TEXT_STOPS, "text", False, _I, text_dialogue_example, text_dialogue_prompt,
         command="chat", doc="text chat", fields=("text", "answer", "thinking", "reasoning")),
    Task("text_dialogue_multiturn", "text_chat", _TEXT_STOPS, "text", False, _I, s2t_dialogue_multiturn_example,
         s2t_dialogue_multiturn_prompt, command="chat", doc="multi-turn text chat", fields=("messages", "thinking")),
    Task("chat", "spoken_dialogue", _SPEECH_STOPS, "speech", None, _I, chat_example, None, command="chat",
         doc="training chat of SPEC §8.4: spoken and text assistant turns mixed",
         fields=("messages", "voice", "thinking")),
    # base model
    Task("few_shot", "in_context_learning_s2s", ("eos", "eostm"), "speech", True, _B, few_shot_example,
         few_shot_prompt, command="few_shot", aliases=("few-shot",), doc="in-context speech-to-speech",
         fields=("examples", "audio", "output", "transcript", "instruction")),
    Task("speech_mmlu", "qa", ("eos",), "text", False, _B, speech_mmlu_example, speech_mmlu_prompt, 5, 10,
         doc="few-shot text/speech QA, text answer", fields=("items", "answer")),
    Task("speech_mmlu_speech", "qa", ("eos", "eostm"), "speech", True, _B, speech_mmlu_speech_example,
         speech_mmlu_speech_prompt, 10, 25, doc="few-shot text/speech QA, spoken answer",
         fields=("items", "answer", "answer_audio")),
    Task("audio_qa", "qa", ("eos", "sosp"), "text", False, _B, audio_qa_example, audio_qa_prompt,
         doc="zero-shot audio QA", fields=("audio", "answer", "question")),
    Task("audio_qa_few_shot", "qa", ("eos", "sosp"), "text", False, _B, audio_qa_few_shot_example,
         audio_qa_few_shot_prompt, doc="few-shot audio QA", fields=("examples", "audio", "question", "answer")),
    Task("continuation", "default", ("eos", "eosp", "eostm"), "speech", True, _B, continuation_example,
         continuation_prompt, command="continue", aliases=("continuation", "continue_speech"),
         doc="speech continuation (audio only, or with the prompt's transcript)", fields=("audio", "transcript")),
    # pre-training formats (no chat template, no prompt)
    Task("interleaved", "default", ("eos", "eostm"), "speech", True, _P, interleaved_example,
         doc="interleaved speech-text span S(text, codes)", fields=("text", "audio")),
    Task("asr_pair", "asr", ("eos",), "text", False, _P, asr_pair_example, doc="plain ASR pair",
         fields=("audio", "text")),
    Task("tts_pair", "tts", ("eos", "eosp"), "speech", False, _P, tts_pair_example, doc="plain TTS pair",
         fields=("text", "audio")),
    Task("caption", "audio_understanding", ("eos",), "text", False, _P, caption_example, doc="audio captioning pair",
         fields=("audio", "caption")),
    Task("icl", "in_context_learning_s2s", ("eos", "eostm"), "speech", True, _P, icl_example,
         doc="few-shot sequence of input->output pairs, every output supervised", fields=("examples", "instruction")),
)}

#: the tasks that have an inference prompt (everything but the training-only formats)
PROMPT_TASKS: dict[str, Task] = {n: t for n, t in TASKS.items() if t.build_prompt is not None}

#: pipeline/CLI commands -> the tasks they serve (``MimoAudio.prepare`` names)
COMMANDS: dict[str, tuple[str, ...]] = {}
for _t in TASKS.values():
    if _t.command:
        COMMANDS.setdefault(_t.command, ())
        COMMANDS[_t.command] += (_t.name,)
_COMMAND_ALIASES = {a: t.command for t in TASKS.values() if t.command for a in t.aliases}


def get_task(name: str) -> Task:
    """The task named ``name`` (a key of :data:`TASKS`); PromptError listing the names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise PromptError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


task_spec = get_task


def command_of(name: str) -> str:
    """The pipeline command for ``name``: a command itself (``transcribe``) or an alias of one (``asr``)."""
    if name in COMMANDS:
        return name
    if name in _COMMAND_ALIASES:
        return _COMMAND_ALIASES[name]
    raise PromptError(f"unknown task {name!r}; use one of {', '.join(COMMANDS)}")


def stop_ids(task: str, ids: SpecialIds) -> tuple[int, ...]:
    """The stop-token ids of ``task`` (SPEC §5.4), resolved against ``ids``, without duplicates."""
    return get_task(task).stop_ids(ids)


def chat_task(messages: Sequence[Mapping], reply: str = "speech") -> str:
    """The multi-turn task for a chat: spoken dialogue, speech-to-text dialogue or text dialogue."""
    if reply == "speech":
        return "dialogue_multiturn"
    if reply != "text":
        raise PromptError(f"reply must be 'speech' or 'text', got {reply!r}")
    spoken = any(m.get("audio") is not None for m in messages if isinstance(m, Mapping) and m.get("role") == "user")
    return "s2t_dialogue_multiturn" if spoken else "text_dialogue_multiturn"
