"""``mimo-audio train-codec ...`` / ``python -m mimo_audio.train_codec ...`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse

from ..cli import add_loop_args
from .config import SHIPPED, make_codec_config, read_config

EXIT_ERROR = 2


def build_parser(prog: str = "mimo-audio train-codec") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train the audio tokenizer (SPEC §8.1; docs/training.md): stage 1 = reconstruction + "
        "commitment + A2T text alignment, stage 2 = adversarial fine-tuning of decoder and vocoder. Run under "
        "`torchrun --nproc-per-node N -m mimo_audio.train_codec ...` for data-parallel FSDP2.")
    a = p.add_argument
    a("--stage", type=int, choices=[1, 2], required=True, help="1 (from scratch or --init) or 2 (needs --init)")
    a("--config", required=True, help=f"a shipped config ({', '.join(SHIPPED)}) or a TOML / YAML file (training settings "
      "at the top, the tokenizer's config.json fields in a [tokenizer] table)")
    a("--data", required=True, help="a JSONL manifest of {\"audio\", \"text\"} lines or a folder of audio files")
    a("--val-data", help="validation clips (same forms)")
    a("--init", help="a released or exported tokenizer folder / hub id to start from (its config.json wins)")
    a("--max-steps", type=int, help="optimizer steps (default 2000)")
    a("--batch-size", type=int, help="clips per step per rank")
    a("--segment-seconds", type=float, help="random crop length in seconds")
    a("--lr", type=float, help="generator learning rate")
    a("--lr-disc", type=float, help="discriminator learning rate (stage 2; default --lr)")
    a("--a2t-weight", type=float, help="weight of the A2T loss (default 10; 0 disables the text decoder)")
    a("--text-tokenizer", help="'bytes' (default) or an LM folder / tokenizer.json for the A2T decoder's text")
    a("--quantizer-dropout", type=float, help="share of clips that use a random prefix of the RVQ layers")
    a("--sample-every", type=int, help="write sample reconstructions every N steps (default: never)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA (default off)")
    add_loop_args(p, "samples/, final/", "runs/mimo-audio-codec")
    return p


def config_from_args(args: argparse.Namespace):
    settings = read_config(args.config)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    return make_codec_config(settings, **flags)


def run(argv: list[str], prog: str = "mimo-audio train-codec") -> int:
    from ..cli import run_training

    def work():
        from .objective import train_codec

        train_codec(config_from_args(build_parser(prog).parse_args(argv)))

    return run_training(prog, work)


def add_train_codec_command(subparsers) -> None:
    """Lists ``train-codec`` in ``mimo-audio --help``; :func:`mimo_audio.cli.main` hands it to :func:`run`."""
    subparsers.add_parser("train-codec", help="train the audio tokenizer (stage 1 / stage 2, torchrun + FSDP2); "
                          "`mimo-audio train-codec --help`", add_help=False)
