"""Manifests, prepared shards and the training loader, on synthetic data made here (tones, espeak-ng speech
where installed, the fixture clips) with the tiny fixture tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("pyarrow", reason="the data tools need the train extra: pip install -e '.[train]'")

from mimo_audio.data import DataError  # noqa: E402
from mimo_audio.data.loader import Loader, ShardSet, collate, parse_tasks  # noqa: E402
from mimo_audio.data.manifest import open_manifest  # noqa: E402
from mimo_audio.data.prepare import Preparer, prepare, shard_name  # noqa: E402


@pytest.fixture(scope="module")
def tok_dir(fixture_path) -> Path:
    return fixture_path / "tokenizer"


@pytest.fixture(scope="module")
def codec(tok_dir):
    from mimo_audio.codec import AudioTokenizer

    return AudioTokenizer.from_pretrained(tok_dir, device="cpu")


def tone(path: Path, seconds: float, freq: float = 220.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def speech(path: Path, text: str) -> Path:
    """espeak-ng speech where installed, else a tone of a length that grows with the text."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        return path
    return tone(path, 0.3 + 0.06 * len(text), freq=180 + len(text))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fixture_path):
    """A pairs manifest with good items and one of each bad kind, audio in a subfolder (relative paths)."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "clips").mkdir()
    texts = ["hello there", "good morning", "a short test", "the quick brown fox", "one two three",
             "mimo audio", "seven", "speech data"]
    rows = []
    for i, text in enumerate(texts):
        speech(d / "clips" / f"s{i}.wav", text)
        rows.append({"audio": f"clips/s{i}.wav", "text": text, "speaker": f"spk{i % 2}", "language": "en",
                     "lang_id": i})
    tone(d / "clips" / "tone.wav", 1.0)
    rows.append({"audio": "clips/tone.wav", "caption": "a pure tone"})
    shutil.copy(fixture_path / "audio" / "speech_1_24k.wav", d / "clips" / "fix.wav")
    rows.append({"audio": "clips/fix.wav", "text": "fixture clip", "instruction": "speak slowly"})
    # bad items: missing file, unreadable, empty, too long, invalid JSON, no audio key
    (d / "clips" / "junk.wav").write_bytes(b"RIFF\x00\x00junk, not audio")
    sf.write(d / "clips" / "empty.wav", np.zeros(0, np.float32), 16000)
    tone(d / "clips" / "long.wav", 5.0)
    rows += [{"audio": "clips/nope.wav", "text": "x"}, {"audio": "clips/junk.wav", "text": "x"},
             {"audio": "clips/empty.wav", "text": "x"}, {"audio": "clips/long.wav", "text": "x"},
             "{not json", {"text": "no audio"}]
    return write_jsonl(d / "train.jsonl", rows)


def run_prepare(manifest, out, tok, **kw):
    """``tok``: the fixture tokenizer's folder, or the loaded one (saves loading it per run)."""
    kw.setdefault("max_seconds", 4.0)
    kw.setdefault("shard_size", 4)
    kw.setdefault("device", "cpu")
    return prepare(manifest, out, tok if hasattr(tok, "encode_loaded") else str(tok), **kw)


# ------------------------------------------------------------------------------------------------- manifests
def test_pairs_manifest_resolves_relative_paths_and_keeps_fields(corpus):
    m = open_manifest(corpus)
    assert m.format == "pairs" and len(m) == 16
    it = m[0]
    assert it.kind == "pair" and it.audio == [str(corpus.parent / "clips" / "s0.wav")]
    assert it.fields["text"] == "hello there" and it.fields["speaker"] == "spk0"
    assert it.fields["extra"] == {"lang_id": 0} and it.error is None
    assert m[8].fields["caption"] == "a pure tone" and m[8].fields["text"] is None
    assert "invalid JSON" in m[14].error and "no 'audio' key" in m[15].error
    assert m[14].source == "train.jsonl:15"


