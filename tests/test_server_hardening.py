"""Hostile-client tests of the server (issue 16): strings that cannot be encoded, odd multipart bodies, HEAD,
long paths, data: URL prefixes, empty generations, slow clients and large bodies. Against the fake backend."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from mimo_audio.server import ServerSettings, create_app
from server_helpers import FakeBackend, LiveServer, assert_openai_error, fake_server_fixtures, wav_bytes

MODEL = "mimo-audio"
fake, server, client = fake_server_fixtures()


# ------------------------------------------------------------------------------------------- item 3
SUR = "\\ud800"  # as JSON escapes: the body is valid JSON, the string a lone surrogate


@pytest.mark.parametrize(("route", "body", "param"), [
    ("/v1/audio/speech", '{"model":"@","input":"hi"}', "model"),
    ("/v1/audio/speech", '{"model":"mimo-audio","input":"hi","response_format":"@"}', "response_format"),
    ("/v1/audio/speech", '{"model":"mimo-audio","input":"hi","stream_format":"@"}', "stream_format"),
    ("/v1/audio/speech", '{"model":"mimo-audio","input":"h@i"}', "input"),
    ("/v1/chat/completions", '{"model":"mimo-audio","messages":[{"role":"@","content":"x"}]}',
     "messages[0].role"),
    ("/v1/chat/completions", '{"model":"mimo-audio","modalities":["text","audio"],"audio":{"format":"@"},'
     '"messages":[{"role":"user","content":"x"}]}', "audio.format"),
    ("/v1/chat/completions", '{"model":"mimo-audio","messages":[{"role":"user","content":[{"type":"@"}]}]}',
     "messages[0].content[0].type"),
    ("/v1/chat/completions", '{"model":"mimo-audio","messages":[{"role":"user","content":"x@"}]}',
     "messages[0].content"),
])
def test_lone_surrogates_are_400(client, route, body, param):
    body = body.replace("@", SUR)
    json.loads(body)  # well-formed JSON
    resp = client.post(route, content=body.encode(), headers={"Content-Type": "application/json"})
    err = assert_openai_error(resp, 400, param)
    assert err["code"] == "invalid_unicode" and "surrogate" in err["message"]
    assert client.get("/health").status_code == 200  # the connection and the server survive


# ------------------------------------------------------------------------------------------- item 6
def test_speech_with_no_audio_is_an_error(server, fake, monkeypatch):
    """A generation that ends before any audio is an error saying so, never a 200 with an empty body or a
    header-only wav (both whole and SSE-streamed replies)."""
    monkeypatch.setattr(fake, "stream", lambda reqs: _silent(reqs))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for fmt in ("wav", "flac", "pcm"):
            resp = c.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi.", "response_format": fmt})
            assert assert_openai_error(resp, 422)["code"] == "no_audio"
        chat = c.post("/v1/chat/completions", json={"model": MODEL, "modalities": ["text", "audio"],
                                                    "messages": [{"role": "user", "content": "hi"}]})
        assert assert_openai_error(chat, 422)["code"] == "no_audio"
        sse = c.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi.", "stream_format": "sse"})
        events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "no_audio", events


def _silent(reqs):
    import torch

    from server_helpers import FakePiece, FakeReply

    for i, _ in enumerate(reqs):
        yield i, FakePiece("", torch.zeros(0), True, FakeReply("", torch.zeros(0), 24000, None, "stop", 1, 1), i)


def test_transcription_with_two_files_is_400(client):
    files = [("file", ("a.wav", wav_bytes(0.5), "audio/wav")), ("file", ("b.wav", wav_bytes(0.5), "audio/wav"))]
    err = assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": MODEL}, files=files), 400, "file")
    assert err["code"] == "too_many_files"
    other = [("file", ("a.wav", wav_bytes(0.5), "audio/wav")), ("extra", ("b.wav", wav_bytes(0.5), "audio/wav"))]
    assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": MODEL}, files=other), 400, "file")
    ok = client.post("/v1/audio/transcriptions", data={"model": MODEL}, files=files[:1])
    assert ok.status_code == 200, ok.text


def _chat_audio(data: str, fmt=None, kind="input_audio") -> dict:
    part = {"type": kind, kind: {"data": data, "format": fmt} if kind == "input_audio" else {"url": data}}
    if fmt is None and kind == "input_audio":
        del part[kind]["format"]
    return {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}


def test_input_audio_format_is_checked_against_the_bytes(client):
    wav = base64.b64encode(wav_bytes(0.5)).decode()
    flac = base64.b64encode(wav_bytes(0.5, fmt="FLAC")).decode()
    assert client.post("/v1/chat/completions", json=_chat_audio(wav, "wav")).status_code == 200
    assert client.post("/v1/chat/completions", json=_chat_audio(flac, "flac")).status_code == 200
    assert client.post("/v1/chat/completions", json=_chat_audio(wav)).status_code == 200
    param = "messages[0].content[0].input_audio.format"
    err = assert_openai_error(client.post("/v1/chat/completions", json=_chat_audio(wav, "mp3")), 400, param)
    assert err["code"] == "format_mismatch" and "wav" in err["message"]
    err = assert_openai_error(client.post("/v1/chat/completions", json=_chat_audio(wav, "aiff")), 400, param)
    assert err["code"] == "unsupported_format"


def test_data_url_scheme_is_case_insensitive_everywhere(client):
    wav = base64.b64encode(wav_bytes(0.5)).decode()
    for prefix in ("data:audio/wav;base64,", "DATA:audio/wav;base64,", "Data:Audio/WAV;BASE64,"):
        for kind in ("input_audio", "audio_url"):
            resp = client.post("/v1/chat/completions", json=_chat_audio(prefix + wav, kind=kind))
            assert resp.status_code == 200, (prefix, kind, resp.text)


def test_head_health_and_ready(client):
    for path in ("/health", "/ready"):
        resp = client.head(path)
        assert resp.status_code == 200 and resp.content == b""


def test_404_does_not_repeat_a_long_path(client):
    path = "/" + "a" * 60_000
    err = assert_openai_error(client.get(path), 404)
    assert len(err["message"]) < 400 and "60001 characters" in err["message"]


# ------------------------------------------------------------------------------------------- item 12
def test_temperature_zero_reaches_the_pipeline_as_temperature_zero(client, fake):
    """One meaning of temperature 0 (greedy text decoding, SamplingParams' rule): the server passes it on as it
    is instead of translating it to its own flag."""
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "t0"}]})
    assert resp.status_code == 200
    task, kwargs = next(p for p in reversed(fake.prepared) if p[0] == "chat")
    assert kwargs["temperature"] == 0 and "greedy" not in kwargs


# ------------------------------------------------------------------------------------------- item 2
@pytest.fixture(scope="module")
def guarded(fake):
    from mimo_audio.server.protocol import uvicorn_options

    settings = ServerSettings(header_timeout_s=3.0, body_timeout_s=3.0, max_connections=64)
    with LiveServer(create_app(fake, settings), **uvicorn_options(settings)) as srv:
        yield srv


def _drip(port: int, payload: bytes, every_s: float, limit_s: float, prefix: bytes = b"") -> tuple[float, bytes]:
    """Send ``prefix`` at once, then ``payload`` one byte every ``every_s`` s; returns (seconds until the server
    closed the connection, what it sent)."""
    import socket
    import time

    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.05)
    t0, got = time.monotonic(), b""
    try:
        s.sendall(prefix)
        for b in payload:
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            end = time.monotonic() + every_s
            closed = False
            while time.monotonic() < end:
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                got += chunk
            if closed or time.monotonic() - t0 > limit_s:
                break
        return time.monotonic() - t0, got
    finally:
        s.close()


def test_a_client_dripping_headers_is_cut_off(guarded):
    elapsed, got = _drip(guarded.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 2.0, 15.0)
    assert elapsed < 3.0 + 2.5, elapsed  # the 3 s header deadline, checked between drips
    assert got.startswith(b"HTTP/1.1 408") and b"header_timeout" in got
    with httpx.Client(base_url=guarded.url, timeout=5) as c:
        assert c.get("/health").status_code == 200


def test_a_silent_connection_is_cut_off(guarded):
    import socket
    import time

    s = socket.create_connection(("127.0.0.1", guarded.port))
    s.settimeout(10)
    t0 = time.monotonic()
    try:
        data = s.recv(4096)
    finally:
        s.close()
    assert time.monotonic() - t0 < 5.0 and data.startswith(b"HTTP/1.1 408")


def test_a_client_dripping_the_body_gets_408(guarded):
    body = b'{"model":"mimo-audio","input":"' + b"a" * 200 + b'"}'
    head = (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    elapsed, got = _drip(guarded.port, body, 0.5, 15.0, prefix=head)
    assert elapsed < 3.0 + 3.0, elapsed
    assert got.startswith(b"HTTP/1.1 408") and b"body_timeout" in got


# ------------------------------------------------------------------------------------------- item 4
def test_a_huge_chat_body_does_not_block_the_event_loop(guarded):
    """Four 21 MB chat bodies of 700k messages each: refused (413) without ever holding /health up for 1 s."""
    import threading
    import time

    body = (b'{"model":"mimo-audio","messages":[' + b",".join([b'{"role":"user","content":"x"}'] * 700_000)
            + b"]}")
    assert len(body) > 20_000_000
    results = []

    def send():
        with httpx.Client(base_url=guarded.url, timeout=60) as c:
            results.append(c.post("/v1/chat/completions", content=body,
                                  headers={"Content-Type": "application/json"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    worst = 0.0
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            assert c.get("/health").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)
    for t in threads:
        t.join()
    assert worst < 1.0, worst
    assert [r.status_code for r in results] == [413] * 4
    assert all(r.json()["error"]["code"] == "too_many_json_values" for r in results)


def test_openapi_still_documents_the_json_bodies(client):
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in body["properties"] and "ChatMessage" in doc["components"]["schemas"]
    assert "input" in doc["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]


# ------------------------------------------------------------------------------------------- item 1
def silent_flac(seconds: float = 165.0, rate: int = 48000, channels: int = 8) -> bytes:
    """A tiny FLAC (about 62 KB) that decodes to ``seconds`` of 8-channel silence (253 MB of float32 samples)."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    block = np.zeros((rate * 5, channels), np.int16)
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 5)):
            f.write(block)
    return buf.getvalue()


