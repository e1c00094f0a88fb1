"""Where a greedy audio group's time goes: torch.profiler over 5 groups of the tiny-deep model (1 thread), then the
per-op costs of the norm and projection formulations at width 64 under ``torch.inference_mode()``.

Usage: python benchmarks/profile_group.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from generate import EMPTY, OpCounter, prompt, tiny_deep  # noqa: E402
from mimo_audio.generate import GenerationConfig, preset, stream_generate  # noqa: E402


def per_call_us(fn, n=20000) -> float:
    for _ in range(200):
        fn()
    c = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - c) / n * 1e6


def main():
    torch.set_num_threads(1)
    lm = tiny_deep()
    banned = tuple(i for i in range(lm.config.vocab_size) if i != EMPTY)
    cfg = GenerationConfig(text=preset("asr").text, seed=0, max_new_tokens=60, banned_ids=banned)
    stream = stream_generate(lm, [prompt(lm)], cfg, empty_id=EMPTY, greedy=True)
    for _ in range(4):
        stream.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            stream.step()
    print("profile of 5 greedy audio groups (profiler overhead included)")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))

    lin, w = torch.nn.Linear(64, 128, bias=False), torch.nn.Parameter(torch.ones(64))
    with torch.inference_mode():
        x = torch.randn(1, 64)
        cases = {
            "torch.rms_norm": lambda: torch.rms_norm(x, (64,), w, 1e-6),
            "cat(x,-x) layer_norm slice mul": lambda: F.layer_norm(torch.cat([x, -x], -1), (128,), None, None,
                                                                   1e-6)[..., :64] * w,
            "nn.Linear (module call)": lambda: lin(x),
            "F.linear": lambda: F.linear(x, lin.weight),
        }
        print("| formulation | us / call (thread CPU) | aten ops |\n|---|---|---|")
        for name, fn in cases.items():
            with OpCounter() as oc:
                fn()
            print(f"| {name} | {per_call_us(fn):.2f} | {oc.n} |")


if __name__ == "__main__":
    main()
