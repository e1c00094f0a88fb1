"""The one training loop of the project, for every objective: the LM (SPEC §8.2, §8.3; :mod:`.lm_objective`) and the
audio tokenizer (SPEC §8.1; :mod:`.codec`).

The loop owns what every run needs: the process group under ``torchrun`` (NCCL on CUDA, gloo on CPU), the device,
the run folder (refusing to overwrite a run, ``--resume``, an already finished run), checkpoints of one or more
model/optimizer/scheduler :class:`Part` s with ``torch.distributed.checkpoint`` (sharded under FSDP2, written
atomically with ``complete.json``, the newest ``keep`` kept), the data position and RNG state, ``metrics.jsonl``,
the progress bar, validation every ``val_every`` steps, ``--stop-after`` and the final export.

An *objective* supplies the rest (:class:`Objective`): its parts, one optimizer step (:meth:`Objective.step`, which
may step several optimizers, e.g. a discriminator then a generator), validation and export, and optionally
``after_step(step, output)`` (e.g. writing sample reconstructions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from ..files import atomic_output
from .config import LoopConfig, TrainConfigError
from .tracker import open_tracker

STATE_FILE = "trainer_state.json"
COMPLETE = "complete.json"


@dataclass
class Part:
    """A trained module with its optimizer and scheduler, checkpointed together under ``name`` (the LM's single part
    is ``model``; the tokenizer's stage 2 has ``generator`` and ``discriminator``)."""

    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


class Objective(Protocol):
    """What :func:`fit` runs. ``data`` / ``val_data`` are batch sources with ``state_dict`` / ``load_state_dict``
    (their position is checkpointed); ``throughput_key`` names the rate :func:`fit` adds to each record
    (``amount`` returned by :meth:`step` per second)."""

    parts: list[Part]
    data: Any
    val_data: Any
    throughput_key: str

    def step(self, step: int) -> tuple[dict, float]: ...

    def validate(self, step: int, output: Path) -> dict: ...

    def export(self, output: Path) -> None: ...


# ------------------------------------------------------------------------------------------ distributed
def dist_info() -> tuple[int, int]:
    """``(rank, world)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_dist = dist_info


def init_distributed(device: str | None) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) start the process group: NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def pick_device(cfg) -> torch.device:
    if cfg.device:
        try:
            d = torch.device(cfg.device)
        except RuntimeError:
            raise TrainConfigError(f"--device {cfg.device}: not a device; use cpu, cuda or cuda:N") from None
        if d.type == "cuda" and not torch.cuda.is_available():
            raise TrainConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    else:
        d = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


_barrier = barrier


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in output.glob("step-*") if p.is_dir() and (p / COMPLETE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _keys(part: Part) -> tuple[str, str]:
    """Checkpoint keys of a part's module and optimizer states (``model`` / ``optim`` for the LM's)."""
    return (part.name, "optim") if part.name == "model" else (part.name, f"{part.name}.optim")


def _state(parts: list[Part]) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    out = {}
    for part in parts:
        mk, ok = _keys(part)
        out[mk], out[ok] = get_state_dict(part.module, part.optimizer)
    return out


def save_checkpoint(output: Path, step: int, parts: list[Part], data, keep: int) -> Path:
    """``OUTPUT/step-N/``: every part's module + optimizer (sharded, ``torch.distributed.checkpoint``), each rank's
    schedulers, data position and RNG, then ``complete.json``. Written under ``.step-N.tmp`` and renamed when
    complete, so a run killed mid-save leaves nothing that looks like a checkpoint. Keeps the newest ``keep``."""
    import torch.distributed.checkpoint as dcp

    rank, world = dist_info()
    final = output / f"step-{step:08d}"
    tmp = output / f".step-{step:08d}.tmp"
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    with _quiet_single_process():
        dcp.save(_state(parts), checkpoint_id=str(tmp))
    extra = {"step": step, "schedulers": {p.name: p.scheduler.state_dict() for p in parts},
             "data": data.state_dict(), "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    torch.save(extra, tmp / f"rank-{rank}.pt")
    barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(json.dumps({"step": step, "world": world, "parts": [p.name for p in parts]}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, parts: list[Part], data) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    rank, world = dist_info()
    info = json.loads((path / COMPLETE).read_text())
    if info["world"] != world:
        raise TrainConfigError(f"{path} was written by {info['world']} ranks; resume with the same number "
                               f"(this run has {world})")
    names = info.get("parts", ["model"])
    if names != [p.name for p in parts]:
        raise TrainConfigError(f"{path} holds the parts {names} but this run trains {[p.name for p in parts]}: "
                               "it is another kind of run (e.g. the other tokenizer stage); choose another --output")
    state = _state(parts)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path))
    for part in parts:
        mk, ok = _keys(part)
        set_state_dict(part.module, part.optimizer, model_state_dict=state[mk], optim_state_dict=state[ok])
    extra = torch.load(path / f"rank-{rank}.pt", weights_only=False)
    schedulers = extra.get("schedulers") or {"model": extra["scheduler"]}  # a checkpoint of the one-part LM loop
    for part in parts:
        part.scheduler.load_state_dict(schedulers[part.name])
    data.load_state_dict(extra["data"])
    torch.set_rng_state(extra["rng"])
    if extra["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(extra["cuda_rng"])
    return int(extra["step"])


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it runs without a process group; that is intended in a one-process run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def full_state(net) -> dict[str, torch.Tensor]:
    """The whole model's state on CPU (gathered from every rank under FSDP; every rank must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ------------------------------------------------------------------------------------------ the loop
