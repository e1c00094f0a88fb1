"""Reports: ``report.json``, ``items.jsonl``, ``report.md`` (with the paper's number where the benchmark is one of
the paper's, SPEC §9.2) and matplotlib plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..files import atomic_output
from .runner import write_jsonl

# The paper's numbers (SPEC §9.2) keyed by (task, benchmark); values in the report's units (percent, cosine).
PAPER: dict[tuple[str, str], dict[str, float]] = {
    ("asr", "librispeech-test-clean"): {"wer": 3.76},
    ("asr", "aishell-1"): {"cer": 1.78},
    ("tts", "seed-tts-eval-zh"): {"cer": 1.96},
    ("tts", "seed-tts-eval-en"): {"wer": 5.37},
    ("tts", "seed-tts-eval-zh-hard"): {"cer": 14.14},
    ("codec", "seed-tts-eval-zh"): {"pesq_nb": 3.30, "pesq_wb": 2.71, "sim": 0.89, "stoi": 0.93},
    ("codec", "seed-tts-eval-en"): {"pesq_nb": 3.02, "pesq_wb": 2.43, "sim": 0.85, "stoi": 0.92},
    ("mcq", "mmau"): {"accuracy": 74.90, "accuracy/speech": 68.47, "accuracy/sound": 82.58, "accuracy/music": 73.65},
    ("mcq", "mmau-5-shot"): {"accuracy": 66.0, "accuracy/speech": 67.6, "accuracy/sound": 65.2, "accuracy/music": 65.3},
    ("mcq", "mmar"): {"accuracy": 63.60},
    ("mcq", "mmsu"): {"accuracy": 61.70},
    ("mcq", "mmsu-think"): {"accuracy": 62.88},
    ("mcq", "mmau-pro"): {"overall": 53.35},
    ("mcq", "speechmmlu-s2s"): {"accuracy": 69.1},
    ("mcq", "speechmmlu-s2t"): {"accuracy": 69.5},
    ("mcq", "speechmmlu-t2s"): {"accuracy": 71.5},
    ("mcq", "speechmmlu-t2t"): {"accuracy": 72.5},
}
# What differs from the paper's setting even on its benchmark (printed under the table).
PAPER_NOTES = {
    "asr": "The paper's ASR numbers are the toolkit's mean of per-utterance rates (our `wer`/`cer`), same normalisation.",
    "tts": "The paper's TTS judge is openai whisper-large-v3 (en) / paraformer-zh (zh): comparable only with that judge.",
    "codec": "The paper's SIM uses a WavLM speaker-verification model and its PESQ/STOI are on Seed-TTS-Eval "
             "ground-truth clips; resemblyzer SIM is not the same scale.",
    "mcq": "The paper samples (T 0.3) with its instruction-following template; greedy or other settings differ.",
    "dialogue": "The paper's dialogue scores come from GPT-4o judges; reference matching here is not comparable.",
    "voice": "The paper reports 16-shot voice conversion SIM only in a figure; no number to compare.",
    "few-shot-s2s": "The paper's few-shot S2S metrics are not reproducible from its public code.",
}


def guess_benchmark(task: str, data: str, layout: str) -> str | None:
    """The paper benchmark a data path most likely is (None when unknown; ``--benchmark`` overrides)."""
    low = data.lower().replace("_", "-")
    if layout == "librispeech" and "test-clean" in low:
        return "librispeech-test-clean"
    if layout == "aishell" or "aishell" in low:
        return "aishell-1"
    if layout == "seedtts" or "seed-tts" in low or "seedtts" in low:
        if "hard" in low:
            return "seed-tts-eval-zh-hard"
        return "seed-tts-eval-zh" if "/zh" in low or low.endswith("zh") else "seed-tts-eval-en"
    for name in ("mmau-pro", "mmau", "mmar", "mmsu"):
        if name in low:
            return name
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.2f}" if v == 0 or abs(v) >= 1 else f"{v:.4g}"
    return str(v)


def _plots(task: str, ok: list[dict], out: Path) -> list[str]:
    """PNG plots where a picture helps; an empty list when matplotlib is missing or nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []

    def save(fig, name):
        path = out / name
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append(name)

    rates = [r["rate"] for r in ok if isinstance(r.get("rate"), (int, float))]
    if rates:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(rates, bins=min(30, max(5, len(rates) // 2)))
        unit = "CER" if any(r.get("unit") == "char" for r in ok) else "WER"
        ax.set(xlabel=f"per-utterance {unit} (%)", ylabel="utterances", title=f"{task}: per-utterance {unit}")
        save(fig, "wer_hist.png")
        groups: dict[str, list[float]] = {}
        for r in ok:
            if r.get("speaker") and isinstance(r.get("rate"), (int, float)):
                groups.setdefault(str(r["speaker"]), []).append(r["rate"])
        if len(groups) > 1:
            keys = sorted(groups)[:40]
            fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.3), 3.5))
            ax.bar(keys, [sum(groups[k]) / len(groups[k]) for k in keys])
            ax.set(ylabel=f"mean {unit} (%)", title="per speaker")
            ax.tick_params(axis="x", rotation=90)
            save(fig, "per_speaker.png")
    cats: dict[str, list[bool]] = {}
    for r in ok:
        if r.get("category") and "correct" in r:
            cats.setdefault(str(r["category"]), []).append(bool(r["correct"]))
    if cats:
        keys = sorted(cats)
        fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.5), 3.5))
        ax.bar(keys, [100.0 * sum(cats[k]) / len(cats[k]) for k in keys])
        ax.set(ylabel="accuracy (%)", title="per category")
        ax.tick_params(axis="x", rotation=45)
        save(fig, "per_category.png")
    sims = [r["sim"] for r in ok if isinstance(r.get("sim"), (int, float))]
    if sims:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(sims, bins=min(30, max(5, len(sims) // 2)))
        ax.set(xlabel="speaker similarity (cosine)", ylabel="items")
        save(fig, "sim_hist.png")
    if task == "codec":
        shown = [r for r in ok if isinstance(r.get("audio"), str) and r.get("output")][:3]
        if shown:
            import numpy as np
            import soundfile as sf

            fig, axes = plt.subplots(len(shown), 2, figsize=(10, 2.5 * len(shown)), squeeze=False)
            for row, r in zip(axes, shown):
                for ax, (label, path) in zip(row, (("original", r["audio"]), ("reconstruction", r["output"]))):
                    wav, sr = sf.read(path, dtype="float32", always_2d=True)
                    ax.specgram(wav.mean(axis=1) + 1e-9 * np.random.default_rng(0).standard_normal(len(wav)),
                                Fs=sr, NFFT=512, noverlap=384)
                    ax.set_title(f"{r['id']}: {label}", fontsize=8)
            save(fig, "spectrograms.png")
    return made


def write_report(out_dir: str | os.PathLike, *, task: str, records: list[dict], metrics: dict, skipped: int,
                 config: dict, models: dict, judges: dict, benchmark: str | None, plots: bool = True,
                 notes: list[str] | None = None) -> dict:
    """Write report.json, items.jsonl, report.md and the plots; returns the report dict."""
    from .. import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r.get("status") == "ok"]
    bad = [r for r in records if r.get("status") != "ok"]
    reasons: dict[str, int] = {}
    for r in bad:
        reasons[str(r.get("reason"))] = reasons.get(str(r.get("reason")), 0) + 1
    versions = {"mimo-audio": __version__}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "faster-whisper", "ctranslate2", "resemblyzer", "pesq", "pystoi", "matplotlib"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    paper = PAPER.get((task, benchmark or ""), {})
    report = {
        "task": task, "metrics": metrics, "count": len(ok), "failed": len(bad), "skipped": skipped,
        "total": len(records), "failure_reasons": reasons, "benchmark": benchmark,
        "paper": paper or None, "notes": list(notes or []), "configuration": config, "models": models, "judges": judges, "versions": versions,
    }
    made = _plots(task, ok, out) if plots and ok else []
    report["plots"] = made
    write_jsonl(out / "items.jsonl", records)
    with atomic_output(out / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    lines = [f"# {task} evaluation" + (f" on {benchmark}" if benchmark else ""), "",
             f"{len(ok)} items scored, {len(bad)} failed (excluded from the score), {skipped} taken from an "
             "earlier run.", ""]
    if paper:
        lines += ["| metric | ours | paper (MiMo-Audio-7B) |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v)} | {_fmt(paper[k]) if k in paper else ''} |" for k, v in metrics.items()]
        lines += [f"| {k} | (not measured) | {_fmt(v)} |" for k, v in paper.items() if k not in metrics]
    else:
        lines += ["| metric | ours |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "Rates (wer, cer, accuracy) are percentages; `wer`/`cer` are means of per-utterance rates (the "
              "toolkit's), `*_corpus` total errors over total reference tokens."]
    if task in PAPER_NOTES:
        lines += ["", PAPER_NOTES[task]]
    lines += [f"\nNote: {n}" for n in notes or []]
    lines += ["", "## Models and judges", ""] + [f"- {k}: {v}" for k, v in {**models, **judges}.items() if v]
    if reasons:
        lines += ["", "## Failures", ""] + [f"- {n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])]
    if made:
        lines += ["", "## Plots", ""] + [f"![{m}]({m})" for m in made]
    with atomic_output(out / "report.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
