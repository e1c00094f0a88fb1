"""The audio tokenizer's networks (SPEC §2.2-§2.5): attention plans, encoder, RVQ, decoder, vocoder.

Pure modules and tensor functions; ``codec.py`` wraps them into :class:`~mimo_audio.codec.AudioTokenizer`.

Sequences are held as zero-padded batches ``(B, T, D)`` with per-item lengths instead of the reference's
packed layout: attention masks make each item see only its own valid frames (flash-attn's varlen
semantics), and RoPE positions restart at 0 for every item.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .layers import apply_rope, rope_cos_sin, rope_inv_freq, window_mask

try:  # optional fast path on CUDA; never required
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - flash-attn is not installed in CI
    _flash_attn_func = None


# --------------------------------------------------------------------------------------------- attention
class AttnPlan:
    """How one transformer stack attends: masks built once per forward and shared by all layers.

    ``lengths`` (B,) gives the valid frames of each padded item (``None``: all ``T`` valid).
    ``window = (left, right)`` and ``causal`` follow flash-attn: query ``i`` sees keys ``j`` with
    ``i - left <= j <= i + right`` (``-1`` unlimited) and, if causal, ``j <= i``.
    A bounded window on a long sequence is computed blockwise (memory O(T * window), never a T x T mask).
    """

    def __init__(self, T: int, lengths: torch.Tensor | None, *, causal: bool, window=(-1, -1),
                 device=None, block: int = 128, full_mask_limit: int = 512):
        left, right = window
        if causal:
            right = 0  # causal caps the right window at the query itself
        self.T, self.causal, self.left, self.right, self.block = T, causal, left, right, block
        if lengths is not None and bool((lengths >= T).all()):
            lengths = None
        self.lengths = lengths
        self.flash_ok = lengths is None and _flash_attn_func is not None and os.environ.get("MIMO_AUDIO_FLASH", "1") != "0"
        bounded = left >= 0 and right >= 0
        t = torch.arange(T, device=device)
        if bounded and full_mask_limit < T:
            self.mode = "block"
            self._build_block_mask(device)
        elif bounded or (causal and lengths is not None):
            self.mode = "mask"
            m = window_mask(T, causal=causal, window=(left, right), device=device)[None]  # (1, T, T)
            if lengths is not None:
                kval = t[None, :] < lengths[:, None]  # (B, T)
                m = (m & kval[:, None, :]) | ~kval[:, :, None]  # padded queries see everything (output unused)
            self.mask = m[:, None]  # (B|1, 1, T, T)
        elif lengths is not None:
            self.mode = "mask"
            self.mask = (t[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T) key padding
        else:
            self.mode = "plain"

    def _build_block_mask(self, device):
        T, bl, left, right = self.T, self.block, self.left, self.right
        nb = -(-T // bl)
        W = bl + left + right
        # query i of a block sits at offset left among the block's W keys
        m = window_mask(bl, W, causal=self.causal, window=(left, right), q_offset=left, device=device)
        kabs = torch.arange(nb, device=device)[:, None] * bl - left + torch.arange(W, device=device)[None, :]
        qabs = torch.arange(nb * bl, device=device).view(nb, bl)
        limit = torch.full((1,), T, device=device) if self.lengths is None else self.lengths.to(device)
        kval = (kabs[None] >= 0) & (kabs[None] < limit[:, None, None])  # (B|1, nb, W)
        qval = qabs[None] < limit[:, None, None]  # (B|1, nb, bl)
        mask = (m[None, None] & kval[:, :, None, :]) | ~qval[..., None]
        self.mask = mask[:, :, None]  # (B|1, nb, 1, bl, W)
        self.nb, self.W = nb, W

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q, k, v``: ``(B, H, T, D)`` -> ``(B, H, T, D)``."""
        if self.flash_ok and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=self.causal,
                                   window_size=(self.left, self.right))
            return out.transpose(1, 2)
        if self.mode == "plain":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        if self.mode == "mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self._blockwise(q, k, v)

    def _blockwise(self, q, k, v):
        B, H, T, D = q.shape
        bl, nb, W = self.block, self.nb, self.W
        Tp = nb * bl
        pad = (0, 0, self.left, Tp - T + self.right)
        # blocks become batch items: (B * nb, H, bl | W, D) keeps SDPA on its fused 4-D kernels
        kw = F.pad(k, pad).unfold(2, W, bl).permute(0, 2, 1, 4, 3).reshape(B * nb, H, W, D)
        vw = F.pad(v, pad).unfold(2, W, bl).permute(0, 2, 1, 4, 3).reshape(B * nb, H, W, D)
        qb = F.pad(q, (0, 0, 0, Tp - T)).view(B, H, nb, bl, D).transpose(1, 2).reshape(B * nb, H, bl, D)
        mask = self.mask.expand(B, -1, -1, -1, -1).reshape(B * nb, 1, bl, W)
        out = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=mask)
        return out.view(B, nb, H, bl, D).transpose(1, 2).reshape(B, H, Tp, D)[:, :, :T]


