"""Static-cache step functions for generation: backbone prefill and one-group steps, the delayed patch decoder.

The math is the modules' of :mod:`mimo_audio.lm`; only the schedule differs: every buffer is preallocated per
batch and written in place (``out=`` / ``addmm_`` / ``index_copy_``), every view is made once, and the weights
are re-arranged once per model (:class:`FastWeights`) so that one group costs few kernel launches:

- every residual stream is kept as ``[h, -h]`` (width ``2 * dim``), so RMSNorm is one ``layer_norm`` call
  (mean exactly 0, variance = mean(h^2)) with the norm weight ``[w, 0]``; residual adds are ``addmm_`` with
  ``[W, -W]``.
- **padded layout** (models up to :data:`PADDED_LIMIT` parameters, e.g. the tiny test models): the matrices that
  read a normed stream get zero rows for its second half, so the norm's output feeds the matmul directly (no
  slice), the backbone/patch-encoder RoPE partner ``rotate_half(q)`` comes out of the same matmul (two in-place
  ops, no flip), and embeddings are looked up from ``[E, -E]`` tables straight into a residual stream.
  **Compact layout** (larger models): the original weights are used through views (no second copy of the
  backbone); the stream's negative half is refreshed with one ``neg`` before each norm and the norm's output is
  sliced.
- backbone caches are position-major ``(max_len, B, 2 * kv * hd)``; a step writes its k/v with one
  ``index_copy_`` and reads fixed per-layer views. The GQA query heads of one kv head become the query-length
  axis of SDPA (one query position), so no key repetition is needed.
- the patch decoder's RoPE positions are fixed (0..S-1), so RoPE is folded into one q/k/v matrix per position,
  written straight into that position's cache row.
- the eight patch-decoder heads are one padded matrix per step (inactive channels left out), with the padding
  rows and the empty ids banned through the bias; sampled ids plus the channel offsets index the shared speech
  table directly (``embedding_bag``) for the next step and for the patch encoder of the new group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .delay import delay_schedule
from .lm import MimoAudioLM

NEG_INF = float("-inf")
#: models with at most this many parameters get the padded (fewest launches, more memory) layout
PADDED_LIMIT = 200_000_000

_ln = torch.native_layer_norm


def _bag(table: torch.Tensor, flat: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum of ``table`` rows per bag (``F.embedding_bag`` without its per-call index reshaping)."""
    return torch.embedding_bag(table, flat, offsets, False, 0, False, None, False, None)[0]


