"""The server over the real MimoAudio (the fixture's tiny models), driven by the official `openai` client.

What the server returns is checked against what the pipeline itself computes for the same seeded request
(a row's seeded output does not depend on its batch mates), so the HTTP layer is shown to carry the model's
output unchanged: text exactly, audio to 16-bit rounding.
"""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest
import soundfile as sf

from mimo_audio.server import ServerSettings, create_app
from mimo_audio.server.media import split_at_silences
from server_helpers import LiveServer

openai = pytest.importorskip("openai")

MODEL = "mimo-audio"
KEY = "live-test-key"
TOKENS = 16  # tiny generations keep the suite fast


@pytest.fixture(scope="module")
def mimo(fixture_path):
    from mimo_audio.pipeline import MimoAudio

    return MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu",
                                     dtype="float32")


@pytest.fixture(scope="module")
def server(mimo):
    settings = ServerSettings(api_key=KEY, max_new_tokens=64, max_batch=4, batch_window_s=0.15,
                              transcription_chunk_seconds=25.0)
    with LiveServer(create_app(mimo, settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(fixture_path):
    """A speech clip of the fixture: (file bytes, samples, rate)."""
    path = sorted((fixture_path / "audio").glob("speech_*_24k.wav"))[0]
    data = path.read_bytes()
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return data, samples, rate


def expected(mimo, task, **kw):
    """The pipeline's own reply for a request (streaming decode, as the server uses)."""
    return mimo.run([mimo.prepare(task, **kw)], decode="stream")[0]


def seed_with_audio(mimo, task, **kw) -> int:
    """A seed for which this random-weight model's reply carries audio (found by running the pipeline)."""
    for seed in range(40):
        reply = expected(mimo, task, seed=seed, **kw)
        if reply.audio is not None and reply.audio.numel() > 0:
            return seed
    pytest.skip(f"the fixture model produced no audio for {task} in 40 seeds")


def pcm16(audio) -> np.ndarray:
    return np.round(np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16)


def assert_same_audio(wav_bytes: bytes, reply):
    got, rate = sf.read(io.BytesIO(wav_bytes), dtype="int16")
    assert rate == reply.sample_rate
    want = pcm16(reply.audio.numpy())
    assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1


# ------------------------------------------------------------------------------------------- speech
def test_speech_matches_pipeline(client, mimo):
    seed = seed_with_audio(mimo, "speak", text="Hello there.", max_new_tokens=TOKENS)
    want = expected(mimo, "speak", text="Hello there.", seed=seed, max_new_tokens=TOKENS)
    resp = client.audio.speech.create(model=MODEL, voice="alloy", input="Hello there.", response_format="wav",
                                      extra_body={"seed": seed, "max_new_tokens": TOKENS})
    assert_same_audio(resp.content, want)
    # chunked streaming (stream_format "audio") gives the same samples, as raw pcm
    with client.audio.speech.with_streaming_response.create(
            model=MODEL, voice="alloy", input="Hello there.", response_format="pcm", stream_format="audio",
            extra_body={"seed": seed, "max_new_tokens": TOKENS}) as streamed:
        raw = b"".join(streamed.iter_bytes())
    assert np.array_equal(np.frombuffer(raw, "<i2"), pcm16(want.audio.numpy()))


def test_speech_sse_and_reference_voice(server, mimo, clip):
    data, samples, rate = clip
    ref = "data:audio/wav;base64," + base64.b64encode(data).decode()
    # Instruct TTS opens a thinking section first, so this random model rarely reaches audio in a few steps:
    # the streamed samples (possibly none) must still be exactly the pipeline's.
    seed = 3
    want = expected(mimo, "speak", text="Hi.", instruct="softly", voice=(samples, rate), seed=seed,
                    max_new_tokens=TOKENS)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        r = c.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi.", "instructions": "softly",
                                             "ref_audio": ref, "seed": seed, "max_new_tokens": TOKENS,
                                             "stream_format": "sse", "response_format": "pcm"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [__import__("json").loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    if want.audio.numel() == 0:  # a generation with no audio ends in an error event saying so
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "no_audio", events
    else:
        assert events[-1]["type"] == "speech.audio.done"
        assert events[-1]["usage"]["output_tokens"] == want.new_tokens
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert np.array_equal(np.frombuffer(pcm, "<i2"), pcm16(want.audio.numpy()))


# ------------------------------------------------------------------------------------------- transcription
def test_transcription_matches_pipeline(client, mimo, clip):
    data, samples, rate = clip
    want = expected(mimo, "transcribe", audio=(samples, rate), seed=0, max_new_tokens=TOKENS)
    got = client.audio.transcriptions.create(model=MODEL, file=("clip.wav", data, "audio/wav"),
                                             extra_body={"seed": 0, "max_new_tokens": TOKENS})
    assert got.text == want.text.strip()
    events = list(client.audio.transcriptions.create(model=MODEL, file=("clip.wav", data, "audio/wav"), stream=True,
                                                     extra_body={"seed": 0, "max_new_tokens": TOKENS}))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done"
    assert "".join(deltas) == events[-1].text == want.text.strip()
    assert len(deltas) > 1  # increments, not one block


def test_transcription_segments_of_long_audio(client, fixture_path):
    path = fixture_path / "audio" / "long_24k.wav"
    samples, rate = sf.read(path, dtype="float32")
    verbose = client.audio.transcriptions.create(model=MODEL, file=("long.wav", path.read_bytes(), "audio/wav"),
                                                response_format="verbose_json",
                                                extra_body={"seed": 0, "max_new_tokens": 4})
    bounds = split_at_silences(samples, rate, 25.0)
    assert len(verbose.segments) == len(bounds) >= 3
    for seg, (s, e) in zip(verbose.segments, bounds):
        assert seg.start == pytest.approx(s / rate, abs=1e-3) and seg.end == pytest.approx(e / rate, abs=1e-3)
    assert verbose.duration == pytest.approx(len(samples) / rate, abs=1e-3)


# ------------------------------------------------------------------------------------------- chat
def test_chat_audio_in_and_out(client, mimo, clip):
    data, samples, rate = clip
    user = {"role": "user", "audio": (samples, rate)}
    seed = seed_with_audio(mimo, "chat", messages=[user], reply="speech", max_new_tokens=TOKENS)
    want = expected(mimo, "chat", messages=[user], reply="speech", seed=seed, max_new_tokens=TOKENS)
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    resp = client.chat.completions.create(
        model=MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": [part]}], extra_body={"seed": seed, "max_new_tokens": TOKENS})
    msg = resp.choices[0].message
    assert msg.audio.transcript == want.answer
    assert_same_audio(base64.b64decode(msg.audio.data), want)
    assert resp.usage.completion_tokens == want.new_tokens and resp.usage.prompt_tokens == want.prompt_tokens

    # streamed: pcm16 deltas and transcript fragments add up to the same reply
    stream = client.chat.completions.create(
        model=MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"}, stream=True,
        messages=[{"role": "user", "content": [part]}], extra_body={"seed": seed, "max_new_tokens": TOKENS})
    pcm, transcript, finish = b"", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        audio = getattr(delta, "audio", None)
        if isinstance(audio, dict):  # older clients keep unknown fields as dicts
            audio = type("A", (), audio)
        if audio is not None:
            pcm += base64.b64decode(getattr(audio, "data", None) or "")
            transcript += getattr(audio, "transcript", None) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert transcript == want.text and finish == want.finish_reason
    assert np.array_equal(np.frombuffer(pcm, "<i2"), pcm16(want.audio.numpy()))

    # the next turn references the spoken reply by id; the model sees its own earlier audio (a seed for which the
    # follow-up speaks: a reply without audio is a 422)
    seed = seed_with_audio(mimo, "chat", messages=[user, want.as_message(), user], reply="speech", max_new_tokens=4)
    follow = client.chat.completions.create(
        model=MODEL, modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": [part]}, {"role": "assistant", "audio": {"id": msg.audio.id}},
                  {"role": "user", "content": [part]}],
        extra_body={"seed": seed, "max_new_tokens": 4})
    assert follow.choices[0].message.audio.id != msg.audio.id


def test_chat_text_multiturn_stream(client, mimo):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How are you?"}]
    pipeline_msgs = [{"role": m["role"], "text": m["content"]} for m in history]
    want = expected(mimo, "chat", messages=pipeline_msgs, reply="text", seed=5, max_new_tokens=TOKENS)
    resp = client.chat.completions.create(model=MODEL, messages=history, seed=5, max_tokens=TOKENS)
    assert resp.choices[0].message.content == want.answer
    chunks = list(client.chat.completions.create(model=MODEL, messages=history, seed=5, max_tokens=TOKENS,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[-1].usage.completion_tokens == want.new_tokens


# ------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_batched(client, server, mimo):
    before = _metrics(server)
    results: dict[int, str] = {}

    def ask(i: int):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Question {i}"}],
                                           seed=i, max_tokens=TOKENS)
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(6))
    for i, text in results.items():  # batched rows equal their one-by-one runs
        msgs = [{"role": "user", "text": f"Question {i}"}]
        assert text == expected(mimo, "chat", messages=msgs, reply="text", seed=i, max_new_tokens=TOKENS).answer
    after = _metrics(server)
    requests = after["mimo_audio_batch_size_sum"] - before["mimo_audio_batch_size_sum"]
    joined = after.get("mimo_audio_requests_joined_total", 0) - before.get("mimo_audio_requests_joined_total", 0)
    batches = after["mimo_audio_batch_size_count"] - before["mimo_audio_batch_size_count"]
    assert requests + joined == 6 and batches < 6, (requests, joined, batches)


def _metrics(server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_official_client_errors(client, server):
    with pytest.raises(openai.BadRequestError, match="mp3"):
        client.audio.speech.create(model=MODEL, voice="alloy", input="x", response_format="mp3")
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert [m.id for m in client.models.list()] == [MODEL]
