"""Speed from outside: the compile switch (argument, CLI flag, environment) and the compiled step functions giving
the eager tokens on the fixture (inductor on the CPU; CUDA graphs on CUDA)."""

from __future__ import annotations

import pytest
import torch

from mimo_audio import PromptError
from mimo_audio.generate import GenerationConfig, compile_enabled, generate, step_functions
from mimo_audio.lm import MimoAudioLM


def test_the_switch(monkeypatch):
    monkeypatch.delenv("MIMO_AUDIO_COMPILE", raising=False)
    assert compile_enabled() is False
    for value, want in (("1", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv("MIMO_AUDIO_COMPILE", value)
        assert compile_enabled() is want
    assert compile_enabled(False) is False  # the argument wins over the environment
    monkeypatch.setenv("MIMO_AUDIO_COMPILE", "maybe")
    with pytest.raises(PromptError, match="MIMO_AUDIO_COMPILE"):
        compile_enabled()


def test_cli_flag_reaches_the_model(monkeypatch):
    from mimo_audio import cli

    seen = {}

    def fake(model, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr("mimo_audio.pipeline.MimoAudio.from_pretrained", staticmethod(fake))
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "x.wav", "--model", "m", "--compile"])
    assert seen.get("compile") is True


def test_eager_step_functions_are_the_models_own():
    lm = MimoAudioLM.__new__(MimoAudioLM)
    torch.nn.Module.__init__(lm)
    assert step_functions(lm, False) == (lm.backbone_step, lm.decode_patch)


@pytest.mark.slow
def test_compiled_generation_equals_eager_on_the_fixture(fixture_path, manifest, expected):
    """Inductor compiles the backbone step and the whole patch-decoder loop (about a minute on 2 CPU cores)."""
    lm = MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu")
    spec = manifest["generate"]["text"]  # free greedy generation: text and audio groups
    stop = tuple(manifest["special_ids"][s] for s in spec["stop"])
    cfg = GenerationConfig(max_new_tokens=spec["max_new_groups"], stop_ids=stop)
    prompt = expected[f"prompt.{spec['prompt']}"]
    eager = generate(lm, [prompt], cfg, greedy=True)[0]
    compiled = generate(lm, [prompt], cfg, greedy=True, compile=True)[0]
    assert torch.equal(compiled, eager)
    assert torch.equal(compiled, expected["generate.text"])
    assert len(lm._compiled_steps) == 1
