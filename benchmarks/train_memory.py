"""Memory per GPU of training the released-shape LM with the trainer (mimo_audio.train) under FSDP2 with
activation checkpointing, computed from the parameter counts of the modules as the trainer shards them (built on
the meta device: nothing is allocated). Prints the table recorded in docs/training.md and docs/benchmarks.md.

The trainer's layout: each backbone block is one FSDP2 unit (``fully_shard(block)``), everything else (text
embedding, LM head, patch encoder, patch decoder, downcasts) the root unit; parameters, gradients and AdamW
moments are fp32 (bf16 autocast on CUDA), each rank holds 1/W of every parameter (dim 0, padded).

Terms (bytes per GPU):

- **state**: sharded fp32 weight (4) of every parameter + fp32 gradient and two AdamW moments (12) of every
  trained one;
- **gathered**: with W > 1, the unsharded fp32 root unit (FSDP2 keeps the root gathered from forward through
  backward) and its trained gradients before the reduce-scatter, plus two gathered backbone blocks (the current
  one and the prefetched one) and one block's gradients;
- **autocast**: ``torch.autocast`` caches the bf16 cast of every leaf weight that requires grad until the context
  exits (the trainer's forward and loss run inside it), i.e. 2 bytes per trained matrix used in a matmul; 0 for
  LoRA's frozen base;
- **activations** of ``--batch`` sequences of ``--groups`` groups with activation checkpointing, ``--speech`` of the
  groups carrying audio: each checkpointed block's fp32 input (backbone 36 x S x 4096, patch encoder 6 x S_sp x 4
  x 1024, patch decoder 16 x S_sp x 11 x 1024), one backbone block's recomputed bf16 activations and their
  gradients, and the text loss (bf16 logits kept in the output, the fp32 log-softmax the cross entropy saves, and
  its fp32 gradient and input gradient in backward: 2 + 4 + 4 + 4 bytes per position x vocabulary).

Not counted: the CUDA context and allocator fragmentation (typically 1-3 GiB), NCCL buffers, the data loader.

Usage: python benchmarks/train_memory.py [--ranks 1,8,16,32] [--groups 8192] [--batch 1] [--lora 16] [--speech 1.0]
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
    from mimo_audio.train.trainer import freeze_for_stage

    with torch.device("meta"):
        lm = MimoAudioLM(config)
    cfg = make_config(stage=stage, lora=lora)
    freeze_for_stage(lm, cfg)
    if lora:
        from mimo_audio.train.lora import add_lora

        return add_lora(lm, cfg)
    return lm


def _blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    lm = net.get_base_model() if hasattr(net, "get_base_model") else net
    return list(lm.backbone.layers)


def _shard(p: torch.Tensor, world: int) -> int:
    """Elements of ``p`` one rank holds: FSDP2 cuts dim 0 into ``world`` equal (padded) pieces."""
    if p.ndim == 0:
        return 1
    return math.ceil(p.shape[0] / world) * (p.numel() // p.shape[0])


def state_bytes(net: torch.nn.Module, world: int) -> int:
    """Sharded fp32 weights + fp32 gradients + two fp32 AdamW moments of the trained parameters, per rank."""
    return sum(_shard(p, world) * (16 if p.requires_grad else 4) for p in net.parameters())


def gathered_bytes(net: torch.nn.Module, world: int) -> int:
    """The unsharded working set FSDP2 adds on top of the shards (none in one process)."""
    if world == 1:
        return 0
    in_blocks = {id(p) for b in _blocks(net) for p in b.parameters()}
    root = [p for p in net.parameters() if id(p) not in in_blocks]
    root_b = sum(p.numel() * (8 if p.requires_grad else 4) for p in root)
    blocks = sorted((sum(p.numel() * 4 for p in b.parameters()), sum(p.numel() * 4 for p in b.parameters()
                     if p.requires_grad)) for b in _blocks(net))
    return root_b + 2 * blocks[-1][0] + blocks[-1][1]


def autocast_bytes(net: torch.nn.Module) -> int:
    """bf16 copies autocast caches: trained 2-D weights of Linear layers (embedding lookups are not cast)."""
    return sum(m.weight.numel() * 2 for m in net.modules()
               if isinstance(m, torch.nn.Linear) and m.weight.requires_grad)


def activation_bytes(c: LMConfig, *, batch: int, groups: int, speech: float) -> int:
    """Activations of ``batch`` sequences of ``groups`` groups with activation checkpointing (see the module doc)."""
    S = batch * groups
    sp = S * speech
    D, F = c.hidden_size, c.intermediate_size
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    steps = c.group_size + max(c.delay_pattern)
    saved_inputs = 4 * (c.num_hidden_layers * S * D + c.input_local_layers * sp * c.group_size * c.input_local_dim
                        + c.local_layers * sp * steps * c.local_dim)
    # one backbone block recomputed: norm outputs (2D), qkv before/after RoPE (2 qkv), attention and o_proj out
    # (2D), gate_up (2F), silu(gate) and the product (2F), in bf16; the same again for their gradients
    block = 2 * 2 * S * (4 * D + 2 * qkv + 4 * F)
    text_loss = S * c.vocab_size * (2 + 4 + 4 + 4)
    return int(saved_inputs + block + text_loss)


def rows(ranks: list[int], *, groups: int, batch: int, lora: int, speech: float) -> list[tuple]:
    c = released_config()
    out = []
    for label, net in (("full fine-tuning (sft)", build(c)), (f"LoRA r={lora} (sft)", build(c, lora=lora))):
        n_all = sum(p.numel() for p in net.parameters())
        n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
        act = activation_bytes(c, batch=batch, groups=groups, speech=speech)
        cast = autocast_bytes(net)
        for w in ranks:
            st, ga = state_bytes(net, w), gathered_bytes(net, w)
            out.append((label, n_all, n_train, w, st, ga, cast, act, st + ga + cast + act))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="1,8,16,32")
    ap.add_argument("--groups", type=int, default=8192, help="groups per sequence (the model's context: 8192)")
    ap.add_argument("--batch", type=int, default=1, help="sequences per micro-batch per rank")
    ap.add_argument("--lora", type=int, default=16)
    ap.add_argument("--speech", type=float, default=1.0, help="share of groups carrying audio (1.0: worst case)")
    a = ap.parse_args()
    ranks = [int(x) for x in a.ranks.split(",")]
    print(f"Per GPU, FSDP2 + activation checkpointing, bf16 autocast, fp32 weights/grads/AdamW; micro-batch "
          f"{a.batch} x {a.groups} groups, {a.speech:.0%} speech groups (GiB)\n")
    print("| run | params | trained | GPUs | state | FSDP gathered | autocast cache | activations | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, n, t, w, st, ga, cast, act, tot in rows(ranks, groups=a.groups, batch=a.batch, lora=a.lora,
                                                      speech=a.speech):
        print(f"| {label} | {n / 1e9:.2f} B | {t / 1e6:,.1f} M | {w} | {st / GIB:.1f} | {ga / GIB:.1f} | "
              f"{cast / GIB:.1f} | {act / GIB:.1f} | {tot / GIB:.1f} |")


if __name__ == "__main__":
    main()