class Attention(nn.Module):
    """The tokenizer's attention: q/v/out projections with bias, k without; RoPE on q and k (SPEC §2.2)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise CheckpointError(f"tokenizer config: width {dim} is not divisible by {heads} attention heads; "
                                  "the config.json does not describe a valid model")
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x, cos, sin, plan: AttnPlan):
        B, T, D = x.shape
        shape = (B, T, self.heads, self.head_dim)
        q = apply_rope(self.q_proj(x).view(shape).transpose(1, 2), cos, sin)
        k = apply_rope(self.k_proj(x).view(shape).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = plan(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x + Attn(LN(x))`` then ``x + fc2(GELU(fc1(LN(x))))``."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x, cos, sin, plan):
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin, plan)
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:
            big = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-big, big)
        return x


def make_layers(n: int, dim: int, heads: int, ffn: int) -> nn.ModuleList:
    return nn.ModuleList(TransformerLayer(dim, heads, ffn) for _ in range(n))


def run_layers(layers: nn.ModuleList, x: torch.Tensor, plan: AttnPlan, theta: float, *,
               skip_from: int | None = None, progress: Callable[[], None] | None = None) -> torch.Tensor:
    """Run ``layers`` over ``x`` ``(B, T, D)`` with RoPE positions ``0..T-1`` per item.

    With ``skip_from = i`` the output of layer ``i`` is added to the output of the last layer."""
    head_dim = layers[0].self_attn.head_dim
    inv = rope_inv_freq(head_dim, theta, device=x.device)
    cos, sin = rope_cos_sin(torch.arange(x.shape[1], device=x.device), inv, x.dtype)
    skip = None
    for idx, layer in enumerate(layers):
        x = layer(x, cos, sin, plan)
        if idx == skip_from:
            skip = x
        if progress is not None:
            progress()
    return x if skip is None else x + skip


# --------------------------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """mel ``(B, n_mels, F)`` -> continuous codes ``(B, ceil(ceil(F/2)/pool), d)`` (SPEC §2.3)."""

    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.conv1 = nn.Conv1d(c.n_mels, d, c.kernel_size, padding=1)
        self.conv2 = nn.Conv1d(d, d, c.kernel_size, stride=c.stride_size, padding=1)
        self.layers = make_layers(c.encoder_layers, d, c.encoder_attention_heads, c.encoder_ffn_dim)
        self.theta = c.rope_theta
        self.layer_norm = nn.LayerNorm(d)
        self.pool = c.avg_pooler
        if self.pool > 1:
            self.down_sample = nn.Conv1d(d, d, self.pool, stride=self.pool, bias=False)
            self.down_sample_norm = nn.LayerNorm(d)
        self.skip_from = None if c.encoder_skip_layer_id is None else c.encoder_skip_layer_id - 1
        self.causal, self.window = c.encoder_causal, c.encoder_attn_window_size
        self.stride = c.stride_size

    def conv_length(self, f):
        """Frames after ``conv2`` for ``f`` mel frames (an int or a tensor): ``ceil(f / stride)``."""
        return (f - 1) // self.stride + 1

    def code_length(self, f):
        """Code frames for ``f`` mel frames (an int or a tensor): ``ceil(conv_length(f) / avg_pooler)``."""
        return (self.conv_length(f) + self.pool - 1) // self.pool

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor, batch_max: torch.Tensor,
                progress: Callable[[], None] | None = None):
        """``mel`` ``(B, n_mels, >= max(lengths) + 1)`` zero-padded; ``batch_max[b]`` is the longest mel of the
        batch item ``b`` was encoded with in the reference (reproduces its padding artefacts, SPEC §2.4).
        Returns hidden ``(B, C_max, d)`` and code lengths ``(B,)``."""
        x = F.gelu(self.conv1(mel))
        t = torch.arange(x.shape[-1], device=x.device)
        # the reference runs conv1 over the zero-padded batch: frame F leaks into conv2 when F < batch max
        keep = t[None, :] < (lengths + (lengths < batch_max).long())[:, None]
        x = x * keep[:, None, :].to(x.dtype)
        x = F.gelu(self.conv2(x))
        E = self.conv_length(lengths)
        e_max = int(E.max())
        x = x[:, :, :e_max].transpose(1, 2)
        plan = AttnPlan(e_max, E, causal=self.causal, window=self.window, device=x.device)
        x = self.layer_norm(run_layers(self.layers, x, plan, self.theta, skip_from=self.skip_from, progress=progress))
        if self.pool == 1:
            return x, E
        p = self.pool
        L = -(-e_max // p) * p
        ref_e = self.conv_length(batch_max)
        tt = torch.arange(L, device=x.device)
        src = torch.minimum(tt[None, :], (E - 1)[:, None])  # copy the last valid frame into the tail ...
        x = torch.gather(x, 1, src[..., None].expand(-1, -1, x.shape[-1]))
        x = x * (tt[None, :] < ref_e[:, None])[..., None].to(x.dtype)  # ... up to the reference batch's length
        x = F.gelu(self.down_sample(x.transpose(1, 2))).transpose(1, 2)
        return self.down_sample_norm(x), self.code_length(lengths)


# --------------------------------------------------------------------------------------------- RVQ
class ResidualVQ(nn.Module):
    """Residual vector quantizer (SPEC §2.4). Codebooks are float32; search and sums run in float32."""

    def __init__(self, dim: int, sizes: tuple[int, ...]):
        super().__init__()
        self.codebooks = nn.ParameterList(nn.Parameter(torch.randn(k, dim), requires_grad=False) for k in sizes)
        self.sizes = tuple(sizes)

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` ``(N, dim)`` -> codes ``(N, n)`` int64."""
        residual = x.to(torch.float32)
        out = []
        for r in range(n):
            embed = self.codebooks[r]
            dist = -(residual.pow(2).sum(1, keepdim=True) - 2 * residual @ embed.t()
                     + embed.pow(2).sum(1)[None, :])
            idx = dist.argmax(dim=-1)
            residual = residual - F.embedding(idx, embed)
            out.append(idx)
        return torch.stack(out, dim=1) if out else torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``(..., n)`` -> sum of the selected vectors ``(..., dim)`` float32."""
        out = None
        for r in range(codes.shape[-1]):
            vec = F.embedding(codes[..., r], self.codebooks[r])
            out = vec if out is None else out + vec
        return out


# --------------------------------------------------------------------------------------------- decoder
class CausalConvTranspose(nn.Module):
    """ConvTranspose1d -> GroupNorm(1) over the whole output -> drop the last ``max(0, k - s)`` frames."""

    def __init__(self, cin: int, cout: int, k: int, s: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, k, stride=s)
        self.norm = nn.GroupNorm(1, cout)
        self.trim = max(0, k - s)

    def forward(self, x):
        x = self.norm(self.conv(x))
        return x[..., : x.shape[-1] - self.trim] if self.trim else x


class Decoder(nn.Module):
    """Quantized hidden ``(B, T, d)`` -> mel-like features ``(B, 4T, n_mels)`` (SPEC §2.5 steps 1-4)."""

    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.pool = c.avg_pooler
        if self.pool > 1:
            self.dconv1 = CausalConvTranspose(d, d, c.avg_pooler, c.avg_pooler)
        self.layers = make_layers(c.decoder_layers, d, c.decoder_attention_heads, c.decoder_ffn_dim)
        self.theta = c.rope_theta
        self.layer_norm = nn.LayerNorm(d)
        self.dconv2 = CausalConvTranspose(d, c.n_mels, c.decoder_kernel_size, c.decoder_stride_size)
        self.causal, self.window = c.decoder_causal, c.decoder_attn_window_size

    def forward(self, h, progress=None):
        x = h.transpose(1, 2)
        if self.pool > 1:
            x = self.dconv1(x)
        x = x.transpose(1, 2)
        plan = AttnPlan(x.shape[1], None, causal=self.causal, window=self.window, device=x.device)
        x = self.layer_norm(run_layers(self.layers, x, plan, self.theta, progress=progress))
        return self.dconv2(x.transpose(1, 2)).transpose(1, 2)


class Vocoder(nn.Module):
    """Mel-like features ``(B, N, n_mels)`` -> waveform ``(B, N * hop)`` float32 (SPEC §2.5 steps 5-6)."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = nn.Linear(c.n_mels, c.vocoder_dim, bias=False)
        self.layers = make_layers(c.vocoder_num_layers, c.vocoder_dim, c.vocoder_attention_heads,
                                  c.vocoder_intermediate_dim)
        self.theta = c.rope_theta
        self.layer_norm = nn.LayerNorm(c.vocoder_dim)
        self.head_out = nn.Linear(c.vocoder_dim, c.nfft + 2)
        self.register_buffer("window", torch.hann_window(c.nfft, periodic=True))
        self.window_size = c.vocoder_attn_window_size
        self.nfft, self.hop = c.nfft, c.hop_length
        self.block, self.full_mask_limit = 128, 512  # attention: blockwise above full_mask_limit frames

    def forward(self, mel, progress=None):
        x = self.embeddings(mel)
        plan = AttnPlan(x.shape[1], None, causal=False, window=self.window_size, device=x.device, block=self.block,
                       full_mask_limit=self.full_mask_limit)
        x = self.layer_norm(run_layers(self.layers, x, plan, self.theta, progress=progress))
        return istft(self.head_out(x), self.window, self.nfft, self.hop)


