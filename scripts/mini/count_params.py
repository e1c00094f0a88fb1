"""Parameter counts and weight sizes of the mini model (counted on the meta device: nothing is allocated).

    python scripts/mini/count_params.py                                   # the shipped mini LM config
    python scripts/mini/count_params.py --lm FILE --codec CONFIG.json     # add an audio tokenizer config.json

Prints each module group of the LM (the trainer's groups: patch encoder, LLM, patch decoder), the total, and the
bytes of the weights in float32 and bfloat16, with the audio tokenizer's when its config is given; checks the
sum against the 60 MB budget of the mini model (issue 14).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
LM_CONFIG = ROOT / "src" / "mimo_audio" / "train" / "configs" / "mini" / "lm.json"
BUDGET_MB = 60.0
GROUPS = {
    "patch encoder": ("patch_encoder", "speech_embeddings", "group_downcast"),
    "LLM": ("embed_tokens", "backbone", "lm_head"),
    "patch decoder": ("patch_decoder", "local_heads", "hidden_downcast", "speech_to_local"),
}


def lm_counts(path: Path = LM_CONFIG) -> dict[str, int]:
    import torch

    from mimo_audio.config import LMConfig
    from mimo_audio.lm import MimoAudioLM

    config = LMConfig.from_file(path)
    with torch.device("meta"):
        lm = MimoAudioLM(config)
    out = dict.fromkeys(GROUPS, 0)
    for name, p in lm.named_parameters():
        top = name.split(".")[0]
        group = next(g for g, tops in GROUPS.items() if top in tops)
        out[group] += p.numel()
    return out


def codec_count(path: Path) -> int:
    import torch

    from mimo_audio.codec import AudioTokenizer
    from mimo_audio.config import TokenizerConfig

    config = TokenizerConfig.from_file(path)
    with torch.device("meta"):
        codec = AudioTokenizer(config)
    return sum(p.numel() for p in codec.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm", type=Path, default=LM_CONFIG, help="LM config.json")
    ap.add_argument("--codec", type=Path, default=None, help="audio tokenizer config.json (e.g. the small codec's)")
    args = ap.parse_args(argv)
    counts = lm_counts(args.lm)
    total = sum(counts.values())
    rows = [(f"LM {g}", n) for g, n in counts.items()] + [("LM total", total)]
    if args.codec is not None:
        c = codec_count(args.codec)
        rows += [("audio tokenizer", c)]
        total += c
        rows += [("together", total)]
    print(f"{'part':<20} {'parameters':>12} {'MB fp32':>9} {'MB bf16':>9}")
    for name, n in rows:
        print(f"{name:<20} {n:>12,} {n * 4 / 1e6:>9.1f} {n * 2 / 1e6:>9.1f}")
    mb = total * 4 / 1e6
    verdict = "within" if mb <= BUDGET_MB else "over"
    print(f"float32 weights {mb:.1f} MB: {verdict} the {BUDGET_MB:.0f} MB budget"
          + ("" if args.codec else " (LM only; pass --codec for the total)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
