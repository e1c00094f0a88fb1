"""``mimo-audio codec ...``: encode / decode / roundtrip against the fixture tokenizer; clean errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from mimo_audio.audio import load_audio
from mimo_audio.cli import main
from mimo_audio.codec import AudioTokenizer, load_codes, save_codes


@pytest.fixture(scope="module")
def tok(fixture_path):
    return str(fixture_path / "tokenizer")


@pytest.fixture(scope="module")
def clip(fixture_path, manifest):
    return fixture_path / "audio" / manifest["audio"]["raw"][0]  # not 24 kHz: the CLI resamples


@pytest.fixture(scope="module")
def codec(tok):
    return AudioTokenizer.from_pretrained(tok, device="cpu")


def test_encode_decode_roundtrip(tmp_path, tok, clip, codec, capsys):
    codes_path = tmp_path / "codes.safetensors"
    assert main(["codec", "encode", str(clip), "-o", str(codes_path), "--tokenizer", tok, "--device", "cpu",
                 "--num-quantizers", "5"]) == 0
    codes, meta = load_codes(codes_path)
    assert codes.dtype == torch.int64 and codes.shape[1] == 5
    assert int(meta["sample_rate"]) == codec.sample_rate
    assert torch.equal(codes, codec.encode(load_audio(clip), num_quantizers=5))

    out = tmp_path / "out.wav"
    assert main(["codec", "decode", str(codes_path), "-o", str(out), "--tokenizer", tok, "--device", "cpu",
                 "--float-wav"]) == 0
    wav, rate = sf.read(out, dtype="float32")
    assert rate == codec.sample_rate
    torch.testing.assert_close(torch.from_numpy(wav), codec.decode(codes), atol=1e-6, rtol=0)

    flac = tmp_path / "rt.flac"
    assert main(["codec", "roundtrip", str(clip), "-o", str(flac), "--tokenizer", tok, "--device", "cpu",
                 "--num-quantizers", "5", "--window", "30"]) == 0
    back, _ = sf.read(flac, dtype="float32")
    want = codec.decode(codes, window=30)
    assert back.shape == tuple(want.shape) and float((torch.from_numpy(back) - want.clamp(-1, 1)).abs().max()) < 1e-6
    err = capsys.readouterr().err
    assert "frames" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["missing", "not_audio", "bad_output", "bad_dtype", "bad_nq", "bad_codes"])
def test_errors_are_one_clean_line(tmp_path, tok, clip, case, capsys):
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    argv = {
        "missing": ["codec", "encode", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "c.safetensors")],
        "not_audio": ["codec", "roundtrip", str(junk), "-o", str(tmp_path / "o.wav")],
        "bad_output": ["codec", "roundtrip", str(clip), "-o", str(tmp_path / "o.mp4")],
        "bad_dtype": ["codec", "encode", str(clip), "-o", str(tmp_path / "c.safetensors"), "--dtype", "int3"],
        "bad_nq": ["codec", "encode", str(clip), "-o", str(tmp_path / "c.safetensors"), "--num-quantizers", "99"],
        "bad_codes": ["codec", "decode", str(junk), "-o", str(tmp_path / "o.wav")],
    }[case] + ["--tokenizer", tok, "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimo-audio: error: ") and "\n" not in err
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "c.safetensors").exists()


def test_decode_checks_num_quantizers_and_codes_shape(tmp_path, tok, capsys):
    codes = tmp_path / "c.safetensors"
    save_codes(codes, torch.zeros(10, 3, dtype=torch.long))
    flat = tmp_path / "flat.safetensors"
    save_codes(flat, torch.zeros(10, dtype=torch.long))
    for path, nq, match in [(codes, "-1", "num_quantizers"), (codes, "0", "num_quantizers"),
                            (codes, "5", "only 3 columns"), (flat, "2", "shape")]:
        argv = ["codec", "decode", str(path), "-o", str(tmp_path / "o.wav"), "--num-quantizers", nq,
                "--tokenizer", tok, "--device", "cpu"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, err
    assert not (tmp_path / "o.wav").exists()


def test_console_script(tmp_path, tok, clip):
    exe = shutil.which("mimo-audio")
    cmd = [exe] if exe else [sys.executable, "-m", "mimo_audio.cli"]
    out = tmp_path / "c.safetensors"
    run = subprocess.run(cmd + ["codec", "encode", str(clip), "-o", str(out), "--tokenizer", tok, "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert load_codes(out)[0].shape[1] == 8
    run = subprocess.run(cmd + ["codec", "decode", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.wav"),
                                "--tokenizer", tok, "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.startswith("mimo-audio: error:")


def test_progress_bar_only_on_a_terminal(tmp_path, tok, clip, monkeypatch, capsys):
    import mimo_audio.cli as cli

    monkeypatch.setattr(cli, "LONG_AUDIO_SECONDS", 0.0)  # treat the short clip as long
    argv = ["codec", "roundtrip", str(clip), "-o", str(tmp_path / "o.wav"), "--tokenizer", tok, "--device", "cpu"]
    assert main(argv) == 0
    assert "encoding" not in capsys.readouterr().err  # stderr is not a terminal under pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "encoding" in err and "decoding" in err
