"""The engine runs the model's own modules: swapped modules are honoured, an adapter changes generation as it
changes the forward, starting a generation allocates no weight copies, and rows join a running batch."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from torch import nn

from lm_helpers import EMPTY, greedy_pick, random_grid, tiny_lm
from mimo_audio.config import LMConfig
from mimo_audio.generate import GenerationConfig, generate, stream_generate
from mimo_audio.lm import MimoAudioLM


class CountingLinear(nn.Module):
    """The same math as the wrapped Linear; counts its calls."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _wrap_linears(module: nn.Module) -> list[tuple[str, CountingLinear]]:
    wrapped = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            w = CountingLinear(child)
            setattr(module, name, w)
            wrapped.append((name, w))
        else:
            wrapped += [(f"{name}.{n}", w) for n, w in _wrap_linears(child)]
    return wrapped


def _audio_config(lm, groups):
    banned = tuple(i for i in range(lm.config.vocab_size) if i != EMPTY)
    return GenerationConfig(max_new_tokens=groups, banned_ids=banned)


def test_swapped_linears_are_what_generation_runs():
    lm = tiny_lm(seed=2)
    prompts = [random_grid(lm, 5, seed=1), random_grid(lm, 3, seed=2)]
    text_cfg = GenerationConfig(max_new_tokens=6)
    want_text = generate(lm, prompts, text_cfg, empty_id=EMPTY, greedy=True)
    want_audio = generate(lm, prompts, _audio_config(lm, 3), empty_id=EMPTY, greedy=True)
    wrapped = _wrap_linears(lm)
    assert len(wrapped) > 20
    got_text = generate(lm, prompts, text_cfg, empty_id=EMPTY, greedy=True)
    got_audio = generate(lm, prompts, _audio_config(lm, 3), empty_id=EMPTY, greedy=True)
    assert all(torch.equal(a, b) for a, b in zip(want_text, got_text))
    assert all(torch.equal(a, b) for a, b in zip(want_audio, got_audio))
    assert all((got_audio[0][0, :: lm.config.group_size] == EMPTY).tolist())  # audio groups were made
    uncalled = [n for n, w in wrapped if w.calls == 0]
    assert not uncalled, uncalled


class LowRank(nn.Module):
    """A LoRA-style adapter: ``base(x) + (x @ A.T) @ B.T``."""

    def __init__(self, base: nn.Linear, rank: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=g) * 0.5)
        self.B = nn.Parameter(torch.randn(base.out_features, rank, generator=g) * 0.5)

    def forward(self, x):
        return self.base(x) + (x @ self.A.T) @ self.B.T


def test_a_low_rank_delta_changes_forward_and_decoding_consistently():
    lm = tiny_lm(seed=3)
    grid = random_grid(lm, 6, seed=4)
    first = torch.randn(3, lm.config.local_dim)
    with torch.no_grad():
        before = lm(grid[None], empty_id=EMPTY).text_logits
        codes_before = lm.decode_patch(first, greedy_pick(lm, []))
    lm.patch_decoder.layers[0].attn.qkv = LowRank(lm.patch_decoder.layers[0].attn.qkv)
    lm.backbone.layers[1].mlp.down = LowRank(lm.backbone.layers[1].mlp.down, seed=1)
    seen = []
    with torch.no_grad():
        after = lm(grid[None], empty_id=EMPTY).text_logits
        codes = lm.decode_patch(first, greedy_pick(lm, seen))
        tf = lm.decode_teacher_forced(first, codes)
    assert not torch.allclose(before, after, atol=1e-3)
    assert not torch.equal(codes, codes_before)
    plan = lm.delay_plan(lm.device)
    from mimo_audio.delay import delay_schedule
    for p, step in enumerate(delay_schedule(lm.config.delay_pattern, lm.config.group_size)):
        assert [ch for ch, _ in step] == plan[p][0]
        for j, (ch, f) in enumerate(step):
            v = lm.config.speech_vocab_size[ch]
            assert torch.allclose(seen[p][:, j, :v], tf[ch][:, f], atol=1e-5), (p, ch)
    # the first generated group of the engine sees the adapter too
    out = generate(lm, [grid], _audio_config(lm, 1), empty_id=EMPTY, greedy=True)[0]
    with torch.no_grad():
        full = lm(grid[None], empty_id=EMPTY)
        want = lm.decode_patch(full.local_inputs[:, -1], greedy_pick(lm, []))
    assert torch.equal(out[1:].T, want[0])


