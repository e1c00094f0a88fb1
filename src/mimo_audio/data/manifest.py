"""Reading the manifests people already have into :class:`Item` s (audio referenced, not read yet).

Three formats (``docs/data.md`` has worked examples):

- ``pairs``: JSONL, one ``{"audio": path, "text": ..., "speaker"?, "language"?, "instruction"?, "caption"?}``
  per line; other keys are kept as ``extra``.
- ``chat``: JSONL, one conversation per line, ``{"messages": [...]}`` or a bare list, in the format of SPEC
  §8.4: ``role`` system/user/assistant, ``content`` a string or a list of parts ``{"type": "text", "text": s}`` /
  ``{"type": "audio", "audio": path}``; an assistant message may carry ``thinking`` (true/false/null) and a
  chain of thought (``"Chain-of-thought"``, or ``"chain_of_thought"``).
- ``hf``: a Hugging Face ``datasets`` dataset, a folder written by ``save_to_disk`` or a hub name (online),
  with an audio column (``Audio`` feature, read undecoded so no audio backend is needed, or a column of paths).

Relative audio paths resolve against the manifest's folder. A line that cannot be used becomes an item with
``error`` set (the preparer logs, counts and skips it): reading a manifest never fails on one bad line.

Example (run in ``tests/test_data.py``)::

    m = open_manifest("corpus/train.jsonl")     # {"audio": "clips/a.wav", "text": "hi", "lang": "en"} per line
    m.format, len(m)                             # ("pairs", 1)
    item = m[0]                                  # Item(kind="pair", audio=[".../corpus/clips/a.wav"], ...)
    item.fields["text"], item.fields["extra"]    # ("hi", {"lang": "en"})
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import DataError, require

FORMATS = ("pairs", "chat", "hf")
PAIR_FIELDS = ("text", "speaker", "language", "instruction", "caption")
COT_KEYS = ("Chain-of-thought", "chain_of_thought", "chain-of-thought")


@dataclass
class Item:
    """One manifest entry. ``audio``: the sources to encode, in order (a path, or bytes for an undecoded
    ``datasets`` column); ``audio_names``: how they are named in logs. Pairs: ``fields`` holds the
    :data:`PAIR_FIELDS` (``None`` when absent) and ``extra``. Chats: ``messages`` are normalised
    (``{"role", "content": [parts], "thinking", "chain_of_thought"}``) with each audio part
    ``{"type": "audio", "index": k}`` pointing into ``audio``."""

    id: str
    source: str
    kind: str  # "pair" | "chat"
    audio: list[Any] = field(default_factory=list)
    audio_names: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    messages: list[dict] | None = None
    error: str | None = None


def _resolve(path: Any, base: Path, what: str) -> str:
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{what} must be a non-empty path string, got {path!r}")
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base / p)


def _opt_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def parse_pair(obj: Any, base: Path) -> tuple[list[str], dict[str, Any]]:
    """A pairs line -> (audio paths, fields). Raises ``ValueError`` naming the problem."""
    if not isinstance(obj, dict):
        raise ValueError(f"a pairs line must be a JSON object with 'audio', got {type(obj).__name__}")
    if "audio" not in obj:
        raise ValueError("no 'audio' key; each line needs {\"audio\": path, \"text\": ...}")
    audio = _resolve(obj["audio"], base, "'audio'")
    fields = {k: _opt_str(obj.get(k), k) for k in PAIR_FIELDS}
    fields["extra"] = {k: v for k, v in obj.items() if k != "audio" and k not in PAIR_FIELDS}
    return [audio], fields


def parse_chat(obj: Any, base: Path) -> tuple[list[str], list[dict], dict[str, Any]]:
    """A chat line -> (audio paths, normalised messages, extra). Raises ``ValueError`` naming the problem."""
    extra: dict[str, Any] = {}
    if isinstance(obj, dict):
        if "messages" not in obj:
            raise ValueError("a chat line must be {\"messages\": [...]} or a list of messages")
        extra = {k: v for k, v in obj.items() if k != "messages"}
        obj = obj["messages"]
    if not isinstance(obj, list) or not obj:
        raise ValueError("'messages' must be a non-empty list")
    audio: list[str] = []
    messages = []
    for i, m in enumerate(obj):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has role {role!r}; use system, user or assistant")
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise ValueError(f"message {i} needs 'content': a string or a list of {{type: text|audio}} parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError(f"message {i} part {j}: a text part needs a 'text' string")
                parts.append({"type": "text", "text": text})
            elif kind == "audio":
                src = part.get("audio", part.get("path"))
                audio.append(_resolve(src, base, f"message {i} part {j} 'audio'"))
                parts.append({"type": "audio", "index": len(audio) - 1})
            else:
                raise ValueError(f"message {i} part {j}: 'type' must be 'text' or 'audio', got {kind!r}")
        thinking = m.get("thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise ValueError(f"message {i}: 'thinking' must be true, false or null")
        cot = next((m[k] for k in COT_KEYS if k in m), None)
        if cot is not None and not isinstance(cot, str):
            raise ValueError(f"message {i}: the chain of thought must be a string")
        if role != "assistant" and (thinking is not None or cot is not None):
            raise ValueError(f"message {i}: only assistant messages take 'thinking' or a chain of thought")
        messages.append({"role": role, "content": parts, "thinking": thinking, "chain_of_thought": cot})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant message, so nothing to supervise")
    return audio, messages, extra


class Manifest:
    """Random access to a manifest's items: ``len(m)``, ``m[i]`` -> :class:`Item`, iteration."""

    format: str
    name: str

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Item:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Item]:
        return (self[i] for i in range(len(self)))


