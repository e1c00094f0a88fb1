"""Encode a manifest's audio to codes once and write Arrow shards (``mimo-audio data prepare``).

Layout of ``SHARDS/`` (``docs/data.md``)::

    prepare.json                  the settings the folder was made with (a rerun must match them)
    shard-00000-of-00012.arrow    records of manifest items [0, shard_size) (Arrow IPC stream, = datasets' format)
    shard-00000-of-00012.json     that shard's counts and bad items; written after the .arrow: it marks "done"
    ...
    summary.json                  totals over every finished shard, bad items by reason, complete: true/false

Items are split into global shards of ``shard_size`` consecutive items; rank ``r`` of ``W`` (``RANK`` /
``WORLD_SIZE`` as set by ``torchrun``) prepares the shards ``k`` with ``k % W == r``: disjoint slices, each rank
its own set of output files, and a rerun (with any number of ranks) skips every shard whose sidecar exists.
Each file is written to a temporary name and renamed (:func:`mimo_audio.files.atomic_output`), so a killed
run leaves finished shards and nothing half-written.

A bad item (invalid manifest entry, missing file, unreadable, empty, too long, failed encoding) is logged with
its source and reason, listed in its shard's sidecar, counted in ``summary.json``, and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioInputError, AudioTooLongError
from ..files import atomic_output
from . import DataError, require
from .manifest import Manifest, open_manifest

log = logging.getLogger("mimo_audio.data")

SCHEMA_VERSION = 1
REASONS = ("invalid entry", "missing file", "unreadable", "empty", "too long", "encoding failed")


def shard_name(k: int, total: int) -> str:
    return f"shard-{k:05d}-of-{total:05d}"


def schema(num_quantizers: int, sample_rate: int, frame_rate: float):
    pa = require("pyarrow")
    meta = {"mimo_audio.schema": str(SCHEMA_VERSION), "num_quantizers": str(num_quantizers),
            "sample_rate": str(sample_rate), "frame_rate": str(frame_rate)}
    return pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("kind", pa.string()),
        ("text", pa.string()), ("speaker", pa.string()), ("language", pa.string()),
        ("instruction", pa.string()), ("caption", pa.string()),
        ("messages", pa.string()),  # chat: JSON of the normalised messages (audio parts -> index into codes)
        ("extra", pa.string()),  # JSON of the manifest's other keys
        ("audio_names", pa.list_(pa.string())),
        ("codes", pa.list_(pa.list_(pa.int16()))),  # per audio: (frames, num_quantizers) flattened row-major
        ("frames", pa.list_(pa.int32())),  # per audio: code frames (25 per second)
        ("n_frames", pa.int32()), ("seconds", pa.float32()),
    ], metadata=meta)


def rank_from_env() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from the environment (``torchrun`` sets them), ``(0, 1)`` without."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise DataError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def classify(exc: BaseException) -> str:
    if isinstance(exc, AudioTooLongError):
        return "too long"
    msg = str(exc)
    if "no such file" in msg:
        return "missing file"
    if "empty" in msg:
        return "empty"
    return "unreadable"


@dataclass
class _Loaded:
    index: int
    item: Any
    wavs: list | None = None
    reason: str | None = None
    detail: str | None = None


def _load(index: int, item, sample_rate: int, max_seconds: float | None, min_seconds: float) -> _Loaded:
    from ..audio import load_audio

    out = _Loaded(index, item)
    if item.error:
        out.reason, out.detail = "invalid entry", item.error
        return out
    wavs = []
    for src, name in zip(item.audio, item.audio_names):
        try:
            wav = load_audio(src, target_rate=sample_rate, max_seconds=max_seconds)
        except (AudioInputError, OSError) as exc:
            out.reason, out.detail = classify(exc), f"{name}: {exc}" if str(name) not in str(exc) else str(exc)
            return out
        except Exception as exc:  # a decoder bug on one odd file must not stop a corpus run
            out.reason, out.detail = "unreadable", f"{name}: {type(exc).__name__}: {exc}"
            return out
        if wav.numel() < max(1, int(min_seconds * sample_rate)):
            out.reason = "empty"
            out.detail = f"{name}: {wav.numel() / sample_rate:.3f} s of audio is shorter than {min_seconds} s"
            return out
        wavs.append(wav)
    out.wavs = wavs
    return out


class Preparer:
    """Prepares one rank's shards. Use :func:`prepare`; this class holds the state of one run."""

    def __init__(self, manifest: Manifest, out: Path, tokenizer: str, *, rank: int, world_size: int,
                 shard_size: int, batch_seconds: float, max_seconds: float | None, min_seconds: float,
                 num_quantizers: int, device, dtype, workers: int, progress: bool | None):
        self.m, self.out, self.tokenizer = manifest, out, tokenizer
        self.rank, self.world = rank, world_size
        self.shard_size, self.batch_seconds = shard_size, batch_seconds
        self.max_seconds, self.min_seconds, self.nq = max_seconds, min_seconds, num_quantizers
        self.device, self.dtype, self.workers, self.progress = device, dtype, workers, progress
        self.n = len(manifest)
        self.total = max(1, math.ceil(self.n / shard_size))
        self.codec = None

    # ------------------------------------------------------------------------------------ settings
    def tokenizer_name(self) -> str:
        if isinstance(self.tokenizer, (str, os.PathLike)):
            return str(self.tokenizer)
        # a loaded AudioTokenizer: named by its config, so reruns with the same model resume
        digest = hashlib.sha1(repr(self.tokenizer.config).encode()).hexdigest()[:12]
        return f"<{type(self.tokenizer).__name__} config {digest}>"

    def settings(self) -> dict:
        return {"schema": SCHEMA_VERSION, "manifest": self.m.name, "format": self.m.format, "items": self.n,
                "shard_size": self.shard_size, "shards": self.total, "tokenizer": self.tokenizer_name(),
                "num_quantizers": self.nq, "max_seconds": self.max_seconds, "min_seconds": self.min_seconds}

    def check_settings(self) -> None:
        path = self.out / "prepare.json"
        mine = self.settings()
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            differ = [k for k in ("schema", "format", "items", "shard_size", "tokenizer", "num_quantizers",
                                  "max_seconds", "min_seconds") if old.get(k) != mine[k]]
            if differ:
                what = ", ".join(f"{k}: {old.get(k)!r} then, {mine[k]!r} now" for k in differ)
                raise DataError(f"{self.out} was prepared with other settings ({what}); rerun with the same "
                                "manifest and options to resume, or write to a new folder")
            return
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")

    def mine(self) -> list[int]:
        return [k for k in range(self.total) if k % self.world == self.rank]

    def done(self, k: int) -> bool:
        return (self.out / f"{shard_name(k, self.total)}.json").exists()

    # ------------------------------------------------------------------------------------ running
    def load_codec(self):
        if self.codec is None and not isinstance(self.tokenizer, (str, os.PathLike)):
            self.codec = self.tokenizer
        if self.codec is None:
            from ..checkpoint import parse_device
            from ..codec import AudioTokenizer

            device = self.device
            if device is None and parse_device(None).type == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            self.codec = AudioTokenizer.from_pretrained(self.tokenizer, device=device, dtype=self.dtype)
            if max(self.codec.quantizer.sizes[: self.nq]) > 32767:
                raise DataError("codebooks larger than 32768 entries do not fit the shards' int16 codes")
        return self.codec

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        todo = [k for k in self.mine() if not self.done(k)]
        for k in todo:  # temporary files a killed run of this rank left (no other rank writes these shards)
            for stale in self.out.glob(f".{shard_name(k, self.total)}.*.part"):
                log.info("removing %s, left by an interrupted run", stale.name)
                stale.unlink(missing_ok=True)
        skipped = len(self.mine()) - len(todo)
        if skipped:
            log.info("rank %d: %d of its %d shards are already done; skipping them", self.rank, skipped,
                     len(self.mine()))
        if todo:
            self.load_codec()
            from tqdm import tqdm

            n_items = sum(len(self.items_of(k)) for k in todo)
            disable = (not sys.stderr.isatty()) if self.progress is None else not self.progress
            with tqdm(total=n_items, desc=f"rank {self.rank} encoding", unit="item", disable=disable,
                      position=self.rank if self.world > 1 else None, file=sys.stderr) as bar, \
                    ThreadPoolExecutor(max(1, self.workers)) as pool:
                for k in todo:
                    self.prepare_shard(k, pool, bar)
        return write_summary(self.out)

    def item(self, i: int):
        """Manifest item ``i``; an entry the manifest reader itself fails on becomes an invalid item."""
        try:
            return self.m[i]
        except Exception as exc:  # e.g. a corrupt row of a datasets table
            from .manifest import Item

            return Item(id=f"{Path(self.m.name).name}:{i}", source=f"{self.m.name}[{i}]", kind="pair",
                        error=f"cannot read the entry ({type(exc).__name__}: {exc})")

    def items_of(self, k: int) -> range:
        return range(k * self.shard_size, min(self.n, (k + 1) * self.shard_size))

    def prepare_shard(self, k: int, pool: ThreadPoolExecutor, bar) -> None:
        codec = self.codec
        sr = codec.sample_rate
        t0 = time.perf_counter()
        load = lambda i: _load(i, self.item(i), sr, self.max_seconds, self.min_seconds)
        idx = self.items_of(k)
        step = 8 * max(1, self.workers)  # read ahead a bounded number of clips, not the whole shard
        loaded = (got for s in range(0, len(idx), step) for got in pool.map(load, idx[s: s + step]))
        records: list[dict] = []
        bad: list[dict] = []
        batch: list[_Loaded] = []
        batch_samples = 0

        def flush():
            nonlocal batch, batch_samples
            if batch:
                self.encode_batch(batch, records, bad)
                bar.update(len(batch))
            batch, batch_samples = [], 0

        for got in loaded:
            if got.reason is not None:
                self.bad(got, bad)
                bar.update(1)
                continue
            batch.append(got)
            batch_samples += sum(w.numel() for w in got.wavs)
            if batch_samples >= self.batch_seconds * sr:
                flush()
        flush()
        records.sort(key=lambda r: r["_index"])
        for r in records:
            del r["_index"]
        write_shard(self.out, k, self.total, records, bad, items=len(self.items_of(k)), num_quantizers=self.nq,
                    sample_rate=sr, frame_rate=sr / codec.samples_per_code, rank=self.rank,
                    encode_seconds=round(time.perf_counter() - t0, 3))

    def bad(self, got: _Loaded, bad: list[dict]) -> None:
        item = got.item
        log.warning("skipping %s (%s): %s", item.source, got.reason, got.detail)
        bad.append({"index": got.index, "id": item.id, "source": item.source, "reason": got.reason,
                    "detail": got.detail})

    def encode_batch(self, batch: list[_Loaded], records: list[dict], bad: list[dict]) -> None:
        wavs = [w for got in batch for w in got.wavs]
        try:
            codes = self.codec.encode_loaded(wavs, self.nq)
        except Exception:  # one clip can break a batch (memory): encode each item alone to find it
            if len(batch) > 1:
                for got in batch:
                    self.encode_batch([got], records, bad)
                return
            got = batch[0]
            got.reason, got.detail = "encoding failed", f"{sys.exc_info()[1]!r}"
            self.bad(got, bad)
            return
        pos = 0
        for got in batch:
            mine = codes[pos: pos + len(got.wavs)]
            pos += len(got.wavs)
            records.append(self.record(got, [c.cpu().numpy() for c in mine]))

    def record(self, got: _Loaded, codes: list[np.ndarray]) -> dict:
        item, f = got.item, got.item.fields
        sr = self.codec.sample_rate
        return {
            "_index": got.index, "id": item.id, "source": item.source, "kind": item.kind,
            **{k: f.get(k) for k in ("text", "speaker", "language", "instruction", "caption")},
            "messages": json.dumps(item.messages, ensure_ascii=False) if item.messages is not None else None,
            "extra": json.dumps(f.get("extra") or {}, ensure_ascii=False, default=str),
            "audio_names": [str(n) for n in item.audio_names],
            "codes": [c.astype(np.int16).reshape(-1) for c in codes],
            "frames": [int(c.shape[0]) for c in codes],
            "n_frames": int(sum(c.shape[0] for c in codes)),
            "seconds": float(sum(w.numel() for w in got.wavs) / sr),
        }


