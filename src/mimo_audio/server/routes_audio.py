"""POST /v1/audio/speech and POST /v1/audio/transcriptions."""

from __future__ import annotations

import base64
import logging
import time
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .errors import APIError, ClientGone, bad_request, stream_error
from .media import (
    OUTPUT_FORMATS,
    NoAudio,
    PCMStream,
    check_output_format,
    encode_audio,
    require_audio,
    split_at_silences,
    to_srt,
    to_vtt,
)
from .schemas import SpeechRequest, body_openapi, find_surrogate, surrogate_error
from .service import JobStream, Service, cancel_jobs, tensor_to_numpy
from .sse import PING, SSE_HEADERS, event

log = logging.getLogger("mimo_audio.server")
router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


# ==================================================================================== speech
@router.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)",
             openapi_extra=body_openapi(SpeechRequest))
async def create_speech(request: Request):
    svc = _service(request)
    body: SpeechRequest = await svc.parse(request, SpeechRequest)
    svc.check_model(body.model)
    svc.check_text(body.input, "input", required=True)
    svc.check_text(body.instructions, "instructions")
    if body.speed is not None and abs(body.speed - 1.0) > 1e-6:
        raise bad_request("'speed' other than 1.0 is not supported by MiMo-Audio; ask for a pace in "
                          "'instructions' instead", "speed", code="unsupported_value")
    stream_format = (body.stream_format or "").lower() or None
    if stream_format not in (None, "audio", "sse"):
        raise bad_request(f"Unknown stream_format '{body.stream_format}'; use 'audio' or 'sse'", "stream_format")
    streaming = stream_format is not None or bool(body.stream)
    fmt = check_output_format(body.response_format, stream=streaming)
    kwargs = {"text": body.input, **svc.sampling(body)}
    if body.natural:
        if body.instructions and body.instructions.strip():
            raise bad_request("'natural' takes the description inside 'input'; leave 'instructions' empty",
                              "instructions")
        kwargs["natural"] = True
    elif body.instructions and body.instructions.strip():
        kwargs["instruct"] = body.instructions
    if body.ref_audio:
        voice = await svc.decode_b64(body.ref_audio, "ref_audio")
        kwargs["voice"] = voice.as_pair()
    [job] = await svc.start_jobs("speak", [kwargs])
    rate = svc.sample_rate
    media_type = OUTPUT_FORMATS[fmt]
    sse = stream_format == "sse"

    if not streaming:
        reply = await svc.result(job, request)
        audio = require_audio(tensor_to_numpy(reply.audio))
        data = encode_audio(audio, int(getattr(reply, "sample_rate", rate)), fmt)
        return Response(data, media_type=media_type, headers={"X-Generated-Text": _header_text(reply.text)})

    async def chunks():
        out = PCMStream(fmt, rate)
        samples = 0
        try:
            async for piece in svc.pieces(job, request, ping=svc.settings.sse_ping_s if sse else None):
                if piece is None:
                    if sse:
                        yield PING
                    continue
                audio = tensor_to_numpy(piece.audio)
                samples += 0 if audio is None else len(audio)
                data = out.encode(audio)
                if data:
                    yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) \
                        if sse else data
                if piece.done and not samples:  # a stream has started: the error is an event (sse) or a log line
                    raise NoAudio()
                if piece.done and sse:
                    reply = piece.reply
                    usage = _usage(reply)
                    yield event({"type": "speech.audio.done", "usage": usage})
        except ClientGone:
            return
        except APIError as exc:  # JobTimeout included
            if sse:
                yield event({"type": "error", "error": stream_error(exc)})
            log.warning("speech stream ended early: %s", exc)

    if sse:
        return JobStream(chunks(), [job], media_type="text/event-stream", headers=SSE_HEADERS)
    return JobStream(chunks(), [job], media_type=media_type, headers={"Cache-Control": "no-cache"})


def _usage(reply) -> dict:
    inp = int(getattr(reply, "prompt_tokens", 0) or 0)
    out = int(getattr(reply, "new_tokens", 0) or 0)
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}


def _header_text(text: str) -> str:
    # Header values must be latin-1; keep it short and ASCII-safe (percent-encoded).
    from urllib.parse import quote

    return quote((text or "")[:200])


# ==================================================================================== transcription
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


from ..output import join_transcript as _join  # noqa: E402  (shared with the library's long-audio transcribe)
from ..output import transcript_separator as _sep  # noqa: E402


