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

The formats live in :mod:`.instruct` (SPEC §6.2) and :mod:`.base` (SPEC §6.3 and the pre-training formats), their
shared pieces in :mod:`.common`; every public name is importable from here. Worked example in
:class:`~mimo_audio.tasks.common.TokenGrid`.

Adding a task is adding one :class:`Task` entry to :data:`TASKS` (see docs/tasks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import PromptError
from ..generate import DEFAULT_LOCAL, DEFAULT_TEXT, GenerationConfig
from ..sampling import SamplingParams
from ..text import SpecialIds
from .base import (
    asr_pair_example,
    audio_qa_example,
    audio_qa_few_shot_example,
    audio_qa_few_shot_prompt,
    audio_qa_prompt,
    caption_example,
    continuation_example,
    continuation_prompt,
    few_shot_example,
    few_shot_prompt,
    icl_example,
    interleaved_example,
    speech_mmlu_example,
    speech_mmlu_prompt,
    speech_mmlu_speech_example,
    speech_mmlu_speech_prompt,
    tts_pair_example,
)
from .common import (  # noqa: F401  (re-exported)
    ASR_TEMPLATES,
    DEFAULT_ASR_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TTS_TEMPLATE,
    ICL_PREFIX,
    MC_SUFFIX,
    NO_THINK,
    RELEASED_LAYOUT,
    ROLES,
    SYS_STYLE,
    SYS_STYLE_CLONE,
    THINK,
    THINK_CLOSE,
    TTS_INSTRUCT_FORMAT,
    TTS_TEMPLATES,
    TTS_USER_FORMAT,
    VOICE_INTRO,
    Parts,
    TokenGrid,
    builder,
    check_examples,
    demo_builder,
    detect_language,
    multiple_choice,
    normalize_tts_text,
)
from .instruct import (
    asr_example,
    asr_prompt,
    chat_example,
    dialogue_example,
    dialogue_multiturn_example,
    dialogue_multiturn_prompt,
    dialogue_prompt,
    s2t_dialogue_example,
    s2t_dialogue_multiturn_example,
    s2t_dialogue_multiturn_prompt,
    s2t_dialogue_prompt,
    text_dialogue_example,
    text_dialogue_prompt,
    tts_example,
    tts_instruct_example,
    tts_instruct_prompt,
    tts_natural_example,
    tts_natural_prompt,
    tts_prompt,
    understand_example,
    understand_prompt,
)

__all__ = [
    "Task", "TokenGrid", "Parts", "TASKS", "PROMPT_TASKS", "get_task", "task_spec", "stop_ids", "chat_task",
    "command_of", "COMMANDS", "PRESETS", "preset", "builder", "demo_builder", "TaskSpec", "check_examples",
    "detect_language", "normalize_tts_text", "multiple_choice", "RELEASED_LAYOUT",
]

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
    Task("audio_qa", "qa", ("eos", "sosp"), "text", False, _B, audio_qa_example, audio_qa_prompt, None, 256,
         command="audio_qa", doc="zero-shot audio QA", fields=("audio", "answer", "question")),
    Task("audio_qa_few_shot", "qa", ("eos", "sosp"), "text", False, _B, audio_qa_few_shot_example,
         audio_qa_few_shot_prompt, None, 256, command="audio_qa", doc="few-shot audio QA",
         fields=("examples", "audio", "question", "answer")),
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
