"""Helpers for the server tests: a live uvicorn server on loopback, a small fake backend, wav bytes.

The fake backend has the pipeline's batch-core interface (prepare / stream with cancel) and records what it was
given, so HTTP-layer tests can check batching, cancellation and that no request ever hands it a path.
"""

from __future__ import annotations

import io
import math
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile as sf
import torch

from mimo_audio.errors import PromptError


def wav_bytes(seconds: float = 1.0, rate: int = 16000, freq: float = 220.0, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port; ``url`` is its base URL. ``options``: more
    ``uvicorn.Config`` arguments (e.g. ``server.protocol.uvicorn_options(settings)``, as ``mimo-audio serve``)."""

    def __init__(self, app, server_cls=None, **options):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, **{"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 2,
                                        **options})
        self.server = server_cls(config) if server_cls is not None else uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@dataclass
class FakePiece:
    text: str = ""
    audio: torch.Tensor | None = None
    done: bool = False
    reply: object = None
    index: int = 0


@dataclass
class FakeReply:
    text: str
    audio: torch.Tensor | None = None
    sample_rate: int = 24000
    codes: torch.Tensor | None = None
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def answer(self) -> str:
        return self.text

    @property
    def thinking(self) -> str:
        return ""


@dataclass
class FakeRequest:
    task: str
    kwargs: dict
    steps: int


@dataclass
class FakeBackend:
    """Deterministic stand-in for MimoAudio's batch core.

    transcribe -> words "w0 w1 ..." (one per step); speak -> 0.04 s of a tone per step; chat -> words, plus
    audio for reply="speech". ``step_s`` sleeps per engine step (to make batching and timeouts observable);
    ``gate`` (an Event, or None) holds every step until it is set (a request that must still be running when the
    test looks, however slow the machine).
    """

    step_s: float = 0.0
    gate: threading.Event | None = None
    sample_rate: int = 24000
    batches: list = field(default_factory=list)
    prepared: list = field(default_factory=list)
    cancelled: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prepare(self, task: str, **kwargs) -> FakeRequest:
        for key in ("audio", "voice"):
            value = kwargs.get(key)
            if value is not None:
                assert isinstance(value, tuple) and isinstance(value[0], np.ndarray), f"{key} is {type(value)}"
        for m in kwargs.get("messages", ()):
            if m.get("audio") is not None:
                assert isinstance(m["audio"], tuple) and not isinstance(m["audio"][0], str)
        if task == "speak" and not kwargs.get("text", "").strip():
            raise PromptError("nothing to say")
        if task == "chat" and kwargs.get("messages", [{}])[-1].get("role") != "user":
            raise PromptError("the conversation must end with a user message")
        with self.lock:
            self.prepared.append((task, kwargs))
        return FakeRequest(task, kwargs, min(int(kwargs.get("max_new_tokens") or 8), 8))

    def stream(self, requests):
        with self.lock:
            self.batches.append(len(requests))
        return FakeStream(self, requests)


class FakeStream:
    def __init__(self, backend: FakeBackend, requests: list[FakeRequest]):
        self.backend, self.requests = backend, list(requests)
        self._cancelled: set[int] = set()
        self._start: list[int] = [0] * len(self.requests)  # the step each request joined at
        self._step = 0

    def add(self, request: FakeRequest) -> int:
        """Continuous batching like RequestStream.add: the request starts at the next step."""
        self.requests.append(request)
        self._start.append(self._step + 1)
        return len(self.requests) - 1

    def cancel(self, index: int) -> None:
        self._cancelled.add(index)
        self.backend.cancelled.append(index)

    def __iter__(self):
        texts, audios = {}, {}
        while any(self._step - s < r.steps for s, r in zip(self._start, self.requests)):
            if self.backend.step_s:
                time.sleep(self.backend.step_s)
            gate = self.backend.gate
            if gate is not None:
                gate.wait(timeout=60)
            for i, r in enumerate(list(self.requests)):
                step = self._step - self._start[i]
                if i in self._cancelled or not 0 <= step < r.steps:
                    continue
                texts.setdefault(i, [])
                audios.setdefault(i, [])
                speech = r.task == "speak" or (r.task == "chat" and r.kwargs.get("reply") == "speech")
                text = (" " if step else "") + f"w{step}" if r.task != "speak" or step == 0 else ""
                audio = None
                if speech:
                    t = torch.arange(960) / self.backend.sample_rate
                    audio = 0.2 * torch.sin(2 * math.pi * (200 + 20 * i) * t)
                    audios[i].append(audio)
                texts[i].append(text)
                done = step == r.steps - 1
                reply = None
                if done:
                    reply = FakeReply("".join(texts[i]), torch.cat(audios[i]) if audios[i] else None,
                                      self.backend.sample_rate, None, "length", 10, r.steps)
                yield i, FakePiece(text, audio, done, reply, i)
            self._step += 1


def assert_openai_error(resp, status, param=None):
    """``resp`` is an error in OpenAI's shape with ``status`` (and ``param`` when given); returns its error object."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# ------------------------------------------------------------------------------------------ fixtures
def fake_server_fixtures():
    """``fake, server, client = fake_server_fixtures()`` in an HTTP test module: a module-scoped FakeBackend, a live
    server on it (2 MB uploads, 120 s of audio, 64 new tokens) and a client per test."""

    @pytest.fixture(scope="module")
    def fake():
        return FakeBackend()

    @pytest.fixture(scope="module")
    def server(fake):
        from mimo_audio.server import ServerSettings, create_app

        with LiveServer(create_app(fake, ServerSettings(max_upload_bytes=2_000_000, max_audio_seconds=120,
                                                        max_new_tokens=64))) as srv:
            yield srv

    @pytest.fixture()
    def client(server):
        import httpx

        with httpx.Client(base_url=server.url, timeout=30) as c:
            yield c

    return fake, server, client
