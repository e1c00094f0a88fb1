"""Shared pieces of the task formats: template data, text helpers, the supervised-example type and the chat turns.

Everything here is re-exported by :mod:`mimo_audio.tasks`; the formats are in :mod:`.instruct` and :mod:`.base`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import PromptError
from ..output import Layout
from ..prompt import FILLER, PromptBuilder

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
        """One flag per group: is its text token a target (labels not -100)?

        The supervised groups of an ASR example on the test fixture's tiny tokenizer (which spells "hi" as two
        tokens; ``·`` = a masked group)::

            >>> from mimo_audio.tasks import demo_builder, get_task
            >>> pb = demo_builder()
            >>> ex = get_task("asr").example(pb, audio=torch.zeros(4, 8, dtype=torch.long), text="hi")
            >>> [pb.tok.decode([int(t)]) if s else "·" for t, s in zip(ex.tokens[0, ::4], ex.supervised_groups())][-6:]
            ['·', '·', 'h', 'i', '<|im_end|>', '\\n']
        """
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

    from ..text import TextTokenizer

    root = Path(os.environ.get("MIMO_AUDIO_FIXTURE") or Path(__file__).parents[3] / "tests/fixtures/reference-tiny")
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
