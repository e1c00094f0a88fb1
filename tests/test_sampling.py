from __future__ import annotations

import pytest
import torch

from mimo_audio.sampling import GREEDY, Sampler, SamplingParams, filter_logits, params_tensors, sample


def _p(n, **kw):
    return params_tensors([SamplingParams(**kw)] * n)


def test_top_k_keeps_ties_and_drops_strictly_below():
    x = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    out = filter_logits(x, torch.ones(1), torch.tensor([1]), torch.ones(1))
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]  # both 3.0 tie with the 1st largest
    out = filter_logits(x, torch.ones(1), torch.tensor([3]), torch.ones(1))
    assert torch.isfinite(out).tolist() == [[False, True, True, True, False]]
    out = filter_logits(x, torch.ones(1), torch.tensor([0]), torch.ones(1))  # 0 = off
    assert torch.isfinite(out).all()


def test_top_p_ascending_cumulative():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    x = probs.log()
    # ascending cum: 0.05, 0.20, 0.50, 1.0; p = 0.75 removes cum <= 0.25 -> tokens 3 and 2
    out = filter_logits(x, torch.ones(1), torch.tensor([0]), torch.tensor([0.75]))
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    # tiny p keeps the top token only
    out = filter_logits(x, torch.ones(1), torch.tensor([0]), torch.tensor([1e-6]))
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_ban_applies_after_top_p():
    """The banned top token still counts in the nucleus: p = 0.6 keeps {0, 1}; banning 0 afterwards leaves 1.
    Had the ban come first, the renormalised nucleus would also admit token 2."""
    probs = torch.tensor([[0.55, 0.25, 0.2]])
    x = probs.log()
    ban = torch.tensor([[float("-inf"), 0.0, 0.0]])
    kw = dict(temperature=torch.ones(1), top_k=torch.zeros(1, dtype=torch.long), top_p=torch.tensor([0.6]),
              do_sample=torch.tensor([True]), ban=ban)
    draws = {int(sample(x, uniforms=torch.tensor([u]), **kw)) for u in torch.linspace(0, 0.999, 50).tolist()}
    assert draws == {1}
    # ban before top-p (wrong order) would renormalise to {1: .56, 2: .44} and keep both
    wrong = filter_logits(x + ban, torch.ones(1), torch.zeros(1, dtype=torch.long), torch.tensor([0.6]))
    assert torch.isfinite(wrong).sum() == 2


def test_temperature_scales_before_filters():
    x = torch.tensor([[2.0, 1.0]])
    out = filter_logits(x, torch.tensor([2.0]), torch.tensor([0]), torch.ones(1))
    assert out.tolist() == [[1.0, 0.5]]


def test_per_row_params_and_greedy_rows():
    x = torch.tensor([[0.0, 1.0, 5.0], [0.0, 1.0, 5.0]])
    t = params_tensors([SamplingParams(do_sample=False), SamplingParams(do_sample=True, top_k=1)])
    out = sample(x, **t, uniforms=torch.tensor([0.0, 0.99]))
    assert out.tolist() == [2, 2]


def test_sampling_distribution_and_seed():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0]]).log_softmax(-1).expand(4000, 4)
    p = _p(4000, do_sample=True)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4000, generator=g)
    draws = sample(x, **p, uniforms=u)
    counts = torch.bincount(draws, minlength=4).float() / 4000
    assert (counts - 0.25).abs().max() < 0.04
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(sample(x, **p, uniforms=torch.rand(4000, generator=g2)), draws)


def test_bad_params():
    with pytest.raises(ValueError, match="0 means greedy"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError):
        SamplingParams(top_p=1.5)


@pytest.mark.parametrize("kmax", [None, 2])
@pytest.mark.parametrize("sampled", [False, True])
def test_ban_is_never_broken_when_the_filters_keep_only_banned_ids(kmax, sampled):
    """top-k = 2 keeps ids 0 and 1, both banned: the reference would sample from NaNs; we take the most likely
    allowed id instead (here 2), in the full-sort and the top-k paths, sampled or not."""
    x = torch.tensor([[5.0, 4.0, 3.0, 1.0]])
    ban = torch.tensor([[float("-inf"), float("-inf"), 0.0, 0.0]])
    kw = dict(temperature=torch.ones(1), top_k=torch.tensor([2]), top_p=torch.ones(1),
              do_sample=torch.tensor([sampled]), ban=ban, kmax=kmax)
    for u in (0.0, 0.5, 0.99):
        assert int(sample(x, uniforms=torch.tensor([u]) if sampled else None, **kw)) == 2
    # rows whose nucleus holds an allowed id are untouched by the fallback
    ok = torch.tensor([[5.0, 4.0, 3.0, 1.0]])
    kw["ban"] = torch.tensor([[float("-inf"), 0.0, 0.0, 0.0]])
    assert int(sample(ok, uniforms=torch.tensor([0.3]) if sampled else None, **kw)) == 1


