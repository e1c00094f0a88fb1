"""Pure ASGI middleware: request logging + metrics, Bearer API key, request-body size cap.

The body cap runs before any parsing: a ``Content-Length`` over the limit is refused at once (413), and a body
sent without one (chunked) is counted as it arrives and refused as soon as it passes the limit. It covers
every route, so JSON bodies carrying base64 audio are capped like multipart uploads.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from starlette.datastructures import Headers

from .errors import APIError, error_response
from .metrics import Registry

log = logging.getLogger("mimo_audio.server")

# Routes reachable without the API key. /health is liveness only; / and /static/* are the web page (public
# files with no data and no model access; the page asks for the key and sends it with every API call).
PUBLIC_PATHS = {"/health", "/", "/favicon.ico"}
PUBLIC_PREFIXES = ("/static/",)


def route_label(scope) -> str:
    """The metrics label of a finished request: the path template of the route that handled it, as the router
    left it in the scope (e.g. "/v1/models/{model_id:path}"), else "other" (unknown paths, requests refused before
    routing). Only the app's own route templates can appear, so the label set stays bounded."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "other"


class BodyTooLarge(APIError):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than the server's {limit / 2**20:g} MB limit; send "
                         "smaller audio (or raise --max-upload-mb)", code="request_too_large")


class BodyTimeout(APIError):
    def __init__(self, limit: float):
        super().__init__(408, f"The request body did not arrive within {limit:g} s; send it promptly (or raise "
                         "--body-timeout)", code="body_timeout", headers={"Connection": "close"})


class _WatchedSend:
    """Wraps ASGI ``send``; ``status`` is the response's status once it has started (None before)."""

    def __init__(self, send):
        self.send, self.status = send, None

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class BodyLimitMiddleware:
    """Caps the body's size and the time it may take to arrive (``body_timeout_s`` from the end of the headers
    to its last byte; a client that drips it is answered 408 and the connection closed)."""

    def __init__(self, app, max_bytes: int, body_timeout_s: float = 60.0):
        self.app, self.max_bytes, self.body_timeout_s = app, max_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        value = Headers(scope=scope).get("content-length")
        if value is not None:
            try:
                length = int(value)
            except ValueError:
                return await error_response(400, "Invalid Content-Length header")(scope, receive, send)
            if length > self.max_bytes:
                return await BodyTooLarge(self.max_bytes).response()(scope, receive, send)
        seen = 0
        body_done = False
        deadline = time.monotonic() + self.body_timeout_s

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:  # later calls wait for the disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                log.warning("request body not complete after %g s: 408", self.body_timeout_s)
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        watched = _WatchedSend(send)
        try:
            await self.app(scope, limited_receive, watched)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside a route's error handling (e.g. a stream reader)
            if watched.status is None:
                await exc.response()(scope, receive, send)


class AuthMiddleware:
    """Deny by default: every route but PUBLIC_PATHS needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        given = token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self.key):
            response = error_response(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                                      code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class AccessLogMiddleware:
    """One log line per request (method, path, status, duration) and the HTTP metrics."""

    def __init__(self, app, metrics: Registry):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        watched = _WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        finally:
            status = watched.status or 500
            dt = time.perf_counter() - t0
            path = scope.get("path", "")
            label = route_label(scope)
            self.metrics.requests.inc(route=label, method=scope.get("method", ""), status=str(status))
            self.metrics.latency.observe(dt, route=label)
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.1f ms', client[0], scope.get("method"), path[:200], status, dt * 1000)
