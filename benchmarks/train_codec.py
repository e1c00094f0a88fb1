"""Tokenizer training (mimo_audio.train.codec): CPU throughput of the small config and per-GPU memory of the released
sizes under FSDP2.

Throughput: stage 1 and stage 2 steps of the ``small`` config on synthetic clips (the steps after ``--warmup``),
audio seconds trained per second (median, min-max). Memory: parameter counts of the released sizes (tokenizer,
A2T decoder and discriminators of the ``released`` config, counted on the meta device), model state under FSDP2
(fp32 weights + gradients + two AdamW moments = 16 bytes per trained parameter, 4 per frozen one, sharded over the
GPUs) plus activations: the bytes autograd saves for backward in one training forward at batch 1 (measured on CPU
with ``--measure-activations``, which builds the 1.3 B model: ~6 GB RAM, minutes) times the batch per GPU.

    python benchmarks/train_codec.py --steps 10                 # throughput table
    python benchmarks/train_codec.py --memory --measure-activations
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec import machine  # noqa: E402


def synth(seed: int, seconds: float, rate: int = 24000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(rng.uniform(0.2, 1.0) / h * np.sin(h * phase) for h in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
    return (0.25 * x * env + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def throughput(args) -> None:
    import json

    import soundfile as sf

    from mimo_audio.train.codec import make_codec_config, read_config, train_codec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = []
        for i in range(16):
            sf.write(tmp / f"c{i}.wav", synth(i, 3.0), 24000)
            lines.append(json.dumps({"audio": f"c{i}.wav", "text": f"a synthetic clip number {i}"}))
        (tmp / "m.jsonl").write_text("\n".join(lines) + "\n")
        print(f"machine: {machine()}")
        print(f"small config, batch {args.batch_size} x {args.seconds} s crops, {args.steps} steps after "
              f"{args.warmup} warm-up\n")
        print("| stage | threads | audio s / s (median, min-max) | s / step | peak RSS |")
        print("|---|---|---|---|---|")
        init = None
        for stage in (1, 2):
            cfg = make_codec_config(read_config("small"), stage=stage, data=str(tmp / "m.jsonl"),
                                    output=str(tmp / f"r{stage}"), max_steps=args.warmup + args.steps,
                                    batch_size=args.batch_size, segment_seconds=args.seconds, progress=False,
                                    save_every=10_000, init=init)
            recs = train_codec(cfg)[args.warmup:]
            rates = [r["audio_s_per_s"] for r in recs]
            med = statistics.median(rates)
            print(f"| {stage} | {torch.get_num_threads()} | {med:.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
                  f"{args.batch_size * args.seconds / med:.2f} | {recs[-1]['memory']:.2f} GiB |", flush=True)
            init = str(tmp / "r1" / "final")


def _released_parts():
    from mimo_audio.codec import AudioTokenizer
    from mimo_audio.train.codec import make_codec_config, read_config
    from mimo_audio.train.codec.discriminators import Discriminators
    from mimo_audio.train.codec.model import ByteText, TextDecoder

    cfg = make_codec_config(read_config("released"))
    c = cfg.model_config()
    with torch.device("meta"):
        codec = AudioTokenizer(c)
        a2t = TextDecoder(c.d_model, ByteText.size, cfg.a2t_dim, cfg.a2t_layers, cfg.a2t_heads, cfg.a2t_ffn)
        disc = Discriminators(cfg.mpd_channels, cfg.mpd_max_channels, cfg.stft_channels, cfg.stft_ffts)
    return cfg, codec, a2t, disc


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def measure_activations(cfg, stage: int) -> int:
    """Bytes saved for backward by one training forward of the released sizes at batch 1 (CPU, float32)."""
    from mimo_audio.codec import AudioTokenizer
    from mimo_audio.train.codec.discriminators import Discriminators, adv_loss, fm_loss
    from mimo_audio.train.codec.model import (
        ByteText,
        CodecTrainee,
        RVQTrainer,
        TextDecoder,
        multiscale_mel_l1,
    )

    torch.manual_seed(0)
    c = cfg.model_config()
    codec = AudioTokenizer(c)._finalize()
    a2t = TextDecoder(c.d_model, ByteText.size, cfg.a2t_dim, cfg.a2t_layers, cfg.a2t_heads, cfg.a2t_ffn)
    tr = CodecTrainee(codec, RVQTrainer(codec.quantizer, threshold=2.0, kmeans_iters=1), a2t if stage == 1 else None)
    tr.requires_grad_(False)
    for m in [codec.decoder, codec.vocoder] + ([codec.encoder, a2t] if stage == 1 else []):
        m.requires_grad_(True)
    tr.train()
    params = {p.data_ptr() for p in tr.parameters()}
    disc = Discriminators(cfg.mpd_channels, cfg.mpd_max_channels, cfg.stft_channels, cfg.stft_ffts) if stage == 2 else None
    if disc is not None:
        params |= {p.data_ptr() for p in disc.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    S = int(cfg.segment_seconds * c.sampling_rate) // c.samples_per_code * c.samples_per_code
    wav = torch.from_numpy(synth(0, S / c.sampling_rate))[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if stage == 1:
            q, _, commit, _ = tr.encode(wav)
            y = tr.decode(q, S)
            tok = torch.randint(3, 259, (1, 64))
            loss = multiscale_mel_l1(tr.mels, wav, y) + commit + 10 * a2t(q, tok, tok)
        else:
            with torch.no_grad():
                q, _, _, _ = tr.encode(wav)
            y = tr.decode(q, S)
            with torch.no_grad():
                real = disc(wav)
            fake = disc(y)
            loss = multiscale_mel_l1(tr.mels, wav, y) + adv_loss(fake) + 2 * fm_loss(real, fake)
    del loss
    return sum(seen.values())


def memory(args) -> None:
    cfg, codec, a2t, disc = _released_parts()
    enc = count(codec.encoder)
    cb = sum(p.numel() for p in codec.quantizer.parameters())
    dec = count(codec.decoder) + count(codec.vocoder)
    A, D = count(a2t), count(disc)
    print(f"released sizes (meta device): encoder {enc / 1e6:.1f} M, RVQ codebooks {cb / 1e6:.2f} M (EMA, no "
          f"gradient), decoder + vocoder {dec / 1e6:.1f} M, A2T decoder {A / 1e6:.1f} M, discriminators "
          f"{D / 1e6:.2f} M\n")
    # stage 1: encoder + decoder + vocoder + A2T trained; codebooks (+ 2 EMA buffers each) replicated on every GPU
    # stage 2: decoder + vocoder + discriminators trained; encoder frozen (sharded weights only)
    stages = {1: (enc + dec + A, 0, 3 * cb), 2: (dec + D, enc, 3 * cb)}
    acts = {}
    if args.measure_activations:
        import subprocess

        for s in (1, 2):  # each in its own process: two 1.3 B models at once do not fit a small machine
            t0 = time.time()
            p = subprocess.run([sys.executable, __file__, "--activations-of", str(s)], capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"measuring stage {s} failed ({p.returncode}): {p.stderr[-1000:]}")
            acts[s] = int(p.stdout.split()[-1])
            print(f"stage {s}: {acts[s] / 2**30:.2f} GiB saved for backward per {cfg.segment_seconds} s clip "
                  f"(measured, float32, {time.time() - t0:.0f} s)", flush=True)
        print()
    gib = 2**30
    print(f"| stage | GPUs | model state per GPU | + activations, batch {args.gpu_batch} x {cfg.segment_seconds} s "
          "per GPU | total per GPU |")
    print("|---|---|---|---|---|")
    for s, (trained, frozen, replicated) in stages.items():
        for n in (1, 8, 16):
            state = (16 * trained + 4 * frozen) / n + 4 * replicated
            act = acts.get(s, 0) * args.gpu_batch
            print(f"| {s} | {n} | {state / gib:.1f} GiB | {act / gib:.1f} GiB | {(state + act) / gib:.1f} GiB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--memory", action="store_true", help="the released sizes' memory table instead")
    ap.add_argument("--measure-activations", action="store_true", help="with --memory: measure activations")
    ap.add_argument("--gpu-batch", type=int, default=8, help="with --memory: clips per GPU")
    ap.add_argument("--activations-of", type=int, choices=(1, 2), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.activations_of:
        print(measure_activations(_released_parts()[0], args.activations_of))
        return
    memory(args) if args.memory else throughput(args)


if __name__ == "__main__":
    main()
