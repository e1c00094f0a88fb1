"""Text tokenizer: special ids resolved by name, encode/decode behaviour, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from mimo_audio.errors import CheckpointError
from mimo_audio.text import SPECIAL_TOKENS, TextTokenizer


@pytest.fixture(scope="module")
def tok(fixture_path):
    return TextTokenizer.from_folder(fixture_path / "lm")


def test_special_ids_match_manifest(tok, manifest):
    by_token = tok.ids.by_token()
    expected = manifest["special_ids"]
    unknown = set(expected) - set(SPECIAL_TOKENS.values())
    assert not unknown, f"manifest lists special tokens this module does not resolve: {unknown}"
    for text, idx in expected.items():
        assert by_token[text] == idx, text
    assert len(set(by_token.values())) == len(by_token)


def test_eos_and_pad_come_from_the_tokenizer_config(tok, fixture_path):
    cfg = json.loads((fixture_path / "lm" / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = cfg.get("eos_token")
    eos = eos["content"] if isinstance(eos, dict) else eos
    assert tok.ids.eos == tok.encode(eos)[0]
    pad = cfg.get("pad_token")
    if pad:
        pad = pad["content"] if isinstance(pad, dict) else pad
        assert tok.ids.pad == tok.encode(pad)[0]


def test_specials_inside_text_become_single_ids(tok):
    ids = tok.ids
    out = tok.encode("<|im_start|>user\n<|sostm|>")
    assert out[0] == ids.im_start and out[-1] == ids.sostm
    assert ids.im_start not in tok.encode("user")
    # no special token is added around plain text
    plain = tok.encode("hello")
    assert plain and all(i not in ids.by_token().values() for i in plain)
    assert tok.encode("") == []


def test_decode_round_trip_and_tolerance(tok):
    text = "Hello world, 今天天气真好."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    with_junk = [-100, *ids[:2], tok.size + 3, 10**9, *ids[2:], -1]
    assert tok.decode(with_junk) == text
    assert tok.decode([tok.ids.sostm, *ids]) == "<|sostm|>" + text
    assert tok.decode([tok.ids.sostm, *ids], skip_special=True) == text


def test_missing_special_token_is_named(tmp_path, fixture_path):
    src = fixture_path / "lm"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp_path / name)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|eot|>"]
    vocab = data["model"]["vocab"]
    vocab.pop("<|eot|>", None)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"<\|eot\|>"):
        TextTokenizer.from_folder(tmp_path)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        TextTokenizer.from_folder(tmp_path)
