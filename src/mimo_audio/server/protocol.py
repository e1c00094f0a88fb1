"""uvicorn's HTTP/1.1 protocol with a header read deadline, and the uvicorn options the server runs with.

uvicorn times out idle keep-alive connections only after a response, and any byte received cancels that timer:
a client that connects and sends nothing, or drips one header byte at a time, holds its connection (and a file
descriptor) for ever. :class:`GuardedH11Protocol` gives every request ``header_timeout_s`` seconds from its first
byte (or from the connection, for the first request) to finish its headers; past it the client gets
``408 Request Timeout`` and the connection is closed. Body reads have their own deadline in
:class:`~mimo_audio.server.middleware.BodyLimitMiddleware` (it sees the body; the protocol does not).
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

log = logging.getLogger("mimo_audio.server")
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n")
_TIMEOUT_BODY = (b'{"error":{"message":"The request headers did not arrive in time; send the whole request '
                 b'promptly","type":"timeout_error","param":null,"code":"header_timeout"}}')


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.warning('%s request headers not complete after %g s: 408, connection closed', client,
                    self.header_timeout_s)
        self.transport.write(_TIMEOUT_RESPONSE % len(_TIMEOUT_BODY) + _TIMEOUT_BODY)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers() and self._header_timer is None:
            self._arm_header_timer()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if not self._waiting_for_headers():
            self._cancel_header_timer()  # the headers are complete: the app (and its body deadline) takes over

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer; the next request's first byte arms ours
        self._cancel_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def uvicorn_options(settings: ServerSettings) -> dict:
    """The keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` that enforce the settings' connection
    limits: the guarded protocol, the keep-alive timeout, the header size cap and the open-connection cap."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
        # uvicorn's own wait comes after DrainingServer's drain: only the replies' last bytes are left by then
        "timeout_graceful_shutdown": 5,
    }


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful shutdown that answers every request (see ``Service.drain``).

    The first SIGTERM/SIGINT starts draining while the server keeps listening: new generation requests get 503
    with Retry-After and ``/ready`` 503 (so a load balancer stops sending), running ones may finish for
    ``shutdown_grace_s``, the rest are answered 503; then uvicorn shuts down as usual. A second signal stops at
    once. Every request gets a response and an access-log line."""

    def __init__(self, config: uvicorn.Config, service, grace_s: float):
        super().__init__(config)
        self.service, self.grace_s = service, grace_s
        self._drain_started = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._drain_started or self._loop is None:
            return super().handle_exit(sig, frame)
        self._drain_started = True
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        try:
            await self.service.drain(self.grace_s)
            await asyncio.sleep(0.2)  # the last replies' bytes
        finally:
            self.should_exit = True
