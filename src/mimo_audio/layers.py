"""Shared building blocks: RoPE, RMSNorm, the window/causal attention mask and the static KV cache.

Pure modules and tensor functions; no IO. The audio tokenizer (``codec_modules.py``) uses RoPE and the window
mask, the LM (``lm.py``) RoPE tables, RMSNorm and :class:`KVCache`.
"""

from __future__ import annotations

import torch
from torch import nn


# --------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """``inv_freq[i] = theta ** (-2i / head_dim)`` for ``i < head_dim / 2`` (float32)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos/sin tables ``(..., head_dim)`` for integer ``positions`` ``(...)``; angles in float32.

    The rotate-half convention: the table is ``cat(freqs, freqs)`` so dimension ``i`` pairs with
    ``i + head_dim / 2``.
    """
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(..., T, head_dim)``) by tables broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def rope_table(max_positions: int, inv_freq: torch.Tensor, dtype: torch.dtype):
    """``(cos, signed_sin)`` tables ``(max_positions, head_dim)`` for :func:`rope_signed`: ``cos`` as
    :func:`rope_cos_sin` gives it, ``signed_sin = cat(-sin_half, sin_half)`` (the sign of ``rotate_half`` folded
    into the table)."""
    cos, sin = rope_cos_sin(torch.arange(max_positions, device=inv_freq.device), inv_freq, dtype)
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[:, :half], sin[:, half:]), -1)


def rope_signed(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, out=None) -> torch.Tensor:
    """:func:`apply_rope` with a signed sine table: ``x * cos + swap_halves(x) * signed_sin`` (three ops instead of
    seven: one roll replaces two slices, a negation and a concatenation; the same values).

    >>> x = torch.randn(2, 3, 8); f = rope_inv_freq(8, 100.0); cos, sin = rope_cos_sin(torch.arange(3), f, x.dtype)
    >>> c, s = rope_table(3, f, x.dtype)
    >>> bool(torch.allclose(rope_signed(x, c, s), apply_rope(x, cos, sin), atol=1e-6))
    True
    """
    if out is None:
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin, out=out)


# --------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Qwen2's RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # one fused op; the same formula (normalise in float32, then scale) as below (measured: 1 op and
            # ~8 us against 8 ops and ~11 us at width 64 on the CPU, torch 2.13)
            return torch.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # reduced precision: normalise in float32, cast back, then scale in the input dtype (Qwen2's order)
        h = torch.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * h.to(x.dtype)


# --------------------------------------------------------------------------------------------- masks
def window_mask(
    q_len: int,
    k_len: int | None = None,
    *,
    causal: bool = False,
    window: tuple[int, int] = (-1, -1),
    q_offset: int = 0,
    device=None,
) -> torch.Tensor:
    """Boolean ``(q_len, k_len)`` mask, True where query ``i`` may attend to key ``j``.

    flash-attn semantics: with ``window = (left, right)`` query ``i`` (at absolute position
    ``i + q_offset``) sees keys ``j`` with ``i - left <= j <= i + right`` (``-1`` = unlimited);
    ``causal`` also requires ``j <= i``.

    >>> window_mask(3, causal=True).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    >>> window_mask(4, window=(1, 0)).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    """
    k_len = q_len if k_len is None else k_len
    i = torch.arange(q_len, device=device)[:, None] + q_offset
    j = torch.arange(k_len, device=device)[None, :]
    ok = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    left, right = window
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    if causal:
        ok &= j <= i
    return ok



# --------------------------------------------------------------------------------------------- KV caches
# Attention hands a cache the heads of its new positions, ``(B, 2 * kv_heads + q_heads, T, head_dim)`` after RoPE
# (rows: v, k, q); ``update(heads)`` stores what later positions need and returns ``(q, keys, values)`` to attend
# with; ``slot`` (or None) is a buffer the heads may be written into directly. A cache step also carries the
# attention ``mask`` for those queries (None: every key it returns is visible) and, where the positions never
# change, the RoPE tables (``rope``).
class KVCache:
    """Static key/value cache for every layer of one stack, written in place at a position per row.

    ``kv``: ``(layers, batch, 2 * kv_heads, capacity, head_dim)`` (values, then keys). A row's entry ``j`` holds its
    position ``j``: rows are independent, so a row can be (re)started at any time while the others keep running
    (continuous batching). What a forward pass writes, and which keys each query sees, is a :class:`CacheStep`
    made by :meth:`step`.
    """

    def __init__(self, layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int, *, dtype, device):
        self.kv = torch.zeros(layers, batch, 2 * kv_heads, capacity, head_dim, dtype=dtype, device=device)

    @property
    def batch(self) -> int:
        return self.kv.shape[1]

    @property
    def capacity(self) -> int:
        return self.kv.shape[3]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows ``start:stop`` (writes go to this cache)."""
        view = KVCache.__new__(KVCache)
        view.kv = self.kv[:, start:stop]
        return view

    def resized(self, batch: int, capacity: int) -> KVCache:
        """A new cache with at least this many rows and positions, holding this one's entries."""
        L, B, H2, T, D = self.kv.shape
        new = KVCache(L, max(batch, B), H2 // 2, max(capacity, T), D, dtype=self.kv.dtype, device=self.kv.device)
        new.kv[:, :B, :, :T] = self.kv
        return new

    def step(self, positions: torch.Tensor, keys: int, *, mask: bool = True) -> CacheStep:
        """A forward pass that writes the new entries at ``positions`` ``(batch, T)`` (per row; the tensor may be
        updated in place between passes, then call :meth:`CacheStep.refresh`) and attends over entries
        ``0..keys-1``, query ``t`` of row ``b`` seeing the entries at positions ``<= positions[b, t]``
        (``mask=False``: every entry below ``keys``, when the caller knows they are all valid)."""
        return CacheStep(self, positions, keys, mask)


class CacheStep:
    """One forward pass's use of a :class:`KVCache` (see :meth:`KVCache.step`)."""

    rope = None

    def __init__(self, cache: KVCache, positions: torch.Tensor, keys: int, mask: bool):
        if keys > cache.capacity:
            raise ValueError(f"{keys} keys do not fit a cache of {cache.capacity} positions")
        self.positions = positions
        B, T = positions.shape
        _, _, H2, _, D = cache.kv.shape
        index = positions.view(B, 1, T, 1).expand(B, H2, T, D)
        self.layers = [_RowKV(cache.kv[i], index, keys) for i in range(cache.kv.shape[0])]
        self._keys = torch.arange(keys, device=positions.device) if mask else None
        self.mask = None
        self.refresh()

    def refresh(self) -> None:
        """Recompute the mask after the positions changed in place."""
        if self._keys is not None:
            self.mask = (self._keys <= self.positions[:, :, None])[:, None]  # (B, 1, T, keys)


class _RowKV:
    __slots__ = ("kv", "index", "kvh", "k_read", "v_read")
    slot = None

    def __init__(self, kv: torch.Tensor, index: torch.Tensor, keys: int):
        self.kv, self.index = kv, index
        self.kvh = kvh = kv.shape[1]
        self.v_read, self.k_read = kv[:, : kvh // 2, :keys], kv[:, kvh // 2:, :keys]

    def update(self, heads: torch.Tensor):
        self.kv.scatter_(2, self.index, heads)  # the index covers the first 2 * kv_heads heads: v and k
        return heads[:, self.kvh:], self.k_read, self.v_read


class ScheduleCache:
    """Cache for a stack run one position at a time over the same positions ``0..S-1`` in every row (the patch
    decoder's steps): ``heads`` ``(layers, batch, 2 * kv_heads + q_heads, S, head_dim)`` holds v, k and q, so step
    ``p`` stores a layer's new heads with one copy and reads fixed views. :meth:`steps` gives one cache step per
    position, reusable for every pass."""

    def __init__(self, layers: int, batch: int, q_heads: int, kv_heads: int, steps: int, head_dim: int, *,
                 dtype, device):
        self.q_heads, self.kv_heads = q_heads, kv_heads
        self.heads = torch.zeros(layers, batch, 2 * kv_heads + q_heads, steps, head_dim, dtype=dtype, device=device)

    def steps(self, rope=None) -> list[_ScheduleStep]:
        """Step ``p`` writes position ``p`` and attends over ``0..p``; ``rope(positions)`` (optional) gives the RoPE
        tables of each step once."""
        L, B, _, S, _ = self.heads.shape
        out = []
        for p in range(S):
            positions = torch.full((B, 1), p, dtype=torch.long, device=self.heads.device)
            out.append(_ScheduleStep(self, positions, None if rope is None else rope(positions)))
        return out


class _ScheduleStep:
    mask = None

    def __init__(self, cache: ScheduleCache, positions: torch.Tensor, rope):
        self.positions, self.rope = positions, rope
        p = int(positions[0, 0])
        K = cache.kv_heads
        self.layers = [_FixedKV(h[:, :, p: p + 1], h[:, 2 * K:, p: p + 1], h[:, K: 2 * K, : p + 1], h[:, :K, : p + 1])
                       for h in cache.heads]


class _FixedKV:
    __slots__ = ("slot", "q", "k", "v")

    def __init__(self, slot, q, k, v):
        self.slot, self.q, self.k, self.v = slot, q, k, v

    def update(self, heads: torch.Tensor):
        if heads is not self.slot:  # Attention wrote straight into the slot otherwise
            self.slot.copy_(heads)
        return self.q, self.k, self.v