def test_a_chat_with_eight_huge_parts_is_refused_before_decoding(guarded, monkeypatch):
    from mimo_audio.server import service

    calls = []
    monkeypatch.setattr(service, "decode_audio", lambda *a, **k: calls.append(a) or pytest.fail("decoded"))
    data = "data:audio/flac;base64," + base64.b64encode(silent_flac()).decode()
    messages = [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": data}}]}] * 8
    with httpx.Client(base_url=guarded.url, timeout=60) as c:
        err = assert_openai_error(c.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}), 413)
    assert err["code"] == "audio_too_long" and "from the parts' headers" in err["message"] and not calls


def test_decode_gate_queues_and_refuses_with_retry_after():
    import asyncio

    from mimo_audio.server.errors import APIError
    from mimo_audio.server.service import DecodeGate

    async def main():
        gate = DecodeGate(budget=100, slots=2, wait_s=0.3, retry_after_s=3)
        order = []

        async def use(cost, hold_s, name):
            async with gate.hold(cost, "file"):
                order.append(name)
                await asyncio.sleep(hold_s)

        a = asyncio.create_task(use(60, 0.2, "a"))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(use(60, 0.0, "b"))  # waits for a's budget
        await asyncio.gather(a, b)
        assert order == ["a", "b"] and gate.used == 0 and gate.running == 0
        hog = asyncio.create_task(use(100, 1.0, "hog"))
        await asyncio.sleep(0.01)
        with pytest.raises(APIError) as exc:
            await use(10, 0.0, "late")
        assert exc.value.status_code == 503 and exc.value.headers["Retry-After"] == "3"
        with pytest.raises(APIError) as exc:
            await use(101, 0.0, "huge")
        assert exc.value.status_code == 413
        await hog

    asyncio.run(main())