def _rotate_rows(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Rows permuted/negated so that ``x @ _rotate_rows(W).T == rotate_half(x @ W.T)`` per head."""
    w = w.reshape(heads, 2, hd // 2, *w.shape[1:])
    return torch.cat([-w[:, 1:2], w[:, 0:1]], 1).reshape(heads * hd, *w.shape[3:])


def _neg2(wt: torch.Tensor) -> torch.Tensor:
    """``(in, out)`` -> ``(in, 2 * out)``: ``[W, -W]`` (writes ``[y, -y]``)."""
    return torch.cat([wt, -wt], 1).contiguous()


def _w0(w: torch.Tensor) -> torch.Tensor:
    return torch.cat([w, torch.zeros_like(w)])


class _StackWeights:
    """One Qwen2 stack (backbone or patch encoder) in the step layout."""

    def __init__(self, stack, padded: bool, rope_cols: bool):
        s = stack.cfg
        self.dim, self.eps = s.dim, s.eps
        qk = (s.heads + s.kv_heads) * s.head_dim
        self.layers = []
        for blk in stack.layers:
            W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
            if padded:
                if rope_cols:  # extra columns: rotate_half of q and k
                    Wr = torch.cat([_rotate_rows(W[: s.heads * s.head_dim], s.heads, s.head_dim),
                                    _rotate_rows(W[s.heads * s.head_dim: qk], s.kv_heads, s.head_dim)])
                    br = torch.cat([_rotate_rows(b[: s.heads * s.head_dim, None], s.heads, s.head_dim),
                                    _rotate_rows(b[s.heads * s.head_dim: qk, None], s.kv_heads, s.head_dim)])[:, 0]
                    W, b = torch.cat([W, Wr]), torch.cat([b, br])
                self.layers.append((_w0(blk.norm1.weight), b.contiguous(), W.t().contiguous(),
                                    _neg2(blk.attn.o_proj.weight.t()), _w0(blk.norm2.weight),
                                    blk.mlp.gate_up.weight.t().contiguous(), _neg2(blk.mlp.down.weight.t())))
            else:  # views of the model's own weights
                self.layers.append((_w0(blk.norm1.weight), b, W.t(), blk.attn.o_proj.weight.t(),
                                    _w0(blk.norm2.weight), blk.mlp.gate_up.weight.t(), blk.mlp.down.weight.t()))
        self.norm = _w0(stack.norm.weight)


class FastWeights:
    """Re-arranged weights for the step functions, derived once from a model (rebuilt if weights change)."""

    def __init__(self, lm: MimoAudioLM, padded: bool | None = None):
        self.key = _weights_key(lm)
        c = lm.config
        dt, dev = lm.dtype, lm.device
        if padded is None:
            padded = sum(p.numel() for p in lm.parameters()) <= PADDED_LIMIT
        self.padded = padded
        with torch.inference_mode():
            self.bb = _StackWeights(lm.backbone, padded, rope_cols=True)
            self.enc = _StackWeights(lm.patch_encoder, padded, rope_cols=True)
            # text head / decoder input from the normed backbone stream; text embeddings as a stream
            lm_t, hd_t = lm.lm_head.weight.t(), _neg2(lm.hidden_downcast.weight.t())
            self.lm_head = lm_t.contiguous() if padded else lm_t
            self.first = hd_t
            self.text_table = _neg2(lm.embed_tokens.weight) if padded else None
            # group_downcast over the patch encoder's G normed streams (B*G, 2*Di) -> backbone stream [x, -x]
            G, Di = c.group_size, c.input_local_dim
            gd = lm.group_downcast.weight.t()  # (G*Di, D)
            if padded:
                gd = gd.reshape(G, Di, -1)
                gd = torch.cat([gd, torch.zeros_like(gd)], 1).reshape(2 * G * Di, -1)
                self.downcast = _neg2(gd)
            else:
                self.downcast = gd
            # patch decoder
            dec = lm.patch_decoder
            s = dec.cfg
            S = c.local_steps
            self.dec_dim = s.dim
            pos = torch.arange(S, device=dev)
            ang = pos[:, None].float() * dec.inv_freq.float()[None]
            ang = torch.cat([ang, ang], -1)
            cos, sin = ang.cos(), ang.sin()  # (S, hd)
            qk = (s.heads + s.kv_heads) * s.head_dim
            if s.heads != s.kv_heads:
                raise ValueError("the patch decoder has as many kv heads as heads (SPEC §3.1)")
            hd, Hd = s.head_dim, s.heads * s.head_dim
            # per-head interleaved rows [q_h, k_h, v_h] so that (row, head) merges into one bmm batch axis
            inter = torch.arange(3 * Hd, device=dev).view(3, s.heads, hd).transpose(0, 1).reshape(-1)
            qscale = torch.ones(3 * Hd, device=dev)
            qscale[:Hd] = hd ** -0.5
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
                    Wp = torch.cat([W[:qk] * cq[:, None] + Wr * sq[:, None], W[qk:]]) * qscale[:, None]
                    bp = torch.cat([b[:qk] * cq + br * sq, b[qk:]]) * qscale
                    Wp = Wp[inter].to(dt).t()
                    per_pos.append((bp[inter].to(dt), Wp.contiguous()))
                gu = blk.mlp.gate_up.weight.t()
                self.dec.append((
                    _w0(blk.norm1.weight), per_pos, _neg2(blk.attn.o_proj.weight.t()),
                    _w0(blk.norm2.weight), gu.contiguous() if padded else gu, _neg2(blk.mlp.down.weight.t()),
                ))
            self.dec_norm = _w0(dec.norm.weight)
            # heads: one padded matrix per step over the active channels; bias bans padding and empty ids
            sched = delay_schedule(c.delay_pattern, c.group_size)
            vmax = max(c.speech_vocab_size)
            self.vmax = vmax
            # per step: (bias, weight (Dl, sum V), columns in the (n, vmax) padded logits). The bias bans each
            # channel's empty id (argmax decoding); samplers, which must ban after top-p (SPEC §5.3), use the
            # zero bias of `heads_open` and the per-step `local_ban` (n, vmax) instead.
            self.heads, self.heads_open, self.local_ban = [], [], []
            for step in sched:
                ws, bs, cols = [], [], []
                for j, (ch, _frame) in enumerate(step):
                    w = lm.local_heads[ch].weight
                    ws.append(w)
                    bias = torch.zeros(w.shape[0], dtype=dt, device=dev)
                    bias[c.speech_zeroemb_idx[ch]] = NEG_INF
                    bs.append(bias)
                    cols.append(torch.arange(w.shape[0], device=dev) + j * vmax)
                same = len({w.shape[0] for w in ws}) == 1
                ban = torch.zeros(len(step), ws[0].shape[0] if same else vmax, dtype=torch.float32, device=dev)
                for j, (ch, _frame) in enumerate(step):
                    ban[j, c.speech_zeroemb_idx[ch]] = NEG_INF
                weight, columns = torch.cat(ws).t().contiguous(), None if same else torch.cat(cols)
                self.heads.append((torch.cat(bs), weight, columns))
                self.heads_open.append((torch.zeros_like(self.heads[-1][0]), weight, columns))
                self.local_ban.append(ban)
            self.table = lm.speech_table().detach()
            self.table2 = _neg2(self.table)  # patch-encoder stream [x, -x]
            self.offsets = lm.speech_offsets(dev)
            if lm.speech_to_local is None:
                self.dec_table, self.s2l = self.table2, None
            else:
                self.dec_table = self.table
                self.s2l = (torch.cat([lm.speech_to_local.bias, -lm.speech_to_local.bias]),
                            _neg2(lm.speech_to_local.weight.t()))
            self.sched = sched


def _weights_key(lm: MimoAudioLM):
    return tuple((id(p), p._version) for p in lm.parameters())


def fast_weights(lm: MimoAudioLM) -> FastWeights:
    if lm._fast is None or lm._fast.key != _weights_key(lm):
        lm._fast = None
        lm._fast = FastWeights(lm)
    return lm._fast


class _Stream:
    """Preallocated buffers and fixed views for running one :class:`_StackWeights` on ``rows`` rows of ``T``
    positions (backbone: ``T = 1`` per step; patch encoder: ``T = G``)."""

    def __init__(self, st, w: _StackWeights, rows: int, heads: int, kv_heads: int, hd: int, ffn: int, T: int, z):
        self.w = w
        self.D, self.T = w.dim, T
        B = rows // T
        qkv_w = (heads + 2 * kv_heads) * hd + ((heads + kv_heads) * hd if st.padded else 0)
        self.qkv = torch.zeros(rows, qkv_w, **z)
        qk = (heads + kv_heads) * hd
        if st.padded:
            self.x = self.qkv[:, :qk].view(B, T, heads + kv_heads, hd)
            self.y = self.qkv[:, qk + kv_heads * hd:].view(B, T, heads + kv_heads, hd)
        else:
            self.qk5 = self.qkv[:, :qk].view(B, T, heads + kv_heads, 2, hd // 2)
        self.gu = torch.zeros(rows, 2 * ffn, **z)
        self.gate, self.up = self.gu[:, :ffn], self.gu[:, ffn:]
        self.act = torch.zeros(rows, ffn, **z)
        if not st.padded:
            self.R = torch.zeros(rows, 2 * self.D, **z)
            self.R1, self.R2 = self.R[:, : self.D], self.R[:, self.D:]

    def rope(self, padded, cos, sin):
        if padded:
            self.x.mul_(cos).addcmul_(self.y, sin)
        else:
            rot = self.qk5.flip(3)
            self.qk5.mul_(cos).addcmul_(rot, sin)


class Stepper:
    """Preallocated state for generating up to ``max_len`` positions for ``B`` rows; runs prefill, backbone
    steps, patch encoding of new groups and the patch decoder.

    Buffers are inference tensors and the public methods run under ``torch.inference_mode()`` (cheaper per op);
    what they return is an inference tensor too: use it under ``no_grad``/``inference_mode`` or clone it.

    Fast path (used by :mod:`mimo_audio.generate`): :meth:`prefill`, then per group :meth:`text_logits`,
    :meth:`decode` (patch decoder from the current backbone state) and :meth:`advance` (embed the new group and
    run the backbone). :meth:`decode_patch` runs the patch decoder from a given first input instead.
    """

    BUCKET = 256

    def __init__(self, lm: MimoAudioLM, batch: int, max_len: int, empty_id: int):
        # buffers are inference tensors (no version counters or view tracking: cheaper per op); the public
        # methods run in inference mode
        with torch.inference_mode():
            self._build(lm, batch, max_len, empty_id)

    def _build(self, lm: MimoAudioLM, batch: int, max_len: int, empty_id: int) -> None:
        self.lm, self.fw = lm, fast_weights(lm)
        c = lm.config
        self.c, self.B, self.max_len, self.empty_id = c, batch, max_len, empty_id
        dt, dev = lm.dtype, lm.device
        self.dt, self.dev = dt, dev
        self.padded = pad = self.fw.padded
        B = batch
        bb = lm.backbone.cfg
        self.H, self.KV, self.hd, self.D = bb.heads, bb.kv_heads, bb.head_dim, bb.dim
        H, KV, hd = self.H, self.KV, self.hd
        rep = H // KV
        kvw = 2 * KV * hd
        z = dict(dtype=dt, device=dev)
        # ---------------- backbone buffers and views
        self.caches = [torch.zeros(max_len, B, kvw, **z) for _ in range(bb.layers)]
        self.kv5 = [cc.view(max_len, B, 2, KV, hd) for cc in self.caches]
        self._views: dict[int, list] = {}
        self.bbs = _Stream(self, self.fw.bb, B, H, KV, hd, bb.ffn, 1, z)
        self.q_view = self.bbs.qkv[:, : H * hd].view(B, KV, rep, hd)
        self.kv_row = self.bbs.qkv[:, H * hd: H * hd + kvw].view(1, B, kvw)
        self.mask = torch.full((B, 1, 1, max_len), NEG_INF, **z)
        self.t_idx = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)
        inv = lm.backbone.inv_freq.float()
        ang = torch.arange(max_len + 1, device=dev, dtype=torch.float32)[:, None] * inv[None]
        if pad:
            ang = torch.cat([ang, ang], -1)
            self.cos_t, self.sin_t = ang.cos().to(dt), ang.sin().to(dt)
        else:
            sign = torch.tensor([-1.0, 1.0], **z).view(1, 2, 1)
            self.cos_t = ang.cos().to(dt)
            self.sin_t = (ang.sin().to(dt)[:, None, :] * sign).reshape(max_len + 1, hd)
        self.t = 0
        self.n = None  # normed backbone output of the newest position (B, D)
        # ---------------- patch encoder (one group)
        ec = lm.patch_encoder.cfg
        G, C = c.group_size, c.audio_channels
        self.G, self.C = G, C
        self.encs = _Stream(self, self.fw.enc, B * G, ec.heads, ec.kv_heads, ec.head_dim, ec.ffn, G, z)
        eq = self.encs.qkv.view(B, G, -1)
        Eh = ec.heads * ec.head_dim
        self.enc_q = eq[..., :Eh].view(B, G, ec.heads, ec.head_dim).transpose(1, 2)
        self.enc_k = eq[..., Eh: Eh + ec.kv_heads * ec.head_dim].view(B, G, ec.kv_heads, ec.head_dim).transpose(1, 2)
        self.enc_v = eq[..., Eh + ec.kv_heads * ec.head_dim: Eh + 2 * ec.kv_heads * ec.head_dim].view(
            B, G, ec.kv_heads, ec.head_dim).transpose(1, 2)
        self.enc_causal = ec.causal
        eang = torch.arange(G, device=dev, dtype=torch.float32)[:, None] * lm.patch_encoder.inv_freq.float()[None]
        if pad:
            eang = torch.cat([eang, eang], -1)
            self.enc_cos = eang.cos().to(dt).view(1, G, 1, -1)
            self.enc_sin = eang.sin().to(dt).view(1, G, 1, -1)
        else:
            self.enc_cos = eang.cos().to(dt).view(1, G, 1, 1, -1)
            self.enc_sin = (eang.sin().to(dt)[:, None, :] * torch.tensor([-1.0, 1.0], **z).view(1, 2, 1)).view(
                1, G, 1, 2, -1)
        # ---------------- patch decoder buffers and views
        dc = lm.patch_decoder.cfg
        S = c.local_steps
        self.S = S
        Dl, Hl, hdl = dc.dim, dc.heads, dc.head_dim
        self.Dl = Dl
        BH = B * Hl
        self.dcache = [torch.zeros(S, B, 3 * Hl * hdl, **z) for _ in range(dc.layers)]
        # per step, per layer: everything the layer-step touches, in one flat tuple. Cache rows are [q_h, k_h, v_h]
        # per head, so (row, head) is one bmm batch axis
        self.dplan = [[] for _ in range(S)]
        for (w1, per_pos, wo2, w2, wgu, wd2), cc in zip(self.fw.dec, self.dcache):
            v4 = cc.view(S, BH, 3, hdl)
            for p in range(S):
                self.dplan[p].append((
                    w1, *per_pos[p], cc[p],
                    v4[p, :, 0:1],  # q (BH, 1, hd), pre-scaled
                    v4[: p + 1, :, 1].permute(1, 2, 0),  # k (BH, hd, p + 1)
                    v4[: p + 1, :, 2].transpose(0, 1),  # v (BH, p + 1, hd)
                    wo2, w2, wgu, wd2))
        self.dscore = [torch.zeros(BH, 1, p + 1, **z) for p in range(S)]
        self.dprob = [torch.zeros(BH, 1, p + 1, **z) for p in range(S)]
        self.datt = torch.zeros(B, Hl * hdl, **z)
        self.datt3 = self.datt.view(BH, 1, hdl)
        self.dgu = torch.zeros(B, 2 * dc.ffn, **z)
        self.dgate, self.dup = self.dgu[:, : dc.ffn], self.dgu[:, dc.ffn:]
        self.dact = torch.zeros(B, dc.ffn, **z)
        self.eps_dec = dc.eps
        # per step: the logits buffer (B, n * V) and its (B, n, V) view; V = vmax (-inf padded, scattered into)
        # where the active channels' vocabularies differ, else their common size (written in place)
        self.logits, self.logits3 = [], []
        for (_b, hw, cols), step in zip(self.fw.heads, self.fw.sched):
            V = self.fw.vmax if cols is not None else hw.shape[1] // len(step)
            self.logits.append(torch.full((B, len(step) * V), NEG_INF, **z))
            self.logits3.append(self.logits[-1].view(B, len(step), V))
        # sampled ids + channel offsets (rows of the speech table), in (frame, channel) order
        # step-major buffer of sampled table rows: step p's (B, n_p) block is contiguous; one gather per group
        # puts them in (frame, channel) order for the patch encoder and the output codes
        sizes = [len(step) for step in self.fw.sched]
        self.idx_all = torch.zeros(B * G * C, dtype=torch.long, device=dev)
        self.idx, self.idx_flat, self.bags = [], [], []
        order = torch.zeros(B, G, C, dtype=torch.long)
        o = 0
        for step, n in zip(self.fw.sched, sizes):
            flat = self.idx_all[B * o: B * (o + n)]
            self.idx_flat.append(flat)
            self.idx.append(flat.view(B, n))
            self.bags.append(torch.arange(0, B * n, n, device=dev))
            for j, (ch, f) in enumerate(step):
                order[:, f, ch] = B * o + torch.arange(B) * n + j
            o += n
        self.order = order.view(-1).to(dev)
        self.ocodes_flat = torch.zeros(B * G * C, dtype=torch.long, device=dev)
        self.ocodes = self.ocodes_flat.view(B, G * C)
        self.enc_bags = torch.arange(0, B * G * C, C, device=dev)
        self.emb_off = [self.fw.offsets[[ch for ch, _ in step]] for step in self.fw.sched]
        self.flat_off = self.fw.offsets.repeat(G)
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

    @torch.inference_mode()
    def prefill(self, grid: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Left-padded ``grid`` ``[B, 9, 4N]`` with ``valid`` ``[B, N]``; fills the caches, returns the normed
        last hidden state ``(B, D)``."""
        lm = self.lm
        N = valid.shape[1]
        x = lm.embed(grid, self.empty_id)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(N, N, dtype=torch.bool, device=self.dev).tril()
        mask = ((causal[None] & valid[:, None, :]) | torch.eye(N, dtype=torch.bool, device=self.dev))[:, None]
        h = lm.backbone(x, positions, mask, caches=[kv[:N] for kv in self.kv5])[:, -1]
        self.mask[:, 0, 0, :N] = torch.where(valid, 0.0, NEG_INF).to(self.dt)
        self.pos.copy_(valid.long().sum(-1))
        self.t = N
        self.t_idx.fill_(N)
        self.n = h
        return h

    def _run(self, s: _Stream, R: torch.Tensor, attend) -> torch.Tensor:
        """The blocks of one stack on the stream ``R`` (padded: ``(rows, 2D)`` updated in place; compact: its
        own ``R1``); ``attend()`` does RoPE, cache writes and attention and returns ``(rows, H * hd)``."""
        w, D, eps, pad = s.w, s.D, s.w.eps, self.padded
        width = (2 * D,)
        qkv, gu, gate, up, act, mul = s.qkv, s.gu, s.gate, s.up, s.act, torch.mul
        if pad:
            for w1, bq, wqkv, wo, w2, wgu, wd in w.layers:
                torch.addmm(bq, _ln(R, width, w1, None, eps)[0][:, :D], wqkv, out=qkv)
                R.addmm_(attend(), wo)
                torch.mm(_ln(R, width, w2, None, eps)[0][:, :D], wgu, out=gu)
                F.silu(gate, inplace=True)
                R.addmm_(mul(gate, up, out=act), wd)
            return _ln(R, width, w.norm, None, eps)[0]
        R, R1, R2 = s.R, s.R1, s.R2
        for w1, bq, wqkv, wo, w2, wgu, wd in w.layers:
            torch.neg(R1, out=R2)
            torch.addmm(bq, _ln(R, width, w1, None, eps)[0][:, :D], wqkv, out=qkv)
            R1.addmm_(attend(), wo)
            torch.neg(R1, out=R2)
            torch.mm(_ln(R, width, w2, None, eps)[0][:, :D], wgu, out=gu)
            F.silu(gate, inplace=True)
            R1.addmm_(mul(gate, up, out=act), wd)
        torch.neg(R1, out=R2)
        return _ln(R, width, w.norm, None, eps)[0]

    def _backbone(self, R: torch.Tensor) -> None:
        """Run the backbone on the new position's stream ``R`` (padded) / ``self.bbs.R1`` (compact)."""
        views, mask = self._layer_views(self.t + 1)
        self.mask.index_fill_(3, self.t_idx, 0.0)
        B, pad, s = self.B, self.padded, self.bbs
        if pad:
            cos = self.cos_t.index_select(0, self.pos).view(B, 1, 1, -1)
            sin = self.sin_t.index_select(0, self.pos).view(B, 1, 1, -1)
        else:
            cos = self.cos_t.index_select(0, self.pos).view(B, 1, 1, 1, -1)
            sin = self.sin_t.index_select(0, self.pos).view(B, 1, 1, 2, -1)
        layer = iter(zip(self.caches, views))
        q, kv_row, t_idx = self.q_view, self.kv_row, self.t_idx
        sdpa = F.scaled_dot_product_attention

        def attend():
            cache, (K, V) = next(layer)
            s.rope(pad, cos, sin)
            cache.index_copy_(0, t_idx, kv_row)
            return sdpa(q, K, V, attn_mask=mask).view(B, -1)

        self.n = self._run(s, R, attend)[:, : self.D]
        self.t += 1
        self.t_idx.add_(1)
        self.pos.add_(1)

    @torch.inference_mode()
    def text_logits(self) -> torch.Tensor:
        """Text logits ``(B, vocab)`` (float32) of the newest position."""
        out = torch.mm(self.n, self.fw.lm_head)
        return out if out.dtype == torch.float32 else out.float()

    @torch.inference_mode()
    def advance(self, text: torch.Tensor, speech: list[bool]) -> None:
        """Embed the group just made (``text`` ``(B,)``; its codes are those of the last :meth:`decode`,
        used for the rows where host-side ``speech[b]`` is True) and run the backbone on it."""
        fw, pad = self.fw, self.padded
        sp = self._encode() if any(speech) else None
        if all(speech):
            x = sp
        else:
            if pad:
                x = torch.index_select(fw.text_table, 0, text)
            else:
                x = F.embedding(text, self.lm.embed_tokens.weight)
            if sp is not None:
                x = torch.where(torch.tensor(speech, device=self.dev)[:, None], sp, x)
        if pad:
            self._backbone(x)
        else:
            self.bbs.R1.copy_(x)
            self._backbone(None)

    def _encode(self) -> torch.Tensor:
        """Patch encoder + group_downcast of the last decoded patch: the backbone stream (padded: ``(B, 2D)``
        ``[x, -x]``; compact: ``(B, D)``)."""
        s, B, pad = self.encs, self.B, self.padded
        R = _bag(self.fw.table2, self.ocodes_flat, self.enc_bags)  # (B*G, 2Di) = [x, -x]
        if not pad:
            s.R.copy_(R)
            R = None
        q, k, v, causal = self.enc_q, self.enc_k, self.enc_v, self.enc_causal
        cos, sin = self.enc_cos, self.enc_sin
        rows = B * self.G

        def attend():
            s.rope(pad, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return a.transpose(1, 2).reshape(rows, -1)

        n = self._run(s, R, attend)
        return torch.mm((n if pad else n[:, : s.D]).reshape(B, -1), self.fw.downcast)

    # ------------------------------------------------------------------ patch decoder
    def _dec_layers(self, R: torch.Tensor, p: int) -> torch.Tensor:
        """The decoder blocks at step ``p`` on the stream ``R`` (in place); returns the normed ``(B, Dl)``."""
        eps, Dl = self.eps_dec, self.Dl
        width = (2 * Dl,)
        bmm, softmax, addmm, mm, mul, silu = torch.bmm, torch.softmax, torch.addmm, torch.mm, torch.mul, F.silu
        dgu, dgate, dup, act, att, att3 = self.dgu, self.dgate, self.dup, self.dact, self.datt, self.datt3
        score, prob = self.dscore[p], self.dprob[p]
        for w1, bp, wp, row, q, k, v, wo2, w2, wgu, wd2 in self.dplan[p]:
            addmm(bp, _ln(R, width, w1, None, eps)[0][:, :Dl], wp, out=row)
            if p:
                bmm(q, k, out=score)
                bmm(softmax(score, -1, out=prob), v, out=att3)
            else:  # one key: the softmax weight is exactly 1
                att3.copy_(v)
            R.addmm_(att, wo2)
            mm(_ln(R, width, w2, None, eps)[0][:, :Dl], wgu, out=dgu)
            silu(dgate, inplace=True)
            R.addmm_(mul(dgate, dup, out=act), wd2)
        return _ln(R, width, self.fw.dec_norm, None, eps)[0][:, :Dl]

    @torch.inference_mode()
    def decode(self, pick, *, ban_in_bias: bool = True) -> torch.Tensor:
        """The patch decoder from the newest backbone position; see :meth:`decode_patch`.

        ``ban_in_bias=False`` leaves the empty ids in the logits handed to ``pick``, which must then ban them
        itself (``FastWeights.local_ban[step]``): samplers ban after top-p.
        """
        return self._decode(torch.mm(self.n, self.fw.first), pick, ban_in_bias)

    @torch.inference_mode()
    def decode_patch(self, first: torch.Tensor, pick, *, ban_in_bias: bool = True) -> torch.Tensor:
        """Run the ``S``-step delayed patch decoder from ``first`` ``(B, local_dim)``.

        ``pick(step, logits (B, n, vmax)) -> tokens (B, n)`` chooses the tokens of the active channels (the
        bias bans the padding and, unless ``ban_in_bias=False`` (see :meth:`decode`), each channel's empty id).
        Returns codes ``(B, G, C)``.
        """
        return self._decode(torch.cat([first, -first], -1), pick, ban_in_bias)

    def _decode(self, R: torch.Tensor, pick, ban_in_bias: bool = True) -> torch.Tensor:
        fw, S = self.fw, self.S
        heads = fw.heads if ban_in_bias else fw.heads_open
        ocodes, table, s2l = self.ocodes, fw.dec_table, fw.s2l
        for p in range(S):
            bias, w, cols = heads[p]
            if cols is None:
                torch.addmm(bias, self._dec_layers(R, p), w, out=self.logits[p])
            else:
                self.logits[p].index_copy_(1, cols, torch.addmm(bias, self._dec_layers(R, p), w))
            torch.add(pick(p, self.logits3[p]), self.emb_off[p], out=self.idx[p])
            if p + 1 < S:
                R = _bag(table, self.idx_flat[p], self.bags[p])
                if s2l is not None:
                    R = torch.addmm(s2l[0], R, s2l[1])
        torch.index_select(self.idx_all, 0, self.order, out=self.ocodes_flat)
        return (ocodes - self.flat_off).view(self.B, self.G, self.C)
