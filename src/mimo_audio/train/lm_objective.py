"""The LM's training objective (SPEC §8.2, §8.3) for the generic loop of :mod:`.trainer`: module groups and their
learning rates, stage freezing, LoRA, activation checkpointing, the forward/loss over
``MimoAudioLM.forward(grid, attention_mask=, labels=)``, validation and the export to the released layout."""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ..lm import MimoAudioLM
from .config import TrainConfig, TrainConfigError
from .trainer import Part, dist_info, fit, full_state

ENCODER = ("patch_encoder.", "speech_embeddings.", "group_downcast.")
DECODER = ("patch_decoder.", "local_heads.", "hidden_downcast.", "speech_to_local.")
LLM = ("embed_tokens.", "backbone.", "lm_head.")
_PEFT_PREFIX = "base_model.model."
VAL_BATCHES = 8


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


def lr_lambda(cfg):
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


def shard_units(lm: MimoAudioLM) -> list[torch.nn.Module]:
    """The modules :func:`shard` makes FSDP2 units of their own, in forward order: the text embedding, the patch
    encoder, every backbone block, the LM head and the patch decoder. The rest (speech embeddings, downcasts,
    local heads, the backbone's final norm: 0.03 B parameters at the released shapes) is the root unit, which
    FSDP2 holds unsharded through the step."""
    return [lm.embed_tokens, lm.patch_encoder, *lm.backbone.layers, lm.lm_head, lm.patch_decoder]


def mixed_precision(cfg: TrainConfig, device: torch.device, world: int):
    """The FSDP2 ``MixedPrecisionPolicy`` of a run, or None: with ``--bf16`` under torchrun on CUDA, units are
    gathered in bf16 and gradients reduced in fp32 into the fp32 shards the optimizer steps (the master weights).
    One process (no FSDP) keeps bf16 autocast over fp32 weights; CPU runs stay fp32."""
    if not (cfg.bf16 and device.type == "cuda" and world > 1):
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(model: torch.nn.Module, lm: MimoAudioLM, mp_policy=None) -> None:
    """FSDP2: each of :func:`shard_units` a unit, then the root (``model``: the LM or its peft wrapper)."""
    from torch.distributed.fsdp import fully_shard

    kw = {} if mp_policy is None else {"mp_policy": mp_policy}
    for unit in shard_units(lm):
        fully_shard(unit, **kw)
    fully_shard(model, **kw)


def load_model(cfg: TrainConfig) -> MimoAudioLM:
    if cfg.model is None:
        raise TrainConfigError("no --model: name the LM folder or hub id to start from")
    return MimoAudioLM.from_pretrained(cfg.model, device="cpu", dtype="float32")


def _llm_group(optimizer) -> int:
    for i, g in enumerate(optimizer.param_groups):
        if g.get("name", "").startswith("llm"):
            return i
    return 0