def test_chat_manifest_spec_8_4(tmp_path):
    tone(tmp_path / "q.wav", 0.5)
    tone(tmp_path / "r.wav", 0.7, freq=330)
    conv = {"messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "audio", "audio": "q.wav"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "thinking": True, "Chain-of-thought": "It is a tone.",
         "content": [{"type": "text", "text": "A tone."}, {"type": "audio", "audio": "r.wav"}]},
    ], "id": "conv-1"}
    bad = [{"messages": [{"role": "user", "content": "hi"}]},  # nothing to supervise
           [{"role": "robot", "content": "x"}],
           [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}, {"role": "assistant", "content": "x"}],
           [{"role": "user", "thinking": True, "content": "x"}, {"role": "assistant", "content": "y"}]]
    m = open_manifest(write_jsonl(tmp_path / "chat.jsonl", [conv, *bad]))
    assert m.format == "chat" and len(m) == 5
    it = m[0]
    assert it.error is None and it.id == "conv-1" and it.kind == "chat"
    assert it.audio == [str(tmp_path / "q.wav"), str(tmp_path / "r.wav")]
    sys_m, user, asst = it.messages
    assert sys_m["content"] == [{"type": "text", "text": "You are helpful."}]
    assert user["content"][0] == {"type": "audio", "index": 0}
    assert asst["thinking"] is True and asst["chain_of_thought"] == "It is a tone."
    assert asst["content"][1] == {"type": "audio", "index": 1}
    errors = [m[i].error for i in range(1, 5)]
    assert "no assistant message" in errors[0] and "role 'robot'" in errors[1]
    assert "'text' or 'audio'" in errors[2] and "only assistant" in errors[3]


def test_hf_dataset_folder(tmp_path, tok_dir, codec):
    datasets = pytest.importorskip("datasets")
    clips = [speech(tmp_path / f"h{i}.wav", t) for i, t in enumerate(["first clip", "second one"])]
    ds = datasets.Dataset.from_dict({"audio": [str(c) for c in clips], "sentence": ["first clip", "second one"],
                                     "speaker": ["a", "b"], "n": [1, 2]})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "hf"))
    m = open_manifest(tmp_path / "hf", text_column="sentence")
    assert m.format == "hf" and len(m) == 2
    assert m[1].fields["text"] == "second one" and m[1].fields["speaker"] == "b" and m[1].fields["extra"] == {"n": 2}
    summary = run_prepare(tmp_path / "hf", tmp_path / "out", codec, text_column="sentence")
    assert summary["written"] == 2 and summary["bad"] == 0
    rec = ShardSet(tmp_path / "out")[1]
    assert rec.text == "second one"
    from mimo_audio.audio import load_audio

    assert torch.equal(rec.codes[0], codec.encode_loaded(load_audio(clips[1]), 8).cpu())
    with pytest.raises(DataError, match="no column"):
        open_manifest(tmp_path / "hf", text_column="nope")


def test_unknown_manifest_is_refused(tmp_path):
    with pytest.raises(DataError, match="no such manifest"):
        open_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown manifest format"):
        open_manifest(tmp_path / "missing.jsonl", format="csv")
    (tmp_path / "latin.jsonl").write_bytes(b'\n  \n{"audio": "\xe9.wav"}\r\n\n{"audio": "b.wav"}')
    m = open_manifest(tmp_path / "latin.jsonl")
    assert len(m) == 2 and "not UTF-8" in m[0].error and m[0].source == "latin.jsonl:3"
    assert m[1].audio == [str(tmp_path / "b.wav")] and m[1].source == "latin.jsonl:5"  # no final newline
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert len(open_manifest(tmp_path / "empty.jsonl")) == 0


