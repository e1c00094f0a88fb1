"""Shard records -> the task table's supervised examples (:func:`mimo_audio.tasks.get_task`).

Each loader task name maps to a :class:`~.loader.TaskInput`: which records it can use (vectorised over the
shard columns, so a mixture knows its pools without reading codes) and the arguments it passes to
``get_task(name).example(...)``. A pairs record with text feeds ``asr``, ``asr_pair``, ``tts``, ``tts_pair`` and
``interleaved``; with an instruction also ``tts_instruct``; with a caption ``caption`` and ``understand`` (question:
the instruction, or "Describe the audio."); every pair ``continuation``. A chat record feeds ``chat``, whose
assistant turns are spoken or text as the conversation has them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PromptError
from .loader import TASK_INPUTS, Record, ShardSet, TaskInput


def _pair(s: ShardSet) -> np.ndarray:
    return s.kind == "pair"


def _with(*cols: str):
    def eligible(s: ShardSet) -> np.ndarray:
        ok = _pair(s)
        for c in cols:
            ok = ok & s.has[c]
        return ok
    return eligible


def chat_messages(rec: Record) -> list[dict]:
    """A chat record's messages in the task table's form ``{"role", "text", "audio", "thinking", "reasoning"}``
    (text parts joined; the audio part's codes, one per message). ``thinking`` / ``reasoning`` are set only when
    the manifest gave them, so a null ``thinking`` takes ``chat``'s default (last reply: the no-think block)."""
    out = []
    for i, m in enumerate(rec.messages or []):
        texts = [p["text"] for p in m["content"] if p["type"] == "text"]
        audio = [rec.codes[p["index"]] for p in m["content"] if p["type"] == "audio"]
        if len(audio) > 1:
            raise PromptError(f"{rec.id}: message {i} has {len(audio)} audio parts; one per message is supported")
        msg: dict[str, Any] = {"role": m["role"], "text": "".join(texts) if texts else None,
                               "audio": audio[0] if audio else None}
        if m.get("thinking") is not None:
            msg["thinking"] = m["thinking"]
        if m.get("chain_of_thought") is not None:
            msg["reasoning"] = m["chain_of_thought"]
        out.append(msg)
    return out


def _language(rec: Record) -> str:
    """The ASR template language: the record's when it is one the templates have (en, zh), else guessed from
    the text."""
    from ..tasks import DEFAULT_ASR_TEMPLATE, detect_language

    lang = (rec.language or "").lower()
    return lang if lang in DEFAULT_ASR_TEMPLATE else detect_language(rec.text or "")


def task_example(task: str, rec: Record, pb) -> tuple:
    """``(tokens [9, T], labels [9, T])`` of ``rec`` as an example of ``task``; ``pb`` a PromptBuilder or
    TextTokenizer (:func:`mimo_audio.tasks.builder`)."""
    ex = TASK_INPUTS[task].example(rec, pb)
    return ex.tokens, ex.labels


def _register(name: str, eligible, build) -> None:
    from ..tasks import get_task

    task = get_task(name)
    TASK_INPUTS[name] = TaskInput(eligible, lambda rec, pb: task.example(pb, **build(rec)))


# task name -> (records it can use, the example builder's arguments); names and fields: mimo_audio.tasks.TASKS
_register("asr", _with("text"), lambda r: {"audio": r.codes[0], "text": r.text, "language": _language(r)})
_register("asr_pair", _with("text"), lambda r: {"audio": r.codes[0], "text": r.text})
_register("tts", _with("text"), lambda r: {"text": r.text, "audio": r.codes[0]})
_register("tts_pair", _with("text"), lambda r: {"text": r.text, "audio": r.codes[0]})
_register("tts_instruct", _with("text", "instruction"),
          lambda r: {"text": r.text, "instruct": r.instruction, "audio": r.codes[0]})
_register("interleaved", _with("text"), lambda r: {"text": r.text, "audio": r.codes[0]})
_register("caption", _with("caption"), lambda r: {"audio": r.codes[0], "caption": r.caption})
_register("understand", _with("caption"),
          lambda r: {"audio": r.codes[0], "question": r.instruction or "Describe the audio.", "answer": r.caption})
_register("continuation", _pair, lambda r: {"audio": r.codes[0]})
_register("chat", lambda s: s.kind == "chat", lambda r: {"messages": chat_messages(r)})
