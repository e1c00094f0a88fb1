"""Hostile-client tests of the server (issue 16): strings that cannot be encoded, odd multipart bodies, HEAD,
long paths, data: URL prefixes, empty generations, slow clients and large bodies. Against the fake backend."""

from __future__ import annotations

import json

import httpx
import pytest

from mimo_audio.server import ServerSettings, create_app
from server_helpers import FakeBackend, LiveServer

MODEL = "mimo-audio"


@pytest.fixture(scope="module")
def fake():
    return FakeBackend()


@pytest.fixture(scope="module")
def server(fake):
    with LiveServer(create_app(fake, ServerSettings(max_upload_bytes=2_000_000, max_audio_seconds=120,
                                                    max_new_tokens=64))) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_openai_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


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
