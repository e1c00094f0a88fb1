"""Audio tokenizer quantization, measured: unquantized vs int8 weight-only (torchao, ``mimo_audio.quantize``).

For each model: the bytes the weights really hold, the resident memory the model adds to the process, encode and
decode CPU time (both sides alternated in one run, best and median of ``--repeat``), and what int8 changes in the
output: code agreement of the encoder (per codebook), and the int8 decode against the unquantized decode of the
same codes (SNR in dB, mean absolute log-mel difference). Optionally (``--bf16``) the same comparison for a
bfloat16 copy, the other way to halve the memory.

Models: (a) the parity fixture's tiny tokenizer (``MIMO_AUDIO_FIXTURE``, default tests/fixtures/reference-tiny);
(b) a random-weight tokenizer with the released shapes of SPEC §2.1 (built here, nothing downloaded). Random weights
run the same arithmetic as trained ones, so times and memory carry over; the quality numbers say how far int8
moves the output of these weights, not of the trained model (run ``--checkpoint`` for that).

The clip is espeak-ng speech (``espeak-ng`` on PATH), else the fixture's long clip.

    python benchmarks/quantize_codec.py                          # fixture + released shapes, 10 s clip
    python benchmarks/quantize_codec.py --skip-released --seconds 30
    python benchmarks/quantize_codec.py --checkpoint XiaomiMiMo/MiMo-Audio-Tokenizer

Prints markdown tables (paste them into docs/benchmarks.md with the machine line printed first).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from codec import FIXTURE, RELEASED, machine  # noqa: E402
from mimo_audio import quantize as Q  # noqa: E402
from mimo_audio.audio import load_audio, log_mel  # noqa: E402
from mimo_audio.codec import AudioTokenizer, random_tokenizer  # noqa: E402

SENTENCES = ("The weather is nice today, and we are going for a walk in the park. "
             "Please open the window before the meeting starts. I like to read books in the evening, "
             "especially long stories about the sea. My brother plays football with his friends every Sunday.")


def rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def speech_clip(seconds: float) -> tuple[torch.Tensor, str]:
    """``seconds`` of espeak-ng speech at 24 kHz (repeated to length), or the fixture's long clip."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), SENTENCES], check=True,
                           capture_output=True)
            wav, what = load_audio(path, target_rate=24000), "espeak-ng en-us speech"
    else:
        wav, what = load_audio(FIXTURE / "audio" / "long_24k.wav", target_rate=24000), "fixture long_24k.wav"
    n = int(seconds * 24000)
    return wav.repeat(n // wav.shape[0] + 1)[:n].contiguous(), what


class PeakRSS:
    """Peak resident memory above the level at entry while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.added = self.peak - self.base


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "?"
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags.split()]
    return ", ".join(have) or "no AVX-512"


def snr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.float().cpu(), x.float().cpu()
    n = min(ref.shape[0], x.shape[0])
    err = (ref[:n] - x[:n]).pow(2).sum().item()
    return float("inf") if err == 0 else 10 * torch.log10(ref[:n].pow(2).sum() / err).item()


def mel_distance(ref: torch.Tensor, x: torch.Tensor, config) -> float:
    n = min(ref.shape[0], x.shape[0])
    return (log_mel(ref[:n].float().cpu(), config) - log_mel(x[:n].float().cpu(), config)).abs().mean().item()


def build(make, scheme: str | None, dtype: str | None = None):
    """``make()`` a tokenizer, optionally cast / quantize it; returns it with the resident bytes it added."""
    gc.collect()
    before = rss()
    model = make()
    if dtype is not None:
        model.to_dtype(dtype)
    if scheme is not None:
        Q.quantize_codec(model, scheme)
    gc.collect()
    Q._trim_heap()
    return model, rss() - before


def compare(label: str, make, wav: torch.Tensor, repeat: int, bf16: bool) -> tuple[list[str], list[str]]:
    """Rows of the speed/memory table and of the quality table for one model."""
    sides = [("int8", "int8", None)] + ([("bfloat16", None, "bfloat16")] if bf16 else [])
    # the smaller models first, so that the peak is the float32 model plus the small ones
    built = {name: build(make, scheme, dt) for name, scheme, dt in sides}
    built["float32"] = build(make, None)
    order = ["float32"] + [s[0] for s in sides]
    seconds = wav.shape[0] / 24000
    for m, _ in built.values():  # warm-up
        m.decode(m.encode(wav[:48000]))
    times = {k: {"encode": [], "decode": []} for k in order}
    work = {k: {"encode": 0, "decode": 0} for k in order}
    codes = {}
    outs = {}
    ref_codes = built["float32"][0].encode(wav)
    for _ in range(repeat):  # alternate the sides inside every repeat (the machine is shared)
        for k in order:
            m = built[k][0]
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                codes[k] = m.encode(wav)
                times[k]["encode"].append(time.perf_counter() - t0)
            work[k]["encode"] = max(work[k]["encode"], mem.added)
        for k in order:
            m = built[k][0]
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                outs[k] = m.decode(ref_codes).float().cpu()  # the same codes for every side
                times[k]["decode"].append(time.perf_counter() - t0)
            work[k]["decode"] = max(work[k]["decode"], mem.added)
    speed, quality = [], []
    cfg = built["float32"][0].config
    for k in order:
        m, resident = built[k]
        w = Q.module_bytes(m)
        e, d = times[k]["encode"], times[k]["decode"]
        speed.append(f"| {label} | {k} | {w / 2**20:,.1f} MiB | {resident / 2**20:,.0f} MiB | {min(e):.3f} s "
                     f"({statistics.median(e):.3f}) | {seconds / min(e):,.1f}x | {min(d):.3f} s "
                     f"({statistics.median(d):.3f}) | {seconds / min(d):,.1f}x | {work[k]['encode'] / 2**20:,.0f} / "
                     f"{work[k]['decode'] / 2**20:,.0f} MiB |")
        if k != "float32":
            agree = (codes[k] == ref_codes).float().mean(0)
            quality.append(f"| {label} | {k} | {agree.mean().item() * 100:.1f} % (min {agree.min().item() * 100:.1f} % "
                           f"on codebook {int(agree.argmin())}) | {snr_db(outs['float32'], outs[k]):.1f} dB | "
                           f"{mel_distance(outs['float32'], outs[k], cfg):.4f} |")
    ref_mel = mel_distance(wav, outs["float32"], cfg)
    quality.append(f"| {label} | float32 vs the input clip (scale) | — | {snr_db(wav, outs['float32']):.1f} dB | "
                   f"{ref_mel:.4f} |")
    del built
    gc.collect()
    return speed, quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side, alternated (default 2)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="also compare a bfloat16 copy")
    ap.add_argument("--skip-fixture", action="store_true")
    ap.add_argument("--skip-released", action="store_true")
    ap.add_argument("--checkpoint", default=None, help="also measure a real tokenizer (folder or hub id)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Q.torchao()  # imported before any memory is measured
    wav, what = speech_clip(args.seconds)
    print(machine() + f"; CPU features: {cpu_flags()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("command: python benchmarks/quantize_codec.py " + " ".join(sys.argv[1:]))
    print(f"clip: {args.seconds:g} s of {what}; sides alternated in every repeat; best (median) of {args.repeat}")
    print()
    models = []
    if not args.skip_fixture:
        models.append(("fixture (tiny, random)", lambda: AudioTokenizer.from_pretrained(FIXTURE / "tokenizer")))
    if not args.skip_released:
        models.append(("released shapes (random)", lambda: random_tokenizer(RELEASED, seed=0)))
    if args.checkpoint:
        models.append((f"checkpoint {args.checkpoint}", lambda: AudioTokenizer.from_pretrained(args.checkpoint)))
    speed, quality = [], []
    for label, make in models:
        s, q = compare(label, make, wav, args.repeat, args.bf16)
        speed += s
        quality += q
        print(f"done: {label} (load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    print("| model | weights | weight bytes (real) | resident added | encode best (median) | encode speed | "
          "decode best (median) | decode speed | peak RSS above the model, encode / decode |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(speed))
    print()
    print("| model | weights | code agreement with float32 (encode) | decode SNR vs float32 decode | "
          "log-mel distance vs float32 decode |")
    print("|---|---|---|---|---|")
    print("\n".join(quality))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