@pytest.mark.parametrize("kmax", [None, 3])
def test_top_p_one_still_drops_zero_probability_tokens_before_a_ban(kmax):
    """With top-p 1 the nucleus filter only drops tokens whose probability underflows to 0; that matters once a
    ban renormalises: here ids 1 and 2 leave the nucleus, id 0 is banned, so every draw falls back to the best
    allowed id (1), never to id 2 (which a sampler that skipped top-p at p = 1 would draw for large u)."""
    x = torch.tensor([[1000.0, 0.0, -1.0]])
    ban = torch.tensor([[float("-inf"), 0.0, 0.0]])
    kw = dict(temperature=torch.ones(1), top_k=torch.tensor([3 if kmax else 0]), top_p=torch.ones(1),
              do_sample=torch.tensor([True]), kmax=kmax)
    assert {int(sample(x, ban=ban, uniforms=torch.tensor([u]), **kw)) for u in (0.0, 0.5, 0.9, 0.999)} == {1}
    # without a ban the skipped filter changes nothing: the top token has all the mass
    assert {int(sample(x, uniforms=torch.tensor([u]), **kw)) for u in (0.0, 0.5, 0.999)} == {0}


# ------------------------------------------------------------------ temperature 0 and the production Sampler
def test_temperature_zero_is_greedy():
    """temperature 0 means greedy (OpenAI's convention): the same sampler as GREEDY, argmax for any uniforms."""
    zero = SamplingParams(temperature=0)
    assert zero == GREEDY and not zero.do_sample
    x = torch.tensor([[0.0, 2.0, 1.9, -1.0]]).expand(50, 4)
    out = sample(x, **params_tensors([SamplingParams(temperature=0, top_k=3)] * 50),
                 uniforms=torch.linspace(0, 0.999, 50))
    assert out.tolist() == [1] * 50


def _draws(logits, params: SamplingParams, kmax=None, n=4000):
    """Ids drawn by the production Sampler for ``n`` evenly spread uniforms: their set, and their frequencies."""
    x = logits.expand(n, logits.shape[-1])
    t = params_tensors([params] * n)
    out = Sampler(t["temperature"], t["top_k"], t["top_p"], t["do_sample"], kmax)(x, None,
                                                                                torch.linspace(0, 0.99999, n))
    return set(out.tolist()), torch.bincount(out, minlength=logits.shape[-1]).float() / n


@pytest.mark.parametrize("kmax", [None, 3])
def test_sampler_top_k_draws_only_the_k_largest(kmax):
    x = torch.tensor([[1.0, 3.0, 2.0, 2.5, 0.0]])
    support, freq = _draws(x, SamplingParams(top_k=3), kmax)
    assert support == {1, 2, 3}
    want = torch.tensor([3.0, 2.0, 2.5]).softmax(-1)
    assert (freq[[1, 2, 3]] - want).abs().max() < 0.01


@pytest.mark.parametrize("kmax", [None, 4])
def test_sampler_top_p_draws_from_the_nucleus(kmax):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # p = 0.75: the ascending cumulative 0.05, 0.20 <= 0.25 drops ids 3 and 2; the nucleus {0, 1} is renormalised
    k = 4 if kmax else None  # the top-k candidate path needs every row's top_k within kmax
    support, freq = _draws(probs.log(), SamplingParams(top_p=0.75, top_k=k), kmax)
    assert support == {0, 1}
    assert abs(float(freq[0]) - 0.5 / 0.8) < 0.01
    assert _draws(probs.log(), SamplingParams(top_p=1e-6, top_k=k), kmax)[0] == {0}  # a tiny p keeps the top id


def test_sampler_temperature_then_filters():
    """Temperature scales before top-k/top-p: at T = 1 the nucleus p = 0.75 is {0, 1} (ascending cumulative 0.1,
    0.4, 1); at T = 0.5 the probabilities become 0.78, 0.20, 0.02 and it shrinks to the top id."""
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    assert _draws(probs.log(), SamplingParams(top_p=0.75))[0] == {0, 1}
    support, freq = _draws(probs.log(), SamplingParams(temperature=0.5, top_p=0.75))
    assert support == {0}
    support, freq = _draws(probs.log(), SamplingParams(temperature=2.0))
    want = (probs.log() / 2.0).softmax(-1)[0]
    assert support == {0, 1, 2} and (freq - want).abs().max() < 0.01