def test_upload_burst_keeps_peak_rss_bounded(fixture_path, tmp_path):
    """16 concurrent 62 KB uploads that each decode to 253 MB (8 channels, 48 kHz, 165 s of silence) against
    ``mimo-audio serve`` with the fixture models: every request is answered (200, or 503 with Retry-After), the
    server's peak RSS stays under 1.5 GB (it was 7.7 GB), and memory returns after the burst."""
    import concurrent.futures
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mimo_audio.cli", "serve", "--model", str(fixture_path / "lm"), "--tokenizer",
         str(fixture_path / "tokenizer"), "--device", "cpu", "--port", str(port), "--no-warmup", "--no-page",
         "--log-level", "warning", "--max-new-tokens", "2", "--decode-wait", "30"],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def status(key: str) -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) // 1024  # MB

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        flac = silent_flac()
        assert len(flac) < 80_000

        def upload(_):
            with httpx.Client(base_url=url, timeout=300) as c:
                return c.post("/v1/audio/transcriptions", data={"model": MODEL},
                              files={"file": ("burst.flac", flac, "audio/flac")})

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(upload, range(16)))
        codes = [r.status_code for r in replies]
        assert set(codes) <= {200, 503}, [r.text[:200] for r in replies]
        assert all(r.headers.get("Retry-After") for r in replies if r.status_code == 503)
        assert codes.count(200) >= 8, codes
        peak, now = status("VmHWM:"), status("VmRSS:")
        print(f"burst: {codes.count(200)} x 200, {codes.count(503)} x 503; peak RSS {peak} MB, after {now} MB")
        assert peak < 1500, peak
        assert now < 1000, now
    finally:
        proc.terminate()
        proc.wait(30)


