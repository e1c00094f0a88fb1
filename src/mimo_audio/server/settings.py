"""Server settings: one frozen dataclass, filled by ``mimo-audio serve`` flags or by hand in tests."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Everything the HTTP layer needs to know, with safe defaults.

    Limits are enforced before any model work: ``max_upload_bytes`` caps every request body (multipart uploads
    and JSON bodies carrying base64 audio alike) at the ASGI layer; ``max_audio_seconds`` caps the decoded
    duration of each request's audio; ``max_text_chars`` caps each text input; ``max_new_tokens`` caps the
    number of generated groups (one group = one text token or 4 audio frames = 0.16 s of speech).
    """

    model_name: str = "mimo-audio"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    # batching / queueing
    max_batch: int = 8
    batch_window_s: float = 0.02
    queue_size: int = 32
    timeout_s: float = 300.0
    retry_after_s: int = 2
    # limits
    max_upload_bytes: int = 25 * MiB
    max_audio_seconds: float = 600.0
    max_decoded_bytes: int = 256 * MiB
    max_text_chars: int = 4096
    decode_budget_bytes: int = 512 * MiB  # server-wide memory all decodes in progress may hold (from headers)
    max_concurrent_decodes: int = 2  # decodes running at once (each holds a worker thread and its memory)
    decode_wait_s: float = 5.0  # how long a decode may wait for budget before 503 with Retry-After
    max_chat_text_chars: int = 16384
    max_audio_parts: int = 8
    max_messages: int = 64
    max_new_tokens: int = 2048
    transcription_chunk_seconds: float = 30.0
    audio_store_size: int = 64
    audio_store_ttl_s: float = 3600.0
    sse_ping_s: float = 10.0
    # connections (uvicorn options, see server/protocol.py) and slow clients
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers, else 408 and close
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body, else 408
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_header_bytes: int = 16 * 1024  # request line + headers; more is a 400
    max_connections: int = 256  # open connections (and running requests); beyond, new requests get 503
    shutdown_grace_s: float = 10.0  # on SIGTERM: how long running requests may still finish
    warmup: bool = False  # run one tiny generation at start-up; /ready answers 503 until it is done
    # page
    serve_page: bool = True

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_upload_bytes", "max_text_chars", "max_new_tokens",
                     "max_header_bytes", "max_connections", "decode_budget_bytes", "max_concurrent_decodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerSettings.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout_s", "max_audio_seconds", "transcription_chunk_seconds", "header_timeout_s",
                     "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerSettings.{name} must be positive, got {getattr(self, name)}")
        if self.shutdown_grace_s < 0:
            raise ValueError("ServerSettings.shutdown_grace_s must be >= 0")
        if self.batch_window_s < 0:
            raise ValueError("ServerSettings.batch_window_s must be >= 0")
        if "*" in self.cors_origins and self.api_key:
            # A wildcard origin together with a key would let any web site drive the server with a user's key.
            raise ValueError("--cors-origin '*' cannot be combined with --api-key; list the allowed origins")
