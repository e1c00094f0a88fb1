"""The data protocol the trainer reads, and a small in-memory implementation of it.

A *batch source* is an iterator of micro-batches ``{"grid": LongTensor [B, 9, 4N], "labels": LongTensor
[B, 9, 4N], "attention_mask": LongTensor [B, N]}`` (right-padded: grid 0, labels -100, mask 0 on padding
groups; SPEC §8.3) that yields this rank's share and has ``state_dict()`` / ``load_state_dict()`` for its
position, so that a resumed run reads exactly the batches an uninterrupted one would. Any object with those
four methods plugs into :func:`mimo_audio.train.trainer.train` (docs/training.md: the prepared-shard loader).

:class:`ExampleBatches` is the reference implementation over a list of ``(grid [9, T], labels [9, T])``
examples, e.g. the contents of an example file written by :func:`save_examples`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import atomic_output
from .config import TrainConfigError


def pad_batch(examples: list[tuple[torch.Tensor, torch.Tensor]], group_size: int) -> dict[str, torch.Tensor]:
    """Right-pad ``(grid, labels)`` examples into one micro-batch."""
    cols = max(g.shape[1] for g, _ in examples)
    rows = examples[0][0].shape[0]
    B = len(examples)
    grid = torch.zeros(B, rows, cols, dtype=torch.long)
    labels = torch.full((B, rows, cols), -100, dtype=torch.long)
    mask = torch.zeros(B, cols // group_size, dtype=torch.long)
    for b, (g, lab) in enumerate(examples):
        if g.shape != lab.shape or g.shape[1] % group_size:
            raise TrainConfigError(f"example {b}: grid {tuple(g.shape)} and labels {tuple(lab.shape)} must be equal "
                                   f"[rows, {group_size}*N] matrices")
        grid[b, :, : g.shape[1]] = g
        labels[b, :, : g.shape[1]] = lab
        mask[b, : g.shape[1] // group_size] = 1
    return {"grid": grid, "labels": labels, "attention_mask": mask}


class ExampleBatches:
    """Endless, reshuffled-per-epoch micro-batches of ``examples`` for one rank.

    The run's micro-batches form one global sequence (epoch ``e`` = a permutation of the examples seeded by
    ``seed + e``, cut into ``len // batch_size`` batches, the rest dropped); this rank's ``i``-th draw is
    global batch ``i * world + rank``. So ``world`` ranks with ``grad_accum`` A read the same examples per
    optimizer step as one rank with ``world * A``. The position is the number of draws.
    """

    def __init__(self, examples, batch_size: int, group_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle: bool = True):
        self.examples = list(examples)
        if len(self.examples) < batch_size:
            raise TrainConfigError(f"{len(self.examples)} examples cannot fill one batch of {batch_size}; "
                                   "lower --batch-size or add data")
        self.batch_size, self.group_size = batch_size, group_size
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.draws = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def max_columns(self) -> int:
        return max(g.shape[1] for g, _ in self.examples)

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.examples)
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
                     if self.shuffle else torch.arange(n))
            self._perm = (epoch, order)
        return self._perm[1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        g = self.draws * self.world + self.rank
        self.draws += 1
        per_epoch = len(self.examples) // self.batch_size
        epoch, b = divmod(g, per_epoch)
        idx = self._order(epoch)[b * self.batch_size: (b + 1) * self.batch_size]
        return pad_batch([self.examples[int(i)] for i in idx], self.group_size)

    def state_dict(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world", self.world) != self.world:
            raise TrainConfigError(f"the checkpoint's data position is for {state['world']} ranks, this run has "
                                   f"{self.world}; resume with the same number of ranks")
        self.draws = int(state["draws"])


def save_examples(path: str | Path, examples) -> None:
    """Write ``(grid, labels)`` examples to one safetensors file (keys ``grid.{i}`` / ``labels.{i}``)."""
    tensors = {}
    for i, (g, lab) in enumerate(examples):
        tensors[f"grid.{i}"] = g.to(torch.long).contiguous()
        tensors[f"labels.{i}"] = lab.to(torch.long).contiguous()
    with atomic_output(path) as tmp:
        save_file(tensors, tmp)


def load_examples(path: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Examples from a file written by :func:`save_examples`, or from every ``*.safetensors`` in a folder."""
    p = Path(path).expanduser()
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not p.exists() or not files:
        raise TrainConfigError(f"data {path}: no such file, or a folder without .safetensors example files")
    out = []
    for f in files:
        t = load_file(str(f))
        n = sum(1 for k in t if k.startswith("grid."))
        for i in range(n):
            if f"labels.{i}" not in t:
                raise TrainConfigError(f"{f}: grid.{i} has no labels.{i}")
            out.append((t[f"grid.{i}"], t[f"labels.{i}"]))
        if not n:
            raise TrainConfigError(f"{f}: no grid.N tensors; write example files with mimo_audio.train.data.save_examples")
    return out
