"""Shared building blocks: RoPE, RMSNorm and the window/causal attention mask.

Pure modules and tensor functions; no IO. The audio tokenizer (``codec_modules.py``) uses RoPE and the window
mask, the LM (``lm.py``) RoPE and RMSNorm.
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


# --------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Qwen2's RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


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

