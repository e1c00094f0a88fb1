"""The service the routes share: admission, input checks, prepare-in-a-thread, waiting for pieces.

Everything that touches the backend goes through here, so the routes stay about HTTP shapes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from starlette.responses import StreamingResponse

from ..errors import MimoAudioError
from .batcher import Batcher, Job, JobTimeout
from .errors import APIError, ClientGone, bad_request
from .media import (
    AudioHeader,
    AudioLimits,
    DecodedAudio,
    check_input_format,
    decode_audio,
    decode_base64_audio,
    probe_header,
)
from .metrics import Registry
from .settings import ServerSettings

log = logging.getLogger("mimo_audio.server")


def tensor_to_numpy(audio) -> np.ndarray | None:
    if audio is None:
        return None
    if hasattr(audio, "detach"):
        audio = audio.detach().to("cpu").float().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def cancel_jobs(jobs, reason: str = "client") -> None:
    """Cancel every job that has not finished (finished ones are left alone)."""
    for job in jobs:
        job.cancel(reason)


class JobStream(StreamingResponse):
    """A streaming reply that owns its jobs: when the response ends, however it ends (done, client gone, server
    error, or cancelled before its body was ever read), every job still running is cancelled."""

    def __init__(self, content, jobs, **kwargs):
        super().__init__(content, **kwargs)
        self.jobs = list(jobs)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            cancel_jobs(self.jobs)


def sample_count(audio) -> int:
    """How many samples ``audio`` (a tensor or array, any shape) holds, without converting it."""
    return math.prod(audio.shape)


@dataclass
class StoredAudio:
    audio: Any
    sample_rate: int
    codes: Any
    transcript: str
    expires_at: int


class AudioStore:
    """Generated chat audio kept for a while by server-made id, so a later turn can reference it
    (``{"role": "assistant", "audio": {"id": ...}}``) as OpenAI's API allows. Bounded LRU with expiry."""

    def __init__(self, size: int, ttl_s: float):
        self.size, self.ttl_s = size, ttl_s
        self._items: collections.OrderedDict[str, StoredAudio] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return "audio_" + secrets.token_hex(12)

    def put(self, audio, sample_rate: int, codes, transcript: str, audio_id: str | None = None) -> tuple[str, int]:
        audio_id = audio_id or self.new_id()
        expires = int(time.time() + self.ttl_s)
        with self._lock:
            self._items[audio_id] = StoredAudio(audio, sample_rate, codes, transcript, expires)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return audio_id, expires

    def get(self, audio_id: str) -> StoredAudio | None:
        with self._lock:
            item = self._items.get(audio_id)
            if item is None or item.expires_at < time.time():
                self._items.pop(audio_id, None)
                return None
            self._items.move_to_end(audio_id)
            return item


class DecodeGate:
    """Admission for audio decoding: each decode reserves its peak memory (from the upload's header, before any
    decoding) against a server-wide budget, and at most ``slots`` run at once. A decode that cannot start within
    ``wait_s`` is refused with 503 and Retry-After, so a burst of uploads queues briefly instead of decoding all
    at once."""

    def __init__(self, budget: int, slots: int, wait_s: float, retry_after_s: int):
        self.budget, self.slots, self.wait_s, self.retry_after_s = budget, slots, wait_s, retry_after_s
        self.used = self.running = 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, cost: int, param: str):
        if cost > self.budget:
            raise APIError(413, f"'{param}' needs {cost / 2**20:.0f} MB to decode; this server decodes at most "
                           f"{self.budget / 2**20:.0f} MB at a time (send shorter, mono or lower-rate audio)",
                           param=param, code="audio_too_large")
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        async with cond:
            while not (self.running < self.slots and self.used + cost <= self.budget):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise APIError(503, "The server is busy decoding other uploads; retry shortly", param=param,
                                   code="decode_busy", headers={"Retry-After": str(self.retry_after_s)})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(cond.wait(), remaining)
            self.running += 1
            self.used += cost
        try:
            yield
        finally:
            async with cond:
                self.running -= 1
                self.used -= cost
                cond.notify_all()


class ShuttingDown(APIError):
    def __init__(self, retry_after_s: int, started: bool = False):
        message = ("The server shut down before this request finished; retry it" if started else
                   "The server is shutting down and accepts no new work; retry shortly (another instance may take it)")
        super().__init__(503, message, code="shutting_down", headers={"Retry-After": str(retry_after_s)})


