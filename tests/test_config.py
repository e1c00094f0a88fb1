import dataclasses
import json

import pytest

from mimo_audio.config import LMConfig, TokenizerConfig
from mimo_audio.errors import CheckpointError


def _as_field(value):
    """A config.json value as the config holds it: dash strings and lists become tuples of ints."""
    if isinstance(value, str) and "-" in value:
        return tuple(int(p) for p in value.split("-"))
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("cls,folder", [(LMConfig, "lm"), (TokenizerConfig, "tokenizer")])
def test_configs_read_the_fixture(fixture_path, cls, folder):
    raw = json.loads((fixture_path / folder / "config.json").read_text())
    cfg = cls.from_file(fixture_path / folder / "config.json")
    read = [f.name for f in dataclasses.fields(cls) if f.name in raw]
    assert len(read) > 20
    for name in read:
        assert getattr(cfg, name) == _as_field(raw[name]), name


def test_dash_strings_and_lists_agree():
    a = LMConfig.from_dict({"speech_vocab_size": "1025-1025-129-129-129-129-129-129"})
    b = LMConfig.from_dict({"speech_vocab_size": [1025, 1025, 129, 129, 129, 129, 129, 129]})
    assert a.speech_vocab_size == b.speech_vocab_size == (1025, 1025, 129, 129, 129, 129, 129, 129)


def test_absent_keys_take_class_defaults_and_unknown_keys_are_ignored():
    cfg = TokenizerConfig.from_dict({"d_model": 64, "some_future_key": 3})
    assert cfg.d_model == 64
    assert cfg.avg_pooler == 1 and cfg.n_mels == 80  # reference class defaults
    lm = LMConfig.from_dict({"num_attention_heads": 8, "hidden_size": 256})
    assert lm.num_key_value_heads == 8 and lm.head_dim == 32


def test_short_codebook_list_is_extended():
    cfg = TokenizerConfig.from_dict({"num_quantizers": 4, "codebook_size": [1024, 128]})
    assert cfg.codebook_sizes == (1024, 128, 128, 128)


def test_bad_config_values_name_the_field():
    with pytest.raises(CheckpointError, match="speech_vocab_size"):
        LMConfig.from_dict({"speech_vocab_size": "a-b"})
    with pytest.raises(CheckpointError, match="vocoder_attn_window_size"):
        TokenizerConfig.from_dict({"vocoder_attn_window_size": [1, 2, 3]})
