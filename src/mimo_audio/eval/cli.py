"""``mimo-audio eval TASK ...`` and ``mimo-audio batch transcribe|speak|understand MANIFEST -o OUT.jsonl``.

Thin over :func:`mimo_audio.eval.evaluate` and :func:`mimo_audio.eval.bulk`; registered on the main parser by
:func:`add_eval_commands`. Run under ``torchrun --nproc-per-node N`` to shard over N processes (each takes its
slice; rank 0 merges and writes the report).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..checkpoint import INSTRUCT_ID


def _gen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling (per item)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="limit on generated LM steps per item")
    g.add_argument("--temperature", type=float, default=None, help="text sampler temperature (task preset otherwise)")
    g.add_argument("--top-k", type=int, default=None, help="text sampler top-k")
    g.add_argument("--top-p", type=float, default=None, help="text sampler top-p")
    g.add_argument("--greedy", action="store_true", help="deterministic decoding (argmax)")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runner")
    g.add_argument("--limit", type=int, default=None, help="take only the first N items, in the data's order")
    g.add_argument("--batch-size", type=int, default=8, help="items per generation batch (default: 8)")
    g.add_argument("--fresh", action="store_true", help="discard earlier results in the output instead of resuming")
    g.add_argument("--retry-failed", action="store_true", help="run again the items an earlier run recorded as failed")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--wait", type=float, default=6 * 3600.0,
                   help="seconds rank 0 waits for the other ranks' results before reporting (default: 6 h)")


def _model_args(p: argparse.ArgumentParser) -> None:
    from ..checkpoint import TOKENIZER_ID

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"LM hub id or folder (default: {INSTRUCT_ID}; not used by codec)")
    g.add_argument("--tokenizer", default=TOKENIZER_ID, help=f"audio tokenizer hub id or folder (default: {TOKENIZER_ID})")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available; under "
                                                   "torchrun cuda:LOCAL_RANK)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")


def _device(args) -> str | None:
    import os

    if args.device is None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return args.device


def _gen(args) -> dict:
    return {"seed": args.seed, "max_new_tokens": args.max_new_tokens, "greedy": args.greedy,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}


def cmd_eval(args) -> int:
    from . import evaluate

    options = {"with_voice": args.with_voice or None, "thinking": args.thinking or None,
               "mcq_format": args.mcq_format, "reply": args.reply, "num_quantizers": args.num_quantizers, "shots": args.shots, "answer_judge": args.answer_judge,
               "modality": args.modality}
    report = evaluate(args.task, args.data, args.output, model=args.model, tokenizer=args.tokenizer,
                      device=_device(args), dtype=args.dtype, limit=args.limit, split=args.split, judge=args.judge,
                      speaker_model=args.speaker_model, batch_size=args.batch_size, benchmark=args.benchmark,
                      options=options, fresh=args.fresh, retry_failed=args.retry_failed, progress=not args.no_progress, plots=not args.no_plots,
                      wait_s=args.wait, **_gen(args))
    if report is None:
        print("results written; rank 0 writes the report", file=sys.stderr)
        return 0
    print(json.dumps({"task": report["task"], "metrics": report["metrics"], "count": report["count"],
                      "failed": report["failed"], "skipped": report["skipped"]}, ensure_ascii=False))
    print(f"wrote {args.output}/report.json, report.md, items.jsonl", file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    from . import bulk

    records = bulk(args.kind, args.manifest, args.output, model=args.model, tokenizer=args.tokenizer,
                   device=_device(args), dtype=args.dtype, audio_dir=args.audio_dir, question=args.question,
                   limit=args.limit, batch_size=args.batch_size, fresh=args.fresh, retry_failed=args.retry_failed, progress=not args.no_progress,
                   wait_s=args.wait, **_gen(args))
    if records is not None:
        bad = sum(r.get("status") != "ok" for r in records)
        print(f"wrote {args.output}: {len(records) - bad} done, {bad} failed", file=sys.stderr)
    return 0


def add_eval_commands(subparsers) -> None:
    """Register ``eval`` and ``batch`` on ``subparsers``."""
    from .tasks import TASKS

    p = subparsers.add_parser("eval", help="evaluate a task on a data set and write a report (see docs/evaluation.md)",
                              description="Evaluate MiMo-Audio on a benchmark: asr, tts, codec, voice, few-shot-s2s, "
                                          "mcq, dialogue. Sharded under torchrun, resumable.")
    p.add_argument("task", choices=list(TASKS), help="what to evaluate")
    p.add_argument("--data", required=True, help="a .jsonl manifest, a .json list (MMAU), a LibriSpeech / AISHELL-1 / "
                                                 "Seed-TTS-Eval folder or meta.lst, a SpeechMMLU folder, or "
                                                 "hf:NAME[:CONFIG][@SPLIT]")
    p.add_argument("--split", default=None, help="AISHELL-1 wav/ subfolder (test), SpeechMMLU subjects "
                                                   "(comma-separated; default all) or a Hugging Face split")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="folder for the report (resumed if it "
                                                                                "holds a run with the same settings)")
    p.add_argument("--judge", default=None, help="ASR judge for speech outputs: a faster-whisper name (large-v3, "
                                                 "base, tiny.en), a CTranslate2 folder, or mimo")
    p.add_argument("--speaker-model", default=None, help="speaker encoder for similarity: resemblyzer or "
                                                         "python:MODULE:FACTORY")
    p.add_argument("--benchmark", default=None, help="name the paper benchmark (librispeech-test-clean, aishell-1, "
                                                     "seed-tts-eval-en/zh/zh-hard, mmau, mmar, mmsu, mmau-pro) when the "
                                                     "data path does not say")
    p.add_argument("--with-voice", action="store_true", help="tts: speak in the item's voice prompt and score SIM to it")
    p.add_argument("--thinking", action="store_true", help="mcq: think first; only the text after </think> counts")
    p.add_argument("--mcq-format", choices=("mmau", "mmsu"), default=None,
                   help="mcq prompt and answer rule: mmau (choices listed, string match) or mmsu (A-D letters)")
    p.add_argument("--shots", type=int, default=None, help="mcq: N-shot audio QA for the Base model (examples drawn "
                                                           "from the data set, seed 42; the paper's MMAU is 5-shot); "
                                                           "SpeechMMLU: the subject's first N examples (default 5)")
    p.add_argument("--modality", choices=("s2t", "s2s", "t2t", "t2s"), default=None,
                   help="mcq on SpeechMMLU: spoken or text questions (s2*/t2*) and answers (*2t/*2s); default s2t, "
                        "5 shots (--shots)")
    p.add_argument("--reply", choices=("text", "speech"), default=None, help="dialogue: reply in text (default) or speech")
    p.add_argument("--answer-judge", default=None, metavar="MODEL",
                   help="dialogue: a local MiMo-Audio LM (folder or hub id) that judges each reply against the "
                        "reference (YES/NO, greedy) instead of word matching")
    p.add_argument("--num-quantizers", type=int, default=None, help="codec: RVQ codebooks used (default: 8)")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    _model_args(p)
    _gen_args(p)
    _run_args(p)
    p.set_defaults(func=cmd_eval, command="eval")

    p = subparsers.add_parser("batch", help="bulk inference over a manifest, sharded and resumable",
                              description="Run transcribe, speak or understand over every item of a manifest; one "
                                          "JSON line per item in the output, speech files next to it.")
    p.add_argument("kind", choices=("transcribe", "speak", "understand"), help="the job")
    p.add_argument("manifest", help="JSONL manifest ({\"audio\"} / {\"text\"} / {\"audio\", \"question\"} per line) or "
                                    "any data layout of mimo-audio eval")
    p.add_argument("-o", "--output", required=True, help="output .jsonl (written atomically when all items are done)")
    p.add_argument("--audio-dir", default=None, help="speak: folder for the speech files (default: OUTPUT_audio/)")
    p.add_argument("-q", "--question", default=None, help="understand: the question for items without one")
    _model_args(p)
    _gen_args(p)
    _run_args(p)
    p.set_defaults(func=cmd_batch, command="batch")
