"""The evaluation tasks: how each one runs a batch of items and how its records become metrics.

Each task is a :class:`Task` with ``process(ctx, items) -> records`` (one dict per item; a failing item is
``{"status": "failed", "reason": ...}``) and ``metrics(records) -> dict`` over the items that succeeded. Rates
(WER, CER, accuracy) are in percent, as the paper prints them; similarities are cosines in [-1, 1].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MimoAudioError
from .judges import JUDGE_RATE, similarity, to_16k
from .scoring import (
    after_thinking,
    error_rates,
    intelligibility,
    is_chinese,
    normalize_text,
    score_choice,
    speechmmlu_option,
    string_match,
    token_f1,
    word_errors,
)

VOICE_INSTRUCTION = "Convert the timbre of the input speech to target timbre."
MMSU_INSTRUCTION = ("Choose the most suitable answer from options A, B, C, and D to respond the question in next line, "
                    "**you should only choose A or B or C or D.** Do not provide any additional explanations or content.")


@dataclass
class EvalContext:
    """What a task needs: the models, the judges, generation settings and where to put audio."""

    out_dir: Path
    mimo: Any = None
    codec: Any = None
    judge: Any = None
    speaker: Any = None
    gen: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    codes_cache: dict = field(default_factory=dict)  # audio path -> codes (SpeechMMLU's prompt clips repeat)

    @property
    def audio_dir(self) -> Path:
        d = self.out_dir / "audio"
        d.mkdir(parents=True, exist_ok=True)
        return d


def failed(reason: str) -> dict:
    return {"status": "failed", "reason": reason}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:120] or "item"


def _language(item: dict, text: str = "") -> str:
    lang = item.get("language")
    if lang in ("en", "zh"):
        return lang
    return "zh" if is_chinese(text or str(item.get("text", ""))) else "en"


def _describe(audio: Any) -> Any:
    return audio if isinstance(audio, str) else ("<array>" if audio is not None else None)


def _prepare(ctx: EvalContext, task: str, kwargs_list: list[dict | None]) -> tuple[list, list[dict | None]]:
    """Prepare each item's request; a bad item becomes a failure record instead of stopping the batch."""
    reqs, fails = [], []
    for kw in kwargs_list:
        if kw is None:
            reqs.append(None)
            fails.append(None)
            continue
        try:
            reqs.append(ctx.mimo.prepare(task, **kw, **ctx.gen))
            fails.append(None)
        except MimoAudioError as exc:
            reqs.append(None)
            fails.append(failed(f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
    return reqs, fails


def _run(ctx: EvalContext, reqs: list) -> list:
    live = [r for r in reqs if r is not None]
    out = iter(ctx.mimo.run(live)) if live else iter(())
    return [next(out) if r is not None else None for r in reqs]


def _generate(ctx: EvalContext, task: str, items: list, kwargs_list: list[dict | None], missing: str):
    """``(item, kwargs, failure, reply)`` per item, in order: items without kwargs (``None``: the item lacks what
    the task needs) fail with ``missing``, items ``prepare`` refuses fail with its error, the rest run as one
    batch; ``failure`` is None where ``reply`` is set."""
    reqs, fails = _prepare(ctx, task, kwargs_list)
    replies = _run(ctx, reqs)
    for it, kw, fail, reply in zip(items, kwargs_list, fails, replies):
        yield it, kw, (failed(missing) if kw is None else fail), reply


def _save(ctx: EvalContext, item: dict, wav, rate: int, suffix: str = "") -> str:
    from ..audio import save_audio

    return str(save_audio(ctx.audio_dir / f"{_safe(item['id'])}{suffix}.wav", wav, rate))


def _judge_score(ctx: EvalContext, rec: dict, clip16: np.ndarray, ref: str, lang: str) -> None:
    if ctx.judge is None or not ref:
        return
    hyp = ctx.judge.transcribe([clip16], language=lang)[0]
    errors, n = word_errors(ref, hyp, lang)
    rec.update(judge_text=hyp, errors=errors, ref_tokens=n, unit="char" if lang == "zh" else "word",
               rate=100.0 * errors / n if n else None)


def _sim(ctx: EvalContext, rec: dict, clip16: np.ndarray, voice: Any) -> None:
    """Speaker similarity of ``clip16`` to ``voice``; a clip the encoder cannot embed (no voiced frames) gets
    ``sim: None`` and the reason in ``sim_error`` (left out of the mean; the item's other scores still count)."""
    if ctx.speaker is None or voice is None:
        return
    try:
        rec["sim"] = similarity(ctx.speaker, clip16, voice if isinstance(voice, np.ndarray) else to_16k(voice))
    except MimoAudioError as exc:
        rec["sim"], rec["sim_error"] = None, str(exc)


def _rate_metrics(records: list[dict]) -> dict:
    m: dict[str, float] = {}
    for unit, key in (("word", "wer"), ("char", "cer")):
        pairs = [(r["errors"], r["ref_tokens"]) for r in records if r.get("unit") == unit and "errors" in r]
        if pairs:
            er = error_rates(pairs)
            m[key], m[f"{key}_corpus"] = er["mean"], er["corpus"]
    return m


def _mean(records: list[dict], key: str) -> dict:
    vals = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return {key: float(np.mean(vals))} if vals else {}


# ============================================================================================ tasks
class Task:
    name = ""
    needs_lm = True
    speech_out = False

    def expand(self, items: list[dict]) -> list[dict]:
        """Items as the task runs them (one data row may become several)."""
        return items

    def process(self, ctx: EvalContext, items: list[dict]) -> list[dict]:
        raise NotImplementedError

    def metrics(self, records: list[dict]) -> dict:
        return _rate_metrics(records)


def _reference(item: dict) -> str | None:
    """The transcript of the item's ``audio``: ``audio_text`` where the layout has one (Seed-TTS-Eval's prompt
    clips), else ``text``."""
    return item.get("audio_text") or item.get("text")


class ASR(Task):
    name = "asr"

    def process(self, ctx, items):
        kws = []
        for it in items:
            ref = _reference(it)
            if it.get("audio") is None or not isinstance(ref, str) or not normalize_text(ref):
                kws.append(None)
            else:
                kws.append({"audio": it["audio"], "language": _language(it, ref)})
        out = []
        for it, kw, fail, reply in _generate(ctx, "transcribe", items, kws,
                                             "the item needs 'audio' and a non-empty 'text' (the reference transcript)"):
            if fail is not None:
                out.append(fail)
                continue
            lang = kw["language"]
            ref = _reference(it)
            errors, n = word_errors(ref, reply.text, lang)
            out.append({"audio": _describe(it["audio"]), "ref": ref, "hyp": reply.text, "language": lang,
                        "speaker": it.get("speaker"), "errors": errors, "ref_tokens": n,
                        "unit": "char" if lang == "zh" else "word", "rate": 100.0 * errors / n,
                        "finish_reason": reply.finish_reason})
        return out


INSTRUCT_TTS_FIELDS = ("APS", "DSD", "RP")  # InstructTTSEval: each row spoken once per instruction kind


class TTS(Task):
    name = "tts"
    speech_out = True

    def expand(self, items):
        """An InstructTTSEval-style row (instruction columns ``APS``, ``DSD``, ``RP``) becomes one item per
        instruction, ``id/KIND`` with ``instruct`` and ``category`` = KIND (as the toolkit renders each item
        three times)."""
        out = []
        for it in items:
            kinds = [k for k in INSTRUCT_TTS_FIELDS if isinstance(it.get(k), str) and it[k].strip()]
            if not kinds or it.get("instruct"):
                out.append(it)
                continue
            for k in kinds:
                row = {f: v for f, v in it.items() if f not in INSTRUCT_TTS_FIELDS}
                out.append({**row, "id": f"{it['id']}/{k}", "instruct": it[k], "category": k})
        return out

    def process(self, ctx, items):
        use_voice = bool(ctx.options.get("with_voice"))
        kws = []
        for it in items:
            text = it.get("text")
            if not isinstance(text, str) or not text.strip():
                kws.append(None)
                continue
            kw: dict[str, Any] = {"text": text}
            if it.get("instruct"):
                kw["instruct"] = it["instruct"]
            if use_voice and it.get("voice") is not None:
                kw["voice"] = it["voice"]
            kws.append(kw)
        out = []
        for it, _kw, fail, reply in _generate(ctx, "speak", items, kws,
                                             "the item needs a non-empty 'text' to speak"):
            if fail is not None:
                out.append(fail)
                continue
            if reply.audio is None or reply.audio.numel() == 0:
                out.append(failed(f"the model produced no speech (finish: {reply.finish_reason})"))
                continue
            lang = _language(it)
            rec = {"text": it["text"], "instruct": it.get("instruct"), "category": it.get("category"), "language": lang,
                   "speaker": it.get("speaker"), "seconds": round(reply.duration, 3),
                   "output": _save(ctx, it, reply.audio, reply.sample_rate), "model_text": reply.text,
                   "finish_reason": reply.finish_reason}
            clip = to_16k((reply.audio.numpy(), reply.sample_rate))
            _judge_score(ctx, rec, clip, it["text"], lang)
            _sim(ctx, rec, clip, it.get("voice") if use_voice else None)
            out.append(rec)
        return out

    def metrics(self, records):
        m = {**_rate_metrics(records), **_mean(records, "sim"), **_mean(records, "seconds")}
        cats = sorted({str(r["category"]) for r in records if r.get("category")})
        for c in cats:
            sub = _rate_metrics([r for r in records if str(r.get("category")) == c])
            m.update({f"{k}/{c}": v for k, v in sub.items() if not k.endswith("_corpus")})
        return m


class Codec(Task):
    name = "codec"
    needs_lm = False
    speech_out = True

    def process(self, ctx, items):
        import torch

        from ..audio import load_audio, log_mel

        codec = ctx.codec
        out = []
        for it in items:
            if it.get("audio") is None:
                out.append(failed("the item needs 'audio'"))
                continue
            try:
                wav = load_audio(it["audio"], target_rate=codec.sample_rate, max_seconds=codec.config.max_audio_seconds)
            except MimoAudioError as exc:
                out.append(failed(f"{type(exc).__name__}: {exc}"))
                continue
            nq = int(ctx.options.get("num_quantizers") or 8)
            codes = codec.encode_loaded(wav, nq)
            rec_wav = codec.decode(codes).float().cpu()[: wav.shape[0]]
            if rec_wav.shape[0] < wav.shape[0]:
                rec_wav = torch.nn.functional.pad(rec_wav, (0, wav.shape[0] - rec_wav.shape[0]))
            m1, m2 = log_mel(wav, codec.config), log_mel(rec_wav, codec.config)
            rec = {"audio": _describe(it["audio"]), "seconds": round(wav.shape[0] / codec.sample_rate, 3),
                   "frames": int(codes.shape[0]), "mel_distance": float((m1 - m2).abs().mean()),
                   "output": _save(ctx, it, rec_wav, codec.sample_rate), "speaker": it.get("speaker")}
            ref16 = to_16k((wav.numpy(), codec.sample_rate))
            out16 = to_16k((rec_wav.numpy(), codec.sample_rate))
            rec.update(intelligibility(ref16, out16, JUDGE_RATE))
            ref_text = _reference(it)
            lang = _language(it, ref_text or "")
            if ctx.judge is not None:
                if not ref_text:  # no transcript: the judge's reading of the original is the reference
                    ref_text = ctx.judge.transcribe([ref16], language=lang)[0]
                    rec["ref_from_judge"] = True
                rec["ref"] = ref_text
                _judge_score(ctx, rec, out16, ref_text, lang)
            _sim(ctx, rec, out16, ref16)
            out.append(rec)
        return out

    def metrics(self, records):
        m = {**_mean(records, "mel_distance")}
        for k in ("stoi", "pesq_wb", "pesq_nb", "sim"):
            m.update(_mean(records, k))
        m.update(_rate_metrics(records))
        return m


class FewShotS2S(Task):
    """In-context speech-to-speech (base model): ``examples`` of {input, output, transcript} and the ``audio``."""

    name = "few-shot-s2s"
    speech_out = True
    default_instruction: str | None = None

    def process(self, ctx, items):
        kws = []
        for it in items:
            ex = it.get("examples")
            if it.get("audio") is None or not isinstance(ex, list) or not ex:
                kws.append(None)
                continue
            kws.append({"examples": ex, "audio": it["audio"],
                        "instruction": it.get("instruction", self.default_instruction)})
        out = []
        for it, _kw, fail, reply in _generate(ctx, "few_shot", items, kws,
                                             "the item needs 'audio' and a non-empty list 'examples' of "
                                             "{input, output, transcript}"):
            if fail is not None:
                out.append(fail)
                continue
            if reply.audio is None or reply.audio.numel() == 0:
                out.append(failed(f"the model produced no speech (finish: {reply.finish_reason})"))
                continue
            lang = _language(it)
            rec = {"audio": _describe(it["audio"]), "text": it.get("text"), "model_text": reply.text,
                   "seconds": round(reply.duration, 3), "output": _save(ctx, it, reply.audio, reply.sample_rate),
                   "speaker": it.get("speaker")}
            clip = to_16k((reply.audio.numpy(), reply.sample_rate))
            _judge_score(ctx, rec, clip, it.get("text") or "", lang)
            target = it.get("target_voice") or it["examples"][-1].get("output")
            _sim(ctx, rec, clip, target)
            out.append(rec)
        return out

    def metrics(self, records):
        return {**_mean(records, "sim"), **_rate_metrics(records)}


class Voice(FewShotS2S):
    name = "voice"
    default_instruction = VOICE_INSTRUCTION


def mcq_question(item: dict, fmt: str) -> str:
    q, choices = item.get("question", ""), list(item.get("choices") or [])
    if fmt == "mmsu":
        letters = "".join(f"{'ABCD'[k]}. {c}\n" for k, c in enumerate(choices[:4]))
        return f"{MMSU_INSTRUCTION}\n\nQuestion: {q}\n\n{letters}".rstrip("\n")
    body = "".join(f"{c}\n" for c in choices)
    return (f"{q}\n\nChoice: \n{body}\nChoose a choices from the given {len(choices)} choices. Do not provide any "
            "additional explanations or content. Output must match exactly one of the listed choices.")


def _mcq_ok(it: dict) -> bool:
    return it.get("audio") is not None and isinstance(it.get("choices"), list) and bool(it.get("choices")) \
        and isinstance(it.get("answer"), str)


def few_shot_examples(items: list[dict], item: dict, shots: int, seed: int = 42) -> list[dict]:
    """``shots`` examples for ``item`` drawn from the other items of the whole data set (not the rank's shard, so
    that the prompt does not depend on the world size); seeded by the seed and the item's id."""
    import random

    pool = [it for it in items if it["id"] != item["id"] and _mcq_ok(it)]
    rng = random.Random(f"{seed}:{item['id']}")
    picked = rng.sample(pool, min(shots, len(pool)))
    from ..prompt import multiple_choice

    return [{"audio": ex["audio"], "question": multiple_choice(ex.get("question", ""), ex["choices"]),
             "answer": ex["answer"]} for ex in picked]


OPEN_CATEGORY = "open"  # MMAU-Pro's open-ended items
IF_CATEGORY = "instruction following"  # MMAU-Pro's instruction-following items (rule checks; not implemented)


def mcq_kind(item: dict) -> str:
    """``closed`` (choices), ``open`` (MMAU-Pro category ``open``, or no choices: a free answer scored against the
    reference) or ``if`` (MMAU-Pro's instruction-following items)."""
    if item.get("category") == IF_CATEGORY:
        return "if"
    if item.get("category") == OPEN_CATEGORY or not item.get("choices"):
        return "open"
    return "closed"


class MCQ(Task):
    """Multiple choice over audio (MMAU / MMAR / MMSU / MMAU-Pro style): the instruct model's understand task, or
    with ``shots`` > 0 the base model's few-shot audio QA (SPEC §6.3.14; MMAU 5-shot in the paper). SpeechMMLU
    data goes to :func:`speechmmlu_process`. Open-ended items (MMAU-Pro) get the question alone and are scored
    against the reference: word-token F1, or a local answer judge's 1-5 grade divided by 5."""

    name = "mcq"

    def process(self, ctx, items):
        if items and "mmlu_prompt" in items[0]:
            return speechmmlu_process(ctx, items)
        fmt = ctx.options.get("mcq_format") or "mmau"
        thinking = bool(ctx.options.get("thinking"))
        shots = int(ctx.options.get("shots") or 0)
        kws, early = [], {}
        for n, it in enumerate(items):
            kind = mcq_kind(it)
            has_answer = it.get("audio") is not None and isinstance(it.get("answer"), str) and bool(it["answer"].strip())
            if kind == "if":
                early[n] = failed("MMAU-Pro instruction-following item: its rule checks are not implemented "
                                  "(docs/evaluation.md, 'Comparable to the paper'); left out of the score")
            elif not has_answer or (kind == "closed" and not _mcq_ok(it)):
                early[n] = failed("the item needs 'audio', 'question', a list 'choices' and the 'answer' string "
                                  "(an open-ended item: 'audio', 'question' and the reference 'answer')")
            elif kind == "open" and shots:
                early[n] = failed("open-ended items are not run in the few-shot (--shots) form")
            elif kind == "open":
                kws.append({"audio": it["audio"], "question": f"{it.get('question', '')}\n", "thinking": thinking})
                continue
            elif shots:
                from ..prompt import multiple_choice

                kws.append({"audio": it["audio"], "question": multiple_choice(it.get("question", ""), it["choices"]),
                            "examples": few_shot_examples(ctx.options["all_items"], it, shots)})
                continue
            else:
                kws.append({"audio": it["audio"], "question": mcq_question(it, fmt), "thinking": thinking})
                continue
            kws.append(None)
        out = []
        rule = "letter" if fmt == "mmsu" else "string"
        for n, (it, _kw, fail, reply) in enumerate(_generate(ctx, "audio_qa" if shots else "understand", items, kws,
                                                             "")):
            if n in early or fail is not None:
                out.append(early.get(n) or fail)
                continue
            rec = {"audio": _describe(it["audio"]), "question": it.get("question"), "answer": it["answer"],
                   "reply": reply.text, "category": it.get("category"), "kind": mcq_kind(it),
                   "finish_reason": reply.finish_reason}
            if rec["kind"] == "open":
                answer = after_thinking(reply.text) if thinking else reply.text
                rec.update(prediction=answer.strip(), f1=token_f1(answer, it["answer"]))
                rec["score"] = rec["f1"]
            else:
                s = score_choice(reply.text, it["answer"], it["choices"], rule=rule, thinking=thinking)
                rec.update(prediction=s["prediction"], correct=s["correct"])
            out.append(rec)
        judge = ctx.options.get("answer_judge_model")
        opened = [r for r in out if r.get("kind") == "open"]
        if judge is not None and opened:
            grades = grade_answers(judge, [(r["question"] or "", r["answer"], r["prediction"]) for r in opened])
            for r, (grade, raw) in zip(opened, grades):
                r.update(judge_reply=raw, judge_grade=grade)
                if grade is None:
                    r.clear()
                    r.update(failed(f"the answer judge gave no 1-5 grade (it said {raw[:80]!r})"))
                else:
                    r["score"] = grade / 5.0
        return out

    def metrics(self, records):
        closed = [r for r in records if r.get("kind") != "open"]
        opened = [r for r in records if r.get("kind") == "open"]
        m = accuracy_metrics(closed)
        if opened:
            m["open_score"] = 100.0 * sum(r["score"] for r in opened) / len(opened)
            m["open_f1"] = 100.0 * sum(r["f1"] for r in opened) / len(opened)
            m["overall"] = 100.0 * (sum(bool(r.get("correct")) for r in closed) + sum(r["score"] for r in opened)) \
                / (len(closed) + len(opened))
        return m


def accuracy_metrics(records: list[dict]) -> dict:
    m: dict[str, float] = {}
    if records:
        m["accuracy"] = 100.0 * sum(bool(r.get("correct")) for r in records) / len(records)
    cats: dict[str, list[bool]] = {}
    for r in records:
        if r.get("category"):
            cats.setdefault(str(r["category"]), []).append(bool(r.get("correct")))
    for c, v in sorted(cats.items()):
        m[f"accuracy/{c}"] = 100.0 * sum(v) / len(v)
    return m


class Dialogue(Task):
    """Spoken or text dialogue scored against a reference answer (no paid judge): a reply is correct when it
    contains every word token of the reference (:func:`string_match` without other choices), or, with a local
    judge model (``answer_judge``), when that model says YES to "does the reply give the reference answer?"."""

    name = "dialogue"

    def process(self, ctx, items):
        reply_kind = ctx.options.get("reply") or "text"
        kws = []
        for it in items:
            if not isinstance(it.get("reference"), str) or (it.get("audio") is None and not it.get("question")):
                kws.append(None)
                continue
            msg: dict[str, Any] = {"role": "user"}
            if it.get("audio") is not None:
                msg["audio"] = it["audio"]
            if it.get("question"):
                msg["text"] = it["question"]
            kw: dict[str, Any] = {"messages": [msg], "reply": reply_kind}
            if reply_kind == "speech" and it.get("voice") is not None:
                kw["voice"] = it["voice"]
            kws.append(kw)
        out = []
        for it, _kw, fail, reply in _generate(ctx, "chat", items, kws,
                                             "the item needs a 'reference' answer and 'audio' or 'question'"):
            if fail is not None:
                out.append(fail)
                continue
            rec = {"audio": _describe(it.get("audio")), "question": it.get("question"), "reference": it["reference"],
                   "reply": reply.answer, "category": it.get("category"), "finish_reason": reply.finish_reason}
            answer = reply.answer
            if reply_kind == "speech":
                if reply.audio is None or reply.audio.numel() == 0:
                    out.append(failed(f"the model produced no speech (finish: {reply.finish_reason})"))
                    continue
                rec["output"] = _save(ctx, it, reply.audio, reply.sample_rate)
                if ctx.judge is not None:
                    answer = ctx.judge.transcribe([to_16k((reply.audio.numpy(), reply.sample_rate))],
                                                  language=_language(it, it["reference"]))[0]
                    rec["judge_text"] = answer
            rec["correct"] = string_match(answer, it["reference"], [])
            out.append(rec)
        judge = ctx.options.get("answer_judge_model")
        if judge is not None:
            done = [(it, r) for it, r in zip(items, out) if r.get("status") != "failed"]
            verdicts = judge_answers(judge, [(it.get("question") or "", it["reference"], r.get("judge_text", r["reply"]))
                                             for it, r in done])
            for (_, r), (verdict, raw) in zip(done, verdicts):
                r.update(match=r["correct"], judge_reply=raw, judge_verdict=verdict, correct=verdict == "yes")
        return out

    def metrics(self, records):
        return accuracy_metrics(records)


ANSWER_JUDGE_PROMPT = ("You are grading a reply against a reference answer.\nQuestion: {question}\n"
                       "Reference answer: {reference}\nReply: {reply}\n"
                       "Does the reply give the reference answer? Answer YES or NO only.")


def judge_answers(judge, triples: list[tuple[str, str, str]]) -> list[tuple[str | None, str]]:
    """A local LM judge (a :class:`MimoAudio` in text-dialogue mode, greedy): ``(verdict, raw reply)`` per
    ``(question, reference, reply)``; the verdict is the first "yes"/"no" word of the judge's answer, None if it
    gives neither (the item then counts as not correct)."""
    if not triples:
        return []
    raws = ask_judge(judge, [ANSWER_JUDGE_PROMPT.format(question=q or "(spoken)", reference=ref, reply=rep)
                             for q, ref, rep in triples])
    out = []
    for raw in raws:
        m = re.search(r"\b(yes|no)\b", raw.lower())
        out.append((m.group(1) if m else None, raw))
    return out


# ============================================================================================ SpeechMMLU
SPEECHMMLU_MODES = ("s2t", "s2s", "t2t", "t2s")
SPEECHMMLU_SHOTS = 5  # the paper's setting (Table 6)


def _cached_codes(ctx: EvalContext, audio: Any):
    key = audio if isinstance(audio, str) else None
    if key is not None and key in ctx.codes_cache:
        return ctx.codes_cache[key]
    codes = ctx.mimo.encode(audio)
    if key is not None:
        if len(ctx.codes_cache) > 4096:
            ctx.codes_cache.clear()
        ctx.codes_cache[key] = codes
    return codes


def speechmmlu_items(ctx: EvalContext, item: dict, mode: str, shots: int) -> list[dict]:
    """The prompt items of SPEC §6.3.12 for one question: the subject's beginning, ``shots`` × (question, answer)
    from the subject's few-shot prompts in the item's voice, then the test question. Input items (beginning,
    questions) are speech (``{"audio": codes}``) in s2* modes and text otherwise; answers are spoken
    (``{"audio", "transcript"}``: an ``S`` segment) in *2s modes and text otherwise."""
    p = item["mmlu_prompt"]
    if shots > len(p["examples"]):
        raise MimoAudioError(f"{shots} shots asked but subject {item['subject']!r} has {len(p['examples'])} "
                             "few-shot examples; pass --shots with at most that many")
    speech_in, speech_out = mode[0] == "s", mode[-1] == "s"

    def source(part: dict) -> dict:
        return {"audio": _cached_codes(ctx, part["audio"])} if speech_in else {"text": part["text"]}

    out = [source(p["beginning"])]
    for ex in p["examples"][:shots]:
        out.append(source(ex["question"]))
        ans = ex["answer"]
        out.append({"audio": _cached_codes(ctx, ans["audio"]), "transcript": ans["text"]} if speech_out
                   else {"text": ans["text"]})
    out.append(source({"text": item["question"], "audio": item["audio"]}))
    return out


def _speechmmlu_request(ctx: EvalContext, items: list[dict], speech_out: bool):
    """A :class:`~mimo_audio.batch.TaskRequest` for the base model's few-shot QA task of the task table
    (``speech_mmlu`` / ``speech_mmlu_speech``: greedy ``qa`` preset, 5-10 / 10-25 new groups), with the run's
    generation settings applied as ``MimoAudio.prepare`` applies them."""
    from dataclasses import replace

    from ..batch import TaskRequest
    from ..errors import PromptError
    from ..sampling import GREEDY
    from ..tasks import get_task

    spec = get_task("speech_mmlu_speech" if speech_out else "speech_mmlu")
    grid = spec.prompt(ctx.mimo.prompts, items)
    groups = int(grid.shape[1]) // int(ctx.mimo.lm.config.group_size)
    room = ctx.mimo.max_positions - groups
    if room < 1:
        raise PromptError(f"the prompt takes {groups} positions but the model has {ctx.mimo.max_positions}; "
                          "use fewer --shots")
    g = ctx.gen
    text, local = spec.samplers
    if g.get("greedy"):
        text = local = GREEDY
    changes = {k: g[k] for k in ("temperature", "top_k", "top_p") if g.get(k) is not None}
    if changes:
        text = replace(text, do_sample=True, **changes)
    config = spec.config(text=text, local=local, stop_ids=spec.stop_ids(ctx.mimo.ids), seed=g.get("seed"),
                         max_new_tokens=min(int(g.get("max_new_tokens") or spec.max_new_tokens), room))
    if config.min_new_tokens > config.max_new_tokens:
        config = replace(config, min_new_tokens=config.max_new_tokens)
    return TaskRequest(task=spec.name, grid=grid, config=config, audio_out=spec.reply == "speech",
                       span_open=bool(spec.audio_open), prompt_groups=groups)


def speechmmlu_process(ctx: EvalContext, items: list[dict]) -> list[dict]:
    """SpeechMMLU (base model, few-shot; SPEC §6.3.12 and §9.1): the answer is the first ``option X`` in the
    lower-cased text reply (zh: ``选项X`` with spaces removed); a spoken reply is read by the ``--judge`` (the
    paper: whisper-large-v3), or by the model's own text channel when there is no judge."""
    mode = ctx.options.get("modality") or "s2t"
    if mode not in SPEECHMMLU_MODES:
        raise MimoAudioError(f"unknown SpeechMMLU modality {mode!r}; use one of {', '.join(SPEECHMMLU_MODES)}")
    shots = int(ctx.options.get("shots") if ctx.options.get("shots") is not None else SPEECHMMLU_SHOTS)
    speech_out = mode[-1] == "s"
    reqs, fails = [], []
    for it in items:
        try:
            reqs.append(_speechmmlu_request(ctx, speechmmlu_items(ctx, it, mode, shots), speech_out))
            fails.append(None)
        except MimoAudioError as exc:
            reqs.append(None)
            fails.append(failed(f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
    out = []
    for it, fail, reply in zip(items, fails, _run(ctx, reqs)):
        if fail is not None:
            out.append(fail)
            continue
        lang = _language(it, it["question"])
        rec = {"audio": _describe(it["audio"]), "question": it["question"], "answer": it["answer"],
               "category": it["subject"], "voice_id": it.get("voice_id"), "modality": mode, "shots": shots,
               "reply": reply.text, "finish_reason": reply.finish_reason}
        read = reply.text
        if speech_out:
            if reply.audio is None or reply.audio.numel() == 0:
                out.append(failed(f"the model produced no speech (finish: {reply.finish_reason})"))
                continue
            rec["output"] = _save(ctx, it, reply.audio, reply.sample_rate)
            if ctx.judge is not None:
                read = ctx.judge.transcribe([to_16k((reply.audio.numpy(), reply.sample_rate))], language=lang)[0]
                rec["judge_text"] = read
            rec["scored_on"] = "judge transcript" if ctx.judge is not None else "text channel"
        pred = speechmmlu_option(read, lang)
        rec.update(prediction=pred.upper(), correct=bool(pred) and pred.upper() == it["answer"])
        out.append(rec)
    return out


GRADE_PROMPT = ("You are grading an answer to a question about an audio recording against a reference answer.\n"
                "Question: {question}\nReference answer: {reference}\nAnswer: {reply}\n"
                "Rate how correct and complete the answer is, from 1 (wrong) to 5 (fully correct). "
                "Reply with the number only.")


def ask_judge(judge, prompts: list[str]) -> list[str]:
    """The answer judge's text reply to each prompt: a :class:`MimoAudio` (text dialogue, greedy, 16 new tokens) or
    any object with ``generate(prompt: str) -> str`` (``--answer-judge python:MODULE:FACTORY``: e.g. a wrapper of
    the Qwen2.5-7B-Instruct judge the paper's MMAU-Pro scores used)."""
    if hasattr(judge, "generate") and not hasattr(judge, "chat"):
        return [str(judge.generate(p)) for p in prompts]
    replies = judge.chat([[{"role": "user", "text": p}] for p in prompts], reply="text", greedy=True, max_new_tokens=16)
    return [r.answer for r in replies]


def grade_answers(judge, triples: list[tuple[str, str, str]]) -> list[tuple[int | None, str]]:
    """``(grade 1-5 or None, raw reply)`` per ``(question, reference, reply)``: the first digit 1-5 of the judge's
    reply."""
    raws = ask_judge(judge, [GRADE_PROMPT.format(question=q or "(spoken)", reference=ref, reply=rep or "(empty)")
                             for q, ref, rep in triples]) if triples else []
    out = []
    for raw in raws:
        m = re.search(r"[1-5]", raw)
        out.append((int(m.group(0)) if m else None, raw))
    return out


TASKS: dict[str, Task] = {t.name: t for t in (ASR(), TTS(), Codec(), Voice(), FewShotS2S(), MCQ(), Dialogue())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise MimoAudioError(f"unknown eval task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]
