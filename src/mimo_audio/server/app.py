"""create_app(backend, settings): the FastAPI app.

Routes: POST /v1/audio/speech, POST /v1/audio/transcriptions, POST /v1/chat/completions, GET /v1/models,
GET /health (liveness), GET /ready (model loaded, batcher running), GET /metrics (Prometheus), GET / (web page).
The backend is any object with the pipeline's batch-core interface: ``prepare(task, **kwargs)`` and
``stream(requests)`` (``MimoAudio`` in production; a small fake in HTTP-layer tests).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from .errors import APIError, install_handlers
from .metrics import Registry
from .middleware import AccessLogMiddleware, AuthMiddleware, BodyLimitMiddleware
from .routes_audio import router as audio_router
from .routes_chat import router as chat_router
from .service import Service
from .settings import ServerSettings

log = logging.getLogger("mimo_audio.server")
STATIC = Path(__file__).parent / "static"
# The tasks with an endpoint (GET /v1/models lists them): transcribe = /v1/audio/transcriptions, speak =
# /v1/audio/speech, understand and chat = /v1/chat/completions. The base model's few-shot conversion and
# continuation have no endpoint yet; the web page shows a view only for a task named here.
SERVED_TASKS = ("transcribe", "speak", "understand", "chat")


def create_app(backend, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = Registry()
    service = Service(backend, settings, metrics)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        log.info("serving model '%s' (max batch %d, queue %d, timeout %g s)", settings.model_name,
                 settings.max_batch, settings.queue_size, settings.timeout_s)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="MiMo-Audio server", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible speech, transcription and chat endpoints for MiMo-Audio.")
    app.state.service = service
    app.state.settings = settings
    install_handlers(app)
    app.include_router(audio_router)
    app.include_router(chat_router)

    @app.get("/health", summary="Liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded and the batcher running")
    async def ready():
        if not service.ready:
            raise APIError(503, "Not ready", code="not_ready", headers={"Retry-After": str(settings.retry_after_s)})
        return {"status": "ready", "model": settings.model_name}

    # HEAD answers like GET (no body), for load balancers and uptime checks; kept out of the schema
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_route():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        # OpenAI's four fields, plus what the web page needs to offer the right views and warn before sending:
        # the tasks this server has an endpoint for, and its limits.
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "mimo-audio",
                "tasks": list(SERVED_TASKS), "limits": {
                    "max_upload_bytes": settings.max_upload_bytes, "max_audio_seconds": settings.max_audio_seconds,
                    "max_text_chars": settings.max_text_chars, "max_new_tokens": settings.max_new_tokens,
                    "max_audio_parts": settings.max_audio_parts}}

    @app.get("/v1/models", summary="List the served model")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", summary="Describe the served model")
    async def get_model(model_id: str):
        service.check_model(model_id)
        return model_card()

    if settings.serve_page:
        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(STATIC / "index.html", media_type="text/html",
                                headers={"Cache-Control": "no-cache"})

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    _add_body_schemas(app)

    # Middleware: the last added runs first. Order of a request: access log -> CORS -> auth -> body cap -> app.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, body_timeout_s=settings.body_timeout_s)
    if settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    return app


def _add_body_schemas(app: FastAPI) -> None:
    """The chat and speech routes parse their bodies themselves (off the event loop); their models' nested schemas
    are added to the OpenAPI document's components, where the routes' request bodies refer to them."""
    from .schemas import ChatRequest, SpeechRequest

    generate = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatRequest, SpeechRequest):
                defs = model.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
                components.update(defs)
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"