# ------------------------------------------------------------------------------------------------- prepare
def test_prepare_writes_codes_and_counts_bad_items(corpus, tmp_path, tok_dir, codec):
    summary = run_prepare(corpus, tmp_path / "sh", codec)
    assert summary["complete"] and summary["shards"] == 4 and summary["items"] == 16
    assert summary["written"] == 10 and summary["bad"] == 6
    assert summary["bad_by_reason"] == {"empty": 1, "invalid entry": 2, "missing file": 1, "too long": 1,
                                        "unreadable": 1}
    by_source = {b["source"]: b for b in summary["bad_items"]}
    assert by_source["train.jsonl:11"]["reason"] == "missing file"
    assert "nope.wav" in by_source["train.jsonl:11"]["detail"]
    assert json.loads((tmp_path / "sh" / "summary.json").read_text()) == summary
    shards = ShardSet(tmp_path / "sh")
    assert len(shards) == 10 and not shards.missing
    from mimo_audio.audio import load_audio

    rec = shards[0]
    assert rec.id == "train:1" and rec.text == "hello there" and rec.extra == {"lang_id": 0}
    expect = codec.encode_loaded(load_audio(corpus.parent / "clips" / "s0.wav"), 8).cpu()
    assert torch.equal(rec.codes[0], expect)  # batched encoding gives each clip's own codes
    assert shards[9].instruction == "speak slowly" and shards[8].caption == "a pure tone"
    assert not list((tmp_path / "sh").glob("*.part"))
    datasets = pytest.importorskip("datasets")  # a shard is a datasets table as it is
    ds = datasets.Dataset.from_file(str(tmp_path / "sh" / f"{shard_name(0, 4)}.arrow"))
    assert ds.num_rows == 4 and ds[0]["text"] == "hello there" and ds[0]["frames"] == [expect.shape[0]]


def test_prepare_chat_keeps_every_audio_part(tmp_path, codec):
    tone(tmp_path / "q.wav", 0.5)
    tone(tmp_path / "r.wav", 0.9, freq=330)
    conv = [{"role": "user", "content": [{"type": "audio", "audio": "q.wav"}]},
            {"role": "assistant", "thinking": False, "content": [{"type": "text", "text": "Hi."},
                                                                 {"type": "audio", "audio": "r.wav"}]}]
    run_prepare(write_jsonl(tmp_path / "c.jsonl", [conv]), tmp_path / "out", codec)
    rec = ShardSet(tmp_path / "out")[0]
    assert rec.kind == "chat" and [c.shape[0] for c in rec.codes] == [13, 23]
    assert rec.messages[1]["content"][1] == {"type": "audio", "index": 1} and rec.messages[1]["thinking"] is False


def test_prepare_resumes_after_a_kill_and_skips_finished_shards(corpus, tmp_path, tok_dir, monkeypatch):
    from mimo_audio.codec import AudioTokenizer

    calls = []
    real = AudioTokenizer.encode_loaded

    def dying(self, wav, *a, **kw):
        calls.append(len(wav))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of shard 1 (shard 0 needs two calls)
        return real(self, wav, *a, **kw)

    monkeypatch.setattr(AudioTokenizer, "encode_loaded", dying)
    out = tmp_path / "sh"
    with pytest.raises(KeyboardInterrupt):
        run_prepare(corpus, out, tok_dir, batch_seconds=2.0)
    done = sorted(p.name for p in out.glob("shard-*"))
    assert done == [f"{shard_name(0, 4)}.arrow", f"{shard_name(0, 4)}.json"]  # nothing half-written
    assert not list(out.glob(".*part"))
    # a SIGKILL during a write would leave the temporary file atomic_output was writing: the rerun removes it
    (out / f".{shard_name(1, 4)}.arrow.x1y2.part").write_bytes(b"half a shard")
    calls.clear()
    monkeypatch.setattr(AudioTokenizer, "encode_loaded", lambda self, wav, *a, **kw: (calls.append(len(wav)),
                                                                                        real(self, wav, *a, **kw))[1])
    summary = run_prepare(corpus, out, tok_dir, batch_seconds=2.0)
    assert summary["complete"] and summary["written"] == 10
    assert sum(calls) == 6  # only the good items of shards 1-3 were encoded again
    assert not list(out.glob(".*part"))
    run_prepare(corpus, tmp_path / "ref", tok_dir)
    a, b = ShardSet(out), ShardSet(tmp_path / "ref")
    assert [a[i].id for i in range(len(a))] == [b[i].id for i in range(len(b))]
    assert all(torch.equal(a[i].codes[0], b[i].codes[0]) for i in range(len(a)))
    calls.clear()
    assert run_prepare(corpus, out, tok_dir)["complete"] and calls == []  # all done: the codec is not even loaded
    with pytest.raises(DataError, match="other settings"):
        run_prepare(corpus, out, tok_dir, shard_size=5)


