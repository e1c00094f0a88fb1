"""The sharded, resumable runner shared by ``mimo-audio eval`` and ``mimo-audio batch``.

A run owns a folder of parts (``PARTS/rank-R.jsonl``, one per rank) and a final file. Each rank takes its slice
of the items (``items[rank::world]``, from ``RANK`` / ``WORLD_SIZE`` as set by ``torchrun``), skips every item
that already has a record in any part (a rerun resumes; the world size may change between runs), processes the
rest in batches and appends one JSON line per item to its own part as soon as the batch is done. An item whose
processing raises is recorded as ``{"status": "failed", "reason": ...}``: a failing batch is retried item by
item so that one bad item does not fail its neighbours; nothing crashes the run.

Rank 0 then waits until every item has a record (the other ranks write theirs), merges the parts in the items'
order and writes the final file atomically. The settings of the run are kept in ``PARTS/run.json``; resuming with
different settings is refused (the records would mix two runs).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MimoAudioError
from ..files import atomic_output

Record = dict[str, Any]


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment (``torchrun`` sets ``RANK`` and ``WORLD_SIZE``); (0, 1) alone."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MimoAudioError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise MimoAudioError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def read_records(path: Path) -> list[Record]:
    """The complete JSON lines of a part (a line cut short by a crash is ignored: its item is redone)."""
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _trim_partial_line(path: Path) -> None:
    """Cut a part back to its last complete line, so that appending after a crash starts on a new line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _reason(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"


class Runner:
    """Run ``process(items) -> records`` over ``items`` in batches, sharded, resumable.

    Args:
        parts_dir: folder of the per-rank parts and ``run.json``;
        settings: what defines the run (compared on resume; keep ``limit`` and batch size out of it);
        batch_size: items per ``process`` call; rank / world: default from the environment;
        progress: show a tqdm bar on stderr; wait_s: how long rank 0 waits for the other ranks' records;
        fresh: drop this rank's earlier records (and, on rank 0, ``run.json``) before starting;
        retry_failed: run again the items whose earlier record is a failure (a later success replaces it).
    """

    def __init__(self, parts_dir: str | os.PathLike, *, settings: dict | None = None, batch_size: int = 8,
                 rank: int | None = None, world: int | None = None, progress: bool = True,
                 wait_s: float = 6 * 3600.0, fresh: bool = False, retry_failed: bool = False, desc: str = "items"):
        if rank is None or world is None:
            rank, world = dist_env()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MimoAudioError(f"batch size must be a positive integer, got {batch_size!r}")
        self.parts = Path(parts_dir)
        self.settings = settings or {}
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.progress = progress
        self.wait_s = float(wait_s)
        self.fresh = fresh
        self.retry_failed = retry_failed
        self.desc = desc
        self.reused = 0  # records taken from an earlier run

    @property
    def part(self) -> Path:
        return self.parts / f"rank-{self.rank}.jsonl"

    def _check_settings(self) -> None:
        meta = self.parts / "run.json"
        want = json.loads(json.dumps(self.settings, default=str))
        if meta.exists():
            have = json.loads(meta.read_text(encoding="utf-8"))
            if have != want:
                diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
                raise MimoAudioError(
                    f"{self.parts} holds results of a run with other settings (differs in: {', '.join(diff)}); "
                    "use another output folder, or --fresh to start over"
                )
            return
        with atomic_output(meta) as tmp:
            Path(tmp).write_text(json.dumps(want, indent=1, sort_keys=True), encoding="utf-8")

    def done_ids(self) -> dict[str, Record]:
        """Each recorded item's record: its success if it has one, else its latest failure."""
        done: dict[str, Record] = {}
        for p in sorted(self.parts.glob("rank-*.jsonl")):
            for r in read_records(p):
                k = str(r.get("id"))
                if k not in done or done[k].get("status") != "ok":
                    done[k] = r
        return done

    def run(self, items: Sequence[Record], process: Callable[[list[Record]], list[Record]]) -> list[Record] | None:
        """Process this rank's pending items; on rank 0 return every item's record in order (None elsewhere)."""
        ids = [str(it["id"]) for it in items]
        if len(set(ids)) != len(ids):
            raise MimoAudioError("item ids are not unique; give every item its own id")
        self.parts.mkdir(parents=True, exist_ok=True)
        if self.fresh:
            self.part.unlink(missing_ok=True)
            if self.rank == 0:
                (self.parts / "run.json").unlink(missing_ok=True)
                for p in self.parts.glob("rank-*.jsonl"):
                    if int(p.stem.split("-")[1]) >= self.world:
                        p.unlink(missing_ok=True)
        self._check_settings()
        _trim_partial_line(self.part)
        done = self.done_ids()
        if self.retry_failed:
            done = {k: r for k, r in done.items() if r.get("status") == "ok"}
        mine = [(i, it) for i, it in enumerate(items) if i % self.world == self.rank]
        todo = [(i, it) for i, it in mine if str(it["id"]) not in done]
        self.reused = sum(1 for i in ids if i in done)
        bar = None
        if self.progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"{self.desc} (rank {self.rank}/{self.world})" if self.world > 1
                       else self.desc, unit="item", file=sys.stderr, position=self.rank, leave=self.world == 1)
        try:
            with open(self.part, "a", encoding="utf-8") as out:
                for start in range(0, len(todo), self.batch_size):
                    chunk = todo[start:start + self.batch_size]
                    for rec in self._process(chunk, process):
                        out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                    out.flush()
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if self.rank != 0:
            return None
        return self._merge(items)

    def _process(self, chunk, process) -> list[Record]:
        batch = [it for _, it in chunk]
        try:
            results = process(batch)
            if len(results) != len(batch):
                raise MimoAudioError(f"internal: {len(results)} results for {len(batch)} items")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if len(batch) == 1:
                results = [{"status": "failed", "reason": _reason(exc)}]
            else:  # find the bad item: run them one at a time
                results = [self._process([c], process)[0] for c in chunk]
                return results
        out = []
        for (i, it), res in zip(chunk, results):
            rec = {"index": i, "id": str(it["id"]), "status": "ok"}
            rec.update(res)
            out.append(rec)
        return out

    def _merge(self, items: Sequence[Record]) -> list[Record]:
        ids = [str(it["id"]) for it in items]
        deadline = time.monotonic() + self.wait_s
        while True:
            done = self.done_ids()
            missing = [i for i in ids if i not in done]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(min(2.0, max(0.05, self.wait_s / 100)))
        records = []
        for n, i in enumerate(ids):
            rec = done.get(i)
            if rec is None:
                rec = {"index": n, "id": i, "status": "missing",
                       "reason": "no rank recorded this item before the wait ended"}
            else:
                rec = dict(rec, index=n)
            records.append(rec)
        return records


def write_jsonl(path: str | os.PathLike, records: Sequence[Record]) -> None:
    """Write records as JSON lines, atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
