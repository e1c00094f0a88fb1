"""Training-data loader speed on the CPU, and the padding waste of the batching choices.

Writes synthetic shards (random codes, durations log-normal around 6 s clipped to 1-30 s, transcripts of about
2.5 words per second drawn from a fixed word list) through the real shard writer, then times the real loader:
records read from memory-mapped Arrow, examples built by the task table with the fixture's text tokenizer,
length-bucketed padded batches. It also reports, on the same examples' lengths, how much padding unsorted
batches would carry and how full first-fit-decreasing packing into ``--pack`` groups would be.

    python benchmarks/data_loader.py                      # 2000 records, batch 16, 60 steps per row
    python benchmarks/data_loader.py --records 200 --steps 5   # quick

Prints the machine, the command and markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mimo_audio.data.loader import Loader, ShardSet
from mimo_audio.data.prepare import write_shard

FIXTURE = Path(os.environ.get("MIMO_AUDIO_FIXTURE", Path(__file__).parents[1] / "tests" / "fixtures" / "reference-tiny"))
_WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had "
          "by word but what some we can out other were all there when up use your how said an each she which do "
          "their time if will way about many then them write would like so these her long make thing see him two "
          "has look more day could go come did number sound no most people my over know water than call first")
WORDS = tuple(w for w in _WORDS.split(" ") if w)
SIZES = (1024, 1024, 128, 128, 128, 128, 128, 128)


def synthetic_shards(folder: Path, records: int, seed: int, per_shard: int = 500) -> None:
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(6.0), 0.6, records), 1.0, 30.0)
    total = -(-records // per_shard)
    settings = {"schema": 1, "manifest": "synthetic", "format": "pairs", "items": records, "shard_size": per_shard,
                "shards": total, "tokenizer": "none", "num_quantizers": 8, "max_seconds": 30.0, "min_seconds": 1.0}
    (folder / "prepare.json").write_text(json.dumps(settings))
    for k in range(total):
        rows = []
        for i in range(k * per_shard, min(records, (k + 1) * per_shard)):
            frames = int(seconds[i] * 25)
            codes = np.stack([rng.integers(0, s, frames) for s in SIZES], 1).astype(np.int16)
            text = " ".join(rng.choice(WORDS, max(1, int(seconds[i] * 2.5))))
            rows.append({"id": f"syn:{i}", "source": f"synthetic:{i}", "kind": "pair", "text": text,
                         "speaker": None, "language": "en", "instruction": None, "caption": None, "messages": None,
                         "extra": "{}", "audio_names": [f"syn{i}.wav"], "codes": [codes.reshape(-1)],
                         "frames": [frames], "n_frames": frames, "seconds": float(seconds[i])})
        write_shard(folder, k, total, rows, [], items=len(rows), num_quantizers=8, sample_rate=24000,
                    frame_rate=25.0)


def first_fit_decreasing(lengths: list[int], capacity: int) -> int:
    """Bins needed to pack ``lengths`` (each <= capacity) into rows of ``capacity`` groups."""
    free: list[int] = []
    for n in sorted(lengths, reverse=True):
        for j, f in enumerate(free):
            if f >= n:
                free[j] -= n
                break
        else:
            free.append(capacity - n)
    return len(free)


def time_loader(loader: Loader, steps: int) -> dict:
    it = iter(loader)  # timed from the start: a window of examples is built every `window` steps
    t0, cpu0 = time.perf_counter(), time.process_time()
    ex = real = padded = 0
    lengths: list[int] = []
    for _ in range(steps):
        b = next(it)
        ex += len(b.lengths)
        real += b.groups
        padded += b.attention_mask.numel()
        lengths += b.lengths
    wall = time.perf_counter() - t0
    return {"examples/s": ex / wall, "groups/s": real / wall, "padded groups/s": padded / wall,
            "efficiency": real / padded, "lengths": lengths, "cpu_us": (time.process_time() - cpu0) / ex * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60, help="batches timed per row")
    ap.add_argument("--tasks", default="asr:1,tts:1,continuation:0.5")
    ap.add_argument("--pack", type=int, default=4096, help="row length (groups) for the packing comparison")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mimo_audio.text import TextTokenizer

    tok = TextTokenizer.from_folder(FIXTURE / "lm")
    print(f"date: {datetime.date.today()}; machine: {platform.machine()} {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.platform()}); torch {torch.__version__}; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        synthetic_shards(Path(d), args.records, seed=0)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        shards = ShardSet(d)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_read = min(len(shards), 500)
        for i in range(n_read):
            shards[i]
        t_read = time.perf_counter() - t0
        print(f"synthetic shards: {args.records} records, {shards.n_frames.sum() / 25 / 3600:.2f} h; written in "
              f"{t_write:.2f} s, opened in {t_open * 1e3:.1f} ms; {n_read / t_read:,.0f} records/s read\n")
        print("| batching | window | examples/s (wall) | CPU µs / example | real groups/s (wall) | real / padded |")
        print("|---|---|---|---|---|---|")
        rows = {}
        for name, window in (("unsorted", 1), ("length-bucketed", 8), ("length-bucketed", 32),
                             ("length-bucketed", 128)):  # 128: the Loader's default
            lo = Loader(shards, args.tasks, batch_size=args.batch_size, window=window, seed=0, tokenizer=tok)
            r = rows[window] = time_loader(lo, args.steps)
            print(f"| {name} | {window} | {r['examples/s']:,.0f} | {r['cpu_us']:,.0f} | {r['groups/s']:,.0f} | "
                  f"{r['efficiency']:.3f} |")
        lengths = rows[128]["lengths"]
        bins = first_fit_decreasing([min(n, args.pack) for n in lengths], args.pack)
        print(f"\npacking the same {len(lengths)} examples (mean {np.mean(lengths):.0f} groups, max {max(lengths)}) "
              f"first-fit-decreasing into rows of {args.pack} groups: {sum(lengths) / (bins * args.pack):.3f} "
              f"real / padded ({bins} rows)")


if __name__ == "__main__":
    main()
