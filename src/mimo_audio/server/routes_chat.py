"""POST /v1/chat/completions: text and audio in, text or text+audio out, multi-turn, streaming."""

from __future__ import annotations

import base64
import logging
import secrets
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..output import split_thinking
from .errors import APIError, ClientGone, bad_request, stream_error
from .media import PCMStream, check_output_format, encode_audio, is_data_url, require_audio
from .schemas import ChatRequest, body_openapi
from .service import JobStream, Service, tensor_to_numpy
from .sse import DONE, PING, SSE_HEADERS, event

log = logging.getLogger("mimo_audio.server")
router = APIRouter()

AUDIO_PART_TYPES = ("input_audio", "audio_url")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str, *, final: bool = True) -> tuple[str, str]:
    """A thinking run's text (whole, or so far) -> ``(reasoning, answer)``: :func:`~mimo_audio.output.split_thinking`,
    except that text without ``</think>`` (a reply cut off while thinking, or a stream still thinking) is all
    reasoning. With ``final=False`` text that may yet become a marker is held back, so both parts only ever grow
    and the streamed increments add up to the whole reply's parts."""
    if not final and THINK_CLOSE not in text:
        for k in range(len(THINK_CLOSE) - 1, 0, -1):  # a partial "</think>" at the end
            if text.endswith(THINK_CLOSE[:k]):
                text = text[:-k]
                break
    reasoning, answer = split_thinking(text)
    if reasoning is not None:
        return reasoning, answer
    if not final and THINK_OPEN.startswith(answer):  # maybe the start of "<think>"
        return "", ""
    return answer.removeprefix(THINK_OPEN).strip(), ""


class ReasoningStream:
    """Streamed text of a thinking run -> increments of its reasoning and of its answer (see split_reasoning)."""

    def __init__(self):
        self.text, self.sent = "", ("", "")

    def feed(self, delta: str, *, final: bool = False) -> tuple[str, str]:
        self.text += delta
        parts = split_reasoning(self.text, final=final)
        new = tuple(p[len(s):] if p.startswith(s) else "" for p, s in zip(parts, self.sent))
        self.sent = tuple(s + n for s, n in zip(self.sent, new))
        return new


