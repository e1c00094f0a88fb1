"""Parity of the LM and the generation engine with the reference fixture (data-driven from its manifest)."""

from __future__ import annotations

import pytest
import torch

from mimo_audio.generate import GenerationConfig, generate
from mimo_audio.lm import MimoAudioLM


@pytest.fixture(scope="module")
def lm(fixture_path):
    return MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu")


@pytest.fixture(scope="module")
def empty_id(manifest):
    return manifest["special_ids"]["<|empty|>"]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_forward_every_prefix(lm, manifest, expected, empty_id):
    case = manifest["forward"]["prompt"]
    grid = expected[f"prompt.{case}"][None]
    with torch.no_grad():
        out = lm(grid, empty_id=empty_id)
    assert _rel(out.text_logits[0], expected[f"forward.{case}.text_logits"]) <= 1e-5
    assert _rel(out.local_inputs[0], expected[f"forward.{case}.local_hidden"]) <= 1e-5
    # row n is computed over groups 0..n only: check a few prefixes explicitly (causality)
    n_groups = grid.shape[-1] // lm.config.group_size
    for n in sorted({1, n_groups // 2, n_groups - 1}):
        with torch.no_grad():
            pre = lm(grid[..., : n * lm.config.group_size], empty_id=empty_id)
        assert _rel(pre.text_logits[0, -1], expected[f"forward.{case}.text_logits"][n - 1]) <= 1e-5


def test_local_tokens(lm, expected, empty_id):
    inputs, tokens = expected["local.inputs"], expected["local.tokens"]
    bans = [ban for _, _, ban in lm.delay_plan(lm.device)]
    with torch.no_grad():
        codes = lm.decode_patch(inputs.to(lm.dtype), lambda p, logits: (logits + bans[p]).argmax(-1))
    assert torch.equal(codes, tokens)


def _stop_ids(spec, manifest, vocab, empty_id):
    if "stop_ids" in spec:
        return tuple(int(i) for i in spec["stop_ids"])
    stop = spec["stop"]
    if isinstance(stop, str):  # "every id in [0, vocab_size) except <|empty|>"
        assert "except" in stop and "<|empty|>" in stop, f"unknown stop rule {stop!r}"
        return tuple(i for i in range(vocab) if i != empty_id)
    return tuple(manifest["special_ids"][s] for s in stop)


@pytest.mark.parametrize("case", ["text", "stop", "speech"])
def test_generate(lm, manifest, expected, empty_id, case):
    spec = manifest["generate"][case]
    cfg = GenerationConfig(max_new_tokens=spec["max_new_groups"], min_new_tokens=spec.get("min_new_groups", 0),
                           stop_ids=_stop_ids(spec, manifest, lm.config.vocab_size, empty_id))
    out = generate(lm, [expected[f"prompt.{spec['prompt']}"]], cfg, empty_id=empty_id, greedy=True)[0]
    ref = expected[f"generate.{case}"]
    assert out.shape == ref.shape
    assert torch.equal(out, ref)


def test_released_folder_gives_the_empty_id(lm, manifest, expected, tmp_path, fixture_path):
    """A folder with tokenizer.json supplies <|empty|>: forward and generate need no empty_id; a folder without
    one keeps the clear error."""
    import shutil

    from mimo_audio import PromptError

    assert lm.empty_id == manifest["special_ids"]["<|empty|>"]
    grid = expected[f"prompt.{manifest['forward']['prompt']}"][None]
    with torch.no_grad():
        assert lm(grid).text_logits.shape[1] == grid.shape[-1] // lm.config.group_size
    spec = manifest["generate"]["stop"]
    cfg = GenerationConfig(max_new_tokens=spec["max_new_groups"], min_new_tokens=spec.get("min_new_groups", 0),
                           stop_ids=_stop_ids(spec, manifest, lm.config.vocab_size, lm.empty_id))
    assert torch.equal(generate(lm, [expected[f"prompt.{spec['prompt']}"]], cfg, greedy=True)[0],
                       expected["generate.stop"])
    bare = tmp_path / "lm"
    bare.mkdir()
    for f in (fixture_path / "lm").iterdir():
        if "tokenizer" not in f.name and "special_tokens" not in f.name:
            shutil.copy(f, bare / f.name)
    no_tok = MimoAudioLM.from_pretrained(bare, device="cpu")
    assert no_tok.empty_id is None
    with pytest.raises(PromptError, match="empty_id"):
        no_tok(grid)
