"""The task commands of ``mimo-audio`` end to end on the fixture's tiny models, through ``cli.main``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest
import soundfile as sf

from mimo_audio.cli import main
from mimo_audio.pipeline import MimoAudio


@pytest.fixture(scope="module")
def models(fixture_path):
    return ["--model", str(fixture_path / "lm"), "--tokenizer", str(fixture_path / "tokenizer"), "--device", "cpu"]


@pytest.fixture(scope="module")
def clips(fixture_path, manifest):
    return [str(fixture_path / "audio" / name) for name in manifest["audio"]["24k"]]


def run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def force_speech_in(monkeypatch, allow: tuple[str, ...] = ()):
    """Make every generated group an audio patch (ban every text id but <|empty|>), so that speech commands
    write a file whatever the random fixture model prefers; the CLI's own behaviour is what is under test.

    ``allow``: texts whose ids stay allowed too (``"<|sostm|>"`` for prompts where the model opens the speech
    span itself, words for a reply that also carries text)."""
    original = MimoAudio.prepare

    def prepare(self, task, **kw):
        req = original(self, task, **kw)
        V = self.lm.config.vocab_size
        keep = {self.ids.empty, *(i for text in allow for i in self.text.encode(text))}
        banned = tuple(i for i in range(V) if i not in keep)
        req.config = dataclasses.replace(req.config, banned_ids=banned)
        return req

    monkeypatch.setattr(MimoAudio, "prepare", prepare)


@pytest.fixture
def force_speech(monkeypatch):
    force_speech_in(monkeypatch)


def speech_run(capsys, argv, path):
    """Run a speech command (with ``force_speech`` active) and check the JSON object and the file it wrote."""
    rc, out, err = run(capsys, [*argv, "--seed", "0", "--json"])
    assert rc == 0, err
    (obj,) = json_lines(out)
    assert obj["audio"] == str(path) and obj["sample_rate"] == 24000
    wav, sr = sf.read(obj["audio"])
    assert sr == 24000 and len(wav) > 0 and abs(len(wav) / sr - obj["seconds"]) < 1e-3
    return obj


def test_transcribe_plain_json_and_batch(capsys, models, clips):
    rc, out, err = run(capsys, ["transcribe", clips[0], *models, "--max-new-tokens", "8"])
    assert rc == 0 and out.endswith("\n")
    rc, out, _ = run(capsys, ["transcribe", clips[0], clips[1], *models, "--max-new-tokens", "8", "--json"])
    objs = json_lines(out)
    assert rc == 0 and [o["input"] for o in objs] == clips[:2] and all(isinstance(o["text"], str) for o in objs)


def test_speak_writes_a_24k_file(capsys, models, tmp_path, force_speech):
    out = tmp_path / "hello.wav"
    speech_run(capsys, ["speak", "Hello there.", *models, "--max-new-tokens", "16", "-o", str(out)], out)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]  # atomic write left nothing behind


def test_speak_styles_and_stream(capsys, models, clips, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        force_speech_in(mp, allow=("<|sostm|>",))  # styled and described speech open the span themselves
        for name, extra in (("instruct", ["--instruct", "Speak slowly"]), ("natural", ["--natural"]),
                            ("voice", ["--voice", clips[2]])):
            out = tmp_path / f"{name}.wav"
            speech_run(capsys, ["speak", "Hello there.", *models, "--max-new-tokens", "8", "-o", str(out), *extra], out)
    with pytest.MonkeyPatch.context() as mp:
        force_speech_in(mp, allow=(" Hello there",))  # speech with some words in it
        out = tmp_path / "streamed.wav"
        argv = ["speak", "Hello.", *models, "--max-new-tokens", "16", "-o", str(out)]
        expected = speech_run(capsys, argv, out)["text"]
        rc, text, err = run(capsys, [*argv, "--seed", "0", "--stream"])
    assert rc == 0 and expected.strip() and text == expected + "\n", err
    assert f"wrote {out}" in err and sf.info(str(out)).frames > 0


def test_understand_chat_fewshot_continue(capsys, models, clips, tmp_path, manifest):
    rc, out, _ = run(capsys, ["understand", clips[0], clips[1], "-q", "Compare.", "--thinking", *models,
                              "--max-new-tokens", "6", "--json"])
    assert rc == 0 and isinstance(json_lines(out)[0]["text"], str)
    rc, out, _ = run(capsys, ["chat", "--text", "hi", "--reply", "text", *models, "--max-new-tokens", "6", "--json"])
    assert rc == 0 and "audio" not in json_lines(out)[0]
    with pytest.MonkeyPatch.context() as mp:
        force_speech_in(mp)
        speech_run(capsys, ["chat", clips[0], *models, "--max-new-tokens", "12", "-o", str(tmp_path / "r.wav")],
                   tmp_path / "r.wav")
    text = manifest["audio"]["texts"][1]
    ex = tmp_path / "examples.jsonl"
    ex.write_text(json.dumps({"input": clips[0], "output": clips[1], "transcript": text}) + "\n")
    # the random model rarely speaks after these prompts: a file, or exit status 1 and a "no speech" summary
    for argv, path in ((["few-shot", clips[2], "--examples", str(ex), "--example", clips[1], clips[0], "words",
                         "--instruction", "Convert the timbre."], tmp_path / "f.wav"),
                       (["continue", clips[0], "--seconds", "0.5"], tmp_path / "c.wav")):
        rc, out, err = run(capsys, [*argv, *models, "--max-new-tokens", "12", "--seed", "0", "--json", "-o", str(path)])
        if rc == 0:
            assert json_lines(out)[0]["audio"] == str(path) and path.is_file()
        else:
            assert rc == 1 and "result 1: the model produced no speech" in err and not path.exists()


def test_chat_input_and_text(capsys, models, clips, tmp_path, monkeypatch):
    seen = []
    original = MimoAudio.prepare

    def spy(self, task, **kw):
        seen.append(kw["messages"])
        return original(self, task, **kw)

    monkeypatch.setattr(MimoAudio, "prepare", spy)
    common = [*models, "--reply", "text", "--max-new-tokens", "4"]
    rc, _, err = run(capsys, ["chat", clips[0], "--text", "What is this?", *common])
    assert rc == 0 and seen == [[{"role": "user", "audio": clips[0], "text": "What is this?"}]], err
    rc, _, err = run(capsys, ["chat", "hello", *common])
    assert rc == 0 and seen[-1] == [{"role": "user", "text": "hello"}], err
    seen.clear()
    for argv, message in ((["chat", "hello", "--text", "world"], "'hello' is not an audio file"),
                          (["chat", str(tmp_path / "missing.wav")], "missing.wav: no such audio file")):
        rc, _, err = run(capsys, [*argv, *common])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("mimo-audio: error:") and message in err, err
    assert seen == []  # refused before any generation


def test_output_paths_are_checked_once_with_home_expanded(monkeypatch, tmp_path):
    from mimo_audio.cli import check_output
    from mimo_audio.errors import AudioInputError

    monkeypatch.setenv("HOME", str(tmp_path))
    check_output("~/out.wav")
    check_output("~/codes.safetensors", (".safetensors",))
    with pytest.raises(AudioInputError, match="the folder .*nope does not exist"):
        check_output("~/nope/out.wav")
    with pytest.raises(AudioInputError, match="unsupported output type '.mp3'; use .wav or .flac"):
        check_output("~/out.mp3")


def test_errors_are_one_line(capsys, models, clips, tmp_path):
    cases = [
        ["transcribe", str(tmp_path / "missing.wav"), *models],
        ["speak", "   ", *models],
        ["speak", "hi", *models, "-o", str(tmp_path / "out.mp3")],
        ["few-shot", clips[0], "--example", clips[0], clips[1], " ", *models, "-o", str(tmp_path / "f.wav")],
        ["transcribe", clips[0], "--model", str(tmp_path), "--tokenizer", str(tmp_path)],
    ]
    for argv in cases:
        rc, _, err = run(capsys, argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc != 0 and len(lines) == 1 and lines[0].startswith("mimo-audio: error:"), (argv, err)


def test_interactive_chat(capsys, models, clips, monkeypatch, tmp_path):
    lines = ["hello there", clips[0], "/reset", "/bogus", "/missing/file.wav", "again", "/quit", "never read"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    rc, out, err = run(capsys, ["chat", "--reply", "text", *models, "--max-new-tokens", "6", "--seed", "0"])
    assert rc == 0 and "Traceback" not in err
    assert out.count("mimo> ") == 3
    assert "(conversation cleared)" in out and "unknown command /bogus" in out
    assert "/missing/file.wav: no such audio file" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{clips[1]}\nwhat next?\n"))  # ends with EOF
    force_speech_in(monkeypatch, allow=(" Hello there",))  # every turn speaks (and says some words)
    rc, out, err = run(capsys, ["chat", *models, "--max-new-tokens", "10", "--seed", "1",
                                "-o", str(tmp_path / "turn.wav")])
    assert rc == 0 and out.count("mimo> ") == 2
    written = [line[len("(speech: "):].split(",")[0] for line in out.splitlines() if line.startswith("(speech: ")]
    assert written == [str(tmp_path / "turn-1.wav"), str(tmp_path / "turn-2.wav")]
    assert sorted(os.listdir(tmp_path)) == ["turn-1.wav", "turn-2.wav"]
    assert all(sf.info(w).frames > 0 for w in written)


def test_download_local_folder_and_offline(capsys, fixture_path, tmp_path):
    rc, out, _ = run(capsys, ["download", str(fixture_path / "lm"), str(fixture_path / "tokenizer")])
    assert rc == 0 and out.split() == [str(fixture_path / "lm"), str(fixture_path / "tokenizer")]
    rc, _, err = run(capsys, ["download", str(tmp_path)])  # a folder without weights
    assert rc != 0 and err.startswith("mimo-audio: error:") and "safetensors" in err
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "mimo_audio.cli", "download", "someone/some-model"],
                          capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mimo-audio")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "someone/some-model" in errors[0]
