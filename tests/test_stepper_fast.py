"""The step engine's two weight layouts agree, and the top-k candidate sampler equals the full-sort one."""

from __future__ import annotations

import torch

from lm_helpers import EMPTY, random_grid, tiny_lm
from mimo_audio.generate import GenerationConfig, generate, preset
from mimo_audio.sampling import SamplingParams, params_tensors, sample
from mimo_audio.stepper import FastWeights


def test_compact_layout_equals_small_model_layout():
    lm = tiny_lm(seed=7)
    prompts = [random_grid(lm, 5, seed=1), random_grid(lm, 3, seed=2)]
    cfg = GenerationConfig(max_new_tokens=6)
    lm._fast = FastWeights(lm, padded=True)
    fast = generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    lm._fast = FastWeights(lm, padded=False)
    compact = generate(lm, prompts, cfg, empty_id=EMPTY, greedy=True)
    assert all(torch.equal(a, b) for a, b in zip(fast, compact))
    sampled = [generate(lm, prompts, preset("default", seed=3, max_new_tokens=6), empty_id=EMPTY) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*sampled))


def test_topk_candidates_equal_full_sort():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 300, generator=g)
    p = params_tensors([SamplingParams(True, t, k, tp) for t, k, tp in [(0.9, 50, 0.95), (0.6, 5, 1.0),
                                                                        (1.3, 1, 0.5), (1.0, 20, 0.3)] * 8])
    u = torch.rand(32, 3, generator=g)
    ban = torch.zeros(32, 1, 300)
    ban[:, :, 11] = float("-inf")
    for kw in ({"uniforms": u}, {"uniforms": u, "ban": ban}, {}):
        assert torch.equal(sample(x, **p, **kw), sample(x, **p, **kw, kmax=50))
