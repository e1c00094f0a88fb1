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
    (after the same filters and bans). ``temperature=0`` means greedy (the OpenAI convention): it is stored as
    ``do_sample=False`` with temperature 1, the same sampler as :data:`GREEDY` with these filters.

    >>> SamplingParams(temperature=0, top_k=5)
    SamplingParams(do_sample=False, temperature=1.0, top_k=5, top_p=None)
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.temperature == 0:  # greedy; argmax does not depend on a temperature
            object.__setattr__(self, "do_sample", False)
            object.__setattr__(self, "temperature", 1.0)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


GREEDY = SamplingParams(do_sample=False)


def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view((-1,) + (1,) * (like.dim() - 1))


def _filter_sorted(asc: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p on temperature-scaled logits already sorted **ascending** along the last axis: drop values
    strictly below the k-th largest (k <= 0 keeps all), then those whose ascending cumulative softmax is
    <= 1 - p; the largest is always kept."""
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


class Sampler:
    """The sampling pipeline for a fixed set of rows: temperature -> top-k -> top-p -> ban -> draw or argmax.

    Built once per batch (``temperature``/``top_k``/``top_p``/``do_sample`` are ``(R,)`` tensors, see
    :func:`params_tensors`); what holds for every row is worked out here, on the host, so that a call skips the
    steps that cannot change anything (temperature 1, top-k equal to ``kmax`` or off, top-p 1 without a ban) and
    reuses its per-row tensors. ``kmax`` (an int >= every row's ``top_k``, all > 0) restricts the candidates to
    ``torch.topk`` instead of sorting the whole vocabulary (logits tied with a row's k-th largest beyond the
    ``kmax`` candidates are then dropped rather than kept).
    """

    def __init__(self, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 do_sample: torch.Tensor, kmax: int | None = None):
        t, k, p, d = (x.tolist() for x in (temperature, top_k, top_p, do_sample))
        self.temperature = None if all(v == 1.0 for v in t) else temperature.float()
        if kmax is not None and not all(0 < v <= kmax for v in k):
            raise ValueError(f"kmax={kmax} needs every row's top_k in [1, kmax], got {k}")
        self.kmax = kmax
        # the k-th largest's position among the descending candidates; None: no row drops anything
        self.top_k = None if all(v <= 0 or v == kmax for v in k) else top_k
        self.threshold = 1.0 - top_p.float()
        # with top-p 1 the filter only drops zero-probability tokens: no draw can change unless a ban renormalises
        self.top_p_off = all(v >= 1.0 for v in p)
        self.do_sample = do_sample
        self.any_sample = any(d)
        self.all_sample = all(d)
        self._last: dict[int, torch.Tensor] = {}

    def _not_last(self, n: int, device) -> torch.Tensor:
        m = self._last.get(n)
        if m is None:
            m = self._last[n] = torch.arange(n, device=device) < n - 1
        return m

    def __call__(self, logits: torch.Tensor, ban: torch.Tensor | None = None,
                 uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``logits.shape[:-1]``. ``ban`` (0 / -inf, broadcastable to ``logits``) is added **after** top-p,
        so banned mass still counts in the nucleus. Rows with ``do_sample`` draw with ``uniforms``
        (``logits.shape[:-1]``); the others, and every row when ``uniforms`` is None, take the argmax.

        Argmax rows take the most likely allowed id: the filters always keep the top of the ranking, so filtering
        cannot change it. The same id stands in for a draw when the filters kept only banned ids (the reference
        would sample from NaNs there): a ban is never broken. Draws are inverse-CDF over the candidates in
        descending logit order, so a row's draw does not depend on its batch mates.
        """
        if logits.dtype != torch.float32:
            logits = logits.float()
        best = (logits if ban is None else logits + ban).argmax(-1)
        if uniforms is None or not self.any_sample:
            return best
        V = logits.shape[-1]
        if self.kmax is None:
            vals, ids = logits.sort(-1, descending=True)
        else:
            vals, ids = logits.topk(min(self.kmax, V), -1)
        if self.temperature is not None:  # a positive scale keeps the order: scale the candidates only
            vals = vals / _rows(self.temperature, vals)
        n = vals.shape[-1]
        if self.top_k is not None:  # drop values strictly below the k-th largest (k <= 0 keeps all)
            k = self.top_k.clamp(0, n)
            pos = torch.where(k > 0, k, n) - 1
            kth = vals.gather(-1, _rows(pos, vals).expand(*vals.shape[:-1], 1))
            vals = vals.masked_fill(vals < kth, NEG_INF)
        if not (self.top_p_off and ban is None):
            # drop where the reference's ascending cumulative softmax is <= 1 - p; the largest always stays
            asc = vals.flip(-1)
            remove = asc.softmax(-1).cumsum(-1) <= _rows(self.threshold, asc)
            vals = asc.masked_fill_(remove.logical_and_(self._not_last(n, asc.device)), NEG_INF).flip(-1)
        if ban is not None:
            vals = vals + ban.expand(logits.shape).gather(-1, ids)
        cdf = vals.softmax(-1).cumsum(-1)
        target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
        pick = torch.searchsorted(cdf, target, right=True).clamp_(max=n - 1)
        drawn = ids.gather(-1, pick).squeeze(-1)
        if ban is not None:  # the filters kept only banned ids: fall back to the best allowed id
            keep = vals.amax(-1) > NEG_INF
            return torch.where(keep & _rows(self.do_sample, drawn) if not self.all_sample else keep, drawn, best)
        return drawn if self.all_sample else torch.where(_rows(self.do_sample, drawn), drawn, best)


def sample(logits: torch.Tensor, *, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           do_sample: torch.Tensor, ban: torch.Tensor | None = None,
           uniforms: torch.Tensor | None = None, kmax: int | None = None) -> torch.Tensor:
    """One call of a :class:`Sampler` built from these per-row parameters (see there)."""
    return Sampler(temperature, top_k, top_p, do_sample, kmax)(logits, ban, uniforms)


def params_tensors(params: list[SamplingParams], device=None) -> dict[str, torch.Tensor]:
    """Per-row parameter tensors for :func:`sample` from a list of :class:`SamplingParams`."""
    return {
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
        "top_k": torch.tensor([p.top_k or 0 for p in params], dtype=torch.long, device=device),
        "top_p": torch.tensor([1.0 if p.top_p is None else p.top_p for p in params], dtype=torch.float32,
                              device=device),
        "do_sample": torch.tensor([p.do_sample for p in params], dtype=torch.bool, device=device),
    }
