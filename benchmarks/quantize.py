"""Weight quantization (int8, int4 with torchao): quality, real weight bytes and CPU speed, against the
unquantized model. Prints the tables recorded in docs/benchmarks.md.

Quality runs a plain greedy loop over the model's own forward (``lm(grid)``, no cache), independent of the
generation engine: text groups (``<|empty|>`` banned), forced audio groups (every text id but ``<|empty|>``
banned) with the delayed patch decoder run step by step (SPEC §5.2, the channel's empty id banned).

Usage: python benchmarks/quantize.py [--only quality,memory,speed] [--groups 64] [--fixture PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mimo_audio import quantize as Q
from mimo_audio.config import LMConfig
from mimo_audio.lm import MimoAudioLM, released_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("int8", "int4")


# ============================================================================================ models
def released_width_config(layers: int = 2, local_layers: int = 2, input_layers: int = 2, vocab: int = 16384) -> LMConfig:
    """The released widths (SPEC §3.1: hidden 4096, 32/8 heads of 128, ffn 11008, local 1024/64 heads/4096) with
    few layers and a smaller text vocabulary (the text head stays unquantized)."""
    return LMConfig(vocab_size=vocab, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                    rope_theta=640000.0, local_dim=1024, local_layers=local_layers, local_attn_heads=64,
                    local_ffn_dim=4096, input_local_dim=1024, input_local_layers=input_layers)


def random_lm(config: LMConfig, seed: int = 0, dtype=torch.bfloat16, std: float = 0.02,
              tiled: bool = False) -> MimoAudioLM:
    """Random weights ~ N(0, std) (norms 1). ``tiled``: every weight is cut from one 4M-value random block
    (fast; for memory tests, where the values do not matter)."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        lm = MimoAudioLM(config)
    lm.to(dtype)  # still on the meta device: free
    lm.to_empty(device="cpu")
    block = torch.randn(1 << 22).mul_(std).to(dtype) if tiled else None
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.fill_(1.0)
            elif tiled:
                flat = p.view(-1)
                for a in range(0, flat.numel(), block.numel()):
                    n = min(block.numel(), flat.numel() - a)
                    flat[a: a + n].copy_(block[:n])
            else:
                p.normal_(0, std)
    for stack in (lm.backbone, lm.patch_encoder, lm.patch_decoder):
        stack.init_buffers()
    return lm.eval()


def write_checkpoint(lm: MimoAudioLM, folder: Path) -> Path:
    """Save ``lm`` in the released layout (config.json + model.safetensors) so from_pretrained can load it."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(released_state_dict(lm), str(folder / "model.safetensors"))
    cfg = {k: ("-".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in asdict(lm.config).items()}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


# ============================================================================================ greedy reference loop
def _empty_grid_group(lm, token: int) -> torch.Tensor:
    c = lm.config
    col = torch.empty(c.audio_channels + 1, c.group_size, dtype=torch.long)
    col[0] = -100
    col[0, 0] = token
    col[1:] = torch.tensor(c.speech_zeroemb_idx)[:, None]
    return col


@torch.inference_mode()
def patch_greedy(lm: MimoAudioLM, first: torch.Tensor) -> torch.Tensor:
    """Codes ``(G, C)`` of one patch from its decoder input ``first`` ``(local_dim,)``: the delayed loop of SPEC
    §5.2 without a cache (the whole prefix is run at every step), argmax with each channel's empty id banned."""
    c = lm.config
    G, C, delays = c.group_size, c.audio_channels, c.delay_pattern
    empty = torch.tensor(c.speech_zeroemb_idx)
    codes = torch.empty(G, C, dtype=torch.long)
    inputs = [first.reshape(1, -1)]
    for t in range(G + max(delays)):
        x = torch.cat(inputs, 0)[None]
        o = lm.patch_decoder(x, torch.arange(x.shape[1])[None])[0, -1]
        step = empty.clone()
        for ch, d in enumerate(delays):
            if d <= t < d + G:
                logits = lm.local_heads[ch](o).float()
                logits[c.speech_zeroemb_idx[ch]] = -float("inf")
                step[ch] = int(logits.argmax())
                codes[t - d, ch] = step[ch]
        x = lm.embed_speech(step[None])
        x = lm.speech_to_local(x) if lm.speech_to_local is not None else x
        inputs.append(x.to(first.dtype))
    return codes


@torch.inference_mode()
def greedy(lm: MimoAudioLM, prompt: torch.Tensor, groups: int, mode: str, empty: int):
    """``groups`` greedy groups after ``prompt`` ``(9, 4N)``; mode "text" bans <|empty|>, "audio" bans every
    other text id. Returns (text tokens, list of (G, C) patches, list of patch-decoder inputs)."""
    grid = prompt.clone()
    tokens, patches, firsts = [], [], []
    for _ in range(groups):
        out = lm(grid[None], empty_id=empty)
        logits = out.text_logits[0, -1].float()
        if mode == "text":
            logits[empty] = -float("inf")
            tok = int(logits.argmax())
            col = _empty_grid_group(lm, tok)
        else:
            tok = empty
            first = out.local_inputs[0, -1]
            codes = patch_greedy(lm, first)
            firsts.append(first)
            patches.append(codes)
            col = _empty_grid_group(lm, tok)
            col[1:] = codes.t()
        tokens.append(tok)
        grid = torch.cat([grid, col], 1)
    greedy.last_grid = grid
    return tokens, patches, firsts


