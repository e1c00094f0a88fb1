"""Bulk inference jobs of ``mimo-audio batch``: one record per manifest item (on the shared runner)."""

from __future__ import annotations

from pathlib import Path

from .tasks import EvalContext, _describe, _generate, _safe, failed

KINDS = ("transcribe", "speak", "understand")


def process_bulk(kind: str, mimo, items: list[dict], *, gen: dict, audio_dir: Path,
                 question: str | None = None) -> list[dict]:
    ctx = EvalContext(out_dir=audio_dir.parent, mimo=mimo, gen=gen)
    kws: list[dict | None] = []
    for it in items:
        if kind == "transcribe":
            kws.append({"audio": it["audio"], **({"language": it["language"]} if it.get("language") else {})}
                       if it.get("audio") is not None else None)
        elif kind == "speak":
            text = it.get("text")
            kw = {"text": text} if isinstance(text, str) and text.strip() else None
            if kw is not None:
                kw.update({k: it[k] for k in ("instruct", "voice") if it.get(k) is not None})
            kws.append(kw)
        else:
            q = it.get("question") or question
            kws.append({"audio": it["audio"], "question": q} if it.get("audio") is not None and q else None)
    need = {"transcribe": "'audio'", "speak": "a non-empty 'text'",
            "understand": "'audio' and a 'question' (or --question)"}[kind]
    out = []
    audio_dir.mkdir(parents=True, exist_ok=True)
    for it, kw, fail, reply in _generate(ctx, kind, items, kws, f"the item needs {need}"):
        if fail is not None:
            out.append(fail)
        elif kind == "speak":
            if reply.audio is None or reply.audio.numel() == 0:
                out.append(failed(f"the model produced no speech (finish: {reply.finish_reason})"))
                continue
            from ..audio import save_audio

            path = save_audio(audio_dir / f"{_safe(it['id'])}.wav", reply.audio, reply.sample_rate)
            out.append({"text": it["text"], "output": str(path), "seconds": round(reply.duration, 3),
                        "sample_rate": reply.sample_rate, "finish_reason": reply.finish_reason})
        else:
            out.append({"audio": _describe(it["audio"]), "text": reply.text, "finish_reason": reply.finish_reason,
                        **({"question": kw["question"]} if kind == "understand" else {})})
    return out
