from __future__ import annotations

import pytest
import torch

from lm_helpers import EMPTY, random_grid, tiny_lm
from mimo_audio import PromptError
from mimo_audio.generate import PRESETS, GenerationConfig, SamplingParams, generate, preset, stream_generate


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=5)


def _prompts(lm):
    return [random_grid(lm, n, seed=n) for n in (3, 7, 5)]


def _check_layout(lm, out):
    c = lm.config
    G = c.group_size
    for n in range(out.shape[1] // G):
        grp = out[:, n * G: (n + 1) * G]
        assert (grp[0] == grp[0, 0]).all()  # text repeated over the group's columns
        for ch, e in enumerate(c.speech_zeroemb_idx):
            if int(grp[0, 0]) == EMPTY:
                assert ((grp[1 + ch] >= 0) & (grp[1 + ch] < e)).all()  # never an empty id
            else:
                assert (grp[1 + ch] == e).all()


def test_batched_equals_one_by_one_greedy(lm):
    prompts = _prompts(lm)
    cfg = GenerationConfig(max_new_tokens=10, stop_ids=(3,))
    batched = generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    single = [generate(lm, [p], cfg, empty_id=EMPTY, greedy=True)[0] for p in prompts]
    for b, s in zip(batched, single):
        assert torch.equal(b, s)
        _check_layout(lm, b)
    kinds = {int(t) == EMPTY for o in batched for t in o[0, :: lm.config.group_size]}
    assert kinds == {True, False}, "the test model should mix text and audio groups"


def test_seeded_sampling_reproducible_and_independent_of_batch_mates(lm):
    prompts = _prompts(lm)
    seeded = preset("default", max_new_tokens=8, seed=123)
    others = [preset("tts", max_new_tokens=5, seed=7), seeded, GenerationConfig(max_new_tokens=6)]
    a = generate(lm, prompts, others, empty_id=EMPTY)
    b = generate(lm, prompts[1:2], seeded, empty_id=EMPTY)
    assert torch.equal(a[1], b[0])
    c = generate(lm, prompts[1:2], seeded, empty_id=EMPTY)
    assert torch.equal(b[0], c[0])
    d = generate(lm, prompts[1:2], preset("default", max_new_tokens=8, seed=124), empty_id=EMPTY)
    assert not torch.equal(b[0], d[0])
    for o in a:
        _check_layout(lm, o)


def test_stream_matches_generate_and_cancel(lm):
    prompts = _prompts(lm)
    cfg = GenerationConfig(max_new_tokens=6)
    want = generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    stream = stream_generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    pieces = [[] for _ in prompts]
    for i, step in enumerate(stream):
        for b, g in enumerate(step):
            if g is not None:
                pieces[b].append(g.clone())
        if i == 1:
            stream.cancel(2)
    for b in range(2):
        assert torch.equal(torch.cat(pieces[b], 1), want[b])
    assert torch.equal(torch.cat(pieces[2], 1), want[2][:, : 2 * lm.config.group_size])


def test_stop_ids_and_min_new_tokens(lm):
    p = [random_grid(lm, 4)]
    free = generate(lm, p, GenerationConfig(max_new_tokens=12), empty_id=EMPTY, greedy=True)[0]
    first = int(free[0, 0])
    stopped = generate(lm, p, GenerationConfig(max_new_tokens=12, stop_ids=(first,)), empty_id=EMPTY, greedy=True)[0]
    assert stopped.shape[1] == lm.config.group_size and int(stopped[0, 0]) == first
    held = generate(lm, p, GenerationConfig(max_new_tokens=12, min_new_tokens=3, stop_ids=(first,)),
                    empty_id=EMPTY, greedy=True)[0]
    text = held[0, :: lm.config.group_size].tolist()
    assert first not in text[:3]
    assert len(text) == 12 or text[-1] == first
    # banning every id but <|empty|> forces audio groups
    allbut = tuple(i for i in range(lm.config.vocab_size) if i != EMPTY)
    speech = generate(lm, p, GenerationConfig(max_new_tokens=4, banned_ids=allbut), empty_id=EMPTY, greedy=True)[0]
    assert (speech[0] == EMPTY).all()


def test_limits_and_errors(lm):
    cap = lm.config.max_position_embeddings
    G = lm.config.group_size
    too_long = random_grid(lm, cap)
    with pytest.raises(PromptError, match="max_position_embeddings"):
        generate(lm, [too_long], GenerationConfig(max_new_tokens=1), empty_id=EMPTY)
    near = random_grid(lm, cap - 2)
    out = generate(lm, [near], GenerationConfig(max_new_tokens=50), empty_id=EMPTY, greedy=True)[0]
    assert out.shape[1] == 2 * G  # clipped to the context
    with pytest.raises(PromptError):
        generate(lm, [torch.zeros(3, 8, dtype=torch.long)], empty_id=EMPTY)
    with pytest.raises(PromptError, match="empty_id"):
        generate(lm, [random_grid(lm, 2)])
    with pytest.raises(PromptError, match="preset"):
        preset("nope")
    assert set(PRESETS) >= {"default", "asr", "tts", "spoken_dialogue", "audio_understanding", "text_chat",
                            "in_context_learning_s2s", "qa"}
    assert PRESETS["asr"][0].do_sample is False and PRESETS["default"][0] == SamplingParams(True, 0.6, 50, 0.95)


def test_outputs_are_ordinary_tensors(lm):
    """The engine runs in inference mode, but what it hands out can be modified in place and used with autograd
    outside it (an inference tensor would raise on both)."""
    prompts = _prompts(lm)[:2]
    cfg = GenerationConfig(max_new_tokens=3)
    stream = stream_generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    rows = [g for g in stream.step() if g is not None]
    for out in [*rows, *stream.outputs(), *generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)]:
        assert not out.is_inference()
        out.add_(0)
    emb = torch.nn.Embedding(lm.config.vocab_size, 2)
    emb(rows[0][0]).sum().backward()  # token ids straight into a module that tracks gradients
    assert emb.weight.grad is not None
