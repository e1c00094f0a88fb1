"""The trainer on prepared shards (mimo-audio data prepare) with a --tasks mixture: errors before step 1, exact
resume with the loader position in the checkpoint, and one slice per rank under FSDP2 (2 gloo processes)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("pyarrow", reason="the data tools need the train extra: pip install -e '.[train]'")

from dist_helpers import leave_worker
from mimo_audio.lm import MimoAudioLM  # noqa: E402
from mimo_audio.train.config import TrainConfigError, make_config  # noqa: E402
from mimo_audio.train.data import save_examples  # noqa: E402
from mimo_audio.train.lm_objective import train  # noqa: E402

TEXTS = ["hello there", "good morning to you", "a short test", "the quick brown fox", "one two three", "speech"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fixture_path):
    """Six speech/transcript pairs (the fixture clips) prepared with the fixture audio tokenizer: two shards."""
    from mimo_audio.data.prepare import prepare

    d = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, text in enumerate(TEXTS):
        shutil.copy(fixture_path / "audio" / f"speech_{i % 3}_24k.wav", d / f"c{i}.wav")
        rows.append({"audio": f"c{i}.wav", "text": text, "language": "en"})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = d / "shards"
    prepare(d / "train.jsonl", out, str(fixture_path / "tokenizer"), shard_size=3, device="cpu", progress=False)
    return out


def lm_of(fixture_path):
    return MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu", dtype="float32")


def settings(tmp_path, name, fixture_path, shards, **kw):
    s = dict(output=str(tmp_path / name), model=str(fixture_path / "lm"), data=str(shards), tasks="asr:1,tts:1",
             max_steps=4, lr=1e-3, progress=False, save_every=100, batch_size=2, warmup_ratio=0.25, window=2)
    s.update(kw)
    return make_config(**s)


def test_shards_train_and_resume_exactly(tmp_path, fixture_path, shards):
    full = train(settings(tmp_path, "full", fixture_path, shards), model=lm_of(fixture_path))
    assert len(full) == 4 and all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in full)
    # 6 records, 2 per batch: 3 steps per epoch, so the resumed run crosses an epoch boundary
    cut = train(settings(tmp_path, "cut", fixture_path, shards, save_every=2, stop_after=2), model=lm_of(fixture_path))
    saved = torch.load(tmp_path / "cut" / "step-00000002" / "rank-0.pt", weights_only=False)["data"]
    assert (saved["epoch"], saved["step"], saved["tasks"]) == (0, 2, {"asr": 1.0, "tts": 1.0})
    # a different mixture cannot continue this run's data position
    with pytest.raises(TrainConfigError, match="data position.*tasks"):
        train(settings(tmp_path, "cut", fixture_path, shards, tasks="asr:1", save_every=2, resume=True),
              model=lm_of(fixture_path))
    rest = train(settings(tmp_path, "cut", fixture_path, shards, save_every=2, resume=True), model=lm_of(fixture_path))
    assert [r["loss"] for r in cut + rest] == pytest.approx([r["loss"] for r in full], rel=1e-6)


def test_shard_and_task_errors_come_before_step_1(tmp_path, fixture_path, shards):
    lm = lm_of(fixture_path)
    with pytest.raises(TrainConfigError, match="unknown task 'nope'.*knows: .*asr"):
        make_config(tasks="asr:1,nope:1")
    with pytest.raises(TrainConfigError, match="weight 0"):
        make_config(tasks="asr:0")
    # a known task that none of these records can feed (they have no caption)
    with pytest.raises(TrainConfigError, match="caption: no record .* can feed: .*asr"):
        train(settings(tmp_path, "a", fixture_path, shards, tasks="asr:1,caption:1"), model=lm)
    with pytest.raises(TrainConfigError, match="choose the task mixture with --tasks"):
        train(settings(tmp_path, "b", fixture_path, shards, tasks=None), model=lm)
    ex = tmp_path / "ex.safetensors"
    save_examples(ex, [(torch.zeros(9, 8, dtype=torch.long), torch.zeros(9, 8, dtype=torch.long))])
    with pytest.raises(TrainConfigError, match="example files; drop --tasks"):
        train(settings(tmp_path, "c", fixture_path, ex), model=lm)
    with pytest.raises(TrainConfigError, match="--model"):
        train(settings(tmp_path, "d", fixture_path, shards, model=None), model=lm)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainConfigError, match="prepare.json"):
        train(settings(tmp_path, "e", fixture_path, tmp_path / "empty", tasks=None), model=lm)
    for name in "abcde":
        assert not (tmp_path / name / "metrics.jsonl").exists()


def _worker(rank, world, init, kw, out):
    import torch.distributed as dist

    from mimo_audio.train.lm_objective import make_data

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = make_config(**kw)
        d = make_data(cfg.data, cfg, 4)
        torch.save({"rank": d.loader.rank, "world": d.loader.world_size, "plan": d.loader.plan(0)[1].tolist()},
                   f"{out}.{rank}")
        lm = MimoAudioLM.from_pretrained(cfg.model, device="cpu", dtype="float32")
        recs = train(cfg, model=lm)
        if rank == 0:
            torch.save([r["loss"] for r in recs], out)
    finally:
        dist.destroy_process_group()
    leave_worker()


def test_fsdp2_ranks_read_their_own_slice_of_the_shards(tmp_path, fixture_path, shards):
    import torch.multiprocessing as mp

    kw = dict(output=str(tmp_path / "two"), model=str(fixture_path / "lm"), data=str(shards), tasks="asr:1,tts:1",
              max_steps=2, lr=1e-3, progress=False, save_every=100, batch_size=1)
    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'pg'}", kw, str(out)), nprocs=2, join=True)
    got = [torch.load(f"{out}.{r}") for r in range(2)]
    assert [(g["rank"], g["world"]) for g in got] == [(0, 2), (1, 2)]
    from mimo_audio.data.loader import Loader, ShardSet

    one = Loader(ShardSet(shards), {"asr": 1.0, "tts": 1.0}, batch_size=1, rank=0, world_size=1,
                 example_fn=lambda t, r: (torch.zeros(9, 4, dtype=torch.long),) * 2)
    plan = one.plan(0)[1].tolist()
    assert got[0]["plan"] == plan[0::2] and got[1]["plan"] == plan[1::2]  # disjoint slots of one epoch plan
    assert len(torch.load(out)) == 2
    assert (tmp_path / "two" / "final" / "config.json").is_file()