def test_a_row_added_mid_stream_yields_what_it_yields_alone():
    lm = tiny_lm(seed=5)
    prompts = [random_grid(lm, n, seed=n) for n in (3, 7)]
    late = random_grid(lm, 4, seed=11)
    cfg = GenerationConfig(max_new_tokens=9)
    alone = [generate(lm, [p], cfg, empty_id=EMPTY, greedy=True)[0] for p in [*prompts, late]]
    stream = stream_generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    stream.step()
    stream.step()
    row = stream.add(late, cfg)
    assert row == 2
    while not stream.finished:
        stream.step()
    outs = stream.outputs()
    for got, want in zip(outs, alone):
        assert torch.equal(got, want)
    kinds = {int(t) == EMPTY for o in outs for t in o[0, :: lm.config.group_size]}
    assert kinds == {True, False}


def test_added_rows_reuse_free_slots_and_grow_the_batch():
    lm = tiny_lm(seed=6)
    short = GenerationConfig(max_new_tokens=2)
    long = GenerationConfig(max_new_tokens=12)
    p = random_grid(lm, 3, seed=1)
    stream = stream_generate(lm, [p], short, empty_id=EMPTY, greedy=True)
    stream.step()
    stream.step()  # row 0 finished: its slot is free
    big = random_grid(lm, 40, seed=3)  # needs more positions than the cache holds
    r1 = stream.add(big, long)
    r2 = stream.add(p, long)  # no free slot: the batch grows
    while not stream.finished:
        stream.step()
    outs = stream.outputs()
    assert torch.equal(outs[r1], generate(lm, [big], long, empty_id=EMPTY, greedy=True)[0])
    assert torch.equal(outs[r2], generate(lm, [p], long, empty_id=EMPTY, greedy=True)[0])
    assert stream.cache.batch == 2


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
def test_starting_a_generation_allocates_no_weight_copies():
    """Released widths (hidden 4096, ffn 11008, 32/8 heads, patch decoder 1024 wide), few layers, bfloat16: what
    starting a generation (prefill, first groups) adds to the process is the KV caches plus a bounded workspace,
    not a re-laid-out copy of any weight."""
    c = LMConfig(vocab_size=4096, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                 local_dim=1024, local_layers=2, local_attn_heads=64, local_ffn_dim=4096, input_local_dim=1024,
                 input_local_layers=1)
    torch.manual_seed(0)
    with torch.device("meta"):
        lm = MimoAudioLM(c, empty_id=4000)
    lm = lm.to_empty(device="cpu").to(torch.bfloat16).eval()
    with torch.no_grad():
        for prm in lm.parameters():
            prm.normal_(0, 0.02)
    for stack in (lm.backbone, lm.patch_encoder, lm.patch_decoder):
        stack.init_buffers("cpu")
    param_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    grid = torch.tensor([0, *c.speech_zeroemb_idx])[:, None].repeat(1, 4 * 8)
    grid[0, ::4] = torch.arange(8)
    cfg = GenerationConfig(max_new_tokens=4, banned_ids=tuple(i for i in range(c.vocab_size) if i != 4000))
    generate(lm, [grid], GenerationConfig(max_new_tokens=1))  # warm the allocator and the lazy tables once
    gc.collect()
    before = _rss()
    stream = stream_generate(lm, [grid], cfg, greedy=True)
    for _ in range(3):
        stream.step()
    grew = _rss() - before
    kv = stream.cache.nbytes
    print(f"params {param_bytes / 2**20:.0f} MiB, KV cache {kv / 2**20:.1f} MiB, RSS growth {grew / 2**20:.1f} MiB")
    assert grew <= kv + 64 * 2**20, (grew, kv)
    assert grew < 0.05 * param_bytes
