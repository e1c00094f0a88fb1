"""Request bodies (pydantic), following OpenAI's field names. Unknown fields are ignored.

Limits that need the server's settings (text length, max_new_tokens cap, audio size) are checked in the routes,
so the error message can name the configured limit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def find_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].role``) of the first string in ``value`` (JSON-like: dicts, lists, strings) that
    holds a lone UTF-16 surrogate (JSON allows ``"\\ud800"``; such text cannot be encoded, tokenized or echoed), else
    None. Dict keys are checked too."""
    stack = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(v, dict):
            for k, item in v.items():
                stack.append((where + "." + str(k) if where else str(k), k))
                stack.append((where + "." + str(k) if where else str(k), item))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(v))
    return None


def surrogate_error(param: str) -> str:
    return (f"'{param.encode('utf-8', 'backslashreplace').decode()}' holds a lone UTF-16 surrogate "
            "(such as \\ud800), which is not valid Unicode text; send well-formed UTF-8")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Request(_Body):
    """A whole request body: any string in it holding a lone surrogate is refused (400) before the fields are
    read, so no such string reaches a message, a log line or the tokenizer."""

    @model_validator(mode="before")
    @classmethod
    def _no_surrogates(cls, data: Any) -> Any:
        where = find_surrogate(data)
        if where is not None:
            raise PydanticCustomError("lone_surrogate", surrogate_error(where), {"param": where})
        return data


class Sampling(_Body):
    """Extra fields every generating endpoint accepts."""

    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on generated groups (0.16 s of audio each)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=100000)


class SpeechRequest(Sampling, _Request):
    model: str
    input: str
    voice: str | dict[str, Any] | None = Field(None, description="Accepted for compatibility; MiMo has no "
                                               "named voices: use ref_audio for a reference voice")
    instructions: str | None = Field(None, description="Style instruction (instruct TTS)")
    natural: bool | None = Field(None, description="'input' holds a natural-language description of the voice "
                                 "followed by the words to say (natural-instruction TTS); not with 'instructions'")
    response_format: str | None = Field(None, description="wav (default), flac or pcm (24 kHz s16le mono)")
    speed: float | None = Field(None, ge=0.25, le=4.0, description="Only 1.0 is supported")
    stream_format: str | None = Field(None, description="'audio' (chunked bytes) or 'sse'")
    stream: bool | None = Field(None, description="Stream chunked audio bytes as they are generated")
    ref_audio: str | None = Field(None, description="Reference voice: base64 audio or a data: URL")


class AudioOutput(_Body):
    voice: str | dict[str, Any] | None = None
    format: str | None = Field(None, description="wav, flac or pcm16; default pcm16 when streaming, else wav")


class StreamOptions(_Body):
    include_usage: bool | None = False


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    name: str | None = None


class ChatRequest(Sampling, _Request):
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    modalities: list[str] | None = None
    audio: AudioOutput | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    thinking: bool | None = Field(False, description="Let the model think first (Instruct model)")
    ref_audio: str | None = Field(None, description="Reference voice for spoken replies (base64 / data URL)")


def json_token_bound(settings) -> int:
    """The most JSON structure (objects, arrays and commas) a chat or speech body may hold: every text character
    of the conversation could be a comma or a brace, and each message has a few objects of its own."""
    return settings.max_chat_text_chars + settings.max_text_chars + 64 * settings.max_messages + 1024


def check_json_size(raw: bytes, bound: int) -> None:
    """Refuse a body whose JSON structure alone is over ``bound`` before parsing it (counting bytes is fast C;
    parsing and validating 700k messages would hold the event loop for seconds)."""
    from .errors import APIError

    count = raw.count(b"{") + raw.count(b"[") + raw.count(b",")
    if count > bound:
        raise APIError(413, f"The request body holds too many JSON values ({count} objects, arrays and commas; "
                       f"the limit is {bound}); send fewer messages or parts", code="too_many_json_values")


def parse_body(model_cls, raw: bytes):
    """JSON bytes -> the request model (run in a worker thread). Errors are those FastAPI's own parsing gives,
    so the usual 400 handler words them."""
    import json

    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON"}]) from None
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def body_openapi(model_cls) -> dict:
    """The request body's schema for the OpenAPI document (routes that parse their body themselves)."""
    schema = model_cls.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