async def _convert_messages(svc: Service, body: ChatRequest) -> tuple[list[dict], list]:
    """OpenAI messages -> the pipeline's ``{"role", "text", "audio"}`` dicts, and the audio decoded from them.

    Each part's audio and the text are checked against the limits here; the request's total audio is checked by
    the caller (it may add a reference voice)."""
    s = svc.settings
    if len(body.messages) > s.max_messages:
        raise bad_request(f"'messages' has {len(body.messages)} entries; the limit is {s.max_messages}", "messages")
    out: list[dict] = []
    decoded = []
    pending: list[tuple[dict, tuple]] = []
    total_chars = 0
    for i, msg in enumerate(body.messages):
        role = msg.role
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"messages[{i}].role '{str(role)[:40]}' is not supported; use system, user or "
                              "assistant", f"messages[{i}].role")
        texts: list[str] = []
        audio = None
        content = msg.content
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                param = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    value = part.get("text")
                    if not isinstance(value, str):
                        raise bad_request(f"{param}.text must be a string", param)
                    texts.append(value)
                elif kind in AUDIO_PART_TYPES:
                    if role != "user":
                        raise bad_request(f"{param}: audio parts are accepted in user messages only (an earlier "
                                          "spoken reply is referenced with \"audio\": {\"id\": ...})", param)
                    if audio is not None:
                        raise bad_request(f"{param}: one audio part per message is supported; send each clip as "
                                          "its own user message", param)
                    if len(decoded) >= s.max_audio_parts:
                        raise bad_request(f"At most {s.max_audio_parts} audio parts per request", param)
                    key = "data" if kind == "input_audio" else "url"
                    field = f"{kind}.{key}"  # input_audio.data or audio_url.url
                    spec = part.get(kind)
                    data = spec.get(key) if isinstance(spec, dict) else None
                    if kind == "audio_url" and isinstance(data, str) and not is_data_url(data):
                        raise bad_request(f"{param}: only data: URLs are accepted in audio_url (this server "
                                          "never fetches URLs or opens paths)", param, code="url_not_allowed")
                    if not isinstance(data, str):
                        raise bad_request(f"{param}: missing audio data ({field})", param)
                    declared = spec.get("format") if kind == "input_audio" else None
                    where = f"{param}.{field}"
                    raw = svc.b64_bytes(data, where, declared_format=declared,
                                        format_param=f"{param}.input_audio.format")
                    audio = (raw, where, await svc.probe(raw, where))  # decoded below, once all are admitted
                    decoded.append(audio)
                else:
                    raise bad_request(f"{param}: content part type '{str(kind)[:40]}' is not supported; use text, "
                                      "input_audio or audio_url", param)
        elif content is not None:
            raise bad_request(f"messages[{i}].content must be a string or a list of parts", f"messages[{i}]")
        text = "\n".join(t for t in texts if t)
        total_chars += len(text)
        svc.check_text(text, f"messages[{i}].content")
        entry: dict = {"role": role}
        if text:
            entry["text"] = text
        if audio is not None:
            pending.append((entry, audio))
        if role == "assistant" and isinstance(msg.audio, dict) and isinstance(msg.audio.get("id"), str):
            stored = svc.audio_store.get(msg.audio["id"])
            if stored is not None:
                entry["audio"] = (stored.audio, stored.sample_rate)
                if stored.codes is not None:
                    entry["codes"] = stored.codes
                entry.setdefault("text", stored.transcript)
        if role == "system" and "text" not in entry:
            raise bad_request(f"messages[{i}]: a system message needs text content", f"messages[{i}]")
        out.append(entry)
    if total_chars > s.max_chat_text_chars:
        raise bad_request(f"The conversation holds {total_chars} characters of text; the limit is "
                          f"{s.max_chat_text_chars}", "messages", code="string_above_max_length")
    # every part's header is read before any is decoded: a request whose audio is over the limit in all is
    # refused without decoding a single part
    total = sum(header.seconds for _, (_, _, header) in pending)
    if total > s.max_audio_seconds:
        raise APIError(413, f"The request holds {total:.1f} s of audio in all (from the parts' headers); the limit "
                       f"is {s.max_audio_seconds:.0f} s", code="audio_too_long")
    decoded = []
    for entry, (raw, where, header) in pending:
        audio = await svc.decode(raw, where, header)
        entry["audio"] = audio.as_pair()
        decoded.append(audio)
    return out, decoded


@router.post("/v1/chat/completions", summary="Chat with text and audio (OpenAI-compatible)",
             openapi_extra=body_openapi(ChatRequest))
