"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Client mistakes are 4xx with a message naming the problem and the fix; no stack trace ever reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import MimoAudioError

log = logging.getLogger("mimo_audio.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout_error",
}


def _text(value: str | None) -> str | None:
    """A string safe to encode as UTF-8 JSON: lone surrogates from a client's input become ``\\udXXX``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value


def error_body(status: int, message: str, *, type: str | None = None, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": _text(message), "type": type or _TYPES.get(status, "server_error"),
                      "param": _text(param), "code": _text(code)}}


def error_response(status: int, message: str, *, type: str | None = None, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type=type, param=param, code=code), status_code=status,
                        headers=headers)


class APIError(StarletteHTTPException):
    """An error with an HTTP status and OpenAI error fields.

    Subclassing Starlette's HTTPException matters: FastAPI re-raises HTTPExceptions met while it reads a body,
    so a body-size error raised from ``receive`` keeps its 413 instead of becoming a generic 400.
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def response(self) -> JSONResponse:
        return error_response(self.status_code, self.message, type=self.type, param=self.param, code=self.code,
                              headers=self.headers)


class ClientGone(Exception):
    """The client disconnected while its request was waiting or running."""


def stream_error(exc: Exception) -> dict:
    """The ``error`` object for an SSE error event, once a streamed response has started (same fields and types
    as an error response)."""
    if isinstance(exc, APIError):
        return error_body(exc.status_code, exc.message, type=exc.type, param=exc.param, code=exc.code)["error"]
    return error_body(500, "Generation failed; see the server log")["error"]


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


MAX_ECHO = 200  # characters of a client's path (or other string) repeated in an error message


def _short(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + f"... ({len(text)} characters)"


def _loc_to_param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone):
        # Nobody reads this reply; 499 ("client closed request") marks the request in the log and the metrics.
        return error_response(499, "The client disconnected", code="client_gone")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 404:
            message = f"Unknown route {request.method} {_short(request.url.path)}; see GET /v1/models and " \
                      "docs/server.md"
        elif status == 405:
            message = f"Method {request.method} is not allowed on {_short(request.url.path)}"
        return error_response(status, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI answers 422 with its own shape; OpenAI clients expect 400 and the OpenAI error shape.
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _loc_to_param(first.get("loc", ()))
        kind = first.get("type", "")
        if kind == "lone_surrogate":
            param = (first.get("ctx") or {}).get("param")
            return error_response(400, first.get("msg", "invalid text"), param=param, code="invalid_unicode")
        if kind == "json_invalid":
            message = "The request body is not valid JSON"
        elif kind == "missing":
            message = f"Missing required parameter '{param}'"
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}" if param else \
                f"Invalid request: {first.get('msg', 'invalid')}"
        return error_response(400, message, param=param, code=kind or None)

    @app.exception_handler(MimoAudioError)
    async def _mimo_error(request: Request, exc: MimoAudioError):
        # AudioInputError / PromptError from the pipeline: the client's input cannot be used.
        return error_response(400, str(exc), code=type(exc).__name__)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error; see the server log", type="server_error")
