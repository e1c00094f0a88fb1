"""The trainer (mimo_audio.train) on tiny CPU models: overfitting, stages, resume, FSDP2, export, LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dist_helpers import leave_worker
from lm_helpers import EMPTY, random_grid, tiny_lm
from mimo_audio.lm import MimoAudioLM
from mimo_audio.train.config import TrainConfigError, make_config
from mimo_audio.train.data import ExampleBatches, save_examples
from mimo_audio.train.lm_objective import module_group, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train far faster on one thread than on two contended ones (measured: docs/training.md)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(seed=0):
    lm = tiny_lm(seed, local_attn_dropout=0.0)
    lm.empty_id = EMPTY
    return lm


def examples(lm, n=4, groups=8, seed=0):
    out = []
    for i in range(n):
        g = random_grid(lm, groups - (i % 2), seed=seed + i)
        lab = g.clone()
        lab[:, : 2 * lm.config.group_size] = -100  # the first two groups are the unsupervised "prompt"
        out.append((g, lab))
    return out


def text_only(lm, ex):
    """The examples with every group a text group: such a batch runs neither patch encoder nor decoder itself."""
    out = []
    for g, lab in ex:
        g, lab = g.clone(), lab.clone()
        g[0] = lab[0] = 3
        g[1:] = lab[1:] = torch.tensor(lm.config.speech_zeroemb_idx)[:, None]
        out.append((g, lab))
    return out


def run(tmp_path, name, lm, ex, batch=2, shuffle=True, **kw):
    settings = dict(output=str(tmp_path / name), max_steps=4, lr=1e-3, progress=False, save_every=100,
                    schedule="cosine", warmup_ratio=0.25, batch_size=batch)
    settings.update(kw)
    cfg = make_config(**settings)
    data = ExampleBatches(ex, cfg.batch_size, lm.config.group_size, seed=1, shuffle=shuffle)
    return train(cfg, model=lm, data=data)


def test_overfits_one_batch(tmp_path):
    lm = model()
    ex = examples(lm)
    recs = run(tmp_path, "o", lm, ex, batch=4, max_steps=25, lr=3e-3, schedule="constant", warmup_ratio=0.0)
    first, last = recs[0]["loss"], recs[-1]["loss"]
    assert last < 0.1 * first, (first, last)
    lines = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 26))
    keys = {"step", "loss", "loss_text", "lr", "grad_norm", "tokens_per_s", "memory"} | {
        f"loss_audio_{c}" for c in range(lm.config.audio_channels)}
    assert keys <= set(lines[0]) and lines[0]["tokens_per_s"] > 0


def test_pt1_freezes_the_patch_decoder_and_uses_the_text_loss(tmp_path):
    lm = model()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    recs = run(tmp_path, "p", lm, examples(lm), stage="pt1", max_steps=3)
    after = lm.state_dict()
    changed = {module_group(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder", "llm"}
    for k in before:
        if module_group(k) == "decoder":
            assert torch.equal(before[k], after[k]), k
    assert all(r["loss"] == r["loss_text"] for r in recs)


def test_param_groups_follow_the_stage_ratios():
    cfg = make_config(stage="sft", lr=2e-5)
    assert cfg.lrs() == pytest.approx({"encoder": 1e-4, "llm": 2e-5, "decoder": 1e-4})
    assert make_config(stage="pt1").lrs()["decoder"] is None
    from mimo_audio.train.lm_objective import decays, param_groups

    lm = model()
    groups = {g["name"]: g for g in param_groups(lm, cfg)}
    assert groups["llm-nodecay"]["weight_decay"] == 0.0 and groups["llm"]["weight_decay"] == cfg.weight_decay
    names = {n for n, p in lm.named_parameters() if not decays(n, p)}
    assert "backbone.layers.0.attn.qkv.bias" in names and "backbone.layers.0.norm1.weight" in names
    assert "backbone.layers.0.attn.qkv.weight" not in names


def test_resume_equals_uninterrupted(tmp_path):
    ex = examples(model())
    full = run(tmp_path, "full", model(), ex, max_steps=4)
    # the same run stopped after step 2 (a checkpoint every 2 steps), then resumed with --resume
    cut = run(tmp_path, "cut", model(), ex, max_steps=4, save_every=2, stop_after=2)
    assert len(cut) == 2
    rest = run(tmp_path, "cut", model(seed=5), ex, max_steps=4, save_every=2, resume=True)
    got = [r["loss"] for r in cut + rest]
    assert got == pytest.approx([r["loss"] for r in full], rel=1e-6)
    assert run(tmp_path, "cut", model(), ex, max_steps=4, resume=True) == []  # finished: nothing to do


def test_resume_ignores_incomplete_checkpoints(tmp_path):
    ex = examples(model())
    full = run(tmp_path, "full", model(), ex, max_steps=3)
    run(tmp_path, "cut", model(), ex, max_steps=3, save_every=1, stop_after=1)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:  # a step logged after the last save, then killed
        f.write(json.dumps({"step": 2, "loss": 0.0}) + "\n")
    # a save killed before its marker: the temporary folder, and a step folder without complete.json
    (tmp_path / "cut" / ".step-00000002.tmp").mkdir()
    (tmp_path / "cut" / "step-00000002").mkdir()
    rest = run(tmp_path, "cut", model(seed=5), ex, max_steps=3, save_every=1, resume=True)
    assert [r["step"] for r in rest] == [2, 3]
    # metrics.jsonl: one record per step, those after the checkpoint redone, not repeated
    lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert [r["loss"] for r in rest] == pytest.approx([r["loss"] for r in full[1:]], rel=1e-6)


def test_export_round_trip(tmp_path):
    lm = model()
    run(tmp_path, "e", lm, examples(lm), max_steps=2)
    loaded = MimoAudioLM.from_pretrained(tmp_path / "e" / "final", empty_id=EMPTY)
    grid = random_grid(lm, 6, seed=9)[None]
    lm.eval()
    with torch.no_grad():
        a, b = lm(grid).text_logits, loaded(grid).text_logits
    assert torch.equal(a, b)


def test_lora_trains_adapters_and_merges(tmp_path):
    peft = pytest.importorskip("peft")
    lm = model()
    base = tmp_path / "base"
    from mimo_audio.train.export import export_released

    export_released(lm.config, lm.state_dict(), base)
    start = MimoAudioLM.from_pretrained(base, empty_id=EMPTY)
    start.empty_id = EMPTY
    before = {k: v.clone() for k, v in start.state_dict().items()}
    run(tmp_path, "l", start, examples(lm), max_steps=3, lora=4, lr=1e-2, model=str(base))
    # only adapters trained: the base weights are untouched
    for k, v in start.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace("base_model.model.", "").replace(".base_layer", "")]), k
    adapter = tmp_path / "l" / "final"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    from mimo_audio.train.lora import merge

    merge(tmp_path / "l", tmp_path / "merged")
    merged = MimoAudioLM.from_pretrained(tmp_path / "merged", empty_id=EMPTY)
    unmerged = peft.PeftModel.from_pretrained(MimoAudioLM.from_pretrained(base, empty_id=EMPTY), str(adapter)).eval()
    grid = random_grid(lm, 6, seed=3)[None]
    with torch.no_grad():
        a, b, c = merged(grid), unmerged(grid), MimoAudioLM.from_pretrained(base, empty_id=EMPTY)(grid)
    torch.testing.assert_close(a.text_logits, b.text_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.text_logits, c.text_logits)  # the adapter changed the model


def test_bad_configs_fail_before_step_1(tmp_path):
    with pytest.raises(TrainConfigError, match="stage"):
        make_config(stage="pt3")
    with pytest.raises(TrainConfigError, match="lora"):
        make_config(stage="pt1", lora=8)
    with pytest.raises(TrainConfigError, match="does not exist"):
        train(make_config(data=str(tmp_path / "missing"), output=str(tmp_path / "x")), model=model())
    with pytest.raises(TrainConfigError, match="unknown task 'no-such-task'"):
        make_config(tasks="no-such-task:1")
    # (shard data and --tasks: tests/test_train_shards.py)
    lm = model()
    with pytest.raises(TrainConfigError, match="positions"):
        run(tmp_path, "long", lm, examples(lm, groups=lm.config.max_position_embeddings + 2))
    run(tmp_path, "once", lm, examples(lm), max_steps=1)
    with pytest.raises(TrainConfigError, match="--resume"):
        run(tmp_path, "once", model(), examples(lm), max_steps=1)


def _worker(rank, world, init, ex, out, kw):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        lm = model()
        cfg = make_config(**kw)
        data = ExampleBatches(ex, cfg.batch_size, lm.config.group_size, rank=rank, world=world, shuffle=False)
        recs = train(cfg, model=lm, data=data)
        if rank == 0:
            torch.save([r["loss"] for r in recs], out)
    finally:
        dist.destroy_process_group()
    leave_worker()


def test_fsdp2_two_ranks_equal_one(tmp_path):
    # micro-batches in order: speech, text-only, speech, text-only: rank 1 never runs the patch encoder/decoder
    # on its own data (the loss still puts them in its graph, or the ranks' gradient reductions would not match)
    sp = examples(model(), n=4)
    tx = text_only(model(), examples(model(), n=4, seed=10))
    ex = sp[:2] + tx[:2] + sp[2:] + tx[2:]
    kw = dict(max_steps=5, lr=1e-3, progress=False, save_every=100, batch_size=2, warmup_ratio=0.2)
    one = run(tmp_path, "one", model(), ex, grad_accum=2, shuffle=False, **kw)
    import torch.multiprocessing as mp

    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", ex, str(out), dict(kw, output=str(tmp_path / "two"))),
             nprocs=2, join=True)
    two = torch.load(out)
    assert two == pytest.approx([r["loss"] for r in one], rel=1e-4)
    # the sharded run exports the same released layout
    assert MimoAudioLM.from_pretrained(tmp_path / "two" / "final", empty_id=EMPTY) is not None


def test_cli_train_with_a_config_file(tmp_path):
    lm = model()
    base = tmp_path / "base"
    from mimo_audio.train.export import export_released

    export_released(lm.config, lm.state_dict(), base)
    save_examples(tmp_path / "ex.safetensors", examples(lm))
    (tmp_path / "c.toml").write_text('stage = "sft"\nmax-steps = 50\nbatch-size = 2\nlr = 1e-3\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mimo_audio.train", "--model", str(base), "--data", str(tmp_path / "ex.safetensors"),
           "--config", str(tmp_path / "c.toml"), "--max-steps", "2", "--output", str(tmp_path / "r"),
           "--device", "cpu", "--val-data", str(tmp_path / "ex.safetensors"), "--val-every", "2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "empty" in p.stderr  # no tokenizer.json: the <|empty|> id is unknown
    cmd += ["--empty-id", str(EMPTY)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2]  # the flag overrode the file's max-steps
    val = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in val] == [2] and val[0]["val_loss"] > 0
    p = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "already finished" in p.stderr
    # the last checkpoint (step 2 = the final weights) exported on request equals final/
    from mimo_audio.cli import main

    assert main(["train", "export", str(tmp_path / "r"), "-o", str(tmp_path / "exp")]) == 0
    grid = random_grid(lm, 5, seed=4)[None]
    with torch.no_grad():
        a = MimoAudioLM.from_pretrained(tmp_path / "exp", empty_id=EMPTY)(grid).text_logits
        b = MimoAudioLM.from_pretrained(tmp_path / "r" / "final", empty_id=EMPTY)(grid).text_logits
        c = MimoAudioLM.from_pretrained(base, empty_id=EMPTY)(grid).text_logits
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert main(["train", "export", str(tmp_path / "r"), "--step", "1", "-o", str(tmp_path / "x")]) == 2


def test_shipped_configs_parse():
    from importlib.resources import files

    from mimo_audio.train.config import read_config_file

    folder = files("mimo_audio.train") / "configs"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".toml"))
    assert names == ["lora-sft-instruct.toml", "pt1.toml", "pt2.toml", "sft.toml"]
    stages = {n: make_config(read_config_file(str(folder / n))) for n in names}
    assert stages["pt1.toml"].stage == "pt1" and stages["lora-sft-instruct.toml"].lora == 16
    assert all(c.tasks for c in stages.values())  # shard data needs a mixture; the names are checked by make_config


def test_config_file_errors_and_flags_override(tmp_path):
    from mimo_audio.train.cli import build_parser, config_from_args

    f = tmp_path / "c.toml"
    f.write_text('stage = "pt2"\nmax-steps = 7\nbogus = 1\n')
    with pytest.raises(TrainConfigError, match="unknown setting 'bogus'"):
        config_from_args(build_parser().parse_args(["--config", str(f)]))
    f.write_text('stage = "pt2"\nmax-steps = 7\nlr = 1e-4\n')
    cfg = config_from_args(build_parser().parse_args(["--config", str(f), "--max-steps", "3"]))
    assert (cfg.stage, cfg.max_steps, cfg.lr) == ("pt2", 3, 1e-4)
    from mimo_audio.train.config import parse_tasks

    assert parse_tasks("asr:1,tts:2") == {"asr": 1.0, "tts": 2.0}
    with pytest.raises(TrainConfigError, match="NAME:WEIGHT"):
        parse_tasks("asr:x")
    f.write_text('stage = "pt2"\nmax-steps = \n')
    with pytest.raises(TrainConfigError, match="c.toml"):
        config_from_args(build_parser().parse_args(["--config", str(f)]))


def test_activation_checkpointing_gives_the_same_steps(tmp_path):
    lm = model()
    ex = examples(lm)
    plain = run(tmp_path, "a", model(), ex, max_steps=2)
    ckpt = run(tmp_path, "b", model(), ex, max_steps=2, activation_checkpointing=True)
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-6)


def test_yaml_config_file_and_flags_override(tmp_path, monkeypatch):
    from mimo_audio.train.cli import build_parser, config_from_args

    f = tmp_path / "c.yaml"
    f.write_text("stage: pt2\nmax-steps: 7\nlr: 1e-4\ntasks: {asr: 1, tts: 2}\nlora_targets: [a, b]\n"
                 "tracker: tensorboard\n")
    cfg = config_from_args(build_parser().parse_args(["--config", str(f), "--max-steps", "3", "--tasks", "asr:5"]))
    assert (cfg.stage, cfg.max_steps, cfg.lr, cfg.tasks) == ("pt2", 3, 1e-4, {"asr": 5.0})  # flags win
    assert cfg.lora_targets == ("a", "b") and cfg.tracker == "tensorboard"
    cfg = config_from_args(build_parser().parse_args(["--config", str(f)]))
    assert (cfg.max_steps, cfg.tasks) == (7, {"asr": 1.0, "tts": 2.0})
    (tmp_path / "same.toml").write_text('stage = "pt2"\nmax-steps = 7\nlr = 1e-4\ntasks = {asr = 1, tts = 2}\n'
                                        'lora_targets = ["a", "b"]\ntracker = "tensorboard"\n')
    assert config_from_args(build_parser().parse_args(["--config", str(tmp_path / "same.toml")])) == cfg
    for text, match in (("bogus: 1\n", "unknown setting 'bogus'"), ("- stage\n", "must be a mapping"),
                        ("stage: [\n", "c.yaml")):
        f.write_text(text)
        with pytest.raises(TrainConfigError, match=match):
            config_from_args(build_parser().parse_args(["--config", str(f)]))
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(TrainConfigError, match=r"\.toml, \.yaml or \.yml"):
        config_from_args(build_parser().parse_args(["--config", str(tmp_path / "c.json")]))
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    f.write_text("stage: pt2\n")
    with pytest.raises(TrainConfigError, match="PyYAML: pip install"):
        config_from_args(build_parser().parse_args(["--config", str(f)]))


def test_tensorboard_writes_the_per_step_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mimo_audio.train.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--tensorboard"])).tracker == "tensorboard"
    lm = model()
    ex = examples(lm)
    save_examples(tmp_path / "v.safetensors", ex)
    recs = run(tmp_path, "tb", lm, ex, max_steps=3, tracker="tensorboard", val_every=2,
               val_data=str(tmp_path / "v.safetensors"))
    events = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in recs], rel=1e-6)
    assert {"train/loss_text", "train/loss_audio_0", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "train/memory", "val/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/loss")] == [2]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # tensorboard not installed
    with pytest.raises(TrainConfigError, match="needs the tensorboard package"):
        make_config(tracker="tensorboard")
    with pytest.raises(TrainConfigError, match="unknown tracker"):
        make_config(tracker="wandb")


def test_adapter_folder_loads_for_serving_like_the_merged_folder(tmp_path, fixture_path, monkeypatch):
    pytest.importorskip("peft")
    import numpy as np

    from mimo_audio.errors import CheckpointError
    from mimo_audio.pipeline import MimoAudio
    from mimo_audio.train.lora import merge

    lm = MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu", dtype="float32")
    run(tmp_path, "l", lm, examples(lm), max_steps=3, lora=4, lr=3e-2, model=str(fixture_path / "lm"))
    merge(tmp_path / "l", tmp_path / "merged")
    load = lambda m: MimoAudio.from_pretrained(m, fixture_path / "tokenizer", device="cpu")
    adapter, merged, base = load(tmp_path / "l" / "final"), load(tmp_path / "merged"), load(fixture_path / "lm")
    assert type(adapter.lm) is MimoAudioLM  # merged into the weights at load: no peft wrapper left
    def speech(m):  # every generated group an audio patch (text ids but <|empty|> banned), as in test_pipeline
        import dataclasses

        req = m.prepare("speak", text="Hello there.", seed=1)
        banned = tuple(i for i in range(m.lm.config.vocab_size) if i != m.ids.empty)
        req.config = dataclasses.replace(req.config, banned_ids=banned, max_new_tokens=8)
        return m.run([req])[0]

    sa, sb, sc = (speech(m) for m in (adapter, merged, base))
    assert sa.codes.shape[0] == 32 and torch.equal(sa.codes, sb.codes) and np.array_equal(sa.audio, sb.audio)
    assert not torch.equal(sa.codes, sc.codes)
    grid = random_grid(lm, 6, seed=3)[None]
    with torch.no_grad():
        a, b, c = (m.lm(grid).text_logits for m in (adapter, merged, base))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c)  # the adapter changed the model
    # errors name the fix: no base named, a base that is not there, no peft
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (tmp_path / "l" / "final").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    conf = json.loads((bad / "adapter_config.json").read_text())
    for base_name, match in ((None, "names no base model"), (str(tmp_path / "gone"), "cannot be found")):
        (bad / "adapter_config.json").write_text(json.dumps(dict(conf, base_model_name_or_path=base_name)))
        with pytest.raises(CheckpointError, match=f"{match}.*train merge RUN -o FOLDER --base"):
            load(bad)
    # the commands' --model takes it too (they load through MimoAudio.from_pretrained); a bad one exits 2
    from mimo_audio.cli import main

    clip = str(fixture_path / "audio" / "speech_0_24k.wav")
    cmd = ["transcribe", "--tokenizer", str(fixture_path / "tokenizer"), "--device", "cpu", "--max-new-tokens", "4",
           clip, "--model"]
    assert main(cmd + [str(tmp_path / "l" / "final")]) == 0
    assert main(cmd + [str(bad)]) == 2
    monkeypatch.setitem(sys.modules, "peft", None)  # peft not installed
    with pytest.raises(CheckpointError, match="needs peft: pip install"):
        load(tmp_path / "l" / "final")


def test_memory_benchmark_state_bytes_match_a_real_step(fixture_path):
    """benchmarks/train_memory.py's model-state term equals the bytes a real optimizer step holds (1 process)."""
    import importlib.util
    from pathlib import Path

    from mimo_audio.train.lm_objective import freeze_for_stage, param_groups

    spec = importlib.util.spec_from_file_location("train_memory", Path(__file__).parents[1] / "benchmarks" /
                                                  "train_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for stage, lora in (("sft", 0), ("pt1", 0), ("sft", 4)):
        cfg = make_config(stage=stage, lora=lora)
        lm = model()
        freeze_for_stage(lm, cfg)
        net = lm
        if lora:
            pytest.importorskip("peft")
            from mimo_audio.train.lora import add_lora

            net = add_lora(lm, cfg)
        opt = torch.optim.AdamW(param_groups(net, cfg))
        g, lab = examples(lm, n=1)[0]
        net(g[None], labels=lab[None], loss_weights=cfg.loss_weights()).loss.backward()
        opt.step()
        held = sum(p.numel() * p.element_size() for p in net.parameters())
        held += sum(p.grad.numel() * p.grad.element_size() for p in net.parameters() if p.grad is not None)
        held += sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
        assert bench.state_bytes(net, 1) == held, (stage, lora)
        assert bench.gathered_bytes(net, 1) == 0 and bench.state_bytes(net, 4) < held / 3
        # the trainer's units now (own units for embeddings, head, patch encoder/decoder, bf16 gathers) hold less
        # than the blocks-only fp32 layout before, and FSDP2's bf16 policy leaves no autocast cache
        assert bench.gathered_bytes(net, 4) < bench.gathered_bytes(net, 4, layout="before")
        assert bench.autocast_bytes(net, 4) == 0 and bench.autocast_bytes(net, 1) > 0 or lora


# ------------------------------------------------------------------------------------------ memory savings
def test_chunked_text_loss_equals_unchunked():
    """forward(labels=, text_loss_chunk=N): the same losses and gradients as the full logits, for any N (a
    chunk smaller than one row, rows split across chunks, one chunk for all), on speech and text-only grids."""
    ref_lm = model()
    sp = examples(ref_lm, n=2)
    tx = text_only(ref_lm, examples(ref_lm, n=2, seed=10))
    for ex in (sp, tx):
        grid = torch.stack([ex[0][0][:, : ex[1][0].shape[1]], ex[1][0]])
        labels = torch.stack([ex[0][1][:, : ex[1][0].shape[1]], ex[1][1]])
        mask = torch.ones(2, grid.shape[-1] // ref_lm.config.group_size, dtype=torch.long)
        mask[1, -1] = 0  # a padded last group
        labels[1, :, -ref_lm.config.group_size:] = -100

        def loss_and_grads(chunk, grid=grid, mask=mask, labels=labels):
            lm = model()
            lm.train()
            o = lm(grid, attention_mask=mask, labels=labels, text_loss_chunk=chunk)
            o.loss.backward()
            assert (o.text_logits is None) == (chunk is not None)
            grads = {n: p.grad for n, p in lm.named_parameters()}
            assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
            return o, grads

        ref, ref_g = loss_and_grads(None)
        for chunk in (1, 5, 1000):
            o, g = loss_and_grads(chunk)
            torch.testing.assert_close(o.loss, ref.loss, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(o.text_loss, ref.text_loss, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(o.channel_losses, ref.channel_losses, rtol=1e-6, atol=1e-7)
            for n in ref_g:
                torch.testing.assert_close(g[n], ref_g[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
        assert ref_g["lm_head.weight"].abs().sum() > 0
    with pytest.raises(Exception, match="text_loss_chunk"):
        model()(grid, labels=labels, text_loss_chunk=0)


def test_trainer_text_loss_chunk_setting(tmp_path):
    """TrainConfig.text_loss_chunk is on by default; chunked (3 positions) and unchunked (0) runs give the
    same steps."""
    from mimo_audio.train.config import TrainConfig

    assert TrainConfig().text_loss_chunk == 1024
    ex = examples(model())
    full = run(tmp_path, "full", model(), ex, max_steps=2, text_loss_chunk=0)
    chunked = run(tmp_path, "chunked", model(), ex, max_steps=2, text_loss_chunk=3)
    assert [r["loss"] for r in chunked] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    with pytest.raises(TrainConfigError, match="text-loss-chunk"):
        make_config(text_loss_chunk=-1).validate()


def test_mixed_precision_policy_selection():
    """bf16 under FSDP2 on CUDA: MixedPrecisionPolicy (bf16 params, fp32 reduction); else none (autocast in one
    process on CUDA, fp32 on CPU)."""
    from mimo_audio.train.lm_objective import mixed_precision, shard_units

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    pol = mixed_precision(make_config(), cuda, 2)
    assert pol.param_dtype is torch.bfloat16 and pol.reduce_dtype is torch.float32
    assert mixed_precision(make_config(), cuda, 1) is None
    assert mixed_precision(make_config(bf16=False), cuda, 8) is None
    assert mixed_precision(make_config(), cpu, 2) is None
    lm = model()
    units = shard_units(lm)
    assert lm.embed_tokens in units and lm.lm_head in units and lm.patch_encoder in units
    assert lm.patch_decoder in units and all(b in units for b in lm.backbone.layers)
    in_units = {id(p) for u in units for p in u.parameters()}
    root = sum(p.numel() for p in lm.parameters() if id(p) not in in_units)
    assert 0 < root < 0.1 * sum(p.numel() for p in lm.parameters())


def _mp_worker(rank, world, init, ex, out, kw):
    """Two sharded runs on gloo: fp32, then bf16 under FSDP2's MixedPrecisionPolicy (selected as on CUDA)."""
    import torch.distributed as dist

    from mimo_audio.train import lm_objective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        losses = []
        for bf16 in (False, True):
            from torch.distributed.fsdp import MixedPrecisionPolicy

            lm_objective.mixed_precision = lambda cfg, device, world: (
                MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.bf16 else None)
            lm = model()
            cfg = make_config(**dict(kw, bf16=bf16, output=f"{kw['output']}-{bf16}"))
            data = ExampleBatches(ex, cfg.batch_size, lm.config.group_size, rank=rank, world=world, shuffle=False)
            recs = train(cfg, model=lm, data=data)
            losses.append([r["loss"] for r in recs])
            if bf16:
                # the sharded master weights stay fp32
                assert all(p.dtype is torch.float32 for p in lm.parameters())
        if rank == 0:
            torch.save(losses, out)
    finally:
        dist.destroy_process_group()
    leave_worker()


def test_fsdp2_bf16_mixed_precision_and_chunked_loss_on_gloo(tmp_path):
    """FSDP2 with MixedPrecisionPolicy(bf16) runs on CPU gloo: its losses stay close to the fp32 sharded run,
    which (with a text loss of several chunks per rank) equals the unchunked one-process run."""
    import torch.multiprocessing as mp

    ex = examples(model(), n=4)
    kw = dict(max_steps=4, lr=1e-3, progress=False, save_every=100, batch_size=2, warmup_ratio=0.25,
              text_loss_chunk=3)
    # the same global batch: one process accumulates the two ranks' micro-batches
    one = run(tmp_path, "one", model(), ex, grad_accum=2, shuffle=False, **dict(kw, text_loss_chunk=0))
    out = tmp_path / "mp.pt"
    mp.spawn(_mp_worker, args=(2, f"file://{tmp_path / 'pg'}", ex, str(out), dict(kw, output=str(tmp_path / "r"))),
             nprocs=2, join=True)
    fp32, bf16 = torch.load(out)
    ref = [r["loss"] for r in one]
    assert fp32 == pytest.approx(ref, rel=1e-4)
    assert bf16 == pytest.approx(fp32, rel=3e-2) and bf16 != pytest.approx(fp32, rel=1e-6)
    assert bf16[-1] < bf16[0]
