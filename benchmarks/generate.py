"""Generation speed: ms and aten ops per generated group (audio groups and text groups), batch 1 and 8.

A random "tiny-deep" model with the released depths (36 backbone, 16 patch-decoder, 6 patch-encoder layers)
and width 64, on one CPU thread, eager. Audio groups are forced by banning every text id but <|empty|>, text
groups by banning <|empty|>. Usage: python benchmarks/generate.py [--groups 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mimo_audio.config import LMConfig
from mimo_audio.generate import GenerationConfig, preset, stream_generate
from mimo_audio.lm import MimoAudioLM

EMPTY = 442


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def tiny_deep() -> MimoAudioLM:
    c = LMConfig(vocab_size=448, hidden_size=64, intermediate_size=160, num_hidden_layers=36,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                 rope_theta=640000.0, local_dim=64, local_layers=16, local_attn_heads=4, local_ffn_dim=256,
                 input_local_dim=64, input_local_layers=6)
    torch.manual_seed(0)
    lm = MimoAudioLM(c)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.05)
    return lm.eval()


def wide(dtype=torch.float32) -> MimoAudioLM:
    """The released widths (hidden 4096, ffn 11008, 32/8 heads; patch decoder/encoder 1024 wide, 64 heads) with
    2 backbone, 2 patch-decoder and 1 patch-encoder layers and a 4,096-id text vocabulary: per-group cost where the
    weights, not the op count, dominate."""
    c = LMConfig(vocab_size=4096, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                 rope_theta=640000.0, local_dim=1024, local_layers=2, local_attn_heads=64, local_ffn_dim=4096,
                 input_local_dim=1024, input_local_layers=1)
    torch.manual_seed(0)
    with torch.device("meta"):
        lm = MimoAudioLM(c)
    lm = lm.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.02)
    for stack in (lm.backbone, lm.patch_encoder, lm.patch_decoder):
        stack.init_buffers("cpu")
    return lm.eval()


def prompt(lm, groups=20):
    c = lm.config
    grid = torch.tensor([0, *c.speech_zeroemb_idx])[:, None].repeat(1, 4 * groups)
    grid[0, ::4] = torch.arange(groups) % 400
    return grid


def measure(lm, batch, kind, groups, sample):
    V = lm.config.vocab_size
    banned = tuple(i for i in range(V) if i != EMPTY) if kind == "audio" else (EMPTY,)
    base = preset("default", seed=0) if sample else GenerationConfig()
    # forced audio groups need a greedy text sampler (top-k would drop the forced <|empty|> of a random model)
    text = base.text if kind == "text" else GenerationConfig(text=preset("asr").text).text
    cfg = GenerationConfig(text=text, local=base.local, seed=0, max_new_tokens=groups + 8, banned_ids=banned)
    prompts = [prompt(lm) for _ in range(batch)]
    stream = stream_generate(lm, prompts, cfg, empty_id=EMPTY, greedy=not sample)
    assert kind == "text" or stream.step()[0][0, 0].item() == EMPTY
    for _ in range(2):  # warm up
        stream.step()
    with OpCounter() as oc:
        stream.step()
        stream.step()
    ops = oc.n / 2
    times, cpu = [], []
    for _ in range(groups):  # per-group times; the median resists other load on the machine
        t, c = time.perf_counter(), time.thread_time()
        stream.step()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return sorted(times)[len(times) // 2], sorted(cpu)[len(cpu) // 2], ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--greedy-only", action="store_true", help="only the greedy rows (the engine comparison)")
    ap.add_argument("--batches", default="1,8", help="batch sizes to measure (default 1,8)")
    ap.add_argument("--model", choices=("tiny-deep", "wide"), default="tiny-deep",
                    help="tiny-deep: released depths at width 64 (per-op cost); wide: released widths, few layers")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="for --model wide")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = tiny_deep() if args.model == "tiny-deep" else wide(getattr(torch, args.dtype))
    what = ("tiny-deep (36/16/6 layers, width 64)" if args.model == "tiny-deep"
            else f"wide (released widths, 2/2/1 layers, {args.dtype})")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {what}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print("| sampler | batch | group | ms / group (median, wall) | CPU ms / group (median, thread) | aten ops / group |")
    print("|---|---|---|---|---|---|")
    for sample in (False,) if args.greedy_only else (False, True):
        for batch in (int(b) for b in args.batches.split(",")):
            for kind in ("audio", "text"):
                ms, cpu, ops = measure(lm, batch, kind, args.groups, sample)
                name = "default preset (sampled)" if sample else "greedy"
                print(f"| {name} | {batch} | {kind} | {ms:.2f} | {cpu:.2f} | {ops:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
