"""Parity: every ``prompt.<case>`` grid of the fixture, built from the manifest's inputs, matches exactly."""

from __future__ import annotations

import pytest
import torch

from mimo_audio.config import LMConfig
from mimo_audio.prompt import PromptBuilder
from mimo_audio.text import TextTokenizer


@pytest.fixture(scope="module")
def builder(fixture_path):
    tok = TextTokenizer.from_folder(fixture_path / "lm")
    return PromptBuilder(tok, LMConfig.from_file(fixture_path / "lm" / "config.json"))


def _clip(expected, config):
    """Audio argument "speech_N" -> the first C codebooks of expected["speech_N.codes"], unpadded."""

    def get(name):
        if name is None:
            return None
        return expected[f"{name}.codes"][:, : config.channels]

    return get


def _messages(case, clip):
    return [{**m, "audio": clip(m.get("audio"))} for m in case["messages"]]


def _kw(case, *names):
    return {n: case[n] for n in names if n in case}


# case name -> builder(pb, case, clip). Cases are matched by exact name; add a row when the fixture grows.
BUILDERS = {
    "asr": lambda pb, c, clip: pb.asr(clip(c["audio"]), **_kw(c, "template")),
    "tts": lambda pb, c, clip: pb.tts(c["text"], voice=clip(c.get("voice")), **_kw(c, "template")),
    "tts_zh": lambda pb, c, clip: pb.tts(c["text"], voice=clip(c.get("voice")), **_kw(c, "template")),
    "tts_lower": lambda pb, c, clip: pb.tts(c["text"], voice=clip(c.get("voice")), **_kw(c, "template")),
    "tts_upper": lambda pb, c, clip: pb.tts(c["text"], voice=clip(c.get("voice")), **_kw(c, "template")),
    "tts_instruct": lambda pb, c, clip: pb.tts_instruct(c["text"], c["instruct"], voice=clip(c.get("voice")),
                                                        **_kw(c, "template")),
    "tts_instruct_voice": lambda pb, c, clip: pb.tts_instruct(c["text"], c["instruct"], voice=clip(c.get("voice")),
                                                              **_kw(c, "template")),
    "tts_natural": lambda pb, c, clip: pb.tts_natural(c["text"], voice=clip(c.get("voice"))),
    "tts_natural_voice": lambda pb, c, clip: pb.tts_natural(c["text"], voice=clip(c.get("voice"))),
    "understand": lambda pb, c, clip: pb.understand(clip(c["audio"]), c["question"], thinking=c["thinking"]),
    "understand_think": lambda pb, c, clip: pb.understand(clip(c["audio"]), c["question"], thinking=c["thinking"]),
    "dialogue": lambda pb, c, clip: pb.dialogue(clip(c["audio"]), voice=clip(c.get("voice")),
                                                system_prompt=c.get("system_prompt")),
    "dialogue_system_voice": lambda pb, c, clip: pb.dialogue(clip(c["audio"]), voice=clip(c.get("voice")),
                                                             system_prompt=c.get("system_prompt")),
    "dialogue_multiturn": lambda pb, c, clip: pb.dialogue_multiturn(
        _messages(c, clip), voice=clip(c.get("voice")), system_prompt=c.get("system_prompt")),
    "dialogue_multiturn_short_text": lambda pb, c, clip: pb.dialogue_multiturn(
        _messages(c, clip), voice=clip(c.get("voice")), system_prompt=c.get("system_prompt")),
    "s2t_dialogue": lambda pb, c, clip: pb.s2t_dialogue(clip(c["audio"]), thinking=c["thinking"]),
    "s2t_dialogue_multiturn_think": lambda pb, c, clip: pb.s2t_dialogue_multiturn(
        _messages(c, clip), thinking=c["thinking"]),
    "text_dialogue": lambda pb, c, clip: pb.text_dialogue(c["text"], thinking=c["thinking"]),
    "text_dialogue_multiturn": lambda pb, c, clip: pb.text_dialogue_multiturn(
        _messages(c, clip), thinking=c["thinking"]),
    "icl_s2s": lambda pb, c, clip: pb.few_shot(
        [{**e, "input": clip(e["input"]), "output": clip(e["output"])} for e in c["examples"]],
        clip(c["audio"]), instruction=c.get("instruction")),
}


def test_every_fixture_case_has_a_builder(manifest, expected):
    missing = sorted(set(manifest["cases"]) - set(BUILDERS))
    assert not missing, f"fixture prompt cases without a builder in this test: {missing}"
    without_grid = sorted(k for k in manifest["cases"] if f"prompt.{k}" not in expected)
    assert not without_grid, f"manifest cases without an expected grid: {without_grid}"


def _case_names():
    import json

    from conftest import fixture_dir

    path = fixture_dir() / "expected" / "manifest.json"
    return sorted(json.loads(path.read_text(encoding="utf-8"))["cases"])


@pytest.mark.parametrize("name", _case_names())
def test_prompt_grid_matches_reference(name, builder, manifest, expected):
    if name not in BUILDERS:
        pytest.fail(f"no builder for fixture case {name!r}; add one to BUILDERS")
    case = manifest["cases"][name]
    grid = BUILDERS[name](builder, case, _clip(expected, builder.layout))
    want = expected[f"prompt.{name}"]
    assert grid.dtype == torch.long
    assert grid.shape == want.shape, (name, tuple(grid.shape), tuple(want.shape))
    if not torch.equal(grid, want):
        diff = (grid != want).nonzero()
        r, col = (int(x) for x in diff[0])
        pytest.fail(f"{name}: {len(diff)} entries differ, first at row {r} column {col}: "
                    f"{int(grid[r, col])} vs reference {int(want[r, col])}")