def _trim_heap() -> None:
    """Hand freed heap memory back to the system after a large decode (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Service:
    def __init__(self, backend, settings: ServerSettings, metrics: Registry | None = None):
        self.backend, self.settings = backend, settings
        self.metrics = metrics or Registry()
        self.batcher = Batcher(backend, max_batch=settings.max_batch, window_s=settings.batch_window_s,
                               queue_size=settings.queue_size, retry_after_s=settings.retry_after_s,
                               metrics=self.metrics)
        self.limits = AudioLimits(settings.max_audio_seconds, settings.max_decoded_bytes)
        self.decode_gate = DecodeGate(settings.decode_budget_bytes, settings.max_concurrent_decodes,
                                      settings.decode_wait_s, settings.retry_after_s)
        self.audio_store = AudioStore(settings.audio_store_size, settings.audio_store_ttl_s)
        self.sample_rate = int(getattr(backend, "sample_rate", 24000))
        self.ready = False
        self.draining = False
        self._jobs: set[Job] = set()
        self._prep_limiter: anyio.CapacityLimiter | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.batcher.start()
        if self.settings.warmup:
            threading.Thread(target=self._warmup, name="mimo-audio-warmup", daemon=True).start()
        else:
            self.ready = True

    def _warmup(self) -> None:
        t0 = time.monotonic()
        try:
            request = self.backend.prepare("speak", text="Hello.", max_new_tokens=2, seed=0)
            for _ in self.backend.stream([request]):
                pass
            log.info("warm-up generation done in %.2f s", time.monotonic() - t0)
        except Exception:
            log.exception("warm-up generation failed (serving anyway)")
        finally:
            self.ready = True

    def stop(self) -> None:
        self.ready = False
        self.batcher.stop()

    async def drain(self, grace_s: float) -> None:
        """Graceful shutdown, step one (SIGTERM): admit nothing new (503 with Retry-After; /ready 503), let the
        running jobs finish for up to ``grace_s`` seconds, then cancel the rest, whose requests are answered 503
        ``shutting_down``. Returns once every job has ended (or 2 s after the cancellation)."""
        self.draining, self.ready = True, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        log.info("shutting down: no new requests; %d running may finish within %g s",
                 sum(not j.finished for j in self._jobs), grace_s)
        while loop.time() < deadline and any(not j.finished for j in self._jobs):
            await asyncio.sleep(0.05)
        left = [j for j in self._jobs if not j.finished]
        if left:
            log.warning("shutting down: %d request(s) still running after %g s are cancelled (503)", len(left),
                        grace_s)
            for job in left:
                job.cancel("shutdown")
            end = loop.time() + 2.0
            while loop.time() < end and any(not j.finished for j in left):
                await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- checks
    def check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise APIError(404, f"The model '{str(model)[:100]}' does not exist on this server; use "
                           f"'{self.settings.model_name}' (see GET /v1/models)", param="model",
                           code="model_not_found")

    def check_text(self, value: str | None, param: str, *, required: bool = False) -> None:
        limit = self.settings.max_text_chars
        if value is None or not value.strip():
            if required:
                raise bad_request(f"'{param}' must be a non-empty string", param)
            return
        if len(value) > limit:
            raise bad_request(f"'{param}' has {len(value)} characters; the limit is {limit}", param,
                              code="string_above_max_length")

    def sampling(self, body, max_new_tokens: int | None = None, param: str = "max_new_tokens") -> dict:
        """seed / max_new_tokens / temperature / top_p / top_k for ``prepare``; max_new_tokens within the cap."""
        cap = self.settings.max_new_tokens
        asked = max_new_tokens if max_new_tokens is not None else getattr(body, "max_new_tokens", None)
        if asked is not None and asked > cap:
            raise bad_request(f"'{param}' is {asked}; this server allows at most {cap}", param,
                              code="max_new_tokens_too_large")
        kw: dict[str, Any] = {"max_new_tokens": asked if asked is not None else cap}
        for name in ("seed", "temperature", "top_p", "top_k"):
            value = getattr(body, name, None)
            if value is not None:
                kw[name] = value
        return kw  # temperature 0 = greedy text decoding, as everywhere (sampling.SamplingParams)

    async def parse(self, request, model_cls):
        """The request's JSON body as ``model_cls``, bounded and parsed off the event loop: its structure is
        counted first (a body of 700k messages is refused at once), then parsing and validation run in a worker
        thread, so no body blocks other requests (``/health`` included)."""
        from .schemas import check_json_size, json_token_bound, parse_body

        raw = await request.body()
        check_json_size(raw, json_token_bound(self.settings))
        return await anyio.to_thread.run_sync(parse_body, model_cls, raw)

    async def probe(self, data: bytes, param: str) -> AudioHeader:
        """The upload's header, checked against the limits (no decoding)."""
        return await anyio.to_thread.run_sync(functools.partial(probe_header, data, self.limits, param))

    async def decode(self, data: bytes, param: str, header: AudioHeader | None = None) -> DecodedAudio:
        """Decode an upload once the decode gate admits its header's cost (see DecodeGate)."""
        if header is None:
            header = await self.probe(data, param)
        async with self.decode_gate.hold(header.cost, param):
            try:
                audio = await anyio.to_thread.run_sync(functools.partial(decode_audio, data, self.limits, param))
            finally:
                if header.cost > 32 * 2**20:
                    _trim_heap()
        self.metrics.audio_in.inc(audio.seconds)
        return audio

    def b64_bytes(self, value: str, param: str, *, declared_format=None, format_param: str = "format") -> bytes:
        data = decode_base64_audio(value, param)
        check_input_format(declared_format, data, format_param)
        return data

    async def decode_b64(self, value: str, param: str, *, declared_format=None,
                         format_param: str = "format") -> DecodedAudio:
        return await self.decode(self.b64_bytes(value, param, declared_format=declared_format,
                                                format_param=format_param), param)

    def check_total_audio(self, audios: list[DecodedAudio]) -> None:
        total = sum(a.seconds for a in audios)
        if total > self.settings.max_audio_seconds:
            raise APIError(413, f"The request holds {total:.1f} s of audio in all; the limit is "
                           f"{self.settings.max_audio_seconds:.0f} s", code="audio_too_long")

    # ---------------------------------------------------------------- running
    async def _prepare(self, task: str, kwargs: dict):
        if self._prep_limiter is None:
            self._prep_limiter = anyio.CapacityLimiter(1)
        try:
            return await anyio.to_thread.run_sync(functools.partial(self.backend.prepare, task, **kwargs),
                                                  limiter=self._prep_limiter)
        except MimoAudioError:
            raise
        except (ValueError, TypeError) as exc:  # the pipeline refused the input without its own error type
            log.warning("prepare(%s) refused input: %r", task, exc)
            raise bad_request(f"The request cannot be run: {exc}") from None

    async def start_jobs(self, task: str, kwargs_list: list[dict]) -> list[Job]:
        """Admit one request (one queue slot, 429 when full), prepare its rows and queue them."""
        if self.draining:
            raise ShuttingDown(self.settings.retry_after_s)
        if not self.ready:
            raise APIError(503, "The server is not ready (loading or shutting down); retry shortly",
                           code="not_ready", headers={"Retry-After": str(self.settings.retry_after_s)})
        self.batcher.reserve()
        t0 = time.monotonic()
        try:
            prepared = [await self._prepare(task, kw) for kw in kwargs_list]
        except BaseException:
            self.batcher.release()
            raise
        jobs = []
        for i, req in enumerate(prepared):
            if i > 0:  # one request holds one slot; its extra rows (transcription chunks) ride along
                self.batcher.reserve_extra()
            jobs.append(self.batcher.submit(req, timeout_s=self.settings.timeout_s, task=task, t_admit=t0))
        self._jobs = {j for j in self._jobs if not j.finished} | set(jobs)
        return jobs

    async def pieces(self, job: Job, request=None, *, ping: float | None = None) -> AsyncIterator[Any]:
        """Yield the job's pieces; ``None`` every ``ping`` seconds of silence (for SSE keep-alives).

        Watches the client every ``poll`` seconds, whether pieces arrive or not: if it disconnected, the job's row
        is cancelled and ClientGone is raised. Past the deadline the row is cancelled and JobTimeout raised.
        """
        poll = 0.5
        last_ping = last_check = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                remaining = job.deadline + 1.0 - now
                if remaining <= 0:
                    job.cancel("timeout")
                    raise JobTimeout(job.timeout_s)
                if request is not None and now - last_check >= poll:
                    last_check = now
                    if await request.is_disconnected():
                        job.cancel("client")
                        raise ClientGone()
                try:
                    piece = await job.next(min(poll, remaining))
                except asyncio.TimeoutError:
                    if ping and time.monotonic() - last_ping >= ping:
                        last_ping = time.monotonic()
                        yield None
                    continue
                if piece is None:
                    if job.cancelled:
                        if job.cancel_reason == "shutdown":
                            raise ShuttingDown(self.settings.retry_after_s, started=True)
                        raise ClientGone()
                    return
                last_ping = time.monotonic()
                audio = getattr(piece, "audio", None)
                if audio is not None:  # counted here, so streamed and whole replies alike
                    self.metrics.audio_out.inc(sample_count(audio) / self.sample_rate)
                yield piece
        finally:
            if not job.finished:
                job.cancel("client")

    async def result(self, job: Job, request=None):
        """Wait for the job's final Reply (pieces are consumed)."""
        reply = None
        async for piece in self.pieces(job, request):
            if piece is not None and getattr(piece, "done", False):
                reply = piece.reply
        if reply is None:
            raise ClientGone()
        return reply
