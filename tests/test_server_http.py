"""HTTP-layer tests of the server against a fake backend (shapes, limits, auth, batching, cancellation).

The fake has the pipeline's batch-core interface (see server_helpers.FakeBackend); the same routes are run
against the real MimoAudio with the fixture's models in test_server_live.py.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from mimo_audio.batch import Reply
from mimo_audio.server import ServerSettings, create_app
from mimo_audio.server.media import split_at_silences
from server_helpers import (
    FakeBackend,
    FakePiece,
    LiveServer,
    assert_openai_error,
    fake_server_fixtures,
    wav_bytes,
)

MODEL = "mimo-audio"
fake, server, client = fake_server_fixtures()


def sse_events(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ------------------------------------------------------------------------------------------- basics
def test_health_models_ready_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_openai_error(client.get("/v1/models/gpt-4"), 404, "model")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE mimo_audio_batch_size histogram" in metrics.text
    assert 'mimo_audio_http_requests_total{route="/health",method="GET",status="200"}' in metrics.text


def test_metrics_route_label_is_the_route_template(client):
    client.get("/v1/models/a-b-c")
    client.get("/favicon.ico")
    client.get("/no/such/path/12345")
    text = client.get("/metrics").text
    assert 'route="/v1/models/{model_id:path}",method="GET",status="404"' in text
    assert 'route="/favicon.ico",method="GET",status="204"' in text
    assert 'route="other",method="GET",status="404"' in text
    assert "a-b-c" not in text and "12345" not in text  # raw paths never become label values


def test_each_request_is_logged(client, caplog):
    caplog.set_level(logging.INFO, logger="mimo_audio.server")
    client.get("/v1/models/no-such-model")
    deadline = time.monotonic() + 5  # the line is written once the response is sent
    while not any('"GET /v1/models/no-such-model" 404' in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)


def test_serve_flags_become_settings():
    from mimo_audio.cli import build_parser
    from mimo_audio.server.cli import run_serve, settings_from_args

    args = build_parser().parse_args([
        "serve", "--model", "lm-dir", "--tokenizer", "tok-dir", "--host", "0.0.0.0", "--port", "8123",
        "--device", "cpu", "--dtype", "float32", "--api-key", "k", "--cors-origin", "http://a.example",
        "--max-upload-mb", "3", "--max-audio-seconds", "42", "--max-text-chars", "99", "--max-new-tokens", "17",
        "--max-batch", "3", "--queue-size", "5", "--timeout", "9", "--no-warmup"])
    assert args.func is run_serve
    assert (args.model, args.tokenizer, args.host, args.port, args.device, args.dtype) == (
        "lm-dir", "tok-dir", "0.0.0.0", 8123, "cpu", "float32")
    s = settings_from_args(args)
    assert (s.api_key, s.cors_origins, s.max_upload_bytes, s.max_audio_seconds, s.max_text_chars) == (
        "k", ("http://a.example",), 3 * 2**20, 42, 99)
    assert (s.max_new_tokens, s.max_batch, s.queue_size, s.timeout_s, s.warmup) == (17, 3, 5, 9, False)


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    # Encoded, so httpx sends the traversal as written (it would normalise a plain "/static/../x" away).
    for path in ("/static/..%2fpyproject.toml", "/static/%2e%2e/pyproject.toml"):
        resp = client.get(path)
        assert resp.request.url.raw_path == path.encode()
        assert_openai_error(resp, 404)
        assert "[project]" not in resp.text


def test_errors_have_openai_shape(client):
    assert_openai_error(client.get("/nope"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)
    err = assert_openai_error(client.post("/v1/chat/completions", content=b"{not json",
                                          headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]
    assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL}), 400, "messages")
    assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x", "seed": -1}), 400,
                        "seed")
    assert_openai_error(client.post("/v1/audio/speech", json={"model": "tts-1", "input": "x"}), 404, "model")


# ------------------------------------------------------------------------------------------- speech
@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm"])
def test_speech_formats(client, fmt):
    resp = client.post("/v1/audio/speech", json={"model": MODEL, "input": "Hello there", "response_format": fmt,
                                                 "max_new_tokens": 4})
    assert resp.status_code == 200, resp.text
    if fmt == "pcm":
        assert resp.headers["content-type"] == "audio/pcm"
        assert len(resp.content) == 4 * 960 * 2  # 4 steps of 960 samples, int16
    else:
        wav, rate = sf.read(io.BytesIO(resp.content))
        assert rate == 24000 and len(wav) == 4 * 960


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_speech_unsupported_formats(client, fmt):
    err = assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x",
                                                                    "response_format": fmt}), 400,
                              "response_format")
    assert "wav" in err["message"] and fmt in err["message"]


def test_speech_speed_other_than_one_is_refused(client):
    for speed in (0.5, 1.25, 4.0):
        err = assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x",
                                                                        "speed": speed}), 400, "speed")
        assert "instructions" in err["message"]  # it says how to ask for a pace instead
    assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x", "speed": 9}), 400,
                        "speed")  # out of OpenAI's range: a validation error, same shape
    ok = client.post("/v1/audio/speech", json={"model": MODEL, "input": "x", "speed": 1.0, "max_new_tokens": 1})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("streaming", [{"stream_format": "audio"}, {"stream_format": "sse"}, {"stream": True}])
def test_flac_cannot_be_streamed(client, streaming):
    err = assert_openai_error(client.post("/v1/audio/speech", json={
        "model": MODEL, "input": "x", "response_format": "flac", **streaming}), 400, "response_format")
    assert "flac" in err["message"] and "stream" in err["message"]
    chat = {"model": MODEL, "max_new_tokens": 1, "modalities": ["text", "audio"],
            "audio": {"voice": "x", "format": "flac"}, "messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(client.post("/v1/chat/completions", json={**chat, "stream": True}), 400, "audio.format")
    whole = client.post("/v1/chat/completions", json=chat)  # not streamed, flac is fine
    assert whole.status_code == 200, whole.text
    assert base64.b64decode(whole.json()["choices"][0]["message"]["audio"]["data"])[:4] == b"fLaC"


def test_speech_streams(client):
    chunks = []
    with client.stream("POST", "/v1/audio/speech", json={"model": MODEL, "input": "Hi", "stream_format": "audio",
                                                          "response_format": "pcm", "max_new_tokens": 3}) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers
        chunks = list(r.iter_bytes())
    assert sum(map(len, chunks)) == 3 * 960 * 2
    resp = client.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi", "stream_format": "sse",
                                                 "response_format": "wav", "max_new_tokens": 3})
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 3 + ["speech.audio.done"]
    data = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert data[:4] == b"RIFF" and len(data) == 44 + 3 * 960 * 2
    assert events[-1]["usage"]["output_tokens"] == 3


def test_speech_reference_voice_and_instructions(client, fake):
    ref = "data:audio/wav;base64," + base64.b64encode(wav_bytes(1.0, 16000)).decode()
    resp = client.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi", "instructions": "whisper",
                                                 "ref_audio": ref, "seed": 3, "max_new_tokens": 2})
    assert resp.status_code == 200
    task, kw = fake.prepared[-1]
    assert task == "speak" and kw["instruct"] == "whisper" and kw["seed"] == 3 and kw["max_new_tokens"] == 2
    samples, rate = kw["voice"]
    assert rate == 24000 and len(samples) == 24000  # 1 s, resampled to the model's rate on upload


def test_speech_natural_description(client, fake):
    text = "In a breathless young voice, say: wait for me!"
    resp = client.post("/v1/audio/speech", json={"model": MODEL, "input": text, "natural": True, "max_new_tokens": 2})
    assert resp.status_code == 200
    task, kw = fake.prepared[-1]
    assert task == "speak" and kw["natural"] is True and kw["text"] == text and "instruct" not in kw
    err = assert_openai_error(client.post("/v1/audio/speech", json={
        "model": MODEL, "input": text, "natural": True, "instructions": "calm"}), 400, "instructions")
    assert "natural" in err["message"]


def test_models_list_tasks_and_limits(client):
    card = client.get("/v1/models").json()["data"][0]
    assert card["tasks"] == ["transcribe", "speak", "understand", "chat"]  # the routes this app has
    assert card["limits"]["max_upload_bytes"] == 2_000_000 and card["limits"]["max_new_tokens"] == 64
    assert client.get(f"/v1/models/{MODEL}").json() == card


def test_path_like_inputs_are_never_opened(client, fake, tmp_path):
    # A real, valid wav on disk: if the server ever opened a path from a request, these would succeed.
    path = tmp_path / "voice.wav"
    path.write_bytes(wav_bytes(1.0))
    before = len(fake.prepared)
    for value in (str(path), "file://" + str(path), "/etc/passwd", "../../etc/passwd", "http://127.0.0.1/x.wav"):
        assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x",
                                                                  "ref_audio": value}), 400)
        part = {"type": "input_audio", "input_audio": {"data": value, "format": "wav"}}
        assert_openai_error(client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": [part]}]}), 400)
        url_part = {"type": "audio_url", "audio_url": {"url": value}}
        assert_openai_error(client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": [url_part]}]}), 400)
    # a multipart filename with path components is ignored too (only the uploaded bytes count)
    resp = client.post("/v1/audio/transcriptions", data={"model": MODEL},
                       files={"file": (str(path), b"not audio", "audio/wav")})
    assert_openai_error(resp, 400, "file")
    assert len(fake.prepared) == before


# ------------------------------------------------------------------------------------------- transcription
def speech_like(seconds_list, rate=16000, gap=0.5):
    """Tone bursts separated by `gap` s of silence; returns (samples, silence centres in seconds)."""
    parts, centres, t = [], [], 0.0
    for k, sec in enumerate(seconds_list):
        n = int(sec * rate)
        parts.append(0.3 * np.sin(2 * np.pi * 300 * np.arange(n) / rate))
        t += sec
        if k < len(seconds_list) - 1:
            parts.append(np.zeros(int(gap * rate)))
            centres.append(t + gap / 2)
            t += gap
    return np.concatenate(parts).astype(np.float32), centres


def test_split_at_silences_cuts_in_silence():
    rate = 16000
    samples, centres = speech_like([12, 10, 14, 9], rate)
    pieces = split_at_silences(samples, rate, 30.0)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert all(e - s <= 30 * rate for s, e in pieces)
    for _, end in pieces[:-1]:
        assert min(abs(end / rate - c) for c in centres) < 0.25, end / rate  # inside a 0.5 s silence
    assert split_at_silences(samples[: 5 * rate], rate, 30.0) == [(0, 5 * rate)]


def test_transcription_formats(client, fake):
    rate = 16000
    samples, centres = speech_like([12, 10, 14, 9], rate)
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC")
    data = buf.getvalue()
    files = {"file": ("talk.flac", data, "audio/flac")}
    j = client.post("/v1/audio/transcriptions", data={"model": MODEL, "max_new_tokens": 3, "seed": 5},
                    files=files).json()
    rows = fake.prepared[-2:]  # one row per silence-split piece, each with the request's seed and token cap
    assert [(t, kw["seed"], kw["max_new_tokens"]) for t, kw in rows] == [("transcribe", 5, 3)] * 2
    assert j["text"] == "w0 w1 w2 w0 w1 w2" and j["usage"]["seconds"] == pytest.approx(len(samples) / rate, abs=1e-3)
    txt = client.post("/v1/audio/transcriptions", data={"model": MODEL, "response_format": "text",
                                                        "max_new_tokens": 2}, files=files)
    assert txt.text.strip() == "w0 w1 w0 w1"
    vj = client.post("/v1/audio/transcriptions", data={"model": MODEL, "response_format": "verbose_json",
                                                       "max_new_tokens": 2, "language": "en"}, files=files).json()
    segs = vj["segments"]
    assert len(segs) == 2 and segs[0]["start"] == 0 and segs[-1]["end"] == pytest.approx(len(samples) / rate, 1e-3)
    assert min(abs(segs[0]["end"] - c) for c in centres) < 0.25
    assert vj["language"] == "en" and vj["duration"] == pytest.approx(len(samples) / rate, abs=1e-3)
    srt = client.post("/v1/audio/transcriptions", data={"model": MODEL, "response_format": "srt",
                                                        "max_new_tokens": 1}, files=files).text
    assert srt.startswith("1\n00:00:00,000 --> 00:00:") and "\n2\n" in srt
    vtt = client.post("/v1/audio/transcriptions", data={"model": MODEL, "response_format": "vtt",
                                                        "max_new_tokens": 1}, files=files).text
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert_openai_error(client.post("/v1/audio/transcriptions", files=files, data={
        "model": MODEL, "response_format": "verbose_json", "timestamp_granularities[]": "word"}), 400)
    assert_openai_error(client.post("/v1/audio/transcriptions", files=files, data={
        "model": MODEL, "response_format": "xml"}), 400, "response_format")


def test_transcription_stream_sends_increments(client):
    files = {"file": ("a.wav", wav_bytes(2.0), "audio/wav")}
    resp = client.post("/v1/audio/transcriptions", data={"model": MODEL, "stream": "true", "max_new_tokens": 4},
                       files=files)
    events = sse_events(resp.text)
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert len(deltas) == 4 and events[-1]["type"] == "transcript.text.done"
    assert "".join(deltas) == events[-1]["text"] == "w0 w1 w2 w3"
    # the done event carries verbose_json's segments too (one piece here: the clip is under 30 s)
    [segment] = events[-1]["segments"]
    assert segment["start"] == 0 and segment["end"] == 2.0 and segment["text"] == "w0 w1 w2 w3"


@pytest.mark.parametrize("data, code", [
    (b"", 400), (b"garbage" * 10, 400), (wav_bytes(0.0), 400), (wav_bytes(0.05), 400),
    (wav_bytes(121.0, 8000), 413),
])
def test_bad_uploads(client, data, code):
    resp = client.post("/v1/audio/transcriptions", data={"model": MODEL}, files={"file": ("a.wav", data)})
    assert_openai_error(resp, code)


def test_channel_cap(client):
    def upload(channels):
        buf = io.BytesIO()
        sf.write(buf, np.full((16000, channels), 0.1, np.float32), 16000, format="WAV", subtype="PCM_16")
        return client.post("/v1/audio/transcriptions", data={"model": MODEL, "max_new_tokens": 1},
                           files={"file": ("a.wav", buf.getvalue())})

    assert upload(8).status_code == 200  # 8 channels are mixed down
    err = assert_openai_error(upload(9), 400, "file")
    assert "9 channels" in err["message"] and "8" in err["message"]


def test_non_finite_and_forged_rate(client):
    buf = io.BytesIO()
    sf.write(buf, np.array([0.0, np.nan, np.inf] * 2000, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")
    assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": MODEL},
                                    files={"file": ("a.wav", buf.getvalue())}), 400)
    forged = bytearray(wav_bytes(1.0, 16000))
    forged[24:28] = (1).to_bytes(4, "little")  # sample rate 1 Hz: 16000 frames would "last" 4.4 hours
    assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": MODEL},
                                    files={"file": ("a.wav", bytes(forged))}), 400)


# ------------------------------------------------------------------------------------------- chat
def audio_part(seconds=1.0):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(seconds)).decode(),
                                                   "format": "wav"}}


def test_chat_text_and_audio(client, fake):
    r = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 3,
                                                  "messages": [{"role": "system", "content": "be brief"},
                                                               {"role": "user", "content": "hi"}]}).json()
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["content"] == "w0 w1 w2"
    assert r["usage"]["completion_tokens"] == 3
    task, kw = fake.prepared[-1]
    assert task == "chat" and kw["reply"] == "text" and kw["messages"][0] == {"role": "system", "text": "be brief"}
    r = client.post("/v1/chat/completions", json={
        "model": MODEL, "max_new_tokens": 2, "modalities": ["text", "audio"], "audio": {"voice": "x", "format": "wav"},
        "messages": [{"role": "user", "content": [audio_part(), {"type": "text", "text": "answer me"}]}]}).json()
    msg = r["choices"][0]["message"]
    wav, rate = sf.read(io.BytesIO(base64.b64decode(msg["audio"]["data"])))
    assert rate == 24000 and len(wav) == 2 * 960 and msg["audio"]["transcript"] == "w0 w1"
    # the next turn references the spoken reply by id: the backend gets its audio back
    r2 = client.post("/v1/chat/completions", json={
        "model": MODEL, "max_new_tokens": 2, "modalities": ["text", "audio"],
        "messages": [{"role": "user", "content": [audio_part()]},
                     {"role": "assistant", "audio": {"id": msg["audio"]["id"]}},
                     {"role": "user", "content": [audio_part()]}]})
    assert r2.status_code == 200
    history = fake.prepared[-1][1]["messages"]
    assert history[1]["text"] == "w0 w1" and len(history[1]["audio"][0]) == 2 * 960
    assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL, "n": 2, "messages": [
        {"role": "user", "content": "x"}]}), 400, "n")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL, "modalities": ["audio"],
                                                                  "messages": [{"role": "user", "content": "x"}]}),
                        400, "modalities")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "tool", "content": "x"}]}), 400)


def test_chat_audio_part_errors_name_their_field(client):
    for kind, spec, field in (("input_audio", {"data": "!!!", "format": "wav"}, "input_audio.data"),
                              ("audio_url", {"url": "data:audio/wav;base64,!!!"}, "audio_url.url")):
        resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
            {"role": "user", "content": [{"type": kind, kind: spec}]}]})
        assert_openai_error(resp, 400, f"messages[0].content[0].{field}")


def test_chat_audio_format_default(client):
    """audio={"voice": ...} without a format: pcm16 when streaming, wav otherwise."""
    body = {"model": MODEL, "max_new_tokens": 2, "modalities": ["text", "audio"], "audio": {"voice": "x"},
            "messages": [{"role": "user", "content": "hi"}]}
    chunks = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)[:-1]
    streamed = b"".join(base64.b64decode(c["choices"][0]["delta"]["audio"]["data"]) for c in chunks
                        if c["choices"] and "data" in c["choices"][0]["delta"].get("audio", {}))
    assert len(streamed) == 2 * 960 * 2 and not streamed.startswith(b"RIFF")  # raw pcm16, no wav header
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["audio"]["data"]
    assert base64.b64decode(whole)[:4] == b"RIFF"


def test_total_audio_limit_counts_every_clip():
    with LiveServer(create_app(FakeBackend(), ServerSettings(max_audio_seconds=2.0))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        def chat(n_parts, ref_audio=None):
            body = {"model": MODEL, "max_new_tokens": 1, "modalities": ["text", "audio"],
                    "messages": [{"role": "user", "content": [audio_part(1.5)]} for _ in range(n_parts)]}
            if ref_audio:
                body["ref_audio"] = ref_audio
            return c.post("/v1/chat/completions", json=body)

        ref = base64.b64encode(wav_bytes(1.5)).decode()
        assert chat(1).status_code == 200
        assert assert_openai_error(chat(2), 413)["code"] == "audio_too_long"  # 3 s in two parts of 1.5 s
        assert assert_openai_error(chat(1, ref), 413)["code"] == "audio_too_long"  # the voice counts too


THOUGHT = ["Let me", " think.\n</th", "ink>\n\nThe", " answer."]  # "</think>" split across two pieces


class ThinkingBackend(FakeBackend):
    """Chat with thinking=True as the pipeline does it: the text holds the thinking section, then the answer;
    the reply is the pipeline's own Reply (its .thinking / .answer split the text)."""

    def stream(self, requests):
        if not all(r.task == "chat" and r.kwargs.get("thinking") for r in requests):
            return super().stream(requests)
        self.batches.append(len(requests))
        return self._think(requests)

    @staticmethod
    def _think(requests):
        for i, r in enumerate(requests):
            texts = THOUGHT[:r.steps]
            for step, text in enumerate(texts):
                reply = None
                if step == len(texts) - 1:
                    reply = Reply("".join(texts), finish_reason="stop" if texts == THOUGHT else "length",
                                  prompt_tokens=10, new_tokens=len(texts))
                yield i, FakePiece(text, None, reply is not None, reply, i)