def mixed_prompt(lm: MimoAudioLM, empty: int, groups: int = 8, seed: int = 0) -> torch.Tensor:
    c = lm.config
    g = torch.Generator().manual_seed(seed)
    cols = []
    for n in range(groups):
        if n % 2:
            col = _empty_grid_group(lm, empty)
            for ch in range(c.audio_channels):
                col[1 + ch] = torch.randint(0, c.speech_zeroemb_idx[ch], (c.group_size,), generator=g)
        else:
            col = _empty_grid_group(lm, int(torch.randint(0, empty, (1,), generator=g)))
        cols.append(col)
    return torch.cat(cols, 1)


@torch.inference_mode()
def quality(ref: MimoAudioLM, q: MimoAudioLM, empty: int, groups: int, cache: dict | None = None) -> dict:
    """text-logit relative error on a mixed prompt, greedy text / forced-audio agreement over ``groups``
    free-running groups, and patch-decoder code agreement on the reference's decoder inputs. ``cache``: a dict
    kept across calls with the same ``ref`` so that its runs are made once."""
    cache = {} if cache is None else cache
    prompt = mixed_prompt(ref, empty)
    if "r" not in cache:
        cache["r"] = ref(prompt[None], empty_id=empty)
        cache["text"] = greedy(ref, prompt, groups, "text", empty), greedy.last_grid
        cache["audio"] = greedy(ref, prompt, groups, "audio", empty)
    r, o = cache["r"], q(prompt[None], empty_id=empty)
    rel = float((o.text_logits.float() - r.text_logits.float()).norm() / r.text_logits.float().norm())
    (rt, _, _), ref_grid = cache["text"]
    qt, _, _ = greedy(q, prompt, groups, "text", empty)
    # teacher forced: the quantized model's greedy choice at every position of the reference's continuation
    n0 = prompt.shape[1] // ref.config.group_size
    tf_logits = q(ref_grid[None], empty_id=empty).text_logits[0, n0 - 1: -1].float()
    tf_logits[:, empty] = -float("inf")
    tf_agree = float((tf_logits.argmax(-1) == torch.tensor(rt)).float().mean())
    _, rp, rf = cache["audio"]
    _, qp, _ = greedy(q, prompt, groups, "audio", empty)
    text_agree = sum(a == b for a, b in zip(rt, qt)) / len(rt)
    audio_agree = float(torch.stack([a == b for a, b in zip(rp, qp)]).float().mean())
    patch_agree = float(torch.stack([patch_greedy(q, f.to(q.dtype)) == p for f, p in zip(rf, rp)]).float().mean())
    return {"rel": rel, "text": text_agree, "tf": tf_agree, "audio": audio_agree, "patch": patch_agree}


def fixture_models(fixture: Path):
    from mimo_audio.text import TextTokenizer

    folder = fixture / "lm"
    empty = TextTokenizer.from_folder(folder).ids.empty
    ref = MimoAudioLM.from_pretrained(folder, device="cpu", empty_id=empty)
    return folder, ref, empty


def run_quality(args) -> None:
    print(f"### Quality vs unquantized ({args.groups} greedy groups, plain forward loop, CPU)\n")
    print("| model | scheme | text-logit rel. error | greedy text agreement, free running | same, teacher forced "
          "| forced-audio code agreement, free running | patch-decoder code agreement |")
    print("|---|---|---|---|---|---|---|")
    folder, ref, empty = fixture_models(Path(args.fixture))
    cache = {}
    for s in ("bfloat16", *SCHEMES) if args.released_groups is None else ():  # bfloat16: the rounding noise floor of an unquantized dtype change
        if s == "bfloat16":
            q = MimoAudioLM.from_pretrained(folder, device="cpu", empty_id=empty, dtype=torch.bfloat16)
        else:
            q = MimoAudioLM.from_pretrained(folder, device="cpu", empty_id=empty, quantize=s)
        m = quality(ref, q, empty, args.groups, cache)
        print(f"| fixture (float32) | {s} | {m['rel']:.4f} | {m['text']:.3f} | {m['tf']:.3f} | {m['audio']:.3f} | {m['patch']:.3f} |")
    cfg = released_width_config(layers=args.layers, local_layers=2, input_layers=2, vocab=args.vocab)
    ref = random_lm(cfg)
    empty = cfg.vocab_size - 1
    cache = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_checkpoint(ref, Path(tmp) / "lm")
        for s in SCHEMES:
            q = MimoAudioLM.from_pretrained(folder, device="cpu", empty_id=empty, quantize=s)
            m = quality(ref, q, empty, args.released_groups or args.groups, cache)
            print(f"| released widths, {args.layers}+2+2 layers, random (bfloat16) | {s} | {m['rel']:.4f} | "
                  f"{m['text']:.3f} | {m['tf']:.3f} | {m['audio']:.3f} | {m['patch']:.3f} |")
            del q
    print()