def test_prepare_ranks_take_disjoint_shards(corpus, tmp_path, codec, monkeypatch):
    out = tmp_path / "sh"
    monkeypatch.setenv("WORLD_SIZE", "3")
    for r in (2, 0):
        monkeypatch.setenv("RANK", str(r))
        s = run_prepare(corpus, out, codec, shard_size=3)
    assert not s["complete"] and s["shards"] == 6 and s["shards_done"] == 4
    sides = {json.loads(p.read_text())["shard"]: json.loads(p.read_text())["rank"] for p in out.glob("shard-*.json")}
    assert sides == {0: 0, 2: 2, 3: 0, 5: 2}
    assert ShardSet(out).missing == [1, 4]
    monkeypatch.setenv("RANK", "1")
    s = run_prepare(corpus, out, codec, shard_size=3)
    assert s["complete"] and s["written"] == 10
    ref = run_prepare(corpus, tmp_path / "one", codec, shard_size=3, rank=0, world_size=1)
    assert {k: v for k, v in s.items() if k != "bad_items"} == {k: v for k, v in ref.items() if k != "bad_items"}
    with pytest.raises(DataError, match="not in 0"):
        monkeypatch.setenv("RANK", "3")
        run_prepare(corpus, out, codec, shard_size=3)
    assert Preparer  # the class the docs name