def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


_memory_gib = memory_gib


def _jsonable(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _append(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def _drop_metrics_after(path: Path, step: int) -> None:
    """Forget the records of steps after the checkpoint (a run killed between saves redoes them)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_output(path) as tmp:
        Path(tmp).write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def fit(cfg: LoopConfig, make_objective: Callable[[torch.device], Objective], *, out=sys.stderr) -> list[dict]:
    """Run (or resume) a training run into ``cfg.output``; returns this call's metric records.

    ``cfg``: a :class:`~mimo_audio.train.config.LoopConfig` (an objective's configuration; recorded as
    ``train_config.json``); ``make_objective(device)`` builds the objective once the run folder checks passed."""
    init_distributed(cfg.device)
    rank, world = dist_info()
    output = Path(cfg.output).expanduser()
    state_file = output / STATE_FILE
    if cfg.resume and state_file.is_file() and json.loads(state_file.read_text()).get("finished"):
        st = json.loads(state_file.read_text())
        if rank == 0:
            print(f"{output}: the run already finished at step {st['step']} (model in {output / 'final'}); "
                  "nothing to resume", file=out)
        return []
    existing = _checkpoints(output) if output.is_dir() else []
    if existing and not cfg.resume:
        raise TrainConfigError(f"{output} already holds a run ({existing[-1].name}); pass --resume to continue it "
                               "or choose another --output")
    device = pick_device(cfg)
    obj = make_objective(device)
    data, val_data, parts = obj.data, obj.val_data, obj.parts

    step = 0
    if cfg.resume:
        found = _checkpoints(output)
        if found:
            step = load_checkpoint(found[-1], parts, data)
            if rank == 0:
                print(f"resuming {output} from {found[-1].name}", file=out)
                _drop_metrics_after(output / "metrics.jsonl", step)
        elif rank == 0:
            print(f"{output}: no checkpoint yet; starting from step 0", file=out)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(_jsonable(cfg), indent=2))
    barrier()

    records = []
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not (rank == 0 and cfg.progress and sys.stderr.isatty()))
    metrics = output / "metrics.jsonl"
    tracker = open_tracker(cfg.tracker, output, rank=rank, start_step=step)
    val_start = val_data.state_dict() if val_data is not None else None
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        values, amount = obj.step(step)
        step += 1
        dt = time.perf_counter() - t0
        rec = {"step": step, **values, obj.throughput_key: amount / dt, "memory": round(memory_gib(device), 3)}
        records.append(rec)
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
            _append(metrics, rec)
            tracker.log(rec)
        hook = getattr(obj, "after_step", None)
        if hook is not None:
            hook(step, output)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", rate=f"{rec[obj.throughput_key]:.0f}")
        if cfg.val_every and step % cfg.val_every == 0 and val_data is not None:
            val_data.load_state_dict(val_start)  # the same validation batches every time
            v = obj.validate(step, output)
            if rank == 0:
                _append(metrics, {"step": step, **v})
                tracker.log({"step": step, **v})
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_checkpoint(output, step, parts, data, cfg.keep)
        if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.max_steps:
            bar.close()
            tracker.close()
            if rank == 0:
                print(f"stopped after step {step} (--stop-after); continue with --resume", file=out)
            return records
    bar.close()
    tracker.close()
    obj.export(output)
    if rank == 0:
        with atomic_output(state_file) as tmp:
            Path(tmp).write_text(json.dumps({"finished": True, "step": step}))
    barrier()
    return records
