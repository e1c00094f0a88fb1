"""Where an audio group's time goes at batch 1 on one CPU thread, and the floor the eager op count sets.

On the "tiny-deep" model of benchmarks/generate.py the patch decoder (16 layers x 11 steps = 176 layer-steps of
13 aten ops) is most of an audio group. This measures, on the engine's own buffers and weights:

1. each op of one decoder layer-step timed alone in a tight loop (operands hot in cache): the sum x 176 is what
   the decoder costs if every op ran at its isolated speed;
2. the real decoder loop with every layer using layer 0's weights (everything stays in cache);
3. the real decoder loop (16 distinct layers: the working set leaves the 2 MB L2);
4. a whole audio group through the engine.

Usage: python benchmarks/op_floor.py [--reps 30] [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from generate import EMPTY, prompt, tiny_deep
from mimo_audio.generate import GenerationConfig, preset, stream_generate
from mimo_audio.stepper import _ln


def per_call_us(fn, n) -> float:
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(5):  # best of 5 batches: other load on the machine only ever adds time
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def median_ms(fn, reps) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return sorted(ts)[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30, help="timed runs of the decoder loop and of a whole group")
    ap.add_argument("--calls", type=int, default=3000, help="calls per timed batch of one op alone")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lm = tiny_deep()
    V = lm.config.vocab_size
    cfg = GenerationConfig(text=preset("asr").text, seed=0, max_new_tokens=4000,
                           banned_ids=tuple(i for i in range(V) if i != EMPTY))
    stream = stream_generate(lm, [prompt(lm)], cfg, empty_id=EMPTY, greedy=True)
    for _ in range(3):
        stream.step()
    st = stream.st
    S, L, Dl = st.S, len(st.dplan[0]), st.Dl
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f}; patch decoder: {L} layers x "
          f"{S} steps, width {Dl}")
    with torch.inference_mode():
        p = S // 2
        w1, bp, wp, row, q, k, v, wo2, w2, wgu, wd2 = st.dplan[p][0]
        R = torch.cat([torch.randn(1, Dl), torch.zeros(1, Dl)], 1)
        R[:, Dl:] = -R[:, :Dl]
        width, eps = (2 * Dl,), st.eps_dec
        n = _ln(R, width, w1, None, eps)[0]
        x = n[:, :Dl]  # the slices are timed on their own row, not again inside the matmuls
        ops = {
            "native_layer_norm (x2)": lambda: _ln(R, width, w1, None, eps),
            "slice (x2)": lambda: n[:, :Dl],
            "addmm q/k/v": lambda: torch.addmm(bp, x, wp, out=row),
            "bmm scores": lambda: torch.bmm(q, k, out=st.dscore[p]),
            "softmax": lambda: torch.softmax(st.dscore[p], -1, out=st.dprob[p]),
            "bmm values": lambda: torch.bmm(st.dprob[p], v, out=st.datt3),
            "addmm_ o_proj + residual": lambda: R.clone().addmm_(st.datt, wo2),
            "mm gate/up": lambda: torch.mm(x, wgu, out=st.dgu),
            "silu_": lambda: F.silu(st.dgate, inplace=True),
            "mul": lambda: torch.mul(st.dgate, st.dup, out=st.dact),
            "addmm_ down + residual": lambda: R.clone().addmm_(st.dact, wd2),
        }
        clone = per_call_us(lambda: R.clone(), args.calls)
        total = 0.0
        print("\n| op (one decoder layer-step) | us per call, alone |\n|---|---|")
        for name, fn in ops.items():
            us = per_call_us(fn, args.calls) - (clone if "residual" in name else 0.0)
            us_all = us * (2 if "(x2)" in name else 1)
            total += us_all
            print(f"| {name} | {us:.2f} |")
        print(f"| **sum per layer-step** | **{total:.1f}** |")

        plan = st.dplan
        shared = [[plan[q_][0]] * L for q_ in range(S)]

        def decoder():
            R0 = torch.cat([torch.full((1, Dl), 0.1), torch.full((1, Dl), -0.1)], 1)
            for q_ in range(S):
                st._dec_layers(R0, q_)

        st.dplan = shared
        hot_ms = median_ms(decoder, args.reps)
        st.dplan = plan
        real_ms = median_ms(decoder, args.reps)
    group_ms = median_ms(stream.step, args.reps)
    print(f"\n| patch decoder, one audio group ({L * S} layer-steps) | ms |\n|---|---|")
    print(f"| every op at its isolated speed (sum above x {L * S}) | {total * L * S / 1000:.1f} |")
    print(f"| real loop, all layers sharing layer 0's weights (cache-hot) | {hot_ms:.1f} |")
    print(f"| real loop, distinct layers (the engine) | {real_ms:.1f} |")
    print(f"| whole audio group through the engine (decoder + backbone + patch encoder + heads) | {group_ms:.1f} |")


if __name__ == "__main__":
    main()