def test_chat_thinking_goes_to_reasoning_content():
    fake = ThinkingBackend()
    body = {"model": MODEL, "thinking": True, "messages": [{"role": "user", "content": "why?"}]}
    with LiveServer(create_app(fake, ServerSettings())) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        msg = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        assert fake.prepared[-1][1]["thinking"] is True
        assert msg["reasoning_content"] == "Let me think." and msg["content"] == "The answer."

        chunks = sse_events(c.post("/v1/chat/completions", json={**body, "stream": True}).text)[:-1]
        deltas = [ch["choices"][0]["delta"] for ch in chunks if ch["choices"]]
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        content = "".join(d.get("content") or "" for d in deltas)
        assert reasoning == "Let me think." and content == "The answer."
        assert not any("think>" in (d.get("content") or "") + d.get("reasoning_content", "") for d in deltas)

        # cut off while thinking: all of it is reasoning, streamed or not
        cut = {**body, "max_tokens": 2}
        msg = c.post("/v1/chat/completions", json=cut).json()["choices"][0]["message"]
        assert msg["content"] == "" and msg["reasoning_content"].startswith("Let me think.")
        deltas = [ch["choices"][0]["delta"] for ch in sse_events(
            c.post("/v1/chat/completions", json={**cut, "stream": True}).text)[:-1] if ch["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == msg["reasoning_content"]
        assert "".join(d.get("content") or "" for d in deltas) == ""

        # without thinking there is no reasoning_content
        plain = c.post("/v1/chat/completions", json={**body, "thinking": False, "max_tokens": 2}).json()
        assert "reasoning_content" not in plain["choices"][0]["message"]


def test_audio_store_keeps_the_last_replies_for_an_hour(monkeypatch):
    from types import SimpleNamespace

    from mimo_audio.server import service

    defaults = ServerSettings()
    assert (defaults.audio_store_size, defaults.audio_store_ttl_s) == (64, 3600)  # as documented
    clock = [1_000_000.0]
    monkeypatch.setattr(service, "time", SimpleNamespace(time=lambda: clock[0], monotonic=time.monotonic))
    fake = FakeBackend()
    with LiveServer(create_app(fake, ServerSettings(audio_store_size=2))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        def spoken_reply():
            r = c.post("/v1/chat/completions", json={"model": MODEL, "max_new_tokens": 2,
                                                      "modalities": ["text", "audio"],
                                                      "messages": [{"role": "user", "content": "hi"}]})
            return r.json()["choices"][0]["message"]["audio"]

        def audio_given_back(audio_id):  # a text reply: stores nothing itself
            r = c.post("/v1/chat/completions", json={"model": MODEL, "max_new_tokens": 1, "messages": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "audio": {"id": audio_id}},
                {"role": "user", "content": "and?"}]})
            assert r.status_code == 200, r.text
            return "audio" in fake.prepared[-1][1]["messages"][1]

        first, second = spoken_reply(), spoken_reply()
        assert first["expires_at"] == 1_000_000 + 3600
        assert audio_given_back(first["id"])  # and, used, it becomes the most recent
        third = spoken_reply()  # one more than the store holds: the least recently used goes
        assert not audio_given_back(second["id"])
        assert audio_given_back(first["id"]) and audio_given_back(third["id"])
        clock[0] += 3599
        assert audio_given_back(third["id"])
        clock[0] += 2  # an hour and a second later
        assert not audio_given_back(third["id"]) and not audio_given_back(first["id"])


def test_chat_stream(client):
    out_before = _metric(client.get("/metrics").text, "mimo_audio_audio_output_seconds_total")
    r = client.post("/v1/chat/completions", json={
        "model": MODEL, "stream": True, "max_new_tokens": 3, "modalities": ["text", "audio"],
        "audio": {"voice": "x", "format": "pcm16"}, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": [audio_part()]}]})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    transcript = "".join(c["choices"][0]["delta"].get("audio", {}).get("transcript", "") for c in chunks
                         if c["choices"])
    audio = b"".join(base64.b64decode(c["choices"][0]["delta"]["audio"]["data"]) for c in chunks
                     if c["choices"] and "data" in c["choices"][0]["delta"].get("audio", {}))
    assert transcript == "w0 w1 w2" and len(audio) == 3 * 960 * 2
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    out_after = _metric(client.get("/metrics").text, "mimo_audio_audio_output_seconds_total")
    assert out_after - out_before == pytest.approx(len(audio) / 2 / 24000)  # streamed audio is counted too


# ------------------------------------------------------------------------------------------- limits
def test_body_limits(client, server):
    big = b"x" * 2_100_000
    assert_openai_error(client.post("/v1/audio/transcriptions", data={"model": MODEL},
                                    files={"file": ("a.wav", big)}), 413)
    assert_openai_error(client.post("/v1/audio/speech", content=b'{"model":"' + big + b'"}',
                                    headers={"content-type": "application/json"}), 413)

    def chunked():  # no Content-Length: counted while it streams in
        for _ in range(30):
            yield b"x" * 100_000

    assert_openai_error(client.post("/v1/chat/completions", content=chunked(),
                                    headers={"content-type": "application/json"}), 413)


def test_text_and_token_limits(client):
    assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "a" * 4097}), 400, "input")
    assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "  "}), 400, "input")
    assert_openai_error(client.post("/v1/audio/speech", json={"model": MODEL, "input": "x",
                                                              "max_new_tokens": 65}), 400, "max_new_tokens")
    assert_openai_error(client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 10**6, "messages": [
        {"role": "user", "content": "x"}]}), 400, "max_tokens")


