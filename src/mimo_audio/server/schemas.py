"""Request bodies (pydantic), following OpenAI's field names. Unknown fields are ignored.

Limits that need the server's settings (text length, max_new_tokens cap, audio size) are checked in the routes,
so the error message can name the configured limit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Sampling(_Body):
    """Extra fields every generating endpoint accepts."""

    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling")
    max_new_tokens: int | None = Field(None, ge=1, description="Cap on generated groups (0.16 s of audio each)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=100000)


class SpeechRequest(Sampling):
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


class ChatRequest(Sampling):
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