# ------------------------------------------------------------------------------------------ the objective
class LMObjective:
    """One optimizer step of the LM per :meth:`step` (gradient accumulation, clipping, the stage's loss)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, *, model: MimoAudioLM | None, data, val_data,
                 make_data):
        rank, world = dist_info()
        if data is None:
            if not cfg.data:
                raise TrainConfigError("no --data: name the prepared training examples")
            if not Path(cfg.data).expanduser().exists():
                raise TrainConfigError(f"--data {cfg.data} does not exist")
        lm = load_model(cfg) if model is None else model
        if cfg.empty_id is not None:
            lm.empty_id = cfg.empty_id
        if lm.empty_id is None:
            raise TrainConfigError("the model has no <|empty|> id (no tokenizer.json in its folder); set lm.empty_id")
        self.max_groups = lm.config.max_position_embeddings
        if data is None:
            data = make_data(cfg.data, cfg, lm.config.group_size)
        if val_data is None and cfg.val_data:
            val_data = make_data(cfg.val_data, cfg, lm.config.group_size, shuffle=False)
        cols = getattr(data, "max_columns", None)
        if cols is not None and cols // lm.config.group_size > self.max_groups:
            raise TrainConfigError(f"the data holds an example of {cols // lm.config.group_size} groups but the model "
                                   f"has {self.max_groups} positions; drop or cut the longer examples")
        self.data, self.val_data = data, val_data
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
        self.mp_policy = mixed_precision(cfg, device, world)
        if world > 1:
            shard(net, lm, self.mp_policy)
        optimizer = torch.optim.AdamW(param_groups(net, cfg), betas=tuple(cfg.betas), eps=1e-8)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.parts = [Part("model", net, optimizer, scheduler)]
        self.trainable = [p for p in net.parameters() if p.requires_grad]
        self.cfg, self.lm, self.net, self.device, self.world = cfg, lm, net, device, world
        self.optimizer, self.scheduler = optimizer, scheduler
        # bf16 on CUDA: FSDP2's policy under torchrun (above), autocast over the fp32 weights in one process
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if device.type == "cuda" and cfg.bf16 and self.mp_policy is None else nullcontext())
        self.text_loss_chunk = cfg.text_loss_chunk or None
        self.weights = cfg.loss_weights()  # pt1: LossWeights.stage1() (text only); pt2 / sft: 100-12-8-6-4-2-2-1-1
        self.throughput_key = "tokens_per_s"

    def step(self, step: int) -> tuple[dict, float]:
        """One optimizer step; returns its metrics (without ``step`` and timing) and the tokens it read."""
        cfg, lm, net, device = self.cfg, self.lm, self.net, self.device
        C = lm.config.audio_channels
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(2 + C, dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(cfg.grad_accum):
            batch = next(self.data)
            grid = batch["grid"].to(device)
            n = grid.shape[-1] // lm.config.group_size
            if n > self.max_groups:
                raise TrainConfigError(f"a batch of {n} groups does not fit the model's {self.max_groups} positions")
            with self.autocast:
                o = net(grid, attention_mask=batch["attention_mask"].to(device), labels=batch["labels"].to(device),
                        loss_weights=self.weights, text_loss_chunk=self.text_loss_chunk)
            loss = o.loss
            (loss / cfg.grad_accum).backward()
            sums += torch.cat([loss.detach()[None], o.text_loss.detach()[None], o.channel_losses.detach()]
                              ).double() / cfg.grad_accum
            tokens += batch["attention_mask"].sum().item()
        if self.world > 1:
            dist.all_reduce(sums)
            sums /= self.world
            dist.all_reduce(tokens)
        gn = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        lr = self.optimizer.param_groups[_llm_group(self.optimizer)]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        s = sums.tolist()
        rec = {"loss": s[0], "loss_text": s[1], **{f"loss_audio_{c}": s[2 + c] for c in range(C)},
               "lr": lr, "grad_norm": float(gn)}
        return rec, float(tokens)

    @torch.no_grad()
    def validate(self, step: int, output: Path) -> dict:
        """Mean loss over the first ``VAL_BATCHES`` micro-batches of the validation source (all ranks)."""
        net, device = self.net, self.device
        net.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for _ in range(VAL_BATCHES):
            b = next(self.val_data)
            with self.autocast:
                o = net(b["grid"].to(device), attention_mask=b["attention_mask"].to(device),
                        labels=b["labels"].to(device), loss_weights=self.weights, text_loss_chunk=self.text_loss_chunk)
            total += o.loss.double()
        net.train()
        if self.world > 1:
            dist.all_reduce(total)
        return {"val_loss": float(total) / (VAL_BATCHES * self.world)}

    def export(self, output: Path) -> None:
        """``OUTPUT/final/``: the released layout, or for a LoRA run the adapter (naming its base)."""
        sd = full_state(self.net)
        if dist_info()[0] != 0:
            return
        from .export import export_adapter, export_released

        cfg = self.cfg
        base = None
        if cfg.model is not None:
            from .. import checkpoint

            base = checkpoint.resolve(cfg.model)
        if cfg.lora:
            export_adapter(self.net, sd, output / "final", base=cfg.model)
        else:
            export_released(self.lm.config, sd, output / "final", base_folder=base, empty_id=self.lm.empty_id)


# ------------------------------------------------------------------------------------------ the command's entry
def make_data(path: str, cfg: TrainConfig, group_size: int, *, shuffle: bool = True):
    """``--data`` / ``--val-data``: a prepared shard folder (the ``--tasks`` mixture, length-bucketed; examples
    longer than ``--max-groups``, default the model folder's positions, are cut) or example files; this rank's
    share of it."""
    from .data import open_data

    rank, world = dist_info()
    max_groups = cfg.max_groups
    if max_groups is None and cfg.model is not None:
        from .. import checkpoint
        from ..config import LMConfig

        cfg_file = checkpoint.resolve(cfg.model) / "config.json"
        max_groups = LMConfig.from_file(cfg_file).max_position_embeddings if cfg_file.is_file() else None
    return open_data(path, cfg, group_size, rank=rank, world=world, shuffle=shuffle, max_groups=max_groups or 8192)


def train(cfg: TrainConfig, *, model=None, data=None, val_data=None, out=sys.stderr) -> list[dict]:
    """Train (or resume) the LM into ``cfg.output`` (:class:`LMObjective` on :func:`~.trainer.fit`); returns
    this call's metric records.

    ``model`` / ``data`` / ``val_data`` replace loading them from ``cfg.model`` / ``cfg.data`` (batch sources as in
    :mod:`mimo_audio.train.data`; each rank passes its own share)."""
    cfg.validate()
    return fit(cfg, lambda device: LMObjective(cfg, device, model=model, data=data, val_data=val_data,
                                               make_data=make_data), out=out)