def test_auth_and_cors():
    settings = ServerSettings(api_key="s3cret", cors_origins=("http://good.example",))
    with LiveServer(create_app(FakeBackend(), settings)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200  # the page is public; its API calls send the key
        for path in ("/v1/models", "/metrics", "/ready", "/openapi.json", "/docs", "/nope"):
            err = assert_openai_error(c.get(path), 401)
            assert err["code"] == "invalid_api_key"
        assert_openai_error(c.post("/v1/audio/speech", json={"model": MODEL, "input": "x"}), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401)
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret", "Origin": "http://good.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://good.example"
        bad = c.get("/v1/models", headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        pre = c.options("/v1/audio/speech", headers={"Origin": "http://good.example",
                                                     "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
    with pytest.raises(ValueError):
        ServerSettings(api_key="k", cors_origins=("*",))


def test_cors_off_by_default(client):
    r = client.get("/v1/models", headers={"Origin": "http://any.example"})
    assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------------------------------- concurrency
def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_concurrent_requests_are_batched():
    fake = FakeBackend(step_s=0.03)
    settings = ServerSettings(max_batch=8, batch_window_s=0.2, queue_size=16)
    with LiveServer(create_app(fake, settings)) as srv:
        results = []

        def one(i):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                r = c.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                          "messages": [{"role": "user", "content": f"q{i}"}]})
                results.append(r.status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 6
        text = httpx.get(srv.url + "/metrics").text
        batches = _metric(text, "mimo_audio_batch_size_count")
        joined = _metric(text, "mimo_audio_requests_joined_total")
        assert _metric(text, "mimo_audio_batch_size_sum") + joined == 6 and batches < 6  # batches held > 1 request
        assert max(fake.batches) > 1 or joined > 0


def test_a_request_joins_the_running_batch():
    """Continuous batching: a request that arrives while a batch runs gets its first piece before that batch's
    first request finishes (it does not wait for the batch to end)."""
    fake = FakeBackend(step_s=0.1)
    settings = ServerSettings(max_batch=4, batch_window_s=0.0, queue_size=8)
    with LiveServer(create_app(fake, settings)) as srv:
        times = {}

        def one(name, delay):
            time.sleep(delay)
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                body = {"model": MODEL, "max_tokens": 8, "stream": True,
                        "messages": [{"role": "user", "content": name}]}
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    for line in r.iter_lines():
                        if line.startswith("data:") and '"content"' in line:
                            times.setdefault((name, "first"), time.monotonic())
                    times[(name, "end")] = time.monotonic()

        threads = [threading.Thread(target=one, args=("a", 0.0)), threading.Thread(target=one, args=("b", 0.3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert times[("b", "first")] < times[("a", "end")]
        assert fake.batches == [1]  # one engine batch: b joined it
        assert _metric(httpx.get(srv.url + "/metrics").text, "mimo_audio_requests_joined_total") == 1


def test_queue_full_gives_429_with_retry_after():
    fake = FakeBackend(step_s=0.2)
    settings = ServerSettings(max_batch=1, batch_window_s=0.0, queue_size=1, retry_after_s=7)
    with LiveServer(create_app(fake, settings)) as srv:
        codes, retry = [], []

        def one():
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                r = c.post("/v1/audio/speech", json={"model": MODEL, "input": "x", "max_new_tokens": 3})
                codes.append(r.status_code)
                if r.status_code == 429:
                    retry.append(r.headers.get("retry-after"))
                    assert r.json()["error"]["type"] == "rate_limit_error"

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert 429 in codes and 200 in codes
        assert set(retry) == {"7"}
        assert _metric(httpx.get(srv.url + "/metrics").text,
                       'mimo_audio_requests_rejected_total{reason="queue_full"}') >= 1


def test_timeout_gives_504():
    fake = FakeBackend(step_s=0.25)
    with LiveServer(create_app(fake, ServerSettings(timeout_s=0.3))) as srv, httpx.Client(base_url=srv.url) as c:
        err = assert_openai_error(c.post("/v1/audio/speech", json={"model": MODEL, "input": "x",
                                                                   "max_new_tokens": 8}), 504)
        assert err["code"] == "timeout"
        # once streaming has started, the same error arrives as an SSE event with the same fields
        events = sse_events(c.post("/v1/audio/speech", json={"model": MODEL, "input": "x", "max_new_tokens": 8,
                                                             "stream_format": "sse"}).text)
        assert events[-1]["type"] == "error" and events[-1]["error"] == err


def test_client_disconnect_cancels_its_row():
    fake = FakeBackend(step_s=0.1)
    with LiveServer(create_app(fake, ServerSettings())) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c, c.stream(
                "POST", "/v1/audio/speech", json={"model": MODEL, "input": "x", "stream_format": "sse",
                                                  "max_new_tokens": 8}) as r:
            next(r.iter_lines())  # the first delta arrived: generation is running
        deadline = time.monotonic() + 5
        while not fake.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.cancelled == [0]
        text = httpx.get(srv.url + "/metrics").text
        assert _metric(text, 'mimo_audio_requests_cancelled_total{reason="client"}') == 1


def _wait_for_cancels(fake, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(fake.cancelled) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_client_disconnect_cancels_every_transcription_row():
    fake = FakeBackend(step_s=0.2)
    with LiveServer(create_app(fake, ServerSettings(transcription_chunk_seconds=1.0))) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c, c.stream(
                "POST", "/v1/audio/transcriptions", data={"model": MODEL, "stream": "true"},
                files={"file": ("a.wav", wav_bytes(3.0), "audio/wav")}) as r:
            next(line for line in r.iter_lines() if line.startswith("data:"))  # the first delta arrived
        rows = fake.batches[0]
        _wait_for_cancels(fake, rows)
        assert rows > 1 and sorted(fake.cancelled) == list(range(rows))
        text = httpx.get(srv.url + "/metrics").text
        assert _metric(text, 'mimo_audio_requests_cancelled_total{reason="client"}') == rows


@pytest.mark.parametrize("path, kwargs", [
    ("/v1/audio/speech", {"json": {"model": MODEL, "input": "x", "max_new_tokens": 8}}),
    ("/v1/audio/transcriptions", {"data": {"model": MODEL}, "files": {"file": ("a.wav", wav_bytes(3.0))}}),
])
def test_client_disconnect_cancels_a_non_streaming_request(path, kwargs, caplog):
    # Pieces arrive every 0.2 s (more often than the 0.5 s disconnect check) for 1.6 s; the client gives up first.
    caplog.set_level(logging.INFO, logger="mimo_audio.server")
    fake = FakeBackend(step_s=0.2)
    with LiveServer(create_app(fake, ServerSettings(transcription_chunk_seconds=1.0))) as srv:
        # the client gives up after 0.8 s: well after the batch started (the body is parsed off the event loop and
        # the audio admitted first, which takes a moment on a busy machine), well before its 1.6 s end
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + path, timeout=httpx.Timeout(30, read=0.8), **kwargs)
        deadline = time.monotonic() + 5
        while not fake.batches and time.monotonic() < deadline:
            time.sleep(0.02)
        rows = fake.batches[0]
        _wait_for_cancels(fake, rows)
        assert sorted(fake.cancelled) == list(range(rows))
    logged = [r.getMessage() for r in caplog.records]
    assert any(f'"POST {path}" 499' in m for m in logged), logged  # an ended request, not a server error
    assert not any("internal error" in m for m in logged)


def test_ready_after_warmup():
    fake = FakeBackend(step_s=0.2)
    with LiveServer(create_app(fake, ServerSettings(warmup=True))) as srv, httpx.Client(base_url=srv.url) as c:
        first = c.get("/ready")
        assert c.get("/health").status_code == 200
        assert_openai_error(first, 503)
        busy = c.post("/v1/audio/speech", json={"model": MODEL, "input": "x"})
        assert assert_openai_error(busy, 503)["code"] == "not_ready"
        retry = str(ServerSettings().retry_after_s)
        assert first.headers.get("retry-after") == retry and busy.headers.get("retry-after") == retry
        deadline = time.monotonic() + 10
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
        assert fake.prepared[0][0] == "speak" and fake.batches == [1]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_streamed_reply_cancels_its_jobs_even_if_its_body_never_started(spec):
    """A client gone before the first chunk: the body generator (whose own cleanup would cancel the job) never
    runs, so the response itself must cancel the jobs it streams; finished jobs are left alone."""
    import asyncio

    from mimo_audio.server.service import JobStream

    class Job:
        def __init__(self, finished):
            self.finished, self.reasons = finished, []

        def cancel(self, reason="client"):
            if not self.finished:
                self.reasons.append(reason)

    started = []

    async def body():
        started.append(True)
        yield b"never"

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        raise OSError("client went away")

    running, done = Job(False), Job(True)
    scope = {"type": "http", "asgi": {"spec_version": spec}, "method": "POST", "path": "/", "headers": []}
    with contextlib.suppress(Exception):
        asyncio.run(JobStream(body(), [running, done])(scope, receive, send))
    assert not started and running.reasons == ["client"] and done.reasons == []
