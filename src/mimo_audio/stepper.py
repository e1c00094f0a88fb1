"""Static-cache step functions for generation: backbone prefill and one-group steps, the delayed patch decoder.

The math is the modules' of :mod:`mimo_audio.lm`; only the schedule differs: every buffer is preallocated per
batch and written in place (``out=`` / ``addmm_`` / ``index_copy_``), every view is made once, and a few weights
are re-arranged once per model (:class:`FastWeights`) so that one group costs few kernel launches:

- backbone caches are position-major ``(max_len, B, 2 * kv * hd)``; a step writes its k/v with one
  ``index_copy_`` and reads fixed per-layer views. The GQA query heads of one kv head become the query-length
  axis of SDPA (one query position), so no key repetition is needed.
- the patch decoder's RoPE positions are fixed (0..S-1), so RoPE is folded into one q/k/v matrix per position;
  its residual stream is kept as ``[h, -h]`` so that RMSNorm is one ``layer_norm`` call (mean exactly 0,
  variance = mean(h^2)) with the norm weight ``[w, 0]``.
- the eight patch-decoder heads are one padded matrix per step (inactive channels left out), with the padding
  rows and the empty ids banned through the bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .delay import delay_schedule
from .lm import MimoAudioLM

NEG_INF = float("-inf")


def _rotate_rows(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Rows permuted/negated so that ``x @ _rotate_rows(W).T == rotate_half(x @ W.T)`` per head."""
    w = w.reshape(heads, 2, hd // 2, *w.shape[1:])
    return torch.cat([-w[:, 1:2], w[:, 0:1]], 1).reshape(heads * hd, *w.shape[3:])


class FastWeights:
    """Re-arranged weights for the step functions, derived once from a model (rebuilt if weights change)."""

    def __init__(self, lm: MimoAudioLM):
        self.key = _weights_key(lm)
        c = lm.config
        dt, dev = lm.dtype, lm.device
        with torch.no_grad():
            # backbone: transposed views (no copies)
            self.bb = [(blk.norm1.weight, blk.attn.qkv.bias, blk.attn.qkv.weight.t(), blk.attn.o_proj.weight.t(),
                        blk.norm2.weight, blk.mlp.gate_up.weight.t(), blk.mlp.down.weight.t())
                       for blk in lm.backbone.layers]
            # patch decoder
            dec = lm.patch_decoder
            s = dec.cfg
            S = c.local_steps
            pos = torch.arange(S, device=dev)
            ang = pos[:, None].float() * dec.inv_freq.float()[None]
            ang = torch.cat([ang, ang], -1)
            cos, sin = ang.cos(), ang.sin()  # (S, hd)
            qk = (s.heads + s.kv_heads) * s.head_dim
            zeros = torch.zeros(s.dim, dtype=dt, device=dev)
            self.dec = []
            for blk in dec.layers:
                W, b = blk.attn.qkv.weight.float(), blk.attn.qkv.bias.float()
                Wr = torch.cat([_rotate_rows(W[: s.heads * s.head_dim], s.heads, s.head_dim),
                                _rotate_rows(W[s.heads * s.head_dim: qk], s.kv_heads, s.head_dim)])
                br = torch.cat([_rotate_rows(b[: s.heads * s.head_dim, None], s.heads, s.head_dim),
                                _rotate_rows(b[s.heads * s.head_dim: qk, None], s.kv_heads, s.head_dim)])[:, 0]
                per_pos = []
                for p in range(S):
                    cq = cos[p].repeat(s.heads + s.kv_heads)
                    sq = sin[p].repeat(s.heads + s.kv_heads)
                    Wp = torch.cat([W[:qk] * cq[:, None] + Wr * sq[:, None], W[qk:]])
                    bp = torch.cat([b[:qk] * cq + br * sq, b[qk:]])
                    per_pos.append((bp.to(dt), Wp.to(dt).t().contiguous()))
                wo, wd = blk.attn.o_proj.weight, blk.mlp.down.weight
                self.dec.append((
                    torch.cat([blk.norm1.weight, zeros]), per_pos, torch.cat([wo, -wo]).t().contiguous(),
                    torch.cat([blk.norm2.weight, zeros]), blk.mlp.gate_up.weight.t(), torch.cat([wd, -wd]).t().contiguous(),
                ))
            self.dec_norm = torch.cat([dec.norm.weight, zeros])
            # heads: one padded matrix per step over the active channels; bias bans padding and empty ids
            sched = delay_schedule(c.delay_pattern, c.group_size)
            vmax = max(c.speech_vocab_size)
            self.vmax = vmax
            self.heads = []
            for step in sched:
                ws, bs = [], []
                for ch, _frame in step:
                    w = lm.local_heads[ch].weight
                    v = w.shape[0]
                    ws.append(torch.cat([w, torch.zeros(vmax - v, w.shape[1], dtype=dt, device=dev)]))
                    bias = torch.zeros(vmax, dtype=dt, device=dev)
                    bias[v:] = NEG_INF
                    bias[c.speech_zeroemb_idx[ch]] = NEG_INF
                    bs.append(bias)
                self.heads.append((torch.cat(bs), torch.cat(ws).t().contiguous()))
            self.table = lm.speech_table().detach()
            self.offsets = lm.speech_offsets(dev)
            self.sched = sched


def _weights_key(lm: MimoAudioLM):
    return tuple((id(p), p._version) for p in lm.parameters())


def fast_weights(lm: MimoAudioLM) -> FastWeights:
    if lm._fast is None or lm._fast.key != _weights_key(lm):
        lm._fast = None
        lm._fast = FastWeights(lm)
    return lm._fast


class Stepper:
    """Preallocated state for generating up to ``max_len`` positions for ``B`` rows; runs prefill, backbone
    steps, patch encoding of new groups and the patch decoder."""

    BUCKET = 256

    def __init__(self, lm: MimoAudioLM, batch: int, max_len: int, empty_id: int):
        self.lm, self.fw = lm, fast_weights(lm)
        c = lm.config
        self.c, self.B, self.max_len, self.empty_id = c, batch, max_len, empty_id
        dt, dev = lm.dtype, lm.device
        self.dt, self.dev = dt, dev
        B = batch
        bb = lm.backbone.cfg
        self.H, self.KV, self.hd, self.D = bb.heads, bb.kv_heads, bb.head_dim, bb.dim
        H, KV, hd, D = self.H, self.KV, self.hd, self.D
        rep = H // KV
        kvw = 2 * KV * hd
        z = dict(dtype=dt, device=dev)
        # ---------------- backbone buffers and views
        self.caches = [torch.zeros(max_len, B, kvw, **z) for _ in range(bb.layers)]
        self.kv5 = [cc.view(max_len, B, 2, KV, hd) for cc in self.caches]
        self._views: dict[int, list] = {}
        self.h = torch.zeros(B, D, **z)
        self.h_row, self.h_col = self.h.view(B, 1, D), self.h.view(B, D, 1)
        self.ms = torch.zeros(B, 1, 1, **z)
        self.n = torch.zeros(B, D, **z)
        self.n_row = self.n.view(B, 1, D)
        self.eps_bb = torch.full((1, 1, 1), bb.eps, **z)
        self.qkv = torch.zeros(B, (H + 2 * KV) * hd, **z)
        self.qk4 = self.qkv[:, : (H + KV) * hd].view(B, H + KV, 2, hd // 2)
        self.q_view = self.qkv[:, : H * hd].view(B, KV, rep, hd)
        self.kv_row = self.qkv[:, H * hd:].view(1, B, kvw)
        self.gu = torch.zeros(B, 2 * bb.ffn, **z)
        self.gate, self.up = self.gu[:, : bb.ffn], self.gu[:, bb.ffn:]
        self.mask = torch.full((B, 1, 1, max_len), NEG_INF, **z)
        self.t_idx = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)
        inv = lm.backbone.inv_freq.float()
        ang = torch.arange(max_len + 1, device=dev, dtype=torch.float32)[:, None] * inv[None]
        self.cos_t, self.sin_t = ang.cos().to(dt), ang.sin().to(dt)
        self.sign = torch.tensor([-1.0, 1.0], **z).view(1, 1, 2, 1)
        self.t = 0
        # ---------------- patch decoder buffers and views
        dc = lm.patch_decoder.cfg
        S = c.local_steps
        self.S = S
        Dl, Hl, hdl = dc.dim, dc.heads, dc.head_dim
        self.Dl = Dl
        self.R = torch.zeros(B, 2 * Dl, **z)
        self.R1, self.R2 = self.R[:, :Dl], self.R[:, Dl:]
        self.dcache = [torch.zeros(S, B, 3 * Hl * hdl, **z) for _ in range(dc.layers)]
        self.dq, self.dk, self.dv = [], [], []
        for cc in self.dcache:
            v5 = cc.view(S, B, 3, Hl, hdl)
            self.dq.append([cc[p, :, : Hl * hdl].view(B, Hl, 1, hdl) for p in range(S)])
            self.dk.append([v5[: p + 1, :, 1].permute(1, 2, 0, 3) for p in range(S)])
            self.dv.append([v5[: p + 1, :, 2].permute(1, 2, 0, 3) for p in range(S)])
        self.dgu = torch.zeros(B, 2 * dc.ffn, **z)
        self.dgate, self.dup = self.dgu[:, : dc.ffn], self.dgu[:, dc.ffn:]
        self.eps_dec = dc.eps
        G, C = c.group_size, c.audio_channels
        self.G, self.C = G, C
        self.logits = [torch.zeros(B, len(step) * self.fw.vmax, **z) for step in self.fw.sched]
        self.logits3 = [lg.view(B, len(step), self.fw.vmax) for lg, step in zip(self.logits, self.fw.sched)]
        self.codes = torch.zeros(B, G * C, dtype=torch.long, device=dev)
        self.write_idx = [torch.tensor([f * C + ch for ch, f in step], device=dev) for step in self.fw.sched]
        self.emb_off = [self.fw.offsets[[ch for ch, _ in step]] for step in self.fw.sched]
        self.empty_codes = torch.tensor(c.speech_zeroemb_idx, device=dev)

    # ------------------------------------------------------------------ backbone
    def _layer_views(self, length: int):
        bucket = min(self.max_len, -(-length // self.BUCKET) * self.BUCKET)
        views = self._views.get(bucket)
        if views is None:
            views = [(kv[:bucket, :, 0].permute(1, 2, 0, 3), kv[:bucket, :, 1].permute(1, 2, 0, 3)) for kv in self.kv5]
            views = (views, self.mask[..., :bucket])
            self._views[bucket] = views
        return views

    @torch.no_grad()
    def prefill(self, grid: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Left-padded ``grid`` ``[B, 9, 4N]`` with ``valid`` ``[B, N]``; fills the caches, returns the normed
        last hidden state ``(B, D)``."""
        lm = self.lm
        N = valid.shape[1]
        x = lm.embed(grid, self.empty_id)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(N, N, dtype=torch.bool, device=self.dev).tril()
        mask = ((causal[None] & valid[:, None, :]) | torch.eye(N, dtype=torch.bool, device=self.dev))[:, None]
        h = lm.backbone(x, positions, mask, caches=[kv[:N] for kv in self.kv5])
        self.mask[:, 0, 0, :N] = torch.where(valid, 0.0, NEG_INF).to(self.dt)
        self.pos.copy_(valid.long().sum(-1))
        self.t = N
        self.t_idx.fill_(N)
        return h[:, -1]

    def _norm_bb(self, w):
        torch.baddbmm(self.eps_bb, self.h_row, self.h_col, alpha=1.0 / self.D, out=self.ms)
        self.ms.rsqrt_()
        torch.mul(self.h_row, self.ms, out=self.n_row)
        self.n.mul_(w)
        return self.n

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One backbone step on the input embeddings ``x`` ``(B, D)`` of the newest group; returns the normed
        hidden state ``(B, D)``."""
        views, mask = self._layer_views(self.t + 1)
        self.mask.index_fill_(3, self.t_idx, 0.0)
        cos = self.cos_t.index_select(0, self.pos).view(self.B, 1, 1, -1)
        sin = self.sin_t.index_select(0, self.pos).view(self.B, 1, 1, -1).mul(self.sign)
        self.h.copy_(x)
        for (w1, bq, wqkv, wo, w2, wgu, wd), cache, (K, V) in zip(self.fw.bb, self.caches, views):
            torch.addmm(bq, self._norm_bb(w1), wqkv, out=self.qkv)
            rot = self.qk4.flip(2)
            self.qk4.mul_(cos).addcmul_(rot, sin)
            cache.index_copy_(0, self.t_idx, self.kv_row)
            a = F.scaled_dot_product_attention(self.q_view, K, V, attn_mask=mask)
            self.h.addmm_(a.view(self.B, -1), wo)
            torch.mm(self._norm_bb(w2), wgu, out=self.gu)
            F.silu(self.gate, inplace=True)
            self.h.addmm_(self.gate * self.up, wd)
        self.t += 1
        self.t_idx.add_(1)
        self.pos.add_(1)
        return self.lm.backbone.norm(self.h)

    @torch.no_grad()
    def group_embedding(self, text: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """Input embedding ``(B, D)`` of a generated group: ``text`` ``(B,)``, ``codes`` ``(B, G, C)`` or None
        when no row is audio (SPEC §4.3)."""
        lm = self.lm
        is_speech = (text == self.empty_id).unsqueeze(-1)
        x = lm.embed_tokens(text).masked_fill(is_speech, 0.0)
        if codes is None:
            return x
        patch = F.embedding(codes + self.fw.offsets, self.fw.table).sum(-2)  # (B, G, Di)
        patch = lm.patch_encoder(patch, self._enc_pos())
        speech = lm.group_downcast(patch.reshape(self.B, -1)).masked_fill_(~is_speech, 0.0)
        return x.add_(speech)

    def _enc_pos(self):
        if not hasattr(self, "_epos"):
            self._epos = torch.arange(self.G, device=self.dev)[None]
        return self._epos

    # ------------------------------------------------------------------ patch decoder
    def _dec_layers(self, p: int):
        B, R, eps, Dl = self.B, self.R, self.eps_dec, self.Dl
        width = (2 * self.Dl,)
        for (w1, per_pos, wo2, w2, wgu, wd2), cache, q, k, v in zip(self.fw.dec, self.dcache, self.dq, self.dk, self.dv):
            bp, wp = per_pos[p]
            torch.addmm(bp, F.layer_norm(R, width, w1, None, eps)[:, :Dl], wp, out=cache[p])
            a = F.scaled_dot_product_attention(q[p], k[p], v[p])
            R.addmm_(a.view(B, -1), wo2)
            torch.mm(F.layer_norm(R, width, w2, None, eps)[:, :Dl], wgu, out=self.dgu)
            F.silu(self.dgate, inplace=True)
            R.addmm_(self.dgate * self.dup, wd2)
        return F.layer_norm(R, width, self.fw.dec_norm, None, eps)[:, :Dl]

    @torch.no_grad()
    def decode_patch(self, first: torch.Tensor, pick) -> torch.Tensor:
        """Run the ``S``-step delayed patch decoder from ``first`` ``(B, local_dim)``.

        ``pick(step, logits (B, n, vmax)) -> tokens (B, n)`` chooses the tokens of the active channels (the
        bias already bans each channel's empty id and the padding). Returns codes ``(B, G, C)``.
        """
        lm = self.lm
        self.R1.copy_(first)
        torch.neg(first, out=self.R2)
        for p in range(self.S):
            n = self._dec_layers(p)
            bias, w = self.fw.heads[p]
            torch.addmm(bias, n, w, out=self.logits[p])
            tok = pick(p, self.logits3[p])
            self.codes.index_copy_(1, self.write_idx[p], tok)
            if p + 1 < self.S:
                x = F.embedding_bag(tok + self.emb_off[p], self.fw.table, mode="sum")
                if lm.speech_to_local is not None:
                    x = lm.speech_to_local(x)
                self.R1.copy_(x)
                torch.neg(x, out=self.R2)
        return self.codes.view(self.B, self.G, self.C)