def test_cli_data_prepare(corpus, tmp_path, tok_dir, capsys):
    from mimo_audio.cli import main

    rc = main(["data", "prepare", str(corpus), "-o", str(tmp_path / "sh"), "--tokenizer", str(tok_dir),
               "--device", "cpu", "--shard-size", "8", "--max-seconds", "4"])
    err = capsys.readouterr().err
    assert rc == 0 and "10 items written, 6 skipped" in err and "1 too long" in err
    assert "skipping train.jsonl:11 (missing file)" in err
    assert main(["data", "summary", str(tmp_path / "sh"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 10
    assert main(["data", "prepare", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x"),
                 "--tokenizer", str(tok_dir)]) == 2
    assert "no such manifest" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- loader
def test_parse_tasks():
    assert parse_tasks("asr:1,tts:1,continuation:0.5") == {"asr": 1.0, "tts": 1.0, "continuation": 0.5}
    assert parse_tasks(" asr , tts:2 ") == {"asr": 1.0, "tts": 2.0}
    for bad, msg in [("", "empty"), ("asr:x", "not a number"), ("asr:-1", ">= 0"), ("asr:1,asr:2", "twice"),
                     ("asr:0", "weight 0"), ("asr:1,,tts", "empty entry"), (":1", "no task name"),
                     ("asr:inf", "finite")]:
        with pytest.raises(DataError, match=msg):
            parse_tasks(bad)
    with pytest.raises(DataError, match="unknown task 'asx'"):
        parse_tasks("asx:1", known=["asr", "tts"])


def test_collate_right_pads_with_mask():
    a = (torch.ones(9, 8, dtype=torch.long), torch.full((9, 8), 5))
    b = (torch.full((9, 4), 2), torch.full((9, 4), 7))
    tokens, labels, mask = collate([a, b])
    assert tokens.shape == (2, 9, 8) and mask.tolist() == [[1, 1], [1, 0]]
    assert (tokens[1, :, 4:] == 0).all() and (labels[1, :, 4:] == -100).all() and (labels[1, :, :4] == 7).all()


def fake_example(task, rec):
    """A stand-in builder: length = the record's frames (+ a task-dependent header), values name the record."""
    n = 4 * (rec.codes[0].shape[0] // 4 + 1 + len(task))
    t = torch.full((9, n), rec.index, dtype=torch.long)
    return t, t.clone()


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory, codec):
    out = tmp_path_factory.mktemp("shards")
    run_prepare(corpus, out, codec)
    return ShardSet(out)


def batches_of(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(torch.equal(x.tokens, y.tokens) and torch.equal(x.attention_mask, y.attention_mask) and
               x.tasks == y.tasks for x, y in zip(a, b, strict=True))


def test_loader_is_deterministic_and_resumes_exactly(shards):
    mk = lambda seed=7: Loader(shards, "asr:1,tts:1,continuation:0.5", batch_size=3, window=2, seed=seed,
                               examples_per_epoch=20, example_fn=fake_example)
    full = batches_of(mk(), 17)  # crosses an epoch boundary (7 steps per epoch) and window boundaries
    assert len(mk()) == 7 and same(full, batches_of(mk(), 17))
    assert not same(full[:7], batches_of(mk(seed=8), 7))
    reordered = Loader(shards, "continuation:0.5,tts:1,asr:1", batch_size=3, window=2, seed=7,
                       examples_per_epoch=20, example_fn=fake_example)
    assert same(full[:7], batches_of(reordered, 7))  # the order a mixture is written in does not matter
    for cut in (1, 3, 7, 9):
        first = mk()
        head = batches_of(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint would hold
        resumed = mk()
        resumed.load_state_dict(state)
        assert same(head + batches_of(resumed, 17 - cut), full)
    with pytest.raises(DataError, match="saved loader state has seed=7"):
        Loader(shards, "asr", batch_size=4, example_fn=fake_example).load_state_dict(state)
    # each batch is made of similar lengths: within a window batches are length-sorted chunks
    for b in full:
        assert b.attention_mask.sum(1).tolist() == b.lengths
    epoch0 = full[:7]
    assert sum(len(b.ids) for b in epoch0) == 20
    mix = [t for b in epoch0 for t in b.tasks]
    assert set(mix) == {"asr", "tts", "continuation"}


def test_loader_ranks_split_each_epoch(shards, monkeypatch):
    mk = lambda rank, world: Loader(shards, "asr:1,continuation:1", batch_size=2, window=3, seed=1,
                                    examples_per_epoch=21, rank=rank, world_size=world, example_fn=fake_example)
    one = mk(0, 1)
    g_tasks, g_recs = one.plan(0)
    parts = [mk(r, 3) for r in range(3)]
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    from_env = mk(None, None)
    assert (from_env.rank, from_env.world_size) == (2, 3)
    assert {len(p) for p in parts} == {4}  # 7 examples each, batch 2: every rank makes the same steps
    for r, p in enumerate(parts):
        t, rec = p.plan(0)
        assert np.array_equal(t, g_tasks[r::3]) and np.array_equal(rec, g_recs[r::3])
    seen = sorted(i for p in parts for b in batches_of(p, 4) for i in b.ids)
    assert seen == sorted(shards[int(i)].id for i in g_recs)  # together the ranks see the epoch once


def test_loader_truncates_over_long_examples_and_refuses_impossible_mixtures(shards):
    lo = Loader(shards, "asr", batch_size=4, max_groups=5, example_fn=fake_example)
    epoch = batches_of(lo, len(lo))
    assert sum(b.truncated for b in epoch) == 10 and {b.tokens.shape[-1] for b in epoch} == {20}
    with pytest.raises(DataError, match="no record .* can feed task"):
        Loader(shards, "chat", batch_size=2, tokenizer=text_tok())
    with pytest.raises(DataError, match="no record -> example mapping for task"):
        Loader(shards, "few_shot", batch_size=2, tokenizer=text_tok())
    with pytest.raises(DataError, match="pass tokenizer="):
        Loader(shards, "asr", batch_size=2)


_TOK = []


def text_tok():
    if not _TOK:
        from mimo_audio.tasks import demo_builder

        _TOK.append(demo_builder())
    return _TOK[0]


def direct(task, rec, pb):
    """The example as the task table builds it from the record's fields, without the loader."""
    from mimo_audio.tasks import get_task

    a = rec.codes[0]
    kw = {"asr": dict(audio=a, text=rec.text, language="en"), "tts": dict(text=rec.text, audio=a),
          "tts_instruct": dict(text=rec.text, instruct=rec.instruction, audio=a),
          "continuation": dict(audio=a), "caption": dict(audio=a, caption=rec.caption),
          "interleaved": dict(text=rec.text, audio=a)}[task]
    return get_task(task).example(pb, **kw)


def test_loader_builds_task_table_examples(shards):
    pb = text_tok()
    mix = "asr:1,tts:1,tts_instruct:1,continuation:0.5,caption:1,interleaved:0.5"
    lo = Loader(shards, mix, batch_size=4, window=2, seed=3, tokenizer=pb, examples_per_epoch=40)
    seen = set()
    for b in batches_of(lo, len(lo)):
        assert b.tokens.shape[0] == b.labels.shape[0] == b.attention_mask.shape[0] == len(b.ids)
        assert b.tokens.shape[1] == 9 and b.tokens.shape[2] == 4 * b.attention_mask.shape[1]
        for row, (task, rid, n) in enumerate(zip(b.tasks, b.ids, b.lengths)):
            rec = shards[[shards[i].id for i in range(len(shards))].index(rid)]
            ex = direct(task, rec, pb)
            assert ex.groups == n
            assert torch.equal(b.tokens[row, :, : 4 * n], ex.tokens) and torch.equal(b.labels[row, :, : 4 * n], ex.labels)
            assert (b.labels[row, :, 4 * n:] == -100).all() and (b.tokens[row, :, 4 * n:] == 0).all()
            seen.add(task)
            # eligibility: instruction TTS only from records with an instruction, captions only with a caption
            assert task != "tts_instruct" or rec.instruction
            assert task != "caption" or rec.caption
    assert seen == set(parse_tasks(mix))


def test_chat_records_become_chat_examples_and_feed_the_lm(tmp_path, codec, fixture_path):
    from mimo_audio.lm import MimoAudioLM
    from mimo_audio.tasks import get_task

    tone(tmp_path / "q.wav", 0.6)
    tone(tmp_path / "r.wav", 1.1, freq=330)
    spoken = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "q.wav"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "A low tone."},
                                                             {"type": "audio", "audio": "r.wav"}]}]}
    thinking = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "audio", "audio": "q.wav"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "thinking": True, "Chain-of-thought": "It hums.", "content": "A tone."}]
    run_prepare(write_jsonl(tmp_path / "c.jsonl", [spoken, thinking]), tmp_path / "sh", codec)
    shards = ShardSet(tmp_path / "sh")
    pb = text_tok()
    lo = Loader(shards, "chat", batch_size=2, tokenizer=pb)
    (b,) = batches_of(lo, 1)
    q = shards[0].codes[0]
    expect = {
        shards[0].id: get_task("chat").example(pb, [{"role": "user", "text": None, "audio": q},
                                                    {"role": "assistant", "text": "A low tone.",
                                                     "audio": shards[0].codes[1]}]),
        shards[1].id: get_task("chat").example(pb, [{"role": "system", "text": "Be brief.", "audio": None},
                                                    {"role": "user", "text": "What?", "audio": shards[1].codes[0]},
                                                    {"role": "assistant", "text": "A tone.", "audio": None,
                                                     "thinking": True, "reasoning": "It hums."}]),
    }
    for row, rid in enumerate(b.ids):
        ex, n = expect[rid], b.lengths[row]
        assert torch.equal(b.tokens[row, :, : 4 * n], ex.tokens) and torch.equal(b.labels[row, :, : 4 * n], ex.labels)
    # the batch is what MimoAudioLM.forward takes; padding changes nothing for the shorter row
    lm = MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu")
    empty = pb.ids.empty
    with torch.no_grad():
        out = lm(b.tokens, empty_id=empty, attention_mask=b.attention_mask, labels=b.labels)
        assert torch.isfinite(out.loss)
        short = int(torch.tensor(b.lengths).argmin())
        n = b.lengths[short]
        alone = lm(b.tokens[short:short + 1, :, : 4 * n], empty_id=empty)
        torch.testing.assert_close(out.text_logits[short, :n], alone.text_logits[0], atol=1e-4, rtol=1e-4)