async def create_chat_completion(request: Request):
    svc: Service = request.app.state.service
    body: ChatRequest = await svc.parse(request, ChatRequest)
    svc.check_model(body.model)
    if body.n not in (None, 1):
        raise bad_request("Only n=1 is supported", "n")
    modalities = [m.lower() for m in (body.modalities or ["text"])]
    unknown = set(modalities) - {"text", "audio"}
    if unknown or "text" not in modalities:
        raise bad_request("'modalities' must be [\"text\"] or [\"text\", \"audio\"]", "modalities")
    want_audio = "audio" in modalities
    stream = bool(body.stream)
    fmt = "wav"
    if want_audio:  # the default format: pcm16 when streaming, else wav
        asked_fmt = body.audio.format if body.audio else None
        fmt = check_output_format(asked_fmt or ("pcm16" if stream else "wav"), "audio.format", stream=stream)
    asked = body.max_new_tokens or body.max_completion_tokens or body.max_tokens
    param = "max_new_tokens" if body.max_new_tokens else "max_completion_tokens" if body.max_completion_tokens \
        else "max_tokens"
    sampling = svc.sampling(body, asked, param)
    if body.ref_audio and not want_audio:
        raise bad_request("'ref_audio' (a voice) needs modalities [\"text\", \"audio\"]", "ref_audio")
    messages, decoded = await _convert_messages(svc, body)
    kwargs = {"messages": messages, "reply": "speech" if want_audio else "text", **sampling}
    if body.thinking:
        kwargs["thinking"] = True
    if body.ref_audio:
        voice = await svc.decode_b64(body.ref_audio, "ref_audio")
        decoded.append(voice)
        kwargs["voice"] = voice.as_pair()
    svc.check_total_audio(decoded)
    [job] = await svc.start_jobs("chat", [kwargs])
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    model = svc.settings.model_name
    split_thoughts = bool(body.thinking) and not want_audio  # reasoning_content apart from content

    if not stream:
        reply = await svc.result(job, request)
        message: dict = {"role": "assistant", "content": None if want_audio else reply.answer}
        thinking = getattr(reply, "thinking", "")
        if split_thoughts:
            thinking, message["content"] = split_reasoning(reply.text or "")
        if thinking:
            message["reasoning_content"] = thinking
        if want_audio:
            audio = require_audio(tensor_to_numpy(reply.audio))
            rate = int(getattr(reply, "sample_rate", svc.sample_rate))
            audio_id, expires = svc.audio_store.put(reply.audio, rate, getattr(reply, "codes", None), reply.answer)
            message["audio"] = {"id": audio_id, "data": base64.b64encode(encode_audio(audio, rate, fmt)).decode(),
                                "expires_at": expires, "transcript": reply.answer}
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish(reply)}],
            "usage": _usage(reply),
        })

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return event({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                      "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    async def events():
        audio_id = svc.audio_store.new_id()
        out = PCMStream(fmt, svc.sample_rate)
        thoughts = ReasoningStream() if split_thoughts else None
        try:
            yield chunk({"role": "assistant", "content": None if want_audio else ""})
            async for piece in svc.pieces(job, request, ping=svc.settings.sse_ping_s):
                if piece is None:
                    yield PING
                    continue
                if thoughts is not None:
                    reasoning, answer = thoughts.feed(piece.text or "", final=piece.done)
                    if reasoning:
                        yield chunk({"reasoning_content": reasoning})
                    if answer:
                        yield chunk({"content": answer})
                elif piece.text:
                    yield chunk({"audio": {"id": audio_id, "transcript": piece.text}} if want_audio
                                else {"content": piece.text})
                audio = tensor_to_numpy(piece.audio) if want_audio else None
                if want_audio and audio is not None and len(audio):
                    data = out.encode(audio)
                    yield chunk({"audio": {"id": audio_id, "data": base64.b64encode(data).decode()}})
                if piece.done:
                    reply = piece.reply
                    if want_audio and reply is not None and reply.audio is not None:
                        rate = int(getattr(reply, "sample_rate", svc.sample_rate))
                        _, expires = svc.audio_store.put(reply.audio, rate, getattr(reply, "codes", None),
                                                         reply.answer, audio_id)
                        yield chunk({"audio": {"id": audio_id, "expires_at": expires}})
                    yield chunk({}, _finish(reply))
                    if include_usage:
                        yield event({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                     "model": model, "choices": [], "usage": _usage(reply)})
            yield DONE
        except ClientGone:
            return
        except APIError as exc:  # JobTimeout included
            yield event({"error": stream_error(exc)})
            yield DONE

    return JobStream(events(), [job], media_type="text/event-stream", headers=SSE_HEADERS)


def _finish(reply) -> str:
    reason = getattr(reply, "finish_reason", "stop") if reply is not None else "stop"
    return reason if reason in ("stop", "length") else "stop"


def _usage(reply) -> dict:
    inp = int(getattr(reply, "prompt_tokens", 0) or 0)
    out = int(getattr(reply, "new_tokens", 0) or 0)
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out}