# ============================================================================================ memory
def _layer_bytes(make, scheme: str | None) -> int:
    """Real bytes of one module built by ``make()`` (bfloat16, random), quantized with ``scheme``."""
    from torch import nn

    mod = make()
    if scheme is not None:
        for name, sub in list(mod.named_modules()):
            if isinstance(sub, nn.Linear):
                Q.quantize_linear(sub, scheme, name=name)
    return Q.module_bytes(mod)


def run_memory(args) -> None:
    from torch import nn

    from mimo_audio.lm import Block, backbone_config, decoder_config, encoder_config

    c = LMConfig(vocab_size=151680, hidden_size=4096, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, local_dim=1024, local_layers=16,
                 local_attn_heads=64, local_ffn_dim=4096, input_local_dim=1024, input_local_layers=6)

    def rand(mod):
        with torch.no_grad():
            for p in mod.parameters():
                p.normal_(0, 0.02)
        return mod.to(torch.bfloat16)

    parts = {
        "backbone layer x36": (lambda: rand(Block(backbone_config(c))), 36),
        "patch decoder layer x16": (lambda: rand(Block(decoder_config(c))), 16),
        "patch encoder layer x6": (lambda: rand(Block(encoder_config(c))), 6),
        "local heads (8) + down-projections": (lambda: rand(nn.ModuleList(
            [nn.Linear(1024, v, bias=False) for v in c.speech_vocab_size]
            + [nn.Linear(4096, 4096, bias=False), nn.Linear(4096, 1024, bias=False)])), 1),
    }
    fixed = 2 * (2 * c.vocab_size * c.hidden_size + sum(v * 1024 for v in c.speech_vocab_size) + 3 * 4096)
    print("### Real weight bytes, released 7B LM shapes (CPU tensors, built one layer at a time)\n")
    print("| part | bfloat16 GiB | int8 GiB | int4 GiB |")
    print("|---|---|---|---|")
    total = {None: fixed, "int8": fixed, "int4": fixed}
    for label, (make, count) in parts.items():
        row = []
        for s in (None, "int8", "int4"):
            b = _layer_bytes(make, s) * count
            total[s] += b
            row.append(b / 2**30)
        print(f"| {label} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} |")
    print(f"| embeddings + text head (kept bfloat16) | {fixed / 2**30:.3f} | {fixed / 2**30:.3f} | {fixed / 2**30:.3f} |")
    print(f"| **LM total** | {total[None] / 2**30:.2f} | {total['int8'] / 2**30:.2f} | {total['int4'] / 2**30:.2f} |")
    kv = 36 * 2 * 8 * 128 * 2048 * 2
    print(f"\nKV cache of 2048 groups, batch 1, bfloat16: {kv / 2**30:.3f} GiB\n")


# ============================================================================================ speed
def run_speed(args) -> None:
    cfg = released_width_config(layers=2, local_layers=1, input_layers=1, vocab=1024)
    x = torch.randn(1, 1, 4096, dtype=torch.bfloat16)
    pos = torch.zeros(1, 1, dtype=torch.long)
    print(f"### CPU backbone step, released width, 2 layers, batch 1, one new position ({torch.get_num_threads()} "
          "threads, eager, median of the reps)\n")
    print("| weights | backbone weight MiB | ms per step | vs bfloat16 |")
    print("|---|---|---|---|")
    base = None
    for s in (None, "int8", "int4"):
        lm = random_lm(cfg)
        if s:
            Q.quantize_model(lm, s)
        bb = lm.backbone
        mib = Q.module_bytes(bb) / 2**20
        with torch.inference_mode():
            for _ in range(3):
                bb(x, pos)
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                bb(x, pos)
                times.append((time.perf_counter() - t) * 1e3)
        ms = statistics.median(times)
        base = base or ms
        print(f"| {s or 'bfloat16'} | {mib:.0f} | {ms:.1f} | {base / ms:.2f}x |")
        del lm, bb
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="quality,memory,speed")
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2, help="backbone layers of the released-width quality model")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--released-groups", type=int, default=None,
                    help="groups for the released-width model only (skips the fixture rows)")
    ap.add_argument("--fixture", default=os.environ.get("MIMO_AUDIO_FIXTURE", ROOT / "tests/fixtures/reference-tiny"))
    args = ap.parse_args()
    only = set(args.only.split(","))
    print(f"torch {torch.__version__}, torchao {Q.torchao().__version__}\n")
    if "quality" in only:
        run_quality(args)
    if "memory" in only:
        run_memory(args)
    if "speed" in only:
        run_speed(args)


if __name__ == "__main__":
    main()
