"""The benchmark scripts run, print their tables, and the engine stays within the op goal (<= 4,000
aten ops per greedy audio group on the tiny-deep model at batch 1; batch 8 adds the per-row text bans). Op counts are exact; times are not
checked here (they belong to docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_generate_benchmark_and_the_op_goal():
    rows = {}
    for line in _run("generate.py", "--groups", "2").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]), cells[2])] = (float(cells[3]), float(cells[5]))
    assert len(rows) == 8, rows
    for batch in (1, 8):
        ms, ops = rows[("greedy", batch, "audio")]
        assert ms > 0 and ops <= (4000 if batch == 1 else 4100), (batch, ops)
        # a text group runs the backbone only: far fewer ops than an audio group
        assert rows[("greedy", batch, "text")][1] < ops / 3


def test_codec_benchmark_prints_its_table():
    out = _run("codec.py", "--seconds", "2", "--skip-released", "--repeat", "1")
    assert "| model | params |" in out
    row = next(x for x in out.splitlines() if x.startswith("| fixture (tiny, random)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 9 and cells[4] == "2 s"
    assert float(cells[5].removesuffix(" s")) > 0 and float(cells[7].removesuffix(" s")) > 0
