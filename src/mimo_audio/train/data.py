"""The data protocol the trainer reads, its two implementations, and what ``--data`` / ``--val-data`` open.

A *batch source* is an iterator of micro-batches ``{"grid": LongTensor [B, 9, 4N], "labels": LongTensor
[B, 9, 4N], "attention_mask": LongTensor [B, N]}`` (right-padded: grid 0, labels -100, mask 0 on padding
groups; SPEC §8.3) that yields this rank's share and has ``state_dict()`` / ``load_state_dict()`` for its
position, so that a resumed run reads exactly the batches an uninterrupted one would. Any object with those
four methods plugs into :func:`mimo_audio.train.lm_objective.train`.

- :class:`ShardBatches`: the prepared shards of ``mimo-audio data prepare`` (:mod:`mimo_audio.data`) through
  the length-bucketed, task-mixing :class:`~mimo_audio.data.loader.Loader` (``--tasks``);
- :class:`ExampleBatches`: a list of ``(grid [9, T], labels [9, T])`` examples, e.g. the contents of an example
  file written by :func:`save_examples`.

:func:`open_data` picks one from what the path holds (a folder with ``prepare.json`` is a shard folder).
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
        raise TrainConfigError(f"data {path}: no such file, or a folder with neither prepare.json (shards written by "
                               "`mimo-audio data prepare`) nor .safetensors example files")
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


# ------------------------------------------------------------------------------------------ prepared shards
def is_shard_folder(path: str | Path) -> bool:
    """A folder written by ``mimo-audio data prepare`` (it holds ``prepare.json``)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "prepare.json").is_file()


class ShardBatches:
    """A :class:`mimo_audio.data.loader.Loader` (endless: ``epochs=None``) as a batch source.

    The loader is rank-aware (rank ``r`` of ``W`` takes plan slots ``r, r + W, ...`` of every epoch) and its
    position ``{seed, epoch, step}`` is what :meth:`state_dict` gives (saved in every checkpoint); after
    :meth:`load_state_dict` the next batch is the one an uninterrupted run would have read.
    """

    def __init__(self, loader):
        self.loader = loader
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        b = next(self._it)
        return {"grid": b.tokens, "labels": b.labels, "attention_mask": b.attention_mask}

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        from ..errors import MimoAudioError

        try:
            self.loader.load_state_dict(state)
        except MimoAudioError as exc:
            raise TrainConfigError(f"cannot resume the data position: {exc}") from None
        self._it = None  # the loader rebuilds the window it is in and continues from there


def feedable_tasks(shards) -> list[str]:
    """The loader's tasks that at least one record of ``shards`` can feed."""
    from ..data import examples  # noqa: F401  (fills TASK_INPUTS)
    from ..data.loader import TASK_INPUTS

    return [t for t in sorted(TASK_INPUTS) if TASK_INPUTS[t].eligible(shards).any()]


def open_shards(path: str | Path, cfg, group_size: int, *, rank: int = 0, world: int = 1,
                max_groups: int | None = None) -> ShardBatches:
    """The shard folder ``path`` as this rank's batch source of the ``cfg.tasks`` mixture."""
    from ..data import DataError
    from ..data.loader import Loader, ShardSet

    if group_size != 4:
        raise TrainConfigError(f"the prepared-shard loader builds groups of 4 code frames; this model has "
                               f"group_size {group_size}")
    try:
        shards = ShardSet(path)
    except DataError as exc:
        raise TrainConfigError(f"--data {path}: {exc}") from None
    if shards.missing:
        import logging

        logging.getLogger("mimo_audio.train").warning(
            "%s: %d of %d shards are not finished; training reads the finished ones", path, len(shards.missing),
            shards.settings["shards"])
    can = feedable_tasks(shards)
    if not cfg.tasks:
        raise TrainConfigError(f"{path} is a prepared shard folder: choose the task mixture with --tasks "
                               f"(e.g. --tasks {','.join(f'{t}:1' for t in can[:3])}); its records can feed: "
                               f"{', '.join(can) or 'no task'}")
    absent = [t for t, w in cfg.tasks.items() if w > 0 and t not in can]
    if absent:
        raise TrainConfigError(f"--tasks {', '.join(absent)}: no record in {path} can feed "
                               f"{'it' if len(absent) == 1 else 'them'} (e.g. asr/tts need text, caption a caption, "
                               f"chat a chat manifest); its records can feed: {', '.join(can) or 'no task'}")
    if not cfg.model:
        raise TrainConfigError("shard data is turned into examples with the model's text tokenizer: name the "
                               "model folder with --model")
    from .. import checkpoint
    from ..text import TextTokenizer

    tokenizer = TextTokenizer.from_folder(checkpoint.resolve(cfg.model))
    try:
        loader = Loader(shards, dict(cfg.tasks), batch_size=cfg.batch_size, seed=cfg.seed, rank=rank,
                        world_size=world, window=cfg.window, max_groups=max_groups, tokenizer=tokenizer)
        loader.per_epoch()  # an epoch too small for the ranks fails here, before step 1
    except DataError as exc:
        raise TrainConfigError(f"--data {path}: {exc}") from None
    return ShardBatches(loader)


def open_data(path: str | Path, cfg, group_size: int, *, rank: int = 0, world: int = 1, shuffle: bool = True,
              max_groups: int | None = None):
    """What ``--data`` / ``--val-data`` name: a prepared shard folder (:class:`ShardBatches` of ``cfg.tasks``) or
    example files (:class:`ExampleBatches`; ``--tasks`` does not apply to them)."""
    if is_shard_folder(path):
        return open_shards(path, cfg, group_size, rank=rank, world=world, max_groups=max_groups)
    if cfg.tasks:
        raise TrainConfigError(f"--tasks picks a mixture from prepared shards (a folder written by "
                               f"`mimo-audio data prepare`), but {path} holds example files; drop --tasks or pass "
                               "the shard folder")
    return ExampleBatches(load_examples(path), cfg.batch_size, group_size, seed=cfg.seed, rank=rank, world=world,
                          shuffle=shuffle)