# ------------------------------------------------------------------------------------------- item 5
def test_graceful_shutdown_answers_every_request(caplog):
    """SIGTERM: /ready and new requests get 503 at once (with Retry-After), a request that finishes within the
    grace period gets its 200, one still running after it gets a 503 shutting_down; each has an access-log line."""
    import logging
    import signal
    import threading
    import time

    from mimo_audio.server.protocol import DrainingServer, uvicorn_options

    slow = FakeBackend(step_s=0.4)  # 8 steps: 3.2 s per request
    settings = ServerSettings(shutdown_grace_s=1.5, max_new_tokens=8)
    app = create_app(slow, settings)
    cls = lambda config: DrainingServer(config, app.state.service, settings.shutdown_grace_s)  # noqa: E731
    caplog.set_level(logging.INFO, logger="mimo_audio.server")
    results = {}

    def speak(name, tokens):
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            results[name] = c.post("/v1/audio/speech", json={"model": MODEL, "input": name, "max_new_tokens": tokens})

    with LiveServer(app, server_cls=cls, **uvicorn_options(settings)) as srv:
        long = threading.Thread(target=speak, args=("long", 8))
        short = threading.Thread(target=speak, args=("short", 2))  # 0.8 s: within the grace period
        long.start()
        short.start()
        time.sleep(0.3)
        srv.server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.2)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            ready = c.get("/ready")
            late = c.post("/v1/audio/speech", json={"model": MODEL, "input": "late"})
        long.join(20)
        short.join(20)
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down" and late.headers["Retry-After"]
    assert results["short"].status_code == 200 and results["short"].content[:4] == b"RIFF"
    assert results["long"].status_code == 503 and results["long"].json()["error"]["code"] == "shutting_down"
    lines = [r.getMessage() for r in caplog.records if '"POST /v1/audio/speech' in r.getMessage()
             or '"GET /ready' in r.getMessage()]
    assert sum('" 200 ' in line for line in lines if "POST" in line) == 1
    assert sum('" 503 ' in line for line in lines if "POST" in line) == 2
    assert any("GET /ready" in line and '" 503 ' in line for line in lines)
