"""Prepared shards -> batches of supervised examples for training.

- :class:`ShardSet` opens a folder written by ``mimo-audio data prepare`` (memory-mapped Arrow; nothing is
  copied until a record is read) and gives :class:`Record` s with their codes as tensors.
- :func:`parse_tasks` reads a task mixture, ``"asr:1,tts:1,continuation:0.5"`` (the trainer's ``--tasks``).
- :class:`Loader` yields :class:`Batch` es: each example is built by the task table
  (:func:`mimo_audio.tasks.get_task`), batches are made of examples of similar length, right-padded, with an
  attention mask ``[B, N]`` (SPEC §8.3; the input of ``MimoAudioLM.forward(grid, attention_mask=, labels=)``).

Order. An epoch is a plan of ``examples_per_epoch`` (task, record) pairs, a pure function of ``(seed, epoch)``:
each slot draws a task with the mixture's weights, and each task walks its own shuffled list of the records it
can use (reshuffled each time it runs out). Rank ``r`` of ``W`` takes slots ``r, r + W, ...`` (the plan is cut
to a multiple of ``W`` so every rank makes the same number of steps). A rank's slots are cut into windows of
``window`` batches; a window's examples are built, sorted by length and cut into batches, and the batches of
the window are shuffled. So batch ``step`` of an epoch depends only on ``(seed, epoch, step)``: a loader
resumed from :meth:`Loader.state_dict` yields exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MimoAudioError
from . import DataError, require
from .prepare import shard_name

log = logging.getLogger("mimo_audio.data")

IGNORE = -100


# --------------------------------------------------------------------------------------------- task mixture
def parse_tasks(spec: str | Mapping[str, float], known: Sequence[str] | None = None) -> dict[str, float]:
    """``"asr:1,tts:1,continuation:0.5"`` -> ``{"asr": 1.0, "tts": 1.0, "continuation": 0.5}``.

    A name without ``:w`` weighs 1. Weights are finite and >= 0, at least one positive; a name appears once;
    with ``known`` every name must be one of them. Raises :class:`DataError` naming the bad part.
    """
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise DataError("the task mixture is empty; pass e.g. --tasks asr:1,tts:1,continuation:0.5")
        items = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise DataError(f"empty entry in the task mixture {spec!r}; write name:weight,name:weight")
            name, sep, w = part.partition(":")
            items.append((name.strip(), w.strip() if sep else "1"))
    out: dict[str, float] = {}
    for name, w in items:
        if not name:
            raise DataError(f"a task mixture entry has no task name ({name}:{w}); write name:weight")
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise DataError(f"task {name!r}: weight {w!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise DataError(f"task {name!r}: weight must be a finite number >= 0, got {w!r}")
        if name in out:
            raise DataError(f"task {name!r} appears twice in the mixture; give it once")
        if known is not None and name not in known:
            raise DataError(f"unknown task {name!r} in the mixture; known tasks: {', '.join(known)}")
        out[name] = weight
    if not any(v > 0 for v in out.values()):
        raise DataError("every task in the mixture has weight 0; give at least one a positive weight")
    return out


# --------------------------------------------------------------------------------------------- shards
@dataclass
class Record:
    """One prepared item. ``codes``: one ``(frames, num_quantizers)`` LongTensor per audio of the item
    (a chat's audio parts point into it by ``index``)."""

    index: int
    id: str
    kind: str
    text: str | None
    speaker: str | None
    language: str | None
    instruction: str | None
    caption: str | None
    messages: list[dict] | None
    extra: dict
    codes: list[torch.Tensor]


class ShardSet:
    """The finished shards of a folder, in shard order, as one indexable table of records."""

    def __init__(self, folder: str | os.PathLike):
        pa = require("pyarrow")
        self.folder = Path(os.fspath(folder)).expanduser()
        settings = self.folder / "prepare.json"
        if not settings.exists():
            raise DataError(f"{self.folder}: no prepare.json; prepare the data first: "
                            f"mimo-audio data prepare MANIFEST -o {self.folder} --tokenizer TOK")
        self.settings = json.loads(settings.read_text(encoding="utf-8"))
        total = self.settings["shards"]
        tables, self.missing = [], []
        for k in range(total):
            name = shard_name(k, total)
            if not (self.folder / f"{name}.json").exists():  # the sidecar marks a finished shard
                self.missing.append(k)
                continue
            with pa.memory_map(str(self.folder / f"{name}.arrow")) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        if not tables:
            raise DataError(f"{self.folder}: no finished shard yet; run (or finish) mimo-audio data prepare")
        self.table = pa.concat_tables(tables).combine_chunks()
        self.num_quantizers = int(self.settings["num_quantizers"])
        col = lambda name: self.table.column(name).to_numpy(zero_copy_only=False)
        self.kind = col("kind").astype(str)
        self.n_frames = col("n_frames").astype(np.int64)
        self.has = {k: ~self.table.column(k).is_null().to_numpy(zero_copy_only=False)
                    for k in ("text", "speaker", "language", "instruction", "caption", "messages")}
        self._codes = self.table.column("codes")

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> Record:
        row = {k: self.table.column(k)[i].as_py() for k in ("id", "kind", "text", "speaker", "language",
                                                             "instruction", "caption", "messages", "extra")}
        codes = []
        for a in self._codes[i].values:  # per audio: flat int16, zero-copy view of the mapped file
            flat = a.values.to_numpy(zero_copy_only=False)
            codes.append(torch.from_numpy(flat.astype(np.int64)).view(-1, self.num_quantizers))
        return Record(index=int(i), id=row["id"], kind=row["kind"], text=row["text"], speaker=row["speaker"],
                      language=row["language"], instruction=row["instruction"], caption=row["caption"],
                      messages=json.loads(row["messages"]) if row["messages"] else None,
                      extra=json.loads(row["extra"]) if row["extra"] else {}, codes=codes)


# --------------------------------------------------------------------------------------------- tasks <- records
@dataclass(frozen=True)
class TaskInput:
    """Which records a task can use (``eligible(shards) -> bool[len]``) and how one becomes the task's
    example (``example(record, tokenizer) -> TokenGrid``)."""

    eligible: Callable[[ShardSet], np.ndarray]
    example: Callable[[Record, Any], Any]


TASK_INPUTS: dict[str, TaskInput] = {}  # filled by .examples (kept apart: it follows the task table's API)


# --------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """``tokens``/``labels`` ``[B, 9, 4N]`` (right-padded: ids 0, labels -100), ``attention_mask`` ``[B, N]``
    (1 on real groups), and per row its task, record id and length in groups."""

    tokens: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    tasks: list[str]
    ids: list[str]
    lengths: list[int]
    truncated: int = 0

    @property
    def groups(self) -> int:
        return int(sum(self.lengths))


def collate(grids: Sequence[tuple[torch.Tensor, torch.Tensor]], group_size: int = 4) -> tuple[torch.Tensor, ...]:
    """Right-pad ``(tokens [9, T_i], labels [9, T_i])`` pairs to ``[B, 9, 4N]`` with the mask ``[B, N]``."""
    rows = grids[0][0].shape[0]
    n = max(t.shape[1] for t, _ in grids) // group_size
    tokens = torch.zeros(len(grids), rows, n * group_size, dtype=torch.long)
    labels = torch.full_like(tokens, IGNORE)
    mask = torch.zeros(len(grids), n, dtype=torch.long)
    for b, (t, lab) in enumerate(grids):
        tokens[b, :, : t.shape[1]] = t
        labels[b, :, : lab.shape[1]] = lab
        mask[b, : t.shape[1] // group_size] = 1
    return tokens, labels, mask


@dataclass
class Loader:
    """Deterministic, resumable, rank-aware batches of a task mixture over a :class:`ShardSet`.

    ``example_fn(task, record) -> (tokens, labels)`` builds one example (default: the task table through
    :data:`TASK_INPUTS`, which needs ``tokenizer``). ``max_groups`` cuts longer examples at a group
    boundary (counted in ``Batch.truncated``) rather than dropping them, so that every rank makes the same
    number of steps. ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE`` (torchrun), else 0 of 1.
    ``epochs=None`` iterates forever. The last batch of an epoch may be smaller than ``batch_size``.
    """

    shards: ShardSet
    tasks: Mapping[str, float]
    batch_size: int = 8
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    window: int = 128
    max_groups: int | None = 8192
    examples_per_epoch: int | None = None
    epochs: int | None = None
    tokenizer: Any = None
    example_fn: Callable[[str, Record], tuple[torch.Tensor, torch.Tensor]] | None = None
    epoch: int = 0
    step: int = 0
    _plans: dict = field(default_factory=dict, repr=False)
    bad_records: dict = field(default_factory=dict, repr=False)  # (task, record id) -> why it was replaced

    def __post_init__(self):
        self.tasks = parse_tasks(self.tasks) if isinstance(self.tasks, str) else dict(self.tasks)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.window, int) or self.window < 1:
            raise DataError(f"window must be a positive number of batches, got {self.window!r}")
        if self.rank is None or self.world_size is None:
            from .prepare import rank_from_env

            env_rank, env_world = rank_from_env()
            self.rank = env_rank if self.rank is None else self.rank
            self.world_size = env_world if self.world_size is None else self.world_size
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        # sorted: the plan does not depend on the order the mixture was written in
        self.names = sorted(t for t, w in self.tasks.items() if w > 0)
        weights = np.array([self.tasks[t] for t in self.names], dtype=np.float64)
        self.p = weights / weights.sum()
        if self.example_fn is None:
            from .examples import task_example  # registers TASK_INPUTS

            missing = [t for t in self.names if t not in TASK_INPUTS]
            if missing:
                raise DataError(f"no record -> example mapping for task(s) {', '.join(missing)}; "
                                f"the loader knows: {', '.join(TASK_INPUTS)}")
            if self.tokenizer is None:
                raise DataError("the loader builds examples with the text tokenizer: pass tokenizer= "
                                "(a TextTokenizer or PromptBuilder), or example_fn=")
            from ..tasks import builder

            pb = builder(self.tokenizer)
            self.example_fn = lambda task, rec: task_example(task, rec, pb)
            self.eligible = {t: np.flatnonzero(TASK_INPUTS[t].eligible(self.shards)) for t in self.names}
        else:
            self.eligible = {t: np.arange(len(self.shards)) for t in self.names}
        empty = [t for t in self.names if len(self.eligible[t]) == 0]
        if empty:
            raise DataError(f"no record in {self.shards.folder} can feed task(s) {', '.join(empty)} "
                            "(e.g. asr/tts need text, captioning a caption, chat tasks a chat manifest); "
                            "drop them from the mixture or give them weight 0")

    # ------------------------------------------------------------------------------------ the plan
    def per_epoch(self) -> int:
        total = self.examples_per_epoch or len(self.shards)
        per_rank = total // self.world_size
        if per_rank < 1:
            raise DataError(f"{total} examples per epoch cannot be split over {self.world_size} ranks")
        return per_rank

    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_epoch() / self.batch_size)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's ``(task index, record index)`` slots of ``epoch``, in order."""
        if epoch in self._plans:
            return self._plans[epoch]
        per_rank = self.per_epoch()
        total = per_rank * self.world_size
        rng = np.random.default_rng([self.seed, epoch, 0])
        task_seq = rng.choice(len(self.names), size=total, p=self.p) if len(self.names) > 1 else \
            np.zeros(total, dtype=np.int64)
        rec_seq = np.empty(total, dtype=np.int64)
        for t, name in enumerate(self.names):
            where = np.flatnonzero(task_seq == t)
            pool = self.eligible[name]
            draws, cycle = [], 0
            while sum(len(d) for d in draws) < len(where):
                draws.append(np.random.default_rng([self.seed, epoch, 1 + t, cycle]).permutation(pool))
                cycle += 1
            rec_seq[where] = np.concatenate(draws)[: len(where)] if draws else rec_seq[where]
        plan = (task_seq[self.rank::self.world_size][:per_rank], rec_seq[self.rank::self.world_size][:per_rank])
        self._plans = {epoch: plan}  # keep one epoch's plan
        return plan

    def window_chunks(self, epoch: int, w: int) -> list[list[tuple]]:
        """The examples of window ``w`` of ``epoch``, grouped into batches (in the order they are yielded)
        but not yet padded: each batch is collated only when it is handed out, so the padded tensors of one
        batch at a time are alive (and their memory is reused) however large the window."""
        tasks, recs = self.plan(epoch)
        size = self.window * self.batch_size
        lo, hi = w * size, min(len(tasks), (w + 1) * size)
        built = []
        for j in range(lo, hi):
            name = self.names[int(tasks[j])]
            rec, (tokens, labels) = self.build(name, int(recs[j]))
            cut = False
            if self.max_groups is not None and tokens.shape[1] > 4 * self.max_groups:
                tokens, labels, cut = tokens[:, : 4 * self.max_groups], labels[:, : 4 * self.max_groups], True
            built.append((tokens.shape[1] // 4, j, name, rec.id, tokens, labels, cut))
        built.sort(key=lambda e: (e[0], e[1]))  # by length; ties in plan order (deterministic)
        chunks = [built[s: s + self.batch_size] for s in range(0, len(built), self.batch_size)]
        order = np.random.default_rng([self.seed, epoch, 2, w]).permutation(len(chunks))
        return [chunks[i] for i in order]

    def build(self, task: str, index: int) -> tuple[Record, tuple[torch.Tensor, torch.Tensor]]:
        """Record ``index`` as an example of ``task``. A record the task cannot use (its builder raises a
        MimoAudioError, e.g. a blank transcript) is logged once, remembered in ``bad_records``, and replaced by
        the next eligible record of that task: deterministic, and every rank keeps the same number of steps."""
        pool = self.eligible[task]
        start = int(np.searchsorted(pool, index))
        for k in range(len(pool)):
            i = int(pool[(start + k) % len(pool)])
            rec = self.shards[i]
            if (task, rec.id) in self.bad_records:
                continue
            try:
                return rec, self.example_fn(task, rec)
            except MimoAudioError as exc:
                self.bad_records[(task, rec.id)] = str(exc)
                log.warning("record %s cannot be a %s example (%s); using the next one", rec.id, task, exc)
        raise DataError(f"no record in {self.shards.folder} makes a valid {task!r} example; "
                        f"see Loader.bad_records, or drop {task!r} from the mixture")

    @staticmethod
    def batch_of(chunk: list[tuple]) -> Batch:
        tokens, labels, mask = collate([(e[4], e[5]) for e in chunk])
        return Batch(tokens, labels, mask, [e[2] for e in chunk], [e[3] for e in chunk], [e[0] for e in chunk],
                     sum(e[6] for e in chunk))

    def window_batches(self, epoch: int, w: int) -> list[Batch]:
        """The batches of window ``w`` of ``epoch``, in the order they are yielded."""
        return [self.batch_of(c) for c in self.window_chunks(epoch, w)]

    # ------------------------------------------------------------------------------------ iteration
    def state_dict(self) -> dict:
        """Where the next batch comes from: ``{"seed", "epoch", "step"}`` (plus checks for the resume)."""
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size, "window": self.window,
                "tasks": dict(self.tasks), "records": len(self.shards), "examples_per_epoch": self.per_epoch()}

    def load_state_dict(self, state: Mapping) -> None:
        for k in ("seed", "world_size", "batch_size", "window", "tasks", "records", "examples_per_epoch"):
            if k in state and state[k] != self.state_dict()[k]:
                raise DataError(f"the saved loader state has {k}={state[k]!r} but this loader has "
                                f"{self.state_dict()[k]!r}; resume with the same data and loader options")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[Batch]:
        while self.epochs is None or self.epoch < self.epochs:
            steps = self.steps_per_epoch()
            while self.step < steps:
                w, offset = divmod(self.step, self.window)
                chunks = self.window_chunks(self.epoch, w)[offset:]
                chunks.reverse()
                while chunks:
                    batch = self.batch_of(chunks.pop())  # the window's examples are freed as they go out
                    self.step += 1
                    yield batch
            self.epoch, self.step = self.epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch()