def test_missing_train_extra_says_what_to_install(monkeypatch, tmp_path):
    import sys

    from mimo_audio.data import require

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(DataError, match=r'pip install "mimo-audio\[train\]"'):
        require("pyarrow")
    with pytest.raises(DataError, match="train extra"):
        prepare(tmp_path / "m.jsonl", tmp_path / "out")


def test_prepare_under_torchrun(tmp_path, tok_dir, fixture_path):
    if not shutil.which("torchrun"):
        pytest.skip("torchrun is not on PATH")
    rows = []
    for i in range(5):
        shutil.copy(fixture_path / "audio" / f"speech_{i % 3}.wav", tmp_path / f"c{i}.wav")
        rows.append({"audio": f"c{i}.wav", "text": f"clip {i}"})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = subprocess.run(["torchrun", "--nproc-per-node", "2", "--no-python", "mimo-audio", "data", "prepare",
                          str(manifest), "-o", str(tmp_path / "sh"), "--tokenizer", str(tok_dir), "--shard-size", "1",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    sides = sorted((json.loads(p.read_text())["shard"], json.loads(p.read_text())["rank"])
                   for p in (tmp_path / "sh").glob("shard-*.json"))
    assert sides == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)]
    from mimo_audio.data.prepare import write_summary

    assert write_summary(tmp_path / "sh")["written"] == 5
    assert [ShardSet(tmp_path / "sh")[i].text for i in range(5)] == [f"clip {i}" for i in range(5)]


