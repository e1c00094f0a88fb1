"""The batcher: one worker thread owns the engine and runs queued requests as batches.

Requests are admitted into a bounded queue (full -> 429 with Retry-After). The worker takes the first waiting
request, waits up to ``window_s`` for more (up to ``max_batch``), and runs them as one ``backend.stream(...)``
batch; every (index, piece) it yields is handed to that request's asyncio queue on the event loop. A request
whose client went away, or whose deadline passed, has its row cancelled with ``RequestStream.cancel(index)``.

Batching is continuous when the backend's stream can take more rows (``stream.add(request) -> index``, as
:class:`mimo_audio.batch.RequestStream` does): a request that arrives while a batch runs joins it at the next
group, up to ``max_batch`` rows at once, instead of waiting for the batch to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from typing import Any

from .errors import APIError
from .metrics import Registry

log = logging.getLogger("mimo_audio.server")


class QueueFull(APIError):
    def __init__(self, retry_after: int):
        super().__init__(429, "The server is busy: the request queue is full; retry after a few seconds",
                         code="queue_full", headers={"Retry-After": str(retry_after)})


class JobTimeout(APIError):
    def __init__(self, seconds: float):
        super().__init__(504, f"The request did not finish within the server's {seconds:g} s limit; ask for "
                         "fewer tokens (max_new_tokens) or shorter input", code="timeout")


class EngineError(APIError):
    def __init__(self):
        super().__init__(500, "Generation failed inside the engine; see the server log", type="server_error",
                         code="engine_error")


_END = object()


class Job:
    """One request's link between the event loop (consumer) and the worker thread (producer)."""

    def __init__(self, request: Any, loop: asyncio.AbstractEventLoop, t_admit: float, timeout_s: float,
                 task: str = ""):
        self.request, self.loop, self.task, self.timeout_s = request, loop, task, timeout_s
        self.t_admit, self.deadline = t_admit, t_admit + timeout_s
        self.pieces: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.cancel_reason = ""
        self.finished = False
        self.t_first: float | None = None

    def cancel(self, reason: str = "client") -> None:
        if not self.cancelled and not self.finished:
            self.cancel_reason = reason
            self.cancelled = True

    def _push(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed (server shutting down)
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)

    async def next(self, timeout: float | None):
        """The next piece; raises the job's error; returns None at the end; asyncio.TimeoutError on timeout."""
        item = await asyncio.wait_for(self.pieces.get(), timeout)
        if item is _END:
            self.finished = True
            return None
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        return item


class Batcher:
    def __init__(self, backend, *, max_batch: int, window_s: float, queue_size: int, retry_after_s: int,
                 metrics: Registry):
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_s
        self.queue_size, self.retry_after_s, self.metrics = queue_size, retry_after_s, metrics
        self._q: queue.Queue[Job] = queue.Queue()
        self._reserved = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- admission (event loop side) ----
    def reserve(self) -> None:
        """Take a queue slot or raise QueueFull (429). Release with ``release()`` unless ``submit`` follows."""
        with self._lock:
            if self._reserved >= self.queue_size:
                self.metrics.rejected.inc(reason="queue_full")
                raise QueueFull(self.retry_after_s)
            self._reserved += 1
            self.metrics.queue_depth.set(self._reserved)

    def reserve_extra(self) -> None:
        """Count an extra row of an already admitted request (never refused)."""
        with self._lock:
            self._reserved += 1
            self.metrics.queue_depth.set(self._reserved)

    def release(self) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self.metrics.queue_depth.set(self._reserved)

    def submit(self, request: Any, *, timeout_s: float, task: str = "", t_admit: float | None = None) -> Job:
        """Queue a prepared request (its slot must be reserved). Returns the Job to read pieces from."""
        t0 = t_admit if t_admit is not None else time.monotonic()
        job = Job(request, asyncio.get_running_loop(), t0, timeout_s, task)
        self._q.put(job)
        return job

    # ---- worker (thread side) ----
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mimo-audio-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _collect(self) -> list[Job]:
        try:
            first = self._q.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        until = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = until - time.monotonic()
            try:
                batch.append(self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if not batch:
                continue
            for _ in batch:
                self.release()
            live = []
            now = time.monotonic()
            for job in batch:
                if job.cancelled:
                    self.metrics.cancelled.inc(reason=job.cancel_reason or "client")
                    job._push(_END)
                elif now > job.deadline:
                    self.metrics.cancelled.inc(reason="timeout")
                    job._push(JobTimeout(job.timeout_s))
                else:
                    live.append(job)
            if live:
                self._run_batch(live)

    def _admit(self, stream, jobs: list[Job], done: set[int], stopped: set[int]) -> None:
        """Move waiting jobs into the running stream while it has fewer than ``max_batch`` live rows."""
        m = self.metrics
        while len(jobs) - len(done) - len(stopped) < self.max_batch:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                return
            self.release()
            now = time.monotonic()
            if job.cancelled:
                m.cancelled.inc(reason=job.cancel_reason or "client")
                job._push(_END)
                continue
            if now > job.deadline:
                m.cancelled.inc(reason="timeout")
                job._push(JobTimeout(job.timeout_s))
                continue
            try:
                index = stream.add(job.request)
            except Exception:
                log.exception("could not add a request to the running batch")
                m.errors.inc()
                job._push(EngineError())
                continue
            if index != len(jobs):
                raise RuntimeError(f"the stream numbered a joining request {index}, expected {len(jobs)}")
            jobs.append(job)
            m.queue_wait.observe(now - job.t_admit)
            m.joined.inc()
            m.running.set(len(jobs) - len(done) - len(stopped))

    def _run_batch(self, jobs: list[Job]) -> None:
        m = self.metrics
        start = time.monotonic()
        for job in jobs:
            m.queue_wait.observe(start - job.t_admit)
        m.batch_size.observe(len(jobs))
        m.batches.inc()
        m.running.set(len(jobs))
        done: set[int] = set()
        stopped: set[int] = set()
        try:
            stream = self.backend.stream([job.request for job in jobs])
            joinable = callable(getattr(stream, "add", None))
            for index, piece in stream:
                if joinable:
                    self._admit(stream, jobs, done, stopped)
                job = jobs[index]
                if index not in stopped and index not in done:
                    if job.t_first is None:
                        job.t_first = time.monotonic()
                        m.first_piece.observe(job.t_first - job.t_admit)
                    m.pieces.inc()
                    job._push(piece)
                    if getattr(piece, "done", False):
                        done.add(index)
                        m.completed.inc(task=job.task or "unknown")
                        job._push(_END)
                now = time.monotonic()
                for i, other in enumerate(jobs):
                    if i in done or i in stopped:
                        continue
                    if other.cancelled or now > other.deadline:
                        reason = other.cancel_reason or "client" if other.cancelled else "timeout"
                        stream.cancel(i)
                        stopped.add(i)
                        m.cancelled.inc(reason=reason)
                        other._push(_END if other.cancelled else JobTimeout(other.timeout_s))
                if len(done) + len(stopped) == len(jobs):
                    # every row is finished or cancelled: do not wait for the engine's trailing pieces
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
                    break
        except Exception:
            log.exception("engine batch of %d failed", len(jobs))
            m.errors.inc()
            for i, job in enumerate(jobs):
                if i not in done and i not in stopped:
                    job._push(EngineError())
            done.update(range(len(jobs)))
        finally:
            m.running.set(0)
        for i, job in enumerate(jobs):
            if i not in done and i not in stopped:
                log.error("engine stream ended without a final piece for row %d", i)
                job._push(EngineError())