def _segments(bounds, texts, rate: int, temperature) -> list[dict]:
    """verbose_json segments: one per transcribed piece, with the piece's real start and end in the input."""
    return [{"id": i, "seek": int(s * 100 // rate), "start": round(s / rate, 3), "end": round(e / rate, 3), "text": t,
             "tokens": [], "temperature": temperature if temperature is not None else 0.0}
            for i, ((s, e), t) in enumerate(zip(bounds, texts))]


@router.post("/v1/audio/transcriptions", summary="Speech to text (OpenAI-compatible)")
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="Audio file: wav, flac, ogg, mp3")],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0.0, le=2.0)] = None,
    stream: Annotated[bool | None, Form()] = None,
    seed: Annotated[int | None, Form(ge=0, le=2**63 - 1)] = None,
    max_new_tokens: Annotated[int | None, Form(ge=1)] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
):
    svc = _service(request)
    fields = {"model": model, "language": language, "prompt": prompt, "response_format": response_format,
              "timestamp_granularities[]": timestamp_granularities}
    where = find_surrogate({k: v for k, v in fields.items() if v is not None})
    if where is not None:
        raise bad_request(surrogate_error(where), where, code="invalid_unicode")
    svc.check_model(model)
    form = await request.form()  # already parsed for the parameters above: this reads the cached form
    uploads = [k for k, v in form.multi_items() if not isinstance(v, str)]
    if len(uploads) > 1:
        raise bad_request(f"The form holds {len(uploads)} files ({', '.join(sorted(set(uploads)))[:100]}); send "
                          "exactly one audio file, as 'file'", "file", code="too_many_files")
    fmt = (response_format or "json").lower()
    if fmt not in TRANSCRIPT_FORMATS:
        raise bad_request(f"Unknown response_format '{response_format}'; use one of {', '.join(TRANSCRIPT_FORMATS)}",
                          "response_format", code="unsupported_format")
    if timestamp_granularities and "word" in timestamp_granularities:
        raise bad_request("Word timestamps are not available: MiMo-Audio produces no timestamps. Segment timings "
                          "(from silence-split chunks) come with response_format verbose_json, srt or vtt",
                          "timestamp_granularities[]", code="unsupported_value")
    if stream and fmt not in ("json", "text"):
        raise bad_request("Streaming is available with response_format json or text", "stream")
    svc.check_text(prompt, "prompt")
    if language is not None and (len(language) > 16 or not language.replace("-", "").isalpha()):
        raise bad_request("'language' must be an ISO-639-1 code such as 'en' or 'zh'", "language")
    data = await file.read()
    audio = await svc.decode(data, "file")

    common = svc.sampling(SimpleNamespace(seed=seed, temperature=temperature), max_new_tokens)
    if language:  # MiMo picks the spoken language itself; this only chooses the instruction's language
        common["language"] = "zh" if language.lower().startswith("zh") else "en"
    bounds = split_at_silences(audio.samples, audio.sample_rate, svc.settings.transcription_chunk_seconds)
    rows = [{"audio": (audio.samples[s:e], audio.sample_rate), **common} for s, e in bounds]
    jobs = await svc.start_jobs("transcribe", rows)
    t_start = time.monotonic()

    if stream:
        async def events():
            full = ""
            texts = []
            try:
                for job in jobs:
                    piece_text = ""
                    async for piece in svc.pieces(job, request, ping=svc.settings.sse_ping_s):
                        if piece is None:
                            yield PING
                            continue
                        delta = piece.text or ""
                        if delta:
                            if not piece_text and full:
                                delta = _sep(full, delta) + delta
                            piece_text += delta
                            full += delta
                            yield event({"type": "transcript.text.delta", "delta": delta})
                    texts.append(piece_text.strip())
                # segments as in verbose_json (an addition to OpenAI's event: the web page's srt/vtt downloads)
                yield event({"type": "transcript.text.done", "text": full.strip(),
                             "segments": _segments(bounds, texts, audio.sample_rate, temperature),
                             "usage": {"type": "duration", "seconds": round(audio.seconds, 3)}})
            except ClientGone:
                return
            except APIError as exc:  # JobTimeout included
                cancel_jobs(jobs, "error")
                yield event({"type": "error", "error": stream_error(exc)})

        # the response cancels the rows still running when it ends (the client went away, even before the first
        # chunk)
        return JobStream(events(), jobs, media_type="text/event-stream", headers=SSE_HEADERS)

    texts = []
    try:
        for job in jobs:
            reply = await svc.result(job, request)
            texts.append((reply.text or "").strip())
    finally:
        cancel_jobs(jobs)  # finished rows are left alone
    full = ""
    for t in texts:
        full = _join(full, t)
    log.debug("transcribed %.1f s in %d pieces in %.2f s", audio.seconds, len(jobs), time.monotonic() - t_start)
    if fmt == "text":
        return PlainTextResponse(full + "\n")
    if fmt == "json":
        return JSONResponse({"text": full, "usage": {"type": "duration", "seconds": round(audio.seconds, 3)}})
    segments = _segments(bounds, texts, audio.sample_rate, temperature)
    if fmt == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    return JSONResponse({"task": "transcribe", "language": language, "duration": round(audio.seconds, 3),
                         "text": full, "segments": segments,
                         "usage": {"type": "duration", "seconds": round(audio.seconds, 3)}})
