"""Checkpoint access: local folders, hub ids served from the Hugging Face cache (offline), clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from mimo_audio.checkpoint import parse_device, parse_dtype, resolve
from mimo_audio.errors import CheckpointError


def _fake_hub_cache(root, repos: dict) -> None:
    """Lay out ``root`` like huggingface_hub's cache: models--org--name/{refs/main, snapshots/<rev>/...}."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    for repo_id, folder in repos.items():
        base = root / ("models--" + repo_id.replace("/", "--"))
        (base / "refs").mkdir(parents=True)
        (base / "refs" / "main").write_text(rev)
        shutil.copytree(folder, base / "snapshots" / rev)


def test_hub_ids_load_from_the_offline_cache(fixture_path, tmp_path):
    """Every hub-loading path (tokenizer, LM, text tokenizer, pipeline) resolves a hub id from the cache alone."""
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, {"XiaomiMiMo/MiMo-Audio-Tokenizer": fixture_path / "tokenizer",
                            "XiaomiMiMo/MiMo-Audio-7B-Instruct": fixture_path / "lm"})
    script = textwrap.dedent(f"""
        import torch
        from mimo_audio import AudioTokenizer, MimoAudio, MimoAudioLM
        from mimo_audio.text import TextTokenizer
        codec = AudioTokenizer.from_pretrained("XiaomiMiMo/MiMo-Audio-Tokenizer", device="cpu")
        local = AudioTokenizer.from_pretrained({str(fixture_path / "tokenizer")!r}, device="cpu")
        assert all(torch.equal(a, b) for a, b in zip(codec.state_dict().values(), local.state_dict().values()))
        lm = MimoAudioLM.from_pretrained("XiaomiMiMo/MiMo-Audio-7B-Instruct", device="cpu")
        tok = TextTokenizer.from_folder("XiaomiMiMo/MiMo-Audio-7B-Instruct")
        mimo = MimoAudio.from_pretrained("XiaomiMiMo/MiMo-Audio-7B-Instruct",
                                         tokenizer="XiaomiMiMo/MiMo-Audio-Tokenizer", device="cpu")
        print("OK", lm.config.vocab_size, tok.ids.empty, type(mimo).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK")

    missing = "import mimo_audio.checkpoint as c; c.resolve('XiaomiMiMo/Not-In-Cache')"
    run = subprocess.run([sys.executable, "-c", missing], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "CheckpointError" in run.stderr and "XiaomiMiMo/Not-In-Cache" in run.stderr
    assert "mimo-audio download" in run.stderr  # the message names the fix


def test_local_paths(tmp_path, fixture_path):
    assert resolve(fixture_path / "lm") == fixture_path / "lm"
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        resolve(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        resolve("./relative/missing")
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve(f)


def test_dtype_and_device_parsing():
    import torch

    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float32") is torch.float32
    assert parse_dtype(None) is None and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(CheckpointError, match="unknown dtype"):
        parse_dtype("float8")
    assert parse_device("cpu").type == "cpu"
    with pytest.raises(CheckpointError, match="unknown device"):
        parse_device("tpu:0:1")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            parse_device("cuda")
