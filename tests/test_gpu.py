"""CUDA checks (marker ``gpu``; skipped cleanly without a CUDA device, as on CI).

float32 on CUDA must reproduce the fixture like the CPU does; bfloat16 must stay close to float32.
"""

from __future__ import annotations

import pytest
import torch

from mimo_audio.codec import AudioTokenizer
from mimo_audio.config import LMConfig
from mimo_audio.generate import GenerationConfig, generate
from mimo_audio.lm import MimoAudioLM

pytestmark = pytest.mark.gpu


def _first_clip(expected):
    return next(k.removesuffix(".decoded") for k in expected if k.endswith(".decoded"))


def test_codec_float32_on_cuda_matches_the_fixture(fixture_path, expected):
    model = AudioTokenizer.from_pretrained(fixture_path / "tokenizer", device="cuda", dtype="float32")
    n_lm = LMConfig.from_file(fixture_path / "lm" / "config.json").audio_channels
    name = _first_clip(expected)
    codes = model.encode_mel(expected[f"{name}.mel"].cuda(), num_quantizers=n_lm).cpu()
    assert (codes == expected[f"{name}.codes"][:, :n_lm]).float().mean() >= 0.99
    wav = model.decode(expected[f"{name}.codes"][:, :n_lm].cuda()).cpu()
    assert (wav - expected[f"{name}.decoded"]).abs().max() <= 1e-4  # TF32 is off by default for fp32 matmuls


def test_codec_bfloat16_on_cuda_stays_close(fixture_path, expected):
    model = AudioTokenizer.from_pretrained(fixture_path / "tokenizer", device="cuda", dtype="bfloat16")
    n_lm = LMConfig.from_file(fixture_path / "lm" / "config.json").audio_channels
    name = _first_clip(expected)
    ref = expected[f"{name}.decoded"]
    wav = model.decode(expected[f"{name}.codes"][:, :n_lm].cuda()).float().cpu()
    assert float((wav - ref).norm() / ref.norm()) < 0.05


def test_lm_greedy_generation_on_cuda_matches_the_fixture(fixture_path, manifest, expected):
    lm = MimoAudioLM.from_pretrained(fixture_path / "lm", device="cuda", dtype="float32")
    empty = manifest["special_ids"]["<|empty|>"]
    spec = manifest["generate"]["text"]
    stop = tuple(manifest["special_ids"][s] for s in spec["stop"])
    cfg = GenerationConfig(max_new_tokens=spec["max_new_groups"], stop_ids=stop)
    out = generate(lm, [expected[f"prompt.{spec['prompt']}"]], cfg, empty_id=empty, greedy=True)[0].cpu()
    assert torch.equal(out, expected["generate.text"])


def test_lm_bfloat16_on_cuda_runs(fixture_path, manifest, expected):
    lm = MimoAudioLM.from_pretrained(fixture_path / "lm", device="cuda", dtype="bfloat16")
    empty = manifest["special_ids"]["<|empty|>"]
    grid = expected[f"prompt.{manifest['forward']['prompt']}"][None].cuda()
    with torch.no_grad():
        out = lm(grid, empty_id=empty)
    ref = expected[f"forward.{manifest['forward']['prompt']}.text_logits"]
    got = out.text_logits[0].float().cpu()
    assert torch.isfinite(got).all()
    assert float((got - ref).norm() / ref.norm()) < 0.05