def istft(out: torch.Tensor, window: torch.Tensor, nfft: int, hop: int) -> torch.Tensor:
    """ISTFT head with "same" padding: ``(B, N, nfft + 2)`` log-magnitude|phase -> ``(B, N * hop)`` float32."""
    logmag, phase = out.float().chunk(2, dim=-1)
    mag = torch.exp(logmag).clamp(max=1e2)
    spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))  # == mag * (cos + i sin), bit for bit
    win = window.float()
    frames = torch.fft.irfft(spec, n=nfft, dim=-1, norm="backward") * win  # (B, N, nfft)
    B, N, _ = frames.shape
    size = (N - 1) * hop + nfft
    pad = (nfft - hop) // 2

    def overlap_add(fr):  # (b, N, nfft) -> (b, size)
        if nfft % hop:
            return F.fold(fr.transpose(1, 2), output_size=(1, size), kernel_size=(1, nfft), stride=(1, hop))[:, 0, 0]
        R = nfft // hop  # each frame covers R hops: add R shifted copies (no Python loop over frames)
        parts = fr.reshape(fr.shape[0], N, R, hop)
        y = fr.new_zeros(fr.shape[0], N + R - 1, hop)
        for r in range(R):
            y[:, r: r + N] += parts[:, :, r]
        return y.reshape(fr.shape[0], size)

    y = overlap_add(frames)[:, pad: size - pad]
    env = overlap_add(win.square().expand(1, N, -1))[:, pad: size - pad]
    if not bool((env > 1e-11).all()):
        raise RuntimeError("ISTFT window envelope is zero somewhere: the window buffer is invalid")
    return y / env
