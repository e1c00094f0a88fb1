"""The training loop (SPEC §8.2, §8.3) over ``MimoAudioLM.forward(grid, attention_mask=, labels=)``.

One process or ``torchrun --nproc-per-node N``: with a process group the model is sharded with FSDP2
(``torch.distributed.fsdp.fully_shard``: each backbone block, then the whole model), gradients are averaged
over ranks by FSDP, and checkpoints are written with ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ..files import atomic_output
from ..lm import MimoAudioLM
from .config import TrainConfig, TrainConfigError
from .tracker import open_tracker

ENCODER = ("patch_encoder.", "speech_embeddings.", "group_downcast.")
DECODER = ("patch_decoder.", "local_heads.", "hidden_downcast.", "speech_to_local.")
LLM = ("embed_tokens.", "backbone.", "lm_head.")
_PEFT_PREFIX = "base_model.model."
STATE_FILE = "trainer_state.json"
COMPLETE = "complete.json"


# ------------------------------------------------------------------------------------------ groups
def _plain(name: str) -> str:
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def module_group(name: str) -> str:
    """``encoder`` / ``llm`` / ``decoder``: the learning-rate group of a parameter (SPEC §8.2). The speech
    embeddings feed both the patch encoder and the decoder; they count as the patch encoder's (stage 1 trains
    them through the encoder path)."""
    n = _plain(name)
    for group, prefixes in (("encoder", ENCODER), ("decoder", DECODER), ("llm", LLM)):
        if n.startswith(prefixes):
            return group
    raise ValueError(f"parameter {name} belongs to no module group")


def decays(name: str, p: torch.Tensor) -> bool:
    """Weight decay on matrices only: none on biases, norms (and other 1-d parameters)."""
    n = _plain(name)
    return p.ndim >= 2 and not n.endswith(".bias") and "norm" not in n.rsplit(".", 2)[-2]


def freeze_for_stage(lm: MimoAudioLM, cfg: TrainConfig) -> None:
    """Stage 1: the patch decoder group is frozen (no gradient)."""
    if cfg.lrs()["decoder"] is None:
        for name, p in lm.named_parameters():
            if module_group(name) == "decoder":
                p.requires_grad_(False)


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    lrs = cfg.lrs()
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = module_group(name)
        groups.setdefault((g, decays(name, p)), []).append(p)
    out = []
    for (g, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": lrs[g], "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{g}{'' if decay else '-nodecay'}"})
    if not out:
        raise TrainConfigError("nothing to train: every parameter is frozen")
    return out


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up over ``ceil(warmup_ratio * max_steps)`` steps, then constant or cosine (to 10 %)."""
    warm = math.ceil(cfg.warmup_ratio * cfg.max_steps)
    total = cfg.max_steps
    cosine = cfg.schedule_name == "cosine"

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def checkpoint_blocks(lm: MimoAudioLM) -> None:
    """Activation checkpointing: every block of the three stacks recomputes its activations in backward."""
    from torch.utils.checkpoint import checkpoint

    for stack in (lm.backbone, lm.patch_encoder, lm.patch_decoder):
        for block in stack.layers:
            inner = block.forward

            def fwd(*args, _inner=inner, **kw):
                if kw.get("cache") is not None or not torch.is_grad_enabled():
                    return _inner(*args, **kw)
                return checkpoint(_inner, *args, use_reentrant=False, **kw)

            block.forward = fwd


# ------------------------------------------------------------------------------------------ distributed
def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | None) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) start the process group: NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        d = torch.device(cfg.device)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise TrainConfigError(f"--device {cfg.device}: CUDA is not available on this machine")
    else:
        d = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return d