class JsonlManifest(Manifest):
    """A JSONL file read through a memory map: one pass finds the non-blank lines' byte ranges (16 bytes per
    line), each item is decoded when asked for, so a corpus of millions of lines costs no more memory than that."""

    CHUNK = 1 << 26

    def __init__(self, path: Path, fmt: str):
        self.path, self.format, self.name, self.base = path, fmt, str(path), path.resolve().parent
        with open(path, "rb") as f:  # the map outlives the file object
            size = os.fstat(f.fileno()).st_size
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        ends = [np.flatnonzero(np.frombuffer(self._mm, np.uint8, min(self.CHUNK, size - o), o) == 10) + o
                for o in range(0, size, self.CHUNK)]
        ends = np.concatenate([*ends, np.array([size], np.int64)]).astype(np.int64)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        numbers = np.arange(1, len(starts) + 1)
        keep = ends > starts
        short = np.flatnonzero(keep & (ends - starts < 16))  # blank lines are short: look only at those
        for j in short:
            keep[j] = bool(bytes(self._mm[starts[j]:ends[j]]).strip())
        self.starts, self.ends, self.numbers = starts[keep], ends[keep], numbers[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> tuple[int, bytes]:
        return int(self.numbers[i]), bytes(self._mm[int(self.starts[i]):int(self.ends[i])])

    def __getitem__(self, i: int) -> Item:
        n, raw = self.line(i)
        source = f"{self.path.name}:{n}"
        kind = "chat" if self.format == "chat" else "pair"
        item = Item(id=f"{self.path.stem}:{n}", source=source, kind=kind)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            item.error = f"not UTF-8 text (byte {exc.start} of the line); save the manifest as UTF-8"
            return item
        except json.JSONDecodeError as exc:
            item.error = f"invalid JSON ({exc.msg} at column {exc.colno})"
            return item
        try:
            if kind == "pair":
                item.audio, item.fields = parse_pair(obj, self.base)
            else:
                item.audio, item.messages, extra = parse_chat(obj, self.base)
                item.fields = {"extra": extra}
        except ValueError as exc:
            item.error = str(exc)
            return item
        if isinstance(item.fields.get("extra"), dict) and isinstance(item.fields["extra"].get("id"), str):
            item.id = item.fields["extra"]["id"]
        item.audio_names = list(item.audio)
        return item


class HFManifest(Manifest):
    def __init__(self, name: str, *, split: str | None, audio_column: str | None, text_column: str | None):
        datasets = require("datasets")
        self.format, self.name = "hf", name
        folder = Path(name).expanduser()
        try:
            if folder.is_dir():
                ds = datasets.load_from_disk(str(folder))
                self.base = folder
            else:
                ds = datasets.load_dataset(name, split=split)
                self.base = Path.cwd()
        except (FileNotFoundError, ValueError, ConnectionError) as exc:
            raise DataError(f"{name}: cannot open as a Hugging Face dataset ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1:
                    raise DataError(f"{name} has splits {', '.join(ds)}; choose one with --split")
                split = next(iter(ds))
            if split not in ds:
                raise DataError(f"{name} has no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
        features = ds.features
        if audio_column is None:
            audio_cols = [k for k, f in features.items() if type(f).__name__ == "Audio"]
            audio_column = audio_cols[0] if audio_cols else ("audio" if "audio" in features else None)
        if audio_column not in features:
            raise DataError(f"{name}: no audio column (columns: {', '.join(features)}); name it with --audio-column")
        if type(features[audio_column]).__name__ == "Audio":
            # undecoded: {"bytes", "path"}; load_audio reads it, so no torchcodec/librosa backend is needed
            ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
        self.text_column = text_column or "text"
        if text_column is not None and text_column not in features:
            raise DataError(f"{name}: no column {text_column!r} (columns: {', '.join(features)})")
        self.ds, self.audio_column = ds, audio_column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Item:
        row = self.ds[int(i)]
        item = Item(id=f"{Path(self.name).name}:{i}", source=f"{self.name}[{i}]", kind="pair")
        a = row.get(self.audio_column)
        if isinstance(a, dict):
            if a.get("bytes"):
                item.audio, item.audio_names = [a["bytes"]], [a.get("path") or f"{item.source}.audio"]
            elif a.get("path"):
                p = _resolve(a["path"], self.base, "audio path")
                item.audio, item.audio_names = [p], [p]
        elif isinstance(a, str) and a.strip():
            p = _resolve(a, self.base, "audio path")
            item.audio, item.audio_names = [p], [p]
        if not item.audio:
            item.error = f"the {self.audio_column!r} column is empty"
            return item
        fields: dict[str, Any] = {}
        for k in PAIR_FIELDS:
            col = self.text_column if k == "text" else k
            v = row.get(col)
            fields[k] = v if isinstance(v, str) else None
        skip = {self.audio_column, self.text_column, *PAIR_FIELDS}
        fields["extra"] = {k: v for k, v in row.items()
                           if k not in skip and (v is None or isinstance(v, (str, int, float, bool)))}
        item.fields = fields
        return item


def detect_format(path: Path) -> str:
    """``hf`` for a folder, ``chat`` when the first entry is a list or has ``messages``, else ``pairs``."""
    if path.is_dir():
        return "hf"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return "pairs"  # the bad line is reported as a bad item
                return "chat" if isinstance(obj, list) or (isinstance(obj, dict) and "messages" in obj) else "pairs"
    return "pairs"


def open_manifest(source: str | os.PathLike, format: str | None = None, *, split: str | None = None,
                  audio_column: str | None = None, text_column: str | None = None) -> Manifest:
    """Open a manifest: a JSONL file (pairs or chat, detected from its first entry unless ``format`` says),
    a ``datasets`` folder, or (``format="hf"`` or a name that is not a local path) a hub dataset."""
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown manifest format {format!r}; use one of {', '.join(FORMATS)}")
    path = Path(os.fspath(source)).expanduser()
    if format == "hf" or (format is None and not path.exists() and "/" in str(source) and
                          not str(source).endswith((".jsonl", ".json"))):
        return HFManifest(str(source), split=split, audio_column=audio_column, text_column=text_column)
    if not path.exists():
        raise DataError(f"{source}: no such manifest; pass a JSONL file, a datasets folder or a hub dataset name")
    fmt = format or detect_format(path)
    if fmt == "hf":
        return HFManifest(str(path), split=split, audio_column=audio_column, text_column=text_column)
    if path.is_dir():
        raise DataError(f"{source} is a folder; a {fmt} manifest is a JSONL file")
    return JsonlManifest(path, fmt)
