"""Tokenizer training (mimo_audio.train.codec) on the small config, synthetic audio, CPU: overfitting, codebook
usage, stage 2, resume, export, bad clips, bad settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from dist_helpers import leave_worker
from mimo_audio.codec import AudioTokenizer
from mimo_audio.train.codec import make_codec_config, read_config, train_codec
from mimo_audio.train.config import TrainConfigError

RATE = 24000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synth(seed: int, seconds: float = 1.0) -> np.ndarray:
    """A voiced-like clip: harmonics of a gliding f0 under a syllable envelope, plus a noise burst and hiss."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(rng.uniform(0.2, 1.0) / h * np.sin(h * phase) for h in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6))
    burst = (np.abs(t - rng.uniform(0, seconds)) < 0.05) * rng.standard_normal(t.size) * 0.3
    return (0.25 * x * env + burst + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def manifest(folder, n=4, seconds=1.0, texts=True, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        sf.write(folder / f"c{i}.wav", synth(i, seconds), RATE)
        lines.append(json.dumps({"audio": f"c{i}.wav", "text": f"clip number {i}" if texts else None}))
    (folder / "m.jsonl").write_text("\n".join(list(lines) + list(extra_lines)) + "\n")
    return str(folder / "m.jsonl")


def settings(tmp_path, name, data, **kw):
    base = dict(data=data, output=str(tmp_path / name), max_steps=3, batch_size=2, segment_seconds=0.5,
                progress=False, save_every=100, kmeans_iters=2, stft_ffts=(256, 128), mpd_max_channels=32)
    base.update(kw)
    return make_codec_config(read_config("small"), **base)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_small_config_sizes():
    cfg = make_codec_config(read_config("small"))
    c = cfg.model_config()
    codec = AudioTokenizer(c)
    params = sum(p.numel() for p in codec.parameters())
    assert 1e6 < params < 10e6, params
    assert c.sampling_rate == 24000 and RATE / c.samples_per_code == 25 and len(c.codebook_sizes) >= 8
    assert c.codebook_sizes[:8] == (1024, 1024, 128, 128, 128, 128, 128, 128)  # what the LM reads
    released = make_codec_config(read_config("released")).model_config()
    assert released.d_model == 1280 and released.num_quantizers == 20 and released.encoder_layers == 32


def test_stage1_overfits_a_short_clip(tmp_path):
    data = manifest(tmp_path / "d", n=1, seconds=0.5)
    recs = train_codec(settings(tmp_path, "o", data, max_steps=40, lr=3e-3, quantizer_dropout=0.0))
    first, last = recs[0]["loss_recon"], min(r["loss_recon"] for r in recs[-5:])
    assert last <= 0.5 * first, (first, last)
    got = lines(tmp_path / "o" / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 41))
    keys = {"step", "loss", "loss_recon", "loss_commit", "loss_a2t", "mel_distance", "codebook_usage",
            "codebook_perplexity", "audio_s_per_s", "skipped_clips"}
    assert keys <= set(got[0]) and len(got[0]["codebook_usage"]) == 8
    assert got[-1]["loss_a2t"] > 0  # the transcript is predicted from the quantized features
    # L = 10 * A2T + recon + commit
    r = got[-1]
    assert r["loss"] == pytest.approx(10 * r["loss_a2t"] + r["loss_recon"] + r["loss_commit"], rel=1e-4)


def test_codebook_usage_stays_above_a_floor(tmp_path):
    data = manifest(tmp_path / "d", n=8, seconds=1.0, texts=False)
    kw = dict(max_steps=12, batch_size=4, a2t_weight=0.0, quantizer_dropout=0.0)
    recs = train_codec(settings(tmp_path, "u", data, **kw))
    ppl = [r["codebook_perplexity"][0] for r in recs[-4:]]
    assert min(ppl) > 4.0, ppl
    # the same run without dead-code re-initialisation collapses its first codebook
    stale = train_codec(settings(tmp_path, "s", data, dead_code_threshold=0.0, **kw))
    assert max(r["codebook_perplexity"][0] for r in stale[-4:]) < min(ppl)


def test_tensorboard_tracker_on_the_tokenizer_loop(tmp_path):
    """The loop's settings are shared (LoopConfig): train-codec takes --tensorboard like train."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mimo_audio.train.codec.cli import build_parser, config_from_args

    args = ["--stage", "1", "--config", "small", "--data", "d", "--tensorboard"]
    assert config_from_args(build_parser().parse_args(args)).tracker == "tensorboard"
    data = manifest(tmp_path / "d", n=2, seconds=0.5)
    recs = train_codec(settings(tmp_path, "tb", data, max_steps=2, tracker="tensorboard", val_data=data,
                                val_every=2))
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss_recon")] == pytest.approx([r["loss_recon"] for r in recs])
    assert "val/mel_distance" in acc.Tags()["scalars"]


def _stage1_export(tmp_path, data):
    train_codec(settings(tmp_path, "s1", data, max_steps=2))
    return tmp_path / "s1" / "final"


def test_stage2_trains_decoder_only_without_nan(tmp_path):
    data = manifest(tmp_path / "d", n=2, seconds=0.5)
    init = _stage1_export(tmp_path, data)
    recs = train_codec(settings(tmp_path, "s2", data, stage=2, init=str(init), max_steps=2))
    for r in recs:
        for k in ("loss", "loss_recon", "loss_adv", "loss_fm", "loss_disc"):
            assert math.isfinite(r[k]), (k, r)
        assert r["loss"] == pytest.approx(r["loss_recon"] + r["loss_adv"] + 2 * r["loss_fm"], rel=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(init / "model.safetensors"), load_file(tmp_path / "s2" / "final" / "model.safetensors")
    assert set(a) == set(b)  # no discriminator in the export
    for k in a:
        if k.startswith("encoder."):  # encoder, RVQ codebooks and their EMA buffers
            assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    ck = json.loads((tmp_path / "s2" / "step-00000002" / "complete.json").read_text())
    assert ck["parts"] == ["generator", "discriminator"]  # the discriminators are checkpointed


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_equals_uninterrupted(tmp_path, stage):
    data = manifest(tmp_path / "d", n=3, seconds=0.5)
    kw = {"stage": stage, "max_steps": 4}
    if stage == 2:
        kw["init"] = str(_stage1_export(tmp_path, data))
    full = train_codec(settings(tmp_path, "full", data, **kw))
    cut = train_codec(settings(tmp_path, "cut", data, save_every=2, stop_after=2, **kw))
    rest = train_codec(settings(tmp_path, "cut", data, save_every=2, resume=True, **kw))
    keys = ["loss", "loss_recon", "loss_commit"] + (["loss_disc", "loss_adv"] if stage == 2 else ["loss_a2t"])
    for k in keys:
        assert [r[k] for r in cut + rest] == pytest.approx([r[k] for r in full], rel=1e-5), k
    assert [r["codebook_usage"] for r in cut + rest] == [r["codebook_usage"] for r in full]
    with pytest.raises(TrainConfigError, match="parts"):  # a stage-1 run folder is not resumed as stage 2
        other = dict(kw, stage=3 - stage, init=kw.get("init") or str(_stage1_export(tmp_path, data)))
        train_codec(settings(tmp_path, "cut2", data, save_every=2, stop_after=2, **kw))
        train_codec(settings(tmp_path, "cut2", data, save_every=2, resume=True, **other))


def test_export_round_trip(tmp_path):
    data = manifest(tmp_path / "d", n=2, seconds=0.5)
    final = _stage1_export(tmp_path, data)
    codec = AudioTokenizer.from_pretrained(final)
    wav = torch.from_numpy(synth(7, 0.96))
    codes = codec.encode(wav, num_quantizers=8)
    # the training forward of the exported weights gives the same codes and audio
    from mimo_audio.train.codec.model import CodecTrainee, RVQTrainer

    tr = CodecTrainee(codec, RVQTrainer(codec.quantizer, threshold=2.0), None).eval()
    with torch.no_grad():
        q, tcodes, _, _ = tr.encode(wav[None])
        assert torch.equal(tcodes[0], codes)
        torch.testing.assert_close(tr.decode(q, wav.numel())[0], codec.decode(codes)[: wav.numel()])
    from mimo_audio.cli import main

    sf.write(tmp_path / "in.wav", wav.numpy(), RATE)
    assert main(["codec", "roundtrip", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.wav"),
                 "--tokenizer", str(final), "--device", "cpu"]) == 0
    assert sf.info(str(tmp_path / "out.wav")).frames >= wav.numel()


def test_init_from_a_released_layout_with_the_lm_text_tokenizer(tmp_path, fixture_path):
    """--init: the fixture's released-layout tokenizer (20 layers, EMA buffers); A2T over the LM's tokenizer.json."""
    data = manifest(tmp_path / "d", n=2, seconds=0.5)
    init = fixture_path / "tokenizer"
    recs = train_codec(settings(tmp_path, "i", data, init=str(init), text_tokenizer=str(fixture_path / "lm"),
                                max_steps=2))
    assert all(math.isfinite(r["loss_a2t"]) and r["loss_a2t"] > 0 for r in recs)
    assert len(recs[0]["codebook_usage"]) == 20
    from safetensors import safe_open

    with safe_open(str(init / "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "i" / "final" / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())  # the released key names, EMA buffers included
        assert all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in a.keys())  # noqa: SIM118
    cfg = json.loads((tmp_path / "i" / "final" / "config.json").read_text())
    assert cfg["d_model"] == 64 and cfg["codebook_size"] == json.loads((init / "config.json").read_text())["codebook_size"]


def test_bad_clips_are_skipped_and_counted(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "broken.wav").write_bytes(b"RIFF not really a wave file")
    data = manifest(d, n=2, seconds=0.5, extra_lines=[json.dumps({"audio": "missing.wav", "text": "x"}),
                                                       json.dumps({"audio": "broken.wav", "text": "y"}), "{not json"])
    recs = train_codec(settings(tmp_path, "b", data, max_steps=2, val_data=data, val_every=2, sample_every=2,
                                samples=1))
    assert [r["skipped_clips"] for r in recs] == [3, 3]
    assert "skipped clip" in capsys.readouterr().err
    val = [r for r in lines(tmp_path / "b" / "metrics.jsonl") if "val_loss_recon" in r]
    assert len(val) == 1 and val[0]["val_mel_distance"] > 0 and len(val[0]["val_codebook_usage"]) == 8
    assert sf.info(str(tmp_path / "b" / "samples" / "step-00000002" / "clip-0.wav")).samplerate == RATE


def test_bad_settings_fail_clearly(tmp_path):
    data = manifest(tmp_path / "d", n=1, seconds=0.5)
    with pytest.raises(TrainConfigError, match="stage"):
        make_codec_config(read_config("small"), stage=3)
    with pytest.raises(TrainConfigError, match="--init"):
        make_codec_config(read_config("small"), stage=2)
    with pytest.raises(TrainConfigError, match="not a shipped config"):
        read_config("medium")
    f = tmp_path / "c.toml"
    f.write_text("bogus = 1\n")
    with pytest.raises(TrainConfigError, match="unknown setting 'bogus'"):
        read_config(str(f))
    f.write_text("[tokenizer]\nd_modle = 3\n")
    with pytest.raises(TrainConfigError, match="d_modle"):
        read_config(str(f))
    with pytest.raises(TrainConfigError, match="a2t-dim"):
        make_codec_config(read_config("small"), a2t_dim=130)
    y = tmp_path / "c.yaml"  # YAML is read by the same reader as the LM's config files
    y.write_text("batch-size: 3\ntokenizer:\n  d_model: 128\n")
    assert read_config(str(y)) == {"batch_size": 3, "tokenizer": {"d_model": 128}}
    y.write_text("tokenizer: 5\n")
    with pytest.raises(TrainConfigError, match="must be a table"):
        read_config(str(y))
    with pytest.raises(TrainConfigError, match="does not exist"):
        train_codec(settings(tmp_path, "x", str(tmp_path / "nothing.jsonl")))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "summary.json").write_text("{}")
    with pytest.raises(TrainConfigError, match="prepared shards"):
        train_codec(settings(tmp_path, "y", str(tmp_path / "shards")))
    with pytest.raises(TrainConfigError, match="--device"):
        train_codec(settings(tmp_path, "z", data, device="tpu9"))
    from mimo_audio.cli import main

    assert main(["train-codec", "--stage", "2", "--config", "small", "--data", data]) == 2
    train_codec(settings(tmp_path, "once", data, max_steps=1))
    with pytest.raises(TrainConfigError, match="--resume"):
        train_codec(settings(tmp_path, "once", data, max_steps=1))


def _worker(rank, world, init, kws, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = []
        for kw in kws:
            cfg = make_codec_config(read_config("small"), **kw)
            recs = train_codec(cfg)
            result.append([r["loss"] for r in recs])
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()
    leave_worker()


def test_fsdp2_two_ranks_both_stages(tmp_path):
    import torch.multiprocessing as mp

    data = manifest(tmp_path / "d", n=4, seconds=0.5)
    base = dict(data=data, max_steps=2, batch_size=1, segment_seconds=0.5, progress=False, save_every=1,
                kmeans_iters=2, stft_ffts=(256, 128), mpd_max_channels=32)
    s1 = dict(base, output=str(tmp_path / "r1"))
    s2 = dict(base, output=str(tmp_path / "r2"), stage=2, init=str(tmp_path / "r1" / "final"))
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", [s1, s2], str(tmp_path / "losses")), nprocs=2, join=True)
    a, b = torch.load(f"{tmp_path / 'losses'}.0"), torch.load(f"{tmp_path / 'losses'}.1")
    assert a == b and all(math.isfinite(v) for run in a for v in run)  # the ranks agree on the averaged losses
    for run in ("r1", "r2"):
        assert AudioTokenizer.from_pretrained(tmp_path / run / "final") is not None
        assert json.loads((tmp_path / run / "step-00000002" / "complete.json").read_text())["world"] == 2


def test_memory_benchmark_prints_its_table():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_codec.py"
    out = subprocess.run([sys.executable, str(script), "--memory"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [x for x in out.stdout.splitlines() if x.startswith("| 1 |") or x.startswith("| 2 |")]
    assert len(rows) == 6 and "encoder 638.3 M" in out.stdout


def test_cli_module_entry_point(tmp_path):
    import os
    import subprocess
    import sys

    data = manifest(tmp_path / "d", n=1, seconds=0.5)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mimo_audio.train_codec", "--stage", "1", "--config", "small", "--data", data,
           "--max-steps", "1", "--batch-size", "1", "--segment-seconds", "0.5", "--output", str(tmp_path / "r"),
           "--device", "cpu", "--lr", "1e-3"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert AudioTokenizer.from_pretrained(tmp_path / "r" / "final") is not None
    assert json.loads((tmp_path / "r" / "train_config.json").read_text())["lr"] == 1e-3  # the flag overrode the config
    p = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "already finished" in p.stderr
    p = subprocess.run(cmd[:4] + ["3"] + cmd[5:], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--stage" in p.stderr
