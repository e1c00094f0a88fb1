"""Train the mini model's text tokenizer: a small byte-level BPE (``tokenizers``) on the corpus train text.

    python scripts/mini/train_text_tokenizer.py                 # -> scripts/mini/tokenizer/
    python scripts/mini/train_text_tokenizer.py -o FOLDER --vocab-size 2048

The layout follows the released MiMo tokenizer (SPEC §7): the BPE vocabulary first (the 256 byte symbols, then the
merges), then the special tokens appended in the released order: ``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, then the eight audio tokens ``<|sosp|>``, ``<|eosp|>``, ``<|empty|>``, ``<|Human|>``,
``<|SpeechLM|>``, ``<|sostm|>``, ``<|eostm|>``, ``<|eot|>``. All are added tokens (never split, one id each), so
``mimo_audio.text.TextTokenizer`` resolves them by name. eos and pad are ``<|endoftext|>`` (as the released
tokenizer config names them). The pre-tokenizer is Qwen2's split pattern followed by byte-level mapping, so any
text (Chinese template strings included) encodes, falling back to bytes.

Besides the corpus sentences, the prompt strings of the task table (``mimo_audio.tasks.common``: the ASR/TTS
templates, system prompts, the thinking markers) are part of the training text, repeated so that the prompts the
model always sees become few tokens. Training is deterministic for a given text and vocabulary size.

Files written: ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mini_text  # noqa: E402

VOCAB_SIZE = 2048  # BPE vocabulary before the 11 special tokens
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|sosp|>", "<|eosp|>", "<|empty|>", "<|Human|>",
            "<|SpeechLM|>", "<|sostm|>", "<|eostm|>", "<|eot|>"]
# Qwen2's pre-tokenizer split (contractions, letters with one leading non-letter, single digits, punctuation runs,
# newlines, spaces)
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
PROMPT_REPEAT = 50
DEFAULT_OUT = HERE / "tokenizer"


def prompt_strings() -> list[str]:
    """Every string constant of the task table's template data (mimo_audio.tasks.common)."""
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from mimo_audio.tasks import common

    out: list[str] = []

    def walk(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    for name in sorted(vars(common)):
        if name.isupper():
            walk(getattr(common, name))
    return sorted(set(out))


def training_text() -> list[str]:
    return mini_text.read_split("train") + prompt_strings() * PROMPT_REPEAT + ["user", "assistant", "system"] * 10


def train(out: Path = DEFAULT_OUT, vocab_size: int = VOCAB_SIZE) -> Path:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True} for s in SPECIALS}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "additional_special_tokens": SPECIALS[1:], "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 8192 * 4, "tokenizer_class": "Qwen2Tokenizer",
    }, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": SPECIALS[1:], "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="BPE vocabulary before the special tokens")
    args = ap.parse_args(argv)
    out = train(args.output, args.vocab_size)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    test = mini_text.read_split("test")
    n_tokens = sum(len(tok.encode(s).ids) for s in test)
    n_words = sum(len(s.split()) for s in test)
    print(f"train_text_tokenizer: {tok.get_vocab_size()} ids ({args.vocab_size} BPE + {len(SPECIALS)} special) -> "
          f"{out}; held-out test text: {n_tokens / n_words:.2f} tokens per word")
    return 0


if __name__ == "__main__":
    sys.exit(main())
