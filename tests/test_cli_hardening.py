"""The CLI as a new user meets it (issue 16): batches that never abort midway, output file permissions, 16-bit
WAV by default, transcripts escaped on a terminal. The model is a small stand-in (the CLI is under test)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import soundfile as sf
import torch

from mimo_audio import cli_tasks
from mimo_audio.batch import Reply
from mimo_audio.cli import main
from mimo_audio.errors import AudioInputError


class FakeMimo:
    """speak: a 0.1 s tone per text, except texts containing "silent" (no audio) or "bad" (refused)."""

    def speak(self, texts, **kw):
        batch = texts if isinstance(texts, list) else [texts]
        if any("bad" in t for t in batch):
            raise AudioInputError("text refused")
        out = [Reply(t, torch.zeros(0) if "silent" in t else 0.3 * torch.sin(torch.arange(2400) / 10.0),
                     finish_reason="stop") for t in batch]
        return out if isinstance(texts, list) else out[0]

    def transcribe(self, audio, **kw):
        batch = audio if isinstance(audio, list) else [audio]
        if any("bad" in a for a in batch):
            raise AudioInputError("unreadable audio")
        out = [f"text of {a}\x1b[2J\rx" for a in batch]
        return out if isinstance(audio, list) else out[0]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(cli_tasks, "_load", lambda args: FakeMimo())


def test_speak_batch_attempts_every_result(fake, tmp_path, capsys):
    out = tmp_path / "line.wav"
    rc = main(["speak", "A.", "B silent.", "C.", "-o", str(out)])
    _, err = capsys.readouterr()
    assert rc == 1
    assert (tmp_path / "line-1.wav").is_file() and (tmp_path / "line-3.wav").is_file()
    assert not (tmp_path / "line-2.wav").exists()
    assert "1 of 3 results failed (2 succeeded)" in err and "result 2 (B silent.)" in err
    assert "result 1" not in err.split("failed", 1)[1] and "result 3" not in err.split("failed", 1)[1]
    assert main(["speak", "A.", "C.", "-o", str(out)]) == 0


def test_a_refused_entry_does_not_stop_the_batch(fake, tmp_path, capsys):
    rc = main(["speak", "A.", "bad", "C.", "-o", str(tmp_path / "x.wav"), "--json"])
    out, err = capsys.readouterr()
    objs = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and [o.get("error") is None for o in objs] == [True, False, True]
    assert (tmp_path / "x-1.wav").is_file() and (tmp_path / "x-3.wav").is_file()
    rc = main(["transcribe", "a.wav", "bad.wav", "c.wav"])
    out, err = capsys.readouterr()
    assert rc == 1 and "a.wav" in out and "c.wav" in out and "result 2 (bad.wav): unreadable audio" in err


def test_outputs_honour_the_umask(fake, tmp_path):
    from mimo_audio.codec import save_codes

    old = os.umask(0o022)
    try:
        assert main(["speak", "A.", "-o", str(tmp_path / "a.wav")]) == 0
        assert main(["speak", "A.", "-o", str(tmp_path / "a.flac")]) == 0
        save_codes(tmp_path / "c.safetensors", torch.zeros(4, 8, dtype=torch.long), sample_rate=24000,
                   frame_rate=25.0)
        for name in ("a.wav", "a.flac", "c.safetensors"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
        os.umask(0o077)
        assert main(["speak", "A.", "-o", str(tmp_path / "b.wav")]) == 0
        assert stat.S_IMODE(os.stat(tmp_path / "b.wav").st_mode) == 0o600
    finally:
        os.umask(old)


def test_wav_is_16_bit_pcm_unless_float_is_asked(fake, tmp_path):
    assert main(["speak", "A.", "-o", str(tmp_path / "a.wav")]) == 0
    info = sf.info(str(tmp_path / "a.wav"))
    assert info.subtype == "PCM_16" and info.samplerate == 24000
    header = (tmp_path / "a.wav").read_bytes()[:44]
    assert header[20:22] == b"\x01\x00" and header[34:36] == b"\x10\x00"  # WAVE_FORMAT_PCM, 16 bits
    assert main(["speak", "A.", "-o", str(tmp_path / "f.wav"), "--float-wav"]) == 0
    assert sf.info(str(tmp_path / "f.wav")).subtype == "FLOAT"


class _Tty:
    def __init__(self):
        self.parts = []

    def isatty(self):
        return True

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass


def test_transcripts_are_escaped_on_a_terminal(fake, monkeypatch, capsys):
    tty = _Tty()
    monkeypatch.setattr("sys.stdout", tty)
    assert main(["transcribe", "a.wav"]) == 0
    text = "".join(tty.parts)
    assert "\x1b" not in text and "\r" not in text and "\\x1b[2J\\rx" in text
    monkeypatch.undo()
    monkeypatch.setattr(cli_tasks, "_load", lambda args: FakeMimo())
    assert main(["transcribe", "a.wav"]) == 0  # into a pipe: unchanged
    assert "\x1b[2J\rx" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- item 10
def test_missing_model_folder_suggests_the_lm_id(tmp_path, capsys):
    assert main(["transcribe", "x.wav", "--model", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "XiaomiMiMo/MiMo-Audio-7B-Instruct" in err and "--model" in err


def test_download_failure_does_not_say_run_download(monkeypatch, capsys):
    import huggingface_hub

    def offline(**kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["download", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "cannot fetch 'someone/some-model'" in err and "mimo-audio download" not in err
    from mimo_audio.checkpoint import resolve
    from mimo_audio.errors import CheckpointError

    with pytest.raises(CheckpointError, match="mimo-audio download"):  # elsewhere the hint stays
        resolve("someone/some-model")


def test_swapped_checkpoints_are_named(fixture_path, capsys):
    lm, tok = str(fixture_path / "lm"), str(fixture_path / "tokenizer")
    assert main(["codec", "encode", "x.wav", "-o", "/tmp/x.safetensors", "--tokenizer", lm, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is a MiMo-Audio LM checkpoint, not the audio tokenizer" in err and "--tokenizer" in err
    assert "tokenizer=" not in err  # the CLI names flags
    assert main(["transcribe", "x.wav", "--model", tok, "--tokenizer", lm, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is the MiMo-Audio audio tokenizer checkpoint, not the LM" in err and "--model" in err


def test_cli_errors_name_flags():
    from mimo_audio.cli import cli_words

    assert cli_words("voice= applies to speech replies; use reply='speech' or drop voice") == \
        "--voice applies to speech replies; use --reply speech or drop --voice"
    assert cli_words("thinking=True applies to text replies; use reply='text' or drop thinking") == \
        "--thinking applies to text replies; use --reply text or drop --thinking"
    assert cli_words("max_new_tokens must be >= 1") == "--max-new-tokens must be >= 1"
    assert "--max-seconds" in cli_words("cut it into shorter pieces or raise max_seconds")


def test_cli_error_for_voice_with_text_reply(fixture_path, tmp_path, capsys):
    from server_helpers import wav_bytes

    clip = tmp_path / "v.wav"
    clip.write_bytes(wav_bytes(0.5))
    argv = ["chat", "--text", "hi", "--reply", "text", "--voice", str(clip), "--model", str(fixture_path / "lm"),
            "--tokenizer", str(fixture_path / "tokenizer"), "--device", "cpu", "--max-new-tokens", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--voice" in err and "--reply speech" in err and "voice=" not in err


def test_truncated_audio_says_how_to_repair_and_can_be_read(tmp_path):
    from mimo_audio.audio import load_audio
    from server_helpers import wav_bytes

    good = wav_bytes(1.0, 16000)
    path = tmp_path / "cut.wav"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(AudioInputError, match=r"truncated.*sox.*allow_truncated=True"):
        load_audio(path)
    with pytest.warns(UserWarning, match="truncated"):
        wav = load_audio(path, allow_truncated=True)
    assert 0.45 < wav.shape[0] / 24000 < 0.55