def shard(model: torch.nn.Module, lm: MimoAudioLM) -> None:
    from torch.distributed.fsdp import fully_shard

    for block in lm.backbone.layers:
        fully_shard(block)
    fully_shard(model)


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in output.glob("step-*") if p.is_dir() and (p / COMPLETE).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def save_checkpoint(output: Path, step: int, model, optimizer, scheduler, data, keep: int) -> Path:
    """``OUTPUT/step-N/``: model + optimizer (sharded, ``torch.distributed.checkpoint``), each rank's scheduler,
    data position and RNG, then ``complete.json``. Written under ``.step-N.tmp`` and renamed when complete, so a
    run killed mid-save leaves nothing that looks like a checkpoint. Keeps the newest ``keep``."""
    import torch.distributed.checkpoint as dcp

    rank, world = _dist()
    final = output / f"step-{step:08d}"
    tmp = output / f".step-{step:08d}.tmp"
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    with _quiet_single_process():
        dcp.save(_state(model, optimizer), checkpoint_id=str(tmp))
    extra = {"step": step, "scheduler": scheduler.state_dict(), "data": data.state_dict(),
             "rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    torch.save(extra, tmp / f"rank-{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(json.dumps({"step": step, "world": world}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, data) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    rank, world = _dist()
    info = json.loads((path / COMPLETE).read_text())
    if info["world"] != world:
        raise TrainConfigError(f"{path} was written by {info['world']} ranks; resume with the same number "
                               f"(this run has {world})")
    state = _state(model, optimizer)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    extra = torch.load(path / f"rank-{rank}.pt", weights_only=False)
    scheduler.load_state_dict(extra["scheduler"])
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


def _barrier() -> None:
    if _dist()[1] > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------ the loop
def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _base_folder(cfg: TrainConfig) -> Path | None:
    if cfg.model is None:
        return None
    from .. import checkpoint

    return checkpoint.resolve(cfg.model)


def load_model(cfg: TrainConfig) -> MimoAudioLM:
    if cfg.model is None:
        raise TrainConfigError("no --model: name the LM folder or hub id to start from")
    return MimoAudioLM.from_pretrained(cfg.model, device="cpu", dtype="float32")


def make_data(path: str, cfg: TrainConfig, group_size: int, *, shuffle: bool = True):
    """``--data`` / ``--val-data``: a prepared shard folder (the ``--tasks`` mixture, length-bucketed; examples
    longer than ``--max-groups``, default the model folder's positions, are cut) or example files; this rank's
    share of it."""
    from .data import open_data

    rank, world = _dist()
    max_groups = cfg.max_groups
    if max_groups is None and cfg.model is not None:
        from ..config import LMConfig

        cfg_file = _base_folder(cfg) / "config.json"
        max_groups = LMConfig.from_file(cfg_file).max_position_embeddings if cfg_file.is_file() else None
    return open_data(path, cfg, group_size, rank=rank, world=world, shuffle=shuffle, max_groups=max_groups or 8192)


def train(cfg: TrainConfig, *, model: MimoAudioLM | None = None, data=None, val_data=None,
          out=sys.stderr) -> list[dict]:
    """Run (or resume) a training run into ``cfg.output``; returns this call's metric records.

    ``model`` / ``data`` / ``val_data`` replace loading them from ``cfg.model`` / ``cfg.data`` (batch sources as in
    :mod:`mimo_audio.train.data`; each rank passes its own share)."""
    cfg.validate()
    init_distributed(cfg.device)
    rank, world = _dist()
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
    if data is None:
        if not cfg.data:
            raise TrainConfigError("no --data: name the prepared training examples")
        if not Path(cfg.data).expanduser().exists():
            raise TrainConfigError(f"--data {cfg.data} does not exist")
    device = pick_device(cfg)

    lm = load_model(cfg) if model is None else model
    if cfg.empty_id is not None:
        lm.empty_id = cfg.empty_id
    if lm.empty_id is None:
        raise TrainConfigError("the model has no <|empty|> id (no tokenizer.json in its folder); set lm.empty_id")
    max_groups = lm.config.max_position_embeddings
    if data is None:
        data = make_data(cfg.data, cfg, lm.config.group_size)
    if val_data is None and cfg.val_data:
        val_data = make_data(cfg.val_data, cfg, lm.config.group_size, shuffle=False)
    cols = getattr(data, "max_columns", None)
    if cols is not None and cols // lm.config.group_size > max_groups:
        raise TrainConfigError(f"the data holds an example of {cols // lm.config.group_size} groups but the model has "
                               f"{max_groups} positions; drop or cut the longer examples")

    torch.manual_seed(cfg.seed)
    lm.train()
    freeze_for_stage(lm, cfg)
    if cfg.activation_checkpointing:
        checkpoint_blocks(lm)
    net: torch.nn.Module = lm
    if cfg.lora:
        from .lora import add_lora

        net = add_lora(lm, cfg)
    net.to(device)
    if world > 1:
        shard(net, lm)
    optimizer = torch.optim.AdamW(param_groups(net, cfg), betas=tuple(cfg.betas), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    trainable = [p for p in net.parameters() if p.requires_grad]

    step = 0
    if cfg.resume:
        found = _checkpoints(output)
        if found:
            step = load_checkpoint(found[-1], net, optimizer, scheduler, data)
            if rank == 0:
                print(f"resuming {output} from {found[-1].name}", file=out)
                _drop_metrics_after(output / "metrics.jsonl", step)
        elif rank == 0:
            print(f"{output}: no checkpoint yet; starting from step 0", file=out)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(_jsonable(cfg), indent=2))
    _barrier()

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext())
    text_only = cfg.stage_info.text_only
    C = lm.config.audio_channels
    records = []
    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=not (rank == 0 and cfg.progress and sys.stderr.isatty()))
    metrics = output / "metrics.jsonl"
    tracker = open_tracker(cfg.tracker, output, rank=rank, start_step=step)
    weights = cfg.loss_weights()  # pt1: LossWeights.stage1() (text only); pt2 / sft: 100-12-8-6-4-2-2-1-1
    val_start = val_data.state_dict() if val_data is not None else None
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(2 + C, dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(cfg.grad_accum):
            batch = next(data)
            grid = batch["grid"].to(device)
            n = grid.shape[-1] // lm.config.group_size
            if n > max_groups:
                raise TrainConfigError(f"a batch of {n} groups does not fit the model's {max_groups} positions")
            with autocast:
                o = net(grid, attention_mask=batch["attention_mask"].to(device), labels=batch["labels"].to(device),
                        loss_weights=weights)
            loss = o.loss
            (loss / cfg.grad_accum).backward()
            sums += torch.cat([loss.detach()[None], o.text_loss.detach()[None], o.channel_losses.detach()]
                              ).double() / cfg.grad_accum
            tokens += batch["attention_mask"].sum().item()
        if world > 1:
            dist.all_reduce(sums)
            sums /= world
            dist.all_reduce(tokens)
        gn = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        lr = optimizer.param_groups[_llm_group(optimizer)]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1
        dt = time.perf_counter() - t0
        s = sums.tolist()
        rec = {"step": step, "loss": s[0], "loss_text": s[1], **{f"loss_audio_{c}": s[2 + c] for c in range(C)},
               "lr": lr, "grad_norm": float(gn), "tokens_per_s": float(tokens) / dt,
               "memory": round(_memory_gib(device), 3)}
        records.append(rec)
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.max_steps):
            with open(metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            tracker.log(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{s[0]:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if cfg.val_every and step % cfg.val_every == 0 and val_data is not None:
            val_data.load_state_dict(val_start)  # the same validation batches every time
            v = validate(net, val_data, cfg, device, text_only, autocast)
            if rank == 0:
                with open(metrics, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "val_loss": v}) + "\n")
                tracker.log({"step": step, "val_loss": v})
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_checkpoint(output, step, net, optimizer, scheduler, data, cfg.keep)
        if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.max_steps:
            bar.close()
            tracker.close()
            if rank == 0:
                print(f"stopped after step {step} (--stop-after); continue with --resume", file=out)
            return records
    bar.close()
    tracker.close()
    export_final(net, lm, cfg, output)
    if rank == 0:
        with atomic_output(state_file) as tmp:
            Path(tmp).write_text(json.dumps({"finished": True, "step": step}))
    _barrier()
    return records


def _drop_metrics_after(path: Path, step: int) -> None:
    """Forget the records of steps after the checkpoint (a run killed between saves redoes them)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_output(path) as tmp:
        Path(tmp).write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _llm_group(optimizer) -> int:
    for i, g in enumerate(optimizer.param_groups):
        if g.get("name", "").startswith("llm"):
            return i
    return 0


VAL_BATCHES = 8


@torch.no_grad()
def validate(net, val_data, cfg, device, text_only, autocast) -> float:
    """Mean loss over the first ``VAL_BATCHES`` micro-batches of the validation source (all ranks)."""
    net.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _ in range(VAL_BATCHES):
        b = next(val_data)
        with autocast:
            o = net(b["grid"].to(device), attention_mask=b["attention_mask"].to(device), labels=b["labels"].to(device),
                    loss_weights=cfg.loss_weights())
        total += o.loss.double()
    net.train()
    _, world = _dist()
    if world > 1:
        dist.all_reduce(total)
    return float(total) / (VAL_BATCHES * world)


def _jsonable(cfg: TrainConfig) -> dict:
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


# ------------------------------------------------------------------------------------------ export
def full_state(net) -> dict[str, torch.Tensor]:
    """The whole model's state on CPU (gathered from every rank under FSDP; every rank must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_final(net, lm: MimoAudioLM, cfg: TrainConfig, output: Path) -> None:
    """``OUTPUT/final/``: the released layout, or for a LoRA run the adapter (naming its base)."""
    sd = full_state(net)
    rank, _ = _dist()
    if rank != 0:
        return
    from .export import export_adapter, export_released

    base = _base_folder(cfg)
    if cfg.lora:
        export_adapter(net, sd, output / "final", base=cfg.model)
    else:
        export_released(lm.config, sd, output / "final", base_folder=base, empty_id=lm.empty_id)
