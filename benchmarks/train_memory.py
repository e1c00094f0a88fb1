"""Memory per GPU of training the released-shape LM with the trainer (mimo_audio.train) under FSDP2 with
activation checkpointing, computed from the parameter counts of the modules as the trainer shards them (built on
the meta device: nothing is allocated). Prints the table recorded in docs/training.md and docs/benchmarks.md.

The trainer's layout (``--layout now``, the default): the text embedding, the patch encoder, each backbone block,
the LM head and the patch decoder are FSDP2 units of their own (``mimo_audio.train.lm_objective.shard_units``),
the rest (speech embeddings, downcasts, local heads, final norm: 0.03 B parameters) the root unit; each rank
holds 1/W of every parameter (dim 0, padded) in fp32 (the master weights the optimizer steps). With ``--bf16`` on
CUDA under torchrun, FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` gathers units in bf16
and reduces gradients in fp32; one process (W = 1, no FSDP) runs bf16 autocast over fp32 weights. The text loss
is chunked (``text_loss_chunk``, default 1024 positions). ``--layout before`` computes the trainer before these
three savings (only the backbone blocks sharded as units, autocast over fp32 weights everywhere, full logits).

Terms (bytes per GPU):

- **state**: sharded fp32 weight (4) of every parameter + fp32 gradient and two AdamW moments (12) of every
  trained one;
- **gathered**: with W > 1, the unsharded root unit (FSDP2 keeps the root gathered from forward through backward)
  and its trained gradients; two gathered units (the current one and the prefetched one: the two largest are
  counted) and one unit's gradients (bf16, plus the fp32 copy the reduce-scatter reads); and the LM head, which
  the chunked loss gathers once and FSDP2 reduce-scatters at the end of backward, so it and its bf16 gradient
  are held through the backward. 2 bytes per element under the bf16 policy, 4 in fp32 (``before``: fp32);
- **autocast**: ``torch.autocast`` caches the bf16 cast of every leaf weight that requires grad until the context
  exits, i.e. 2 bytes per trained matrix used in a matmul; 0 for LoRA's frozen base and under the FSDP2 bf16
  policy (no autocast there: the gathered weights are bf16 already);
- **activations** of ``--batch`` sequences of ``--groups`` groups with activation checkpointing, ``--speech`` of the
  groups carrying audio: each checkpointed block's input (backbone 36 x S x 4096, patch encoder 6 x S_sp x 4
  x 1024, patch decoder 16 x S_sp x 11 x 1024; fp32 under autocast, bf16 under the bf16 policy), one backbone
  block's recomputed bf16 activations and their gradients, and the text loss over one chunk of positions (all S
  unchunked): bf16 logits, their fp32 copy / log-softmax the cross entropy saves, and its fp32 gradient and input
  gradient in backward: 2 + 4 + 4 + 4 bytes per position x vocabulary.

Not counted: the CUDA context and allocator fragmentation (typically 1-3 GiB), NCCL buffers, the data loader.

Usage: python benchmarks/train_memory.py [--ranks 1,8,16,32] [--groups 8192] [--batch 1] [--lora 16] [--speech 1.0]
    [--text-loss-chunk 1024] [--layout now|before]
"""

from __future__ import annotations

import argparse
import math

import torch

from mimo_audio.config import LMConfig
from mimo_audio.lm import MimoAudioLM

GIB = 2**30


def released_config() -> LMConfig:
    """The released LM (SPEC §3.1): 36 backbone layers of 4096, vocabulary 151,680, patch decoder 16 x 1024,
    patch encoder 6 x 1024."""
    return LMConfig(vocab_size=151680, hidden_size=4096, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                    rope_theta=640000.0)


def build(config: LMConfig, *, stage: str = "sft", lora: int = 0) -> torch.nn.Module:
    """The model on the meta device, frozen / wrapped as the trainer does for ``stage`` and ``--lora``."""
    from mimo_audio.train.config import make_config
    from mimo_audio.train.lm_objective import freeze_for_stage

    with torch.device("meta"):
        lm = MimoAudioLM(config)
    cfg = make_config(stage=stage, lora=lora)
    freeze_for_stage(lm, cfg)
    if lora:
        from mimo_audio.train.lora import add_lora

        return add_lora(lm, cfg)
    return lm


def _shard(p: torch.Tensor, world: int) -> int:
    """Elements of ``p`` one rank holds: FSDP2 cuts dim 0 into ``world`` equal (padded) pieces."""
    if p.ndim == 0:
        return 1
    return math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0])


def state_bytes(net: torch.nn.Module, world: int) -> int:
    """Sharded fp32 weights + fp32 gradients + two fp32 AdamW moments of the trained parameters, per rank."""
    return sum(_shard(p, world) * (16 if p.requires_grad else 4) for p in net.parameters())


def _units(net: torch.nn.Module, layout: str) -> list[torch.nn.Module]:
    lm = net.get_base_model() if hasattr(net, "get_base_model") else net
    if layout == "before":
        return list(lm.backbone.layers)
    from mimo_audio.train.lm_objective import shard_units

    return shard_units(lm)


def _sizes(module: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in module.parameters()), sum(p.numel() for p in module.parameters() if p.requires_grad)