def write_shard(out: Path, k: int, total: int, records: list[dict], bad: list[dict], *, items: int,
                num_quantizers: int, sample_rate: int, frame_rate: float, **info) -> None:
    """Write shard ``k`` of ``total``: the ``.arrow`` records, then the ``.json`` sidecar that marks it done
    (each atomically). ``records`` hold the :func:`schema` columns."""
    pa = require("pyarrow")
    sch = schema(num_quantizers, sample_rate, frame_rate)
    table = pa.Table.from_pylist(records, schema=sch)
    name = shard_name(k, total)
    with atomic_output(out / f"{name}.arrow") as tmp, pa.OSFile(tmp, "wb") as sink, \
            pa.ipc.new_stream(sink, sch) as writer:
        writer.write_table(table)
    side = {"shard": k, "items": items, "written": len(records), "bad": len(bad),
            "bad_by_reason": dict(Counter(b["reason"] for b in bad)),
            "frames": int(sum(r["n_frames"] for r in records)),
            "seconds": float(sum(r["seconds"] for r in records)), "bad_items": bad, **info}
    with atomic_output(out / f"{name}.json") as tmp:
        Path(tmp).write_text(json.dumps(side, indent=1) + "\n", encoding="utf-8")


def write_summary(out: str | os.PathLike) -> dict:
    """Total the sidecars of every finished shard into ``out/summary.json`` (atomically) and return it."""
    out = Path(out)
    settings_path = out / "prepare.json"
    if not settings_path.exists():
        raise DataError(f"{out}: no prepare.json; this is not a folder written by `mimo-audio data prepare`")
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    total = settings["shards"]
    sides = []
    for k in range(total):
        p = out / f"{shard_name(k, total)}.json"
        if p.exists():
            sides.append(json.loads(p.read_text(encoding="utf-8")))
    reasons: Counter = Counter()
    for s in sides:
        reasons.update(s["bad_by_reason"])
    bad_items = [b for s in sides for b in s["bad_items"]]
    summary = {
        "manifest": settings["manifest"], "format": settings["format"], "tokenizer": settings["tokenizer"],
        "items": settings["items"], "shards": total, "shards_done": len(sides),
        "complete": len(sides) == total,
        "items_done": sum(s["items"] for s in sides), "written": sum(s["written"] for s in sides),
        "bad": sum(s["bad"] for s in sides), "bad_by_reason": dict(sorted(reasons.items())),
        "frames": sum(s["frames"] for s in sides), "hours": round(sum(s["seconds"] for s in sides) / 3600, 4),
        "bad_items": bad_items[:1000], "bad_items_listed": min(len(bad_items), 1000),
    }
    with atomic_output(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def prepare(manifest, out: str | os.PathLike, tokenizer="XiaomiMiMo/MiMo-Audio-Tokenizer", *,
            format: str | None = None, split: str | None = None, audio_column: str | None = None,
            text_column: str | None = None, rank: int | None = None, world_size: int | None = None,
            shard_size: int = 1000, batch_seconds: float = 600.0, max_seconds: float | None = 600.0,
            min_seconds: float = 0.1, num_quantizers: int = 8, device=None, dtype=None, workers: int = 4,
            progress: bool | None = None) -> dict:
    """Prepare this rank's shards of ``manifest`` (a path/name for :func:`open_manifest`, or a
    :class:`Manifest`) in ``out`` and return the summary (also in ``out/summary.json``). ``tokenizer`` is a
    folder or hub id (loaded only if a shard is left to do) or an already loaded
    :class:`~mimo_audio.codec.AudioTokenizer`.

    ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE`` (torchrun). ``batch_seconds`` of audio are
    encoded per call to the tokenizer (one padded batch); ``max_seconds`` / ``min_seconds`` bound each clip
    (longer: "too long", shorter: "empty"). ``device`` defaults to ``cuda:LOCAL_RANK`` when CUDA is present.
    """
    require("pyarrow")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not batch_seconds > 0:
        raise DataError(f"batch_seconds must be positive, got {batch_seconds!r}")
    if rank is None or world_size is None:
        env_rank, env_world = rank_from_env()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in 0..{world_size - 1}")
    m = manifest if isinstance(manifest, Manifest) else open_manifest(
        manifest, format, split=split, audio_column=audio_column, text_column=text_column)
    return Preparer(m, Path(os.fspath(out)).expanduser(), tokenizer, rank=rank, world_size=world_size,
                    shard_size=shard_size, batch_seconds=batch_seconds, max_seconds=max_seconds,
                    min_seconds=min_seconds, num_quantizers=num_quantizers, device=device, dtype=dtype,
                    workers=workers, progress=progress).run()
