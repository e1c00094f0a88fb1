"""Evaluation harness and bulk inference: the paper's benchmarks on one machine, no paid judge.

``evaluate(task, data, out_dir, ...)`` runs one task over a data set (any layout of :mod:`.data`) through the
batched engine, sharded over ``torchrun`` ranks and resumable, and writes ``report.json``, ``items.jsonl``,
``report.md``, plots and ``audio/`` into ``out_dir``. ``bulk(kind, manifest, output, ...)`` is the same runner
for plain inference (``mimo-audio batch``). See docs/evaluation.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .data import detect_layout, load_items
from .runner import Runner, dist_env
from .scoring import error_rates, normalize_text, score_choice, string_match, word_errors
from .tasks import TASKS, EvalContext, get_task

__all__ = ["TASKS", "EvalContext", "Runner", "bulk", "dist_env", "error_rates", "evaluate", "load_items",
           "normalize_text", "score_choice", "string_match", "word_errors"]

GEN_KEYS = ("seed", "max_new_tokens", "greedy", "temperature", "top_k", "top_p")


def _data_key(data: str) -> str:
    return data if data.startswith("hf:") else str(Path(data).expanduser().resolve())


def evaluate(task: str, data: str, out_dir: str | os.PathLike, *, model: str | None = None,
             tokenizer: str | None = None, mimo: Any = None, codec: Any = None, device: str | None = None,
             dtype: str | None = None, limit: int | None = None, split: str | None = None, judge: str | None = None,
             speaker_model: str | None = None, batch_size: int = 8, benchmark: str | None = None,
             options: dict | None = None, fresh: bool = False, retry_failed: bool = False, progress: bool = True,
             plots: bool = True,
             rank: int | None = None, world: int | None = None, wait_s: float = 6 * 3600.0,
             **gen) -> dict | None:
    """Run ``task`` over ``data`` and write the report into ``out_dir``; returns the report on rank 0, None on
    the other ranks. ``gen``: ``seed``, ``max_new_tokens``, ``greedy``, ``temperature``, ``top_k``, ``top_p``.

    ``mimo`` / ``codec``: already-loaded models (else loaded from ``model`` / ``tokenizer``). ``options``:
    task options (``with_voice``, ``thinking``, ``mcq_format``, ``reply``, ``num_quantizers``).
    """
    from ..checkpoint import INSTRUCT_ID, TOKENIZER_ID
    from ..errors import MimoAudioError
    from .judges import load_asr_judge, load_speaker_encoder
    from .report import guess_benchmark, write_report

    t = get_task(task)
    unknown = set(gen) - set(GEN_KEYS)
    if unknown:
        raise MimoAudioError(f"unknown generation settings {sorted(unknown)}; use {', '.join(GEN_KEYS)}")
    gen = {k: v for k, v in gen.items() if v is not None and v is not False}
    options = {k: v for k, v in (options or {}).items() if v is not None}
    layout = detect_layout(data)
    items = t.expand(load_items(data, limit=limit, split=split))
    benchmark = benchmark or guess_benchmark(task, data, layout)
    if options.get("thinking") and benchmark == "mmsu":
        benchmark = "mmsu-think"
    if task == "mcq" and "mcq_format" not in options and benchmark in ("mmsu", "mmsu-think"):
        options["mcq_format"] = "mmsu"
    tokenizer = tokenizer or TOKENIZER_ID
    if t.needs_lm:
        model = model or INSTRUCT_ID
        if mimo is None:
            from ..pipeline import MimoAudio

            mimo = MimoAudio.from_pretrained(model, tokenizer=tokenizer, device=device, dtype=dtype)
        codec = mimo.codec
    elif codec is None:
        from ..codec import AudioTokenizer

        codec = AudioTokenizer.from_pretrained(tokenizer, device=device, dtype=dtype)
    dev = str(getattr(mimo or codec, "device", device or "cpu"))
    if options.get("shots") is not None and task != "mcq":
        raise MimoAudioError("shots applies to the mcq task (few-shot audio QA with the Base model)")
    if options.get("modality") and layout != "speechmmlu":
        raise MimoAudioError("modality (s2t, s2s, t2t, t2s) applies to SpeechMMLU data (a folder with "
                             "few_shot_prompts.json, or hf:XiaomiMiMo/SpeechMMLU)")
    if layout == "speechmmlu":
        if task != "mcq":
            raise MimoAudioError(f"SpeechMMLU data is evaluated with the mcq task, not {task}")
        from .tasks import SPEECHMMLU_SHOTS

        options.setdefault("modality", "s2t")
        options.setdefault("shots", SPEECHMMLU_SHOTS)
        paper_setting = int(options["shots"]) == SPEECHMMLU_SHOTS and not benchmark
        benchmark = f"speechmmlu-{options['modality']}" if paper_setting else benchmark
    elif options.get("shots") and benchmark == "mmau":
        benchmark = "mmau-5-shot" if int(options["shots"]) == 5 else None
    notes = []
    speech_reply = t.speech_out or options.get("reply") == "speech" or str(options.get("modality", "")).endswith("2s")
    if judge is None and speech_reply:
        what = ("the spoken answers were scored on the model's own text channel, not on a transcript of the "
                "speech as the paper does" if task == "mcq" else "there is no WER/CER")
        notes.append(f"no --judge: the {task} speech was not transcribed, so {what}; pass --judge "
                     "(tiny.en or base offline with their packages, large-v3 online or as a CTranslate2 folder)")
    if speaker_model is None and task in ("voice", "few-shot-s2s"):
        notes.append("no --speaker-model: no speaker similarity (pass --speaker-model resemblyzer)")
    if (rank if rank is not None else dist_env()[0]) == 0:
        for n in notes:
            print(f"mimo-audio eval: note: {n}", file=sys.stderr)
    answer_judge = None
    if options.get("answer_judge"):
        if task not in ("dialogue", "mcq"):
            raise MimoAudioError("answer_judge applies to the dialogue task and to open-ended mcq items")
        if str(options["answer_judge"]).startswith("python:"):
            from .judges import load_python_hook

            answer_judge = load_python_hook(str(options["answer_judge"]), "--answer-judge", "generate",
                                            "generate(prompt: str) -> str")
        elif str(options["answer_judge"]) == str(model):
            answer_judge = mimo
        else:
            from ..pipeline import MimoAudio

            answer_judge = MimoAudio.from_pretrained(options["answer_judge"], tokenizer=tokenizer, device=device,
                                                     dtype=dtype)
    ctx = EvalContext(out_dir=Path(out_dir), mimo=mimo, codec=codec, gen=gen,
                      options={**options, "all_items": items, "answer_judge_model": answer_judge},
                      judge=load_asr_judge(judge, device=dev, mimo=mimo, max_new_tokens=gen.get("max_new_tokens")),
                      speaker=load_speaker_encoder(speaker_model, device=dev))
    models = {"lm": str(model) if t.needs_lm else None, "tokenizer": str(tokenizer)}
    judges = {"asr_judge": getattr(ctx.judge, "id", None), "speaker_model": getattr(ctx.speaker, "id", None),
              "answer_judge": options.get("answer_judge")}
    settings = {"task": task, "data": _data_key(data), "split": split, **models, "judge": judge,
                "speaker_model": speaker_model, "gen": gen, "options": options}
    runner = Runner(Path(out_dir) / "parts", settings=settings, batch_size=batch_size, rank=rank, world=world,
                    progress=progress, wait_s=wait_s, fresh=fresh, retry_failed=retry_failed, desc=task)
    records = runner.run(items, lambda batch: t.process(ctx, batch))
    if records is None:
        return None
    ok = [r for r in records if r.get("status") == "ok"]
    metrics = t.metrics(ok)
    config = {**settings, "limit": limit, "batch_size": batch_size, "world_size": runner.world, "layout": layout,
              "device": dev}
    return write_report(out_dir, task=task, records=records, metrics=metrics, skipped=runner.reused, config=config,
                        models=models, judges=judges, benchmark=benchmark, plots=plots, notes=notes)


def bulk(kind: str, manifest: str, output: str | os.PathLike, *, mimo: Any = None, model: str | None = None,
         tokenizer: str | None = None, device: str | None = None, dtype: str | None = None,
         audio_dir: str | os.PathLike | None = None, question: str | None = None, limit: int | None = None,
         batch_size: int = 8, fresh: bool = False, retry_failed: bool = False, progress: bool = True,
         rank: int | None = None,
         world: int | None = None, wait_s: float = 6 * 3600.0, **gen) -> list[dict] | None:
    """Bulk inference (``transcribe``, ``speak``, ``understand``) over a manifest; rank 0 writes ``output``
    (JSON lines, atomically) and returns the records. Speech goes to ``audio_dir`` (default ``OUTPUT_audio/``)."""
    from ..checkpoint import INSTRUCT_ID, TOKENIZER_ID
    from .jobs import KINDS, process_bulk
    from .runner import write_jsonl

    if kind not in KINDS:
        from ..errors import MimoAudioError

        raise MimoAudioError(f"unknown batch job {kind!r}; use one of {', '.join(KINDS)}")
    out = Path(output).expanduser()
    if out.suffix != ".jsonl":
        from ..errors import MimoAudioError

        raise MimoAudioError(f"{output}: the output must be a .jsonl file")
    if not out.parent.is_dir():
        raise FileNotFoundError(2, "the output's folder does not exist", str(out.parent))
    items = load_items(manifest, limit=limit)
    gen = {k: v for k, v in gen.items() if v is not None and v is not False}
    model, tokenizer = model or INSTRUCT_ID, tokenizer or TOKENIZER_ID
    if mimo is None:
        from ..pipeline import MimoAudio

        mimo = MimoAudio.from_pretrained(model, tokenizer=tokenizer, device=device, dtype=dtype)
    adir = Path(audio_dir) if audio_dir else out.with_name(out.stem + "_audio")
    settings = {"kind": kind, "data": _data_key(manifest), "lm": str(model), "tokenizer": str(tokenizer), "gen": gen,
                "question": question, "audio_dir": str(adir.resolve())}
    runner = Runner(out.with_name(out.name + ".parts"), settings=settings, batch_size=batch_size, rank=rank,
                    world=world, progress=progress, wait_s=wait_s, fresh=fresh, retry_failed=retry_failed, desc=kind)
    records = runner.run(items, lambda b: process_bulk(kind, mimo, b, gen=gen, audio_dir=adir, question=question))
    if records is None:
        return None
    write_jsonl(out, records)
    return records
