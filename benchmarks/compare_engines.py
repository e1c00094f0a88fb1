"""Today's engine against an earlier commit's, side by side in one run: ms and aten ops per greedy group.

The earlier commit's ``src/`` is exported into a temporary folder (``git archive``) and both trees run this
folder's ``generate.py`` (tiny-deep model, 1 thread) in alternating subprocesses, so drifts of the machine's speed
hit both alike. Usage: python benchmarks/compare_engines.py [--ref 2ebc740] [--rounds 5] [--groups 30] [--model tiny-deep|wide]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(src: Path, groups: int, batches: str, model: str, threads: int) -> dict[tuple[int, str], tuple[float, float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generate.py"), "--groups", str(groups),
                          "--greedy-only", "--batches", batches, "--model", model, "--threads", str(threads)],
                         capture_output=True, text=True, env=env, check=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows[(int(cells[1]), cells[2])] = (float(cells[3]), float(cells[5]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="2ebc740", help="the earlier commit (default: the last stepper engine)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--groups", type=int, default=30)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--model", choices=("tiny-deep", "wide"), default="tiny-deep")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {args.ref: Path(tmp) / "src", "this tree": ROOT / "src"}
        results: dict[str, list] = {name: [] for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                results[name].append(run(trees[name], args.groups, args.batches, args.model, args.threads))
    keys = sorted(results["this tree"][0])
    print(f"{args.model}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}; {args.rounds} alternating "
          "rounds, median of per-round medians")
    print("| engine | batch | group | ms / group (median of rounds) | min - max | aten ops / group |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        for name in trees:
            ms = [r[key][0] for r in results[name]]
            print(f"| {name} | {key[0]} | {key[1]} | {statistics.median(ms):.2f} | {min(ms):.2f} - {max(ms):.2f} "
                  f"| {results[name][0][key][1]:.0f} |")
    for key in keys:
        ratio = [n[key][0] / o[key][0] for n, o in zip(results["this tree"], results[args.ref])]
        print(f"ratio this tree / {args.ref}, batch {key[0]} {key[1]}: median {statistics.median(ratio):.2f} "
              f"(min {min(ratio):.2f}, max {max(ratio):.2f})")


if __name__ == "__main__":
    main()
