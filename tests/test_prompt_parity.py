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


def _arg(field, value, clip):
    """A manifest field as the builder takes it: clip names become code tensors, all else passes as is."""
    if field in ("audio", "voice"):
        return clip(value)
    if field == "messages":
        return [{**m, "audio": clip(m.get("audio"))} for m in value]
    if field == "examples":
        return [{**e, "input": clip(e["input"]), "output": clip(e["output"])} for e in value]
    return value


# Case-name prefix -> (PromptBuilder method, fields every such case must have, fields it may have). A case goes
# to the row with its longest prefix ("tts_instruct_voice" -> "tts_instruct"); each of its manifest fields is
# passed as the keyword argument of the same name, and a field the row does not name fails the case.
KINDS = {
    "asr": ("asr", "audio", "template"),
    "tts": ("tts", "text", "voice template"),
    "tts_instruct": ("tts_instruct", "text instruct", "voice template"),
    "tts_natural": ("tts_natural", "text", "voice"),
    "understand": ("understand", "audio question thinking", ""),
    "dialogue": ("dialogue", "audio", "voice system_prompt"),
    "dialogue_multiturn": ("dialogue_multiturn", "messages", "voice system_prompt"),
    "s2t_dialogue": ("s2t_dialogue", "audio thinking", ""),
    "s2t_dialogue_multiturn": ("s2t_dialogue_multiturn", "messages thinking", ""),
    "text_dialogue": ("text_dialogue", "text thinking", ""),
    "text_dialogue_multiturn": ("text_dialogue_multiturn", "messages thinking", ""),
    "icl_s2s": ("few_shot", "examples audio", "instruction"),
}


def _kind(name):
    """The longest KINDS key that is ``name`` or a "_"-separated prefix of it; None when there is none."""
    return max((k for k in KINDS if name == k or name.startswith(k + "_")), key=len, default=None)


def _build(pb, name, case, clip):
    method, required, optional = KINDS[_kind(name)]
    required, fields = set(required.split()), set(case)
    assert required <= fields <= required | set(optional.split()), \
        f"{name}: fields {sorted(fields)}, row {_kind(name)!r} needs {sorted(required)}, allows {optional!r}"
    return getattr(pb, method)(**{f: _arg(f, v, clip) for f, v in case.items()})


def test_every_fixture_case_has_a_builder(manifest, expected):
    missing = sorted(k for k in manifest["cases"] if _kind(k) is None)
    assert not missing, f"fixture prompt cases matching no KINDS row: {missing}"
    without_grid = sorted(k for k in manifest["cases"] if f"prompt.{k}" not in expected)
    assert not without_grid, f"manifest cases without an expected grid: {without_grid}"


def _case_names():
    import json

    from conftest import fixture_dir

    path = fixture_dir() / "expected" / "manifest.json"
    return sorted(json.loads(path.read_text(encoding="utf-8"))["cases"])


@pytest.mark.parametrize("name", _case_names())
def test_prompt_grid_matches_reference(name, builder, manifest, expected):
    if _kind(name) is None:
        pytest.fail(f"fixture case {name!r} matches no KINDS row; add one")
    grid = _build(builder, name, manifest["cases"][name], _clip(expected, builder.layout))
    want = expected[f"prompt.{name}"]
    assert grid.dtype == torch.long
    assert grid.shape == want.shape, (name, tuple(grid.shape), tuple(want.shape))
    if not torch.equal(grid, want):
        diff = (grid != want).nonzero()
        r, col = (int(x) for x in diff[0])
        pytest.fail(f"{name}: {len(diff)} entries differ, first at row {r} column {col}: "
                    f"{int(grid[r, col])} vs reference {int(want[r, col])}")
