"""Samplers (SPEC §5.3): temperature -> top-k -> top-p -> ban -> sample or argmax; batched, per-row params.

Every function takes logits with the row dimension first, ``(R, ..., V)``; per-row parameters are ``(R,)``
tensors that broadcast over the middle dimensions (e.g. patch-decoder channels). Sampling draws from
caller-supplied uniforms so that each row can use its own seeded ``torch.Generator`` and a row's output
never depends on its batch mates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    """One sampler's settings. ``top_k`` None/0 and ``top_p`` None mean no filter; ``do_sample=False`` is argmax
    (after the same filters and bans)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


GREEDY = SamplingParams(do_sample=False)


def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view((-1,) + (1,) * (like.dim() - 1))


def _filter_sorted(asc: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p on temperature-scaled logits already sorted **ascending** along the last axis (all of
    them, or just the largest candidates): drop values strictly below the k-th largest (k <= 0 keeps all), then
    those whose ascending cumulative softmax is <= 1 - p; the largest is always kept."""
    V = asc.shape[-1]
    k = top_k.clamp(0, V)
    k = torch.where(k > 0, k, V)
    kth = asc.gather(-1, _rows(V - k, asc).expand(*asc.shape[:-1], 1))
    asc = asc.masked_fill(asc < kth, NEG_INF)
    remove = asc.softmax(-1).cumsum(-1) <= _rows(1.0 - top_p.float(), asc)
    remove[..., -1] = False
    return asc.masked_fill_(remove, NEG_INF)


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor) -> torch.Tensor:
    """Temperature, then top-k (drop logits strictly below the k-th largest; k <= 0 keeps all), then top-p
    (sort ascending, drop tokens whose ascending cumulative softmax is <= 1 - p, always keep the top one).

    >>> x = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    >>> filter_logits(x, torch.ones(1), torch.tensor([2]), torch.ones(1)).tolist()
    [[-inf, 3.0, 3.0, -inf]]
    """
    x = logits.float() / _rows(temperature.float(), logits)
    asc, idx = x.sort(-1)
    return torch.empty_like(x).scatter_(-1, idx, _filter_sorted(asc, top_k, top_p))


def sample_from(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from ``softmax(logits)`` with one uniform per distribution (``logits.shape[:-1]``)."""
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def sample(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           do_sample: torch.Tensor, ban: torch.Tensor | None = None,
           uniforms: torch.Tensor | None = None, kmax: int | None = None) -> torch.Tensor:
    """Full pipeline per row: filter, then add ``ban`` (0 / -inf, broadcastable; **after** top-p, so banned
    mass still counts in the nucleus), then sample (rows with ``do_sample`` when ``uniforms`` are given) or
    argmax.

    Argmax rows take the most likely allowed id: the filters always keep the top of the ranking, so filtering
    cannot change it. The same id stands in for a draw when the filters kept only banned ids (the reference would
    sample from NaNs there): a ban is never broken.

    Draws are inverse-CDF over the candidates in descending logit order, so a row's draw does not depend on
    its batch mates. ``kmax`` (an int >= every row's ``top_k``, all > 0) restricts the candidates to
    ``torch.topk`` instead of sorting the whole vocabulary (logits tied with a row's k-th largest beyond the
    ``kmax`` candidates are then dropped rather than kept).
    """
    allowed = logits.float() if ban is None else logits.float() + ban
    best = allowed.argmax(-1)
    if uniforms is None:
        return best
    x = logits.float() / _rows(temperature.float(), logits)
    if kmax is None:
        asc, ids = x.sort(-1)
    else:
        vals, ids = x.topk(min(kmax, x.shape[-1]), -1)
        asc, ids = vals.flip(-1), ids.flip(-1)
    vals, ids = _filter_sorted(asc, top_k, top_p).flip(-1), ids.flip(-1)  # descending
    if ban is not None:
        vals = vals + ban.expand_as(x).gather(-1, ids)
    drawn = ids.gather(-1, sample_from(vals, uniforms).unsqueeze(-1)).squeeze(-1)
    keep = _rows(do_sample, drawn)
    if ban is not None:
        keep = keep & (vals.amax(-1) > NEG_INF)
    return torch.where(keep, drawn, best)


def params_tensors(params: list[SamplingParams], device=None) -> dict[str, torch.Tensor]:
    """Per-row parameter tensors for :func:`sample` from a list of :class:`SamplingParams`."""
    return {
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
        "top_k": torch.tensor([p.top_k or 0 for p in params], dtype=torch.long, device=device),
        "top_p": torch.tensor([1.0 if p.top_p is None else p.top_p for p in params], dtype=torch.float32,
                              device=device),
        "do_sample": torch.tensor([p.do_sample for p in params], dtype=torch.bool, device=device),
    }