def gathered_bytes(net: torch.nn.Module, world: int, *, layout: str = "now", bf16: bool = True) -> int:
    """The unsharded working set FSDP2 adds on top of the shards (none in one process)."""
    if world == 1:
        return 0
    e = 2 if bf16 and layout == "now" else 4  # bytes per gathered element (parameters and their gradients)
    units = _units(net, layout)
    in_units = {id(p) for u in units for p in u.parameters()}
    root = [p for p in net.parameters() if id(p) not in in_units]
    total = sum(p.numel() * (2 * e if p.requires_grad else e) for p in root)
    sizes = sorted(_sizes(u) for u in units)
    # the two largest units gathered at once, and one unit's gradients with the reduce-scatter's fp32 input
    total += e * (sizes[-1][0] + sizes[-2][0]) + sizes[-1][1] * (e + (4 if e == 2 else 0))
    if layout == "now":  # the LM head and its gradient, held through backward (see the module doc)
        head = (net.get_base_model() if hasattr(net, "get_base_model") else net).lm_head
        n, t = _sizes(head)
        total += e * (n + t)
    return total


def autocast_bytes(net: torch.nn.Module, world: int = 1, *, layout: str = "now", bf16: bool = True) -> int:
    """bf16 copies autocast caches: trained 2-D weights of Linear layers (embedding lookups are not cast); none
    under FSDP2's bf16 policy."""
    if layout == "now" and bf16 and world > 1:
        return 0
    return sum(m.weight.numel() * 2 for m in net.modules()
               if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)


def activation_bytes(c: LMConfig, *, batch: int, groups: int, speech: float, chunk: int | None = None,
                     saved: int = 4) -> int:
    """Activations of ``batch`` sequences of ``groups`` groups with activation checkpointing (see the module doc):
    ``chunk`` positions of text loss at a time (None: all), ``saved`` bytes per element of the blocks' inputs."""
    S = batch * groups
    sp = S * speech
    D, F = c.hidden_size, c.intermediate_size
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    steps = c.group_size + max(c.delay_pattern)
    saved_inputs = saved * (c.num_hidden_layers * S * D + c.input_local_layers * sp * c.group_size * c.input_local_dim
                            + c.local_layers * sp * steps * c.local_dim)
    # one backbone block recomputed: norm outputs (2D), qkv before/after RoPE (2 qkv), attention and o_proj out
    # (2D), gate_up (2F), silu(gate) and the product (2F), in bf16; the same again for their gradients
    block = 2 * 2 * S * (4 * D + 2 * qkv + 4 * F)
    text_loss = min(S, chunk or S) * c.vocab_size * (2 + 4 + 4 + 4)
    return int(saved_inputs + block + text_loss)


def rows(ranks: list[int], *, groups: int, batch: int, lora: int, speech: float, chunk: int | None = 1024,
         layout: str = "now") -> list[tuple]:
    c = released_config()
    out = []
    if layout == "before":
        chunk = None
    for label, net in (("full fine-tuning (sft)", build(c)), (f"LoRA r={lora} (sft)", build(c, lora=lora))):
        n_all = sum(p.numel() for p in net.parameters())
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        for w in ranks:
            mp = layout == "now" and w > 1  # FSDP2's bf16 policy: bf16 activations through the blocks
            act = activation_bytes(c, batch=batch, groups=groups, speech=speech, chunk=chunk, saved=2 if mp else 4)
            cast = autocast_bytes(net, w, layout=layout)
            st, ga = state_bytes(net, w), gathered_bytes(net, w, layout=layout)
            out.append((label, n_all, n_train, w, st, ga, cast, act, st + ga + cast + act))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="1,8,16,32")
    ap.add_argument("--groups", type=int, default=8192, help="groups per sequence (the model's context: 8192)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per micro-batch per rank")
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--speech", type=float, default=1.0, help="share of groups carrying audio (1.0: worst case)")
    ap.add_argument("--text-loss-chunk", type=int, default=1024, help="the trainer's text_loss_chunk (0: off)")
    ap.add_argument("--layout", choices=("now", "before"), default="now",
                    help="the trainer now, or before the bf16 policy / unit / chunked-loss savings")
    a = ap.parse_args()
    ranks = [int(x) for x in a.ranks.split(",")]
    if a.layout == "now":
        how = (f"bf16 FSDP2 MixedPrecisionPolicy (bf16 autocast at 1 GPU), text loss in chunks of "
               f"{a.text_loss_chunk or 'all'} positions")
    else:
        how = "before: only backbone blocks as units, bf16 autocast, full text logits"
    print(f"Per GPU, FSDP2 + activation checkpointing, {how}, fp32 master weights/grads/AdamW; micro-batch "
          f"{a.batch} x {a.groups} groups, {a.speech:.0%} speech groups (GiB)\n")
    print("| run | params | trained | GPUs | state | FSDP gathered | autocast cache | activations | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, n, t, w, st, ga, cast, act, tot in rows(ranks, groups=a.groups, batch=a.batch, lora=a.lora,
                                                      speech=a.speech, chunk=a.text_loss_chunk or None,
                                                      layout=a.layout):
        print(f"| {label} | {n / 1e9:.2f} B | {t / 1e6:,.1f} M | {w} | {st / GIB:.1f} | {ga / GIB:.1f} | "
              f"{cast / GIB:.1f} | {act / GIB:.1f} | {tot / GIB:.1f} |")


if __name__ == "__main__":
    main()
