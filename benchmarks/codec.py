"""Audio tokenizer speed: encode and decode of one clip, as multiples of real time.

Models: (a) the parity fixture's tiny tokenizer, (b) a random-weight tokenizer with the released shapes
(SPEC §2.1: d_model 1280, 32 + 32 layers, vocoder 16 x 256, 1.28 B parameters; no download needed), and
optionally (c) a real checkpoint folder or hub id (``--checkpoint``).

    python benchmarks/codec.py                       # CPU, float32, 30 s clip
    python benchmarks/codec.py --device cuda --dtype bfloat16

Prints a markdown table; paste it into docs/benchmarks.md with the machine description it prints first.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from mimo_audio.audio import load_audio
from mimo_audio.codec import AudioTokenizer, random_tokenizer
from mimo_audio.config import TokenizerConfig

FIXTURE = Path(os.environ.get("MIMO_AUDIO_FIXTURE", Path(__file__).parents[1] / "tests" / "fixtures" / "reference-tiny"))

RELEASED = dict(  # SPEC §2.1, "Released value" column
    max_audio_seconds=1800, stride_size=2, avg_pooler=2, d_model=1280, scale_embedding=False, kernel_size=3,
    activation_function="gelu", encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
    encoder_skip_layer_id=3, encoder_causal=False, encoder_attn_window_size=[-1, -1], decoder_layers=32,
    decoder_attention_heads=20, decoder_ffn_dim=5120, decoder_kernel_size=3, decoder_stride_size=2,
    decoder_causal=True, decoder_attn_window_size=[-1, -1], nfft=960, window_size=960, hop_length=240,
    vocoder_dim=256, vocoder_intermediate_dim=1024, vocoder_num_layers=16, vocoder_attention_heads=16,
    vocoder_attn_window_size=[40, 10], vocoder_padding="same", n_mels=128, sampling_rate=24000, fmin=0,
    fmax=None, num_quantizers=20, codebook_size=[1024, 1024] + [128] * 18, threshold_ema_dead_code=2,
    position_embedding_type="rope", rope_theta=10000, rope_type="default", ln_type="LayerNorm",
)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")).split()[1])
        ram = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{os.cpu_count()} CPUs ({cpu}), RAM {ram}, GPU {gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {datetime.date.today().isoformat()}")


def clip(seconds: float) -> torch.Tensor:
    """The first ``seconds`` of the fixture's long speech clip (repeated if shorter)."""
    path = FIXTURE / "audio" / "long_24k.wav"
    if path.is_file():
        wav = load_audio(path)
    else:
        t = torch.arange(int(24000 * 10)) / 24000
        wav = 0.2 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    n = int(seconds * 24000)
    return wav.repeat(n // wav.shape[0] + 1)[:n].contiguous()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, model: AudioTokenizer, wav: torch.Tensor, repeat: int) -> str:
    seconds = wav.shape[0] / model.sample_rate
    dev = model.device
    model.decode(model.encode(wav[: 24000 * 2]))  # warm-up (kernels, allocator)
    codes = model.encode(wav)
    enc = timed(lambda: model.encode(wav), dev, repeat)
    dec = timed(lambda: model.decode(codes), dev, repeat)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"| {name} | {params:,.1f} M | {model.dtype} | {dev} | {seconds:.0f} s | {enc:.3f} s | "
            f"{seconds / enc:,.1f}x | {dec:.3f} s | {seconds / dec:,.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (best is reported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-fixture", action="store_true")
    ap.add_argument("--skip-released", action="store_true")
    ap.add_argument("--checkpoint", default=None, help="also time a real tokenizer (folder or hub id)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    print(f"command: python benchmarks/codec.py --seconds {args.seconds:g} --device {args.device} --dtype {args.dtype}")
    print()
    print("| model | params | dtype | device | clip | encode | encode speed | decode | decode speed |")
    print("|---|---|---|---|---|---|---|---|---|")
    wav = clip(args.seconds)
    if not args.skip_fixture:
        m = AudioTokenizer.from_pretrained(FIXTURE / "tokenizer", device=args.device, dtype=args.dtype)
        print(bench("fixture (tiny, random)", m, wav, args.repeat), flush=True)
        del m
    if not args.skip_released:
        m = random_tokenizer(TokenizerConfig.from_dict(RELEASED), device=args.device, dtype=args.dtype)
        print(bench("released shapes (random)", m, wav, args.repeat), flush=True)
        del m
    if args.checkpoint:
        m = AudioTokenizer.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
        print(bench(f"checkpoint {args.checkpoint}", m, wav, args.repeat), flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