def test_loader_benchmark_runs_and_bucketing_beats_unsorted_batches():
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_loader.py"
    out = subprocess.run([sys.executable, str(script), "--records", "300", "--steps", "8", "--batch-size", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows[int(cells[1])] = [float(c.replace(",", "")) for c in cells[2:]]
    assert set(rows) == {1, 8, 32, 128}
    assert all(r[0] > 0 and r[2] > 0 and 0 < r[3] <= 1 for r in rows.values())
    assert rows[128][3] > rows[1][3]  # sorting by length inside a window cuts the padding
    assert "first-fit-decreasing" in out.stdout


def test_loader_replaces_a_record_its_task_cannot_use(shards):
    from mimo_audio.errors import PromptError

    def picky(task, rec):
        if rec.id == "train:3":
            raise PromptError("the transcript is empty")
        return fake_example(task, rec)

    mk = lambda: Loader(shards, "asr", batch_size=5, example_fn=picky, examples_per_epoch=10)
    lo = mk()
    ids = [i for b in batches_of(lo, len(lo)) for i in b.ids]
    assert len(ids) == 10 and "train:3" not in ids and ids.count("train:4") == 2  # the next record stands in
    assert lo.bad_records == {("asr", "train:3"): "the transcript is empty"}
    assert [i for b in batches_of(mk(), 2) for i in b.ids] == ids  # still deterministic


def test_prepare_killed_with_sigkill_resumes(tmp_path, tok_dir, fixture_path):
    import signal
    import sys
    import time

    rows = []
    for i in range(10):
        shutil.copy(fixture_path / "audio" / f"speech_{i % 3}_24k.wav", tmp_path / f"c{i}.wav")
        rows.append({"audio": f"c{i}.wav", "text": f"clip {i}"})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "sh"
    cmd = [sys.executable, "-m", "mimo_audio.cli", "data", "prepare", str(manifest), "-o", str(out),
           "--tokenizer", str(tok_dir), "--shard-size", "1", "--device", "cpu", "--batch-seconds", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("shard-*.json")))
    if proc.returncode != -signal.SIGKILL or done == 10:
        pytest.skip("the run finished before it could be killed")
    assert len(ShardSet(out)) == done  # every finished shard opens whole
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "10 items written" in finished.stderr and "complete" in finished.stderr
    assert not list(out.glob(".*part"))
    s = ShardSet(out)
    assert [s[i].text for i in range(10)] == [f"clip {i}" for i in range(10)]


def test_an_entry_the_reader_fails_on_is_a_bad_item(tmp_path, codec):
    from mimo_audio.data.manifest import Item, Manifest

    clip = tone(tmp_path / "t.wav", 0.5)

    class Flaky(Manifest):
        format, name = "hf", str(tmp_path / "flaky")

        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                raise RuntimeError("corrupt row")
            return Item(id=f"f:{i}", source=f"flaky[{i}]", kind="pair", audio=[str(clip)],
                        audio_names=[str(clip)], fields={"text": "x", "extra": {}})

    s = run_prepare(Flaky(), tmp_path / "sh", codec)
    assert s["written"] == 2 and s["bad_by_reason"] == {"invalid entry": 1}
    assert "corrupt row" in s["bad_items"][0]["detail"]
