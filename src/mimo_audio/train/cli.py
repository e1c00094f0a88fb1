"""``mimo-audio train ...`` / ``python -m mimo_audio.train ...`` (also under ``torchrun``) and
``mimo-audio train merge RUN -o FOLDER``."""

from __future__ import annotations

import argparse
import sys

from ..errors import MimoAudioError
from .config import STAGES, make_config, read_config_file

EXIT_ERROR = 2


def build_parser(prog: str = "mimo-audio train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train the MiMo-Audio LM: pre-training stages pt1/pt2, SFT, LoRA (docs/training.md). "
        "Run under `torchrun --nproc-per-node N -m mimo_audio.train ...` for data-parallel FSDP2. "
        "`mimo-audio train merge RUN -o FOLDER` merges a LoRA run's adapter into its base; "
        "`mimo-audio train export RUN [--step N] -o FOLDER` writes a checkpoint in the released layout.")
    a = p.add_argument
    a("--config", help="TOML (.toml) or YAML (.yaml/.yml) file with the same settings (keys as the flags, dashes or "
      "underscores); flags given on the command line override it")
    a("--model", help="LM folder or hub id to start from")
    a("--tokenizer", help="audio tokenizer folder or hub id (recorded; prepared data is already tokenized)")
    a("--data", help="training data: a folder of prepared shards (mimo-audio data prepare; pick tasks with --tasks) "
      "or an example .safetensors file / a folder of them")
    a("--val-data", help="validation data (either kind; shards use the same --tasks mixture)")
    a("--stage", choices=sorted(STAGES), help="pt1 (text loss, patch decoder frozen), pt2 or sft (default sft)")
    a("--tasks", help="task mixture NAME:WEIGHT,... drawn from the shards (e.g. asr:1,tts:1,continuation:0.5); "
      "needed with shard data")
    a("--max-groups", type=int, help="shard data: cut longer examples at this many groups (default: the model's "
      "positions)")
    a("--window", type=int, help="shard data: batches per length-sorting window (default 128)")
    a("--lora", type=int, help="LoRA rank (0 or absent: full fine-tuning)")
    a("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank)")
    a("--lora-dropout", type=float, help="LoRA dropout (default 0)")
    a("--lora-targets", help="comma-separated regular expressions of module names (default: the fused qkv and o_proj "
      "of the backbone and patch decoder)")
    a("--max-steps", type=int, help="optimizer steps (default 1000)")
    a("--batch-size", type=int, help="examples per micro-batch per rank (global = batch x ranks x grad-accum)")
    a("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    a("--lr", type=float, help="the LLM's learning rate; the patch encoder/decoder keep the stage's ratios to it")
    a("--schedule", choices=["constant", "cosine"], help="after warm-up (default: the stage's)")
    a("--warmup-ratio", type=float, help="warm-up fraction of max-steps (default 0.01)")
    a("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.1)")
    a("--grad-clip", type=float, help="clip the global gradient norm (default 1.0)")
    a("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="recompute block activations in backward (less memory, ~30%% more compute)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 on CUDA (default on): FSDP2 mixed precision under torchrun, autocast in one process")
    a("--text-loss-chunk", type=int, default=None, metavar="N",
      help="text loss over chunks of N positions (default 1024; 0: the full logits at once)")
    a("--empty-id", type=int, help="the <|empty|> text id when the model folder has no tokenizer.json")
    add_loop_args(p, "final/", "runs/mimo-audio")
    return p


def add_loop_args(p: argparse.ArgumentParser, holds: str, default_output: str) -> None:
    """The flags of the training loop's settings (:class:`~mimo_audio.train.config.LoopConfig`), shared by
    ``mimo-audio train`` and ``mimo-audio train-codec``; ``holds``: what the run folder holds besides checkpoints
    and metrics."""
    a = p.add_argument
    a("--device", help="cpu, cuda or cuda:N (default: cuda when available; LOCAL_RANK under torchrun)")
    a("--output", help=f"run folder: checkpoints, metrics.jsonl, {holds} (default {default_output})")
    a("--resume", action="store_true", default=None, help="continue the run in --output from its last checkpoint")
    a("--save-every", type=int, help="checkpoint every N steps (default 500; always at the end)")
    a("--keep", type=int, help="checkpoints to keep (default 2)")
    a("--val-every", type=int, help="validation every N steps on --val-data (default: never)")
    a("--log-every", type=int, help="metrics.jsonl record every N steps (default 1)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--stop-after", type=int, help="stop after this step without finishing (resume later with --resume)")
    a("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on a terminal (default on)")
    a("--tensorboard", action="store_const", const="tensorboard", dest="tracker", default=None,
      help="also write the per-step scalars to OUTPUT/tensorboard (needs tensorboard; config: tracker = "
      "\"tensorboard\")")


def build_merge_parser(prog: str = "mimo-audio train merge") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Merge a LoRA run's adapter (RUN/final) into its base model "
                                "and write the released layout.")
    p.add_argument("run", help="the LoRA run's --output folder")
    p.add_argument("-o", "--output", required=True, help="folder for the merged model")
    p.add_argument("--base", help="base model (default: the one the adapter names)")
    return p


def build_export_parser(prog: str = "mimo-audio train export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Write a full-fine-tuning run's checkpoint in the released "
                                "layout (the final model is exported to RUN/final by the run itself).")
    p.add_argument("run", help="the run's --output folder")
    p.add_argument("-o", "--output", required=True, help="folder for the model")
    p.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
    return p


def config_from_args(args: argparse.Namespace):
    settings = read_config_file(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    return make_config(settings, **flags)


def run(argv: list[str], prog: str = "mimo-audio train") -> int:
    try:
        if argv and argv[0] == "merge":
            args = build_merge_parser(prog + " merge").parse_args(argv[1:])
            from .lora import merge

            dest = merge(args.run, args.output, base=args.base)
            print(f"{dest}: merged model written", file=sys.stderr)
            return 0
        if argv and argv[0] == "export":
            args = build_export_parser(prog + " export").parse_args(argv[1:])
            from .export import export_checkpoint

            dest = export_checkpoint(args.run, args.output, step=args.step)
            print(f"{dest}: model written", file=sys.stderr)
            return 0
    except (MimoAudioError, OSError) as exc:
        return _failed(prog, exc)

    def work():
        from .lm_objective import train

        train(config_from_args(build_parser(prog).parse_args(argv)))

    return run_training(prog, work)


def _failed(prog: str, exc: BaseException) -> int:
    msg = str(exc) or type(exc).__name__
    print(f"{prog.split()[0]}: error: {' '.join(msg.split())}", file=sys.stderr)
    return EXIT_ERROR


def run_training(prog: str, work) -> int:
    """Run ``work()`` (parse the flags and train) as a command: the process group is closed however it ends, a
    :class:`~mimo_audio.errors.MimoAudioError` or OS error is one line on stderr (exit 2), Ctrl-C says how to go
    on (exit 130). Shared by ``mimo-audio train`` and ``mimo-audio train-codec``."""
    try:
        try:
            work()
        finally:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        return 0
    except (MimoAudioError, OSError) as exc:
        return _failed(prog, exc)
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


def add_train_command(subparsers) -> None:
    """Lists ``train`` in ``mimo-audio --help``; :func:`mimo_audio.cli.main` hands ``train ...`` to :func:`run`."""
    subparsers.add_parser("train", help="train or fine-tune the LM (stages pt1/pt2/sft, LoRA, torchrun + FSDP2); "
                          "`mimo-audio train --help`", add_help=False)
