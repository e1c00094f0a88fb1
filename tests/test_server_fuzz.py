"""Fuzz every endpoint of the live server (the fixture's real models) with hypothesis: no 5xx, ever.

Bodies mix well-formed fields (so some requests reach the model) with arbitrary JSON values, wrong types,
garbage audio, path-like strings and raw bytes. Every 4xx must carry OpenAI's error shape.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimo_audio.server import ServerSettings, create_app
from server_helpers import LiveServer, wav_bytes

MODEL = "mimo-audio"
# MIMO_AUDIO_FUZZ_EXAMPLES=500 runs a longer, randomised fuzz (the default is short and reproducible for CI).
_LONG = int(os.environ.get("MIMO_AUDIO_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_LONG or 40, deadline=None, derandomize=not _LONG,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(fixture_path):
    from mimo_audio.pipeline import MimoAudio

    mimo = MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu",
                                     dtype="float32")
    settings_ = ServerSettings(max_new_tokens=4, max_upload_bytes=400_000, max_audio_seconds=5, timeout_s=60)
    with LiveServer(create_app(mimo, settings_)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


WAV = base64.b64encode(wav_bytes(0.5, 16000)).decode()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=30), st.sampled_from(["/etc/passwd", "file:///etc/hosts", "../../x.wav",
                                                           "http://169.254.169.254/", "data:audio/wav;base64,!!",
                                                           "\x00", "A" * 10]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
audio_data = st.one_of(st.just(WAV), st.just("data:audio/wav;base64," + WAV), scalars)
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=20), scalars)})
audio_part = st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "audio_url", "image_url", "x"]),
                                    "input_audio": st.fixed_dictionaries({"data": audio_data,
                                                                          "format": st.sampled_from(["wav", "mp3"])}),
                                    "audio_url": st.fixed_dictionaries({"url": audio_data})})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"])},
    optional={"content": st.one_of(st.text(max_size=30), st.lists(st.one_of(text_part, audio_part), max_size=3),
                                   json_values),
              "audio": st.one_of(st.fixed_dictionaries({"id": st.text(max_size=10)}), json_values)})
common = {"model": st.one_of(st.just(MODEL), scalars), "seed": st.one_of(st.integers(-5, 2**64), scalars),
          "max_new_tokens": st.one_of(st.integers(-2, 6), scalars), "temperature": st.one_of(st.floats(-1, 3), scalars),
          "top_p": st.one_of(st.floats(-1, 2), scalars), "top_k": st.one_of(st.integers(-1, 50), scalars)}
speech_body = st.fixed_dictionaries({}, optional={
    **common, "input": st.one_of(st.text(max_size=40), scalars), "voice": json_values,
    "instructions": st.one_of(st.text(max_size=20), scalars),
    "response_format": st.one_of(st.sampled_from(["wav", "flac", "pcm", "mp3", "opus", "aac", "WAV"]), scalars),
    "stream_format": st.one_of(st.sampled_from(["audio", "sse", "x"]), scalars), "stream": scalars,
    "speed": st.one_of(st.floats(0, 5), scalars), "ref_audio": audio_data, "junk": json_values})
chat_body = st.fixed_dictionaries({}, optional={
    **common, "messages": st.one_of(st.lists(message, max_size=4), json_values),
    "modalities": st.one_of(st.lists(st.sampled_from(["text", "audio", "image"]), max_size=3), json_values),
    "audio": st.one_of(st.fixed_dictionaries({"voice": scalars, "format": st.sampled_from(
        ["wav", "pcm16", "flac", "mp3", "opus"])}), json_values),
    "stream": st.one_of(st.booleans(), scalars), "stream_options": json_values, "n": st.one_of(st.integers(-1, 3),
                                                                                              scalars),
    "max_tokens": st.one_of(st.integers(-1, 8), scalars), "thinking": scalars, "ref_audio": audio_data})

words = st.text(alphabet="abcdefgh XYZ.,!?", min_size=1, max_size=20).filter(str.strip)
mild = {"seed": st.integers(0, 2**32), "max_new_tokens": st.integers(1, 4), "temperature": st.floats(0, 1.5),
        "top_p": st.floats(0.1, 1), "top_k": st.integers(1, 20)}
valid_speech = st.fixed_dictionaries({"model": st.just(MODEL), "input": words}, optional={
    **mild, "response_format": st.sampled_from(["wav", "flac", "pcm"]), "instructions": words,
    "stream_format": st.sampled_from(["audio", "sse"]), "ref_audio": st.just(WAV)})
valid_chat = st.fixed_dictionaries({"model": st.just(MODEL), "messages": st.lists(st.fixed_dictionaries(
    {"role": st.just("user"), "content": st.one_of(words, st.just([{"type": "input_audio", "input_audio": {
        "data": WAV, "format": "wav"}}]))}), min_size=1, max_size=2)}, optional={
    **mild, "stream": st.booleans(), "modalities": st.sampled_from([["text"], ["text", "audio"]])})


def check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@FUZZ
@given(body=st.one_of(valid_speech, speech_body, json_values))
def test_fuzz_speech(http, body):
    check(http.post("/v1/audio/speech", json=body))


@FUZZ
@given(body=st.one_of(valid_chat, chat_body, json_values))
def test_fuzz_chat(http, body):
    check(http.post("/v1/chat/completions", json=body))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.sampled_from([
    b'{"model":"mimo-audio","input":"hi","temperature":NaN}', b'{"model":"mimo-audio","input":"hi","seed":Infinity}',
    b'{"model":"mimo-audio","messages":[{"role":"user","content":"x"}],"top_p":-Infinity}', b"[]", b"null",
    b'{"model":"mimo-audio","input":"hi","max_new_tokens":1e400}'])), path=st.sampled_from(["/v1/audio/speech", "/v1/chat/completions",
                                                          "/v1/audio/transcriptions"]),
       ctype=st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=x",
                              "text/plain", "application/x-www-form-urlencoded"]))
def test_fuzz_raw_bodies(http, raw, path, ctype):
    check(http.post(path, content=raw, headers={"content-type": ctype}))


@FUZZ
@given(file=st.one_of(st.binary(max_size=300), st.sampled_from([wav_bytes(0.5), wav_bytes(6.0, 8000), b""])),
       filename=st.one_of(st.text(max_size=20), st.just("../../../etc/passwd")),
       fields=st.dictionaries(st.sampled_from(["model", "language", "prompt", "response_format", "temperature",
                                               "stream", "seed", "max_new_tokens", "timestamp_granularities[]",
                                               "junk"]),
                              st.one_of(st.text(max_size=12), st.sampled_from(
                                  [MODEL, "json", "text", "srt", "vtt", "verbose_json", "true", "word", "3", "-1"])),
                              max_size=6),
       with_file=st.booleans())
def test_fuzz_transcriptions(http, file, filename, fields, with_file):
    files = {"file": (filename or "f", file, "audio/wav")} if with_file else None
    check(http.post("/v1/audio/transcriptions", data=fields, files=files or {"other": ("x", b"1")}))


@FUZZ
@given(path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=30),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]))
def test_fuzz_other_routes(http, path, method):
    resp = http.request(method, "/" + path.lstrip("/"))
    assert resp.status_code < 500, (method, path, resp.status_code)


def test_fuzz_reached_the_model(http, server):
    """The fuzz is not all rejections: the model ran for some of the requests."""
    text = http.get("/metrics").text
    done = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mimo_audio_requests_completed_total{"))
    assert done > 0, json.dumps(text[:300])
