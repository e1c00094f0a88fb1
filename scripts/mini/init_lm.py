"""Write a freshly initialised mini LM folder (released layout) for `mimo-audio train` to start from.

    python scripts/mini/init_lm.py -o runs/mini/init [--seed 0]

The trainer starts from a model folder; the mini model is trained from scratch, so this writes one: the mini LM
config (``src/mimo_audio/train/configs/mini/lm.json``), weights drawn with the seed (normal(0, 0.02) for linear and
embedding weights, zero biases, unit norm weights: the usual Qwen2 initialisation), and the mini text tokenizer
files (``scripts/mini/tokenizer/``). The folder is a training input under the git-ignored ``runs/``; random
weights are never shipped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
LM_CONFIG = ROOT / "src" / "mimo_audio" / "train" / "configs" / "mini" / "lm.json"
TOKENIZER = HERE / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def init_lm(out: Path, seed: int = 0, config_path: Path = LM_CONFIG, tokenizer: Path = TOKENIZER) -> Path:
    import torch
    from torch import nn

    from mimo_audio.config import LMConfig
    from mimo_audio.lm import MimoAudioLM
    from mimo_audio.text import TextTokenizer
    from mimo_audio.train.export import export_released

    config = LMConfig.from_file(config_path)
    text = TextTokenizer.from_folder(tokenizer)
    if text.size > config.vocab_size:
        raise SystemExit(f"init_lm: the tokenizer has {text.size} ids but the config's vocab_size is "
                         f"{config.vocab_size}; raise vocab_size in {config_path}")
    torch.manual_seed(seed)
    lm = MimoAudioLM(config, empty_id=text.ids.empty)
    for module in lm.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    folder = export_released(config, lm.state_dict(), out, empty_id=text.ids.empty)
    shutil.copyfile(config_path, folder / "config.json")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, folder / name)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=Path("runs/mini/init"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    folder = init_lm(args.output, args.seed)
    print(f"init_lm: wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
