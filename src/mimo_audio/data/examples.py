"""Shard records -> the task table's supervised examples (:func:`mimo_audio.tasks.get_task`).

Each loader task name maps to a :class:`~.loader.TaskInput`: which records it can use (vectorised over the
shard columns, so a mixture knows its pools without reading codes) and the arguments it passes to
``get_task(name).example(...)``. A pairs record (audio + text/caption/instruction) feeds ASR, TTS, instruction
TTS, captioning, interleaved speech-text and continuation; a chat record feeds the chat task, whose reply kind
(speech or text) follows the conversation itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
    """A chat record's messages in the task table's form: ``{"role", "text", "audio", "thinking",
    "chain_of_thought"}`` (text parts joined, the audio part's codes; one audio part per message)."""
    out = []
    for i, m in enumerate(rec.messages or []):
        texts = [p["text"] for p in m["content"] if p["type"] == "text"]
        audio = [rec.codes[p["index"]] for p in m["content"] if p["type"] == "audio"]
        if len(audio) > 1:
            raise ValueError(f"{rec.id}: message {i} has {len(audio)} audio parts; one per message is supported")
        msg: dict[str, Any] = {"role": m["role"], "text": "".join(texts) if texts else None,
                               "audio": audio[0] if audio else None}
        if m["role"] == "assistant":
            msg["thinking"], msg["chain_of_thought"] = m.get("thinking"), m.get("chain_of_thought")
        out.append(msg)
    return out


def _example(name: str, tokenizer, **kwargs):
    from ..tasks import get_task

    return get_task(name).example(tokenizer, **kwargs)


def _grid(ex) -> tuple:
    return ex.tokens, ex.labels


def task_example(task: str, rec: Record, tokenizer) -> tuple:
    """``(tokens [9, T], labels [9, T])`` of ``rec`` as an example of ``task``."""
    return TASK_INPUTS[task].example(rec, tokenizer)


def _register(name: str, eligible, build) -> None:
    TASK_INPUTS[name] = TaskInput(eligible, lambda rec, tok: _grid(build(rec, tok)))


_register("asr", _with("text"), lambda r, t: _example("asr", t, audio=r.codes[0], text=r.text,
                                                       language=r.language or "en"))
_register("tts", _with("text"), lambda r, t: _example("tts", t, text=r.text, audio=r.codes[0]))
_register("tts_instruct", _with("text", "instruction"),
          lambda r, t: _example("tts_instruct", t, text=r.text, instruct=r.instruction, audio=r.codes[0]))
_register("caption", _with("caption"), lambda r, t: _example("caption", t, audio=r.codes[0], caption=r.caption))
_register("interleaved", _with("text"), lambda r, t: _example("interleaved", t, text=r.text, audio=r.codes[0]))
_register("continuation", _pair, lambda r, t: _example("continuation", t, audio=r.codes[0]))
_register("chat", lambda s: s.kind == "chat", lambda r, t: _example("chat", t, messages=chat_messages(r)))
