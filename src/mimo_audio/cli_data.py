"""``mimo-audio data prepare|summary``: thin wrappers over :mod:`mimo_audio.data.prepare`."""

from __future__ import annotations

import json
import logging
import sys


def cmd_data_prepare(args) -> int:
    from .data.prepare import prepare

    logger = logging.getLogger("mimo_audio.data")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mimo-audio data: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        summary = _prepare(args, prepare)
    finally:
        logger.removeHandler(handler)
    _print_summary(args.output, summary)
    return 0


def _prepare(args, prepare):
    return prepare(args.manifest, args.output, args.tokenizer, format=args.format, split=args.split,
                   audio_column=args.audio_column, text_column=args.text_column,
                   shard_size=args.shard_size, batch_seconds=args.batch_seconds,
                   max_seconds=args.max_seconds if args.max_seconds > 0 else None,
                   min_seconds=args.min_seconds, num_quantizers=args.num_quantizers, device=args.device,
                   dtype=args.dtype, workers=args.workers, progress=None)


def cmd_data_summary(args) -> int:
    from .data.prepare import write_summary

    summary = write_summary(args.shards)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "bad_items"}, indent=1))
    else:
        _print_summary(args.shards, summary)
    return 0


def _print_summary(out, s: dict) -> None:
    reasons = ", ".join(f"{n} {r}" for r, n in s["bad_by_reason"].items()) or "none"
    state = "complete" if s["complete"] else f"{s['shards_done']} of {s['shards']} shards done"
    print(f"{out}: {s['written']} items written, {s['bad']} skipped ({reasons}); {s['hours']:.3f} h of audio; "
          f"{state}; details in {out}/summary.json", file=sys.stderr)


def add_data_commands(subparsers) -> None:
    """``mimo-audio data prepare|summary``."""
    from .checkpoint import TOKENIZER_ID

    data = subparsers.add_parser("data", help="training data: encode a manifest's audio into shards",
                                 description="Prepare training data once: audio -> codes, written as Arrow shards.")
    sub = data.add_subparsers(dest="data_command", metavar="{prepare,summary}", required=True)

    p = sub.add_parser("prepare", help="manifest -> Arrow shards of codes, texts and metadata",
                       description="Encode every item's audio with the audio tokenizer and write shards. Under "
                                   "torchrun each rank prepares its own shards; a rerun skips finished shards.")
    p.add_argument("manifest", help="JSONL (pairs or chat), a datasets folder (save_to_disk) or a hub dataset name")
    p.add_argument("-o", "--output", required=True, help="shard folder (created; reused to resume)")
    p.add_argument("--format", choices=("pairs", "chat", "hf"), default=None,
                   help="manifest format (default: detected from the path and first line)")
    p.add_argument("--split", default=None, help="datasets split (default: the only one)")
    p.add_argument("--audio-column", default=None, help="datasets audio column (default: the Audio feature)")
    p.add_argument("--text-column", default=None, help="datasets text column (default: text)")
    p.add_argument("--shard-size", type=int, default=1000, help="manifest items per shard (default: 1000)")
    p.add_argument("--batch-seconds", type=float, default=600.0,
                   help="seconds of audio per encoder batch (default: 600)")
    p.add_argument("--max-seconds", type=float, default=600.0,
                   help="skip clips longer than this, 0 for no limit (default: 600)")
    p.add_argument("--min-seconds", type=float, default=0.1, help="skip clips shorter than this (default: 0.1)")
    p.add_argument("--num-quantizers", type=int, default=8, help="RVQ codebooks to keep (default: 8)")
    p.add_argument("--workers", type=int, default=4, help="threads reading audio (default: 4)")
    p.add_argument("-v", "--verbose", action="store_true", help="log skipped shards as well")
    g = p.add_argument_group("model")
    g.add_argument("--tokenizer", default=TOKENIZER_ID, help=f"audio tokenizer hub id or folder (default: {TOKENIZER_ID})")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32)")
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("summary", help="total a shard folder's finished shards into summary.json and print it")
    p.add_argument("shards", help="shard folder written by `mimo-audio data prepare`")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (without the bad-item list)")
    p.set_defaults(func=cmd_data_summary)



