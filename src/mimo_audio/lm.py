"""The MiMo-Audio language model (SPEC §3, §4.3, §8.3).

One Qwen2-style transformer block (RMSNorm, GQA attention with q/k/v bias and RoPE, SwiGLU MLP) is written
once and used at three sizes:

- ``backbone``: the 7B LLM, causal over groups (one position per 4-frame group);
- ``patch_encoder``: bidirectional inside each 4-frame patch, positions ``0..G-1``;
- ``patch_decoder``: causal over the ``G + max(delay)`` steps of the delayed patch, positions ``0..S-1``.

``MimoAudioLM.forward(grid)`` serves training and inference: it returns the text logits and the
patch-decoder input of every group, and the training loss of SPEC §8.3 when ``labels`` are given. The
generation steps (:meth:`MimoAudioLM.prefill`, :meth:`~MimoAudioLM.backbone_step`, :meth:`~MimoAudioLM.embed_group`,
:meth:`~MimoAudioLM.decode_patch`) run the same modules against static caches (:class:`~mimo_audio.layers.KVCache`),
so a module swapped into the model (a LoRA or quantized ``nn.Linear``) is what generation runs.

Checkpoints load through one explicit key table (:func:`key_table`): released name -> (our parameter, row
slice). q/k/v and gate/up are fused into one matrix each at load time; the table says exactly where every
released tensor goes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import LMConfig
from .delay import apply_delay, delay_schedule
from .errors import PromptError
from .layers import KVCache, RMSNorm, ScheduleCache, rope_inv_freq, rope_signed, rope_table


@dataclass(frozen=True)
class LossWeights:
    """Weights of the training loss (SPEC §8.2-8.3): ``(text·L_text + Σ_c channels[c]·L_c) / (text + Σ channels)``;
    ``empty_text`` weighs the text targets equal to ``<|empty|>`` inside the text loss.

    The default is pre-training stage 2 and SFT (100-12-8-6-4-2-2-1-1); :meth:`stage1` is text only (1-0-…-0).
    A model with fewer channels uses the first ``C`` channel weights.
    """

    text: float = 100.0
    channels: tuple[float, ...] = (12.0, 8.0, 6.0, 4.0, 2.0, 2.0, 1.0, 1.0)
    empty_text: float = 0.01

    @classmethod
    def stage1(cls) -> LossWeights:
        return cls(text=1.0, channels=(0.0,) * 8)

    def __post_init__(self):
        if min(self.text, self.empty_text, *self.channels) < 0 or self.text + sum(self.channels) <= 0:
            raise PromptError(f"loss weights must be >= 0 with a positive total, got {self}")


# ------------------------------------------------------------------------------------------ sub-configs
@dataclass(frozen=True)
class StackConfig:
    """Sizes of one transformer stack."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rope_theta: float
    eps: float
    causal: bool = True
    dropout: float = 0.0
    max_positions: int = 8192  # RoPE table size: positions are 0..max_positions-1


def backbone_config(c: LMConfig) -> StackConfig:
    return StackConfig(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                       c.head_dim, c.intermediate_size, c.rope_theta, c.rms_norm_eps, causal=True,
                       max_positions=c.max_position_embeddings)


def decoder_config(c: LMConfig) -> StackConfig:
    """Patch decoder: ``local_*`` sizes, heads = kv heads, head_dim = local_dim / local_attn_heads (SPEC §3.1)."""
    return StackConfig(c.local_dim, c.local_layers, c.local_attn_heads, c.local_attn_heads,
                       c.local_dim // c.local_attn_heads, c.local_ffn_dim, c.rope_theta, c.rms_norm_eps,
                       causal=True, dropout=c.local_attn_dropout, max_positions=c.local_steps)


def encoder_config(c: LMConfig) -> StackConfig:
    """Patch encoder: ``input_local_*`` sizes, ffn = 4 x width, bidirectional when input_full_attention."""
    return StackConfig(c.input_local_dim, c.input_local_layers, c.local_attn_heads, c.local_attn_heads,
                       c.input_local_dim // c.local_attn_heads, 4 * c.input_local_dim, c.rope_theta,
                       c.rms_norm_eps, causal=not c.input_full_attention, max_positions=c.group_size)


# ------------------------------------------------------------------------------------------ the block
class Attention(nn.Module):
    """GQA self-attention; v/k/q fused into one biased projection ``qkv`` (rows: v, k, q — values and keys first, so
    a cache stores the first ``2 * kv_heads`` heads of a position in one write), ``o`` has no bias."""

    def __init__(self, s: StackConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.head_dim
        self.q_size, self.kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.qkv = nn.Linear(s.dim, self.q_size + 2 * self.kv_size, bias=True)
        self.o_proj = nn.Linear(self.q_size, s.dim, bias=False)
        self.dropout = s.dropout

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        """``x`` ``(B, T, D)``; ``cos``/``sin`` ``(B or 1, 2 * kv_heads + heads, T, hd)`` from :meth:`Stack.rope` (the
        value heads' rows are the identity); ``mask`` bool ``(B or 1, 1, T, keys)``; ``cache``: one layer of a cache
        step (:mod:`mimo_audio.layers`): ``update(heads)`` stores the new positions and returns q, k, v; ``slot``
        (or None) is where it wants the heads written."""
        B, T, _ = x.shape
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv(x)
        # every head (v, k, q) in one tensor; RoPE on all of them at once (the identity on the values), written
        # straight into the cache's slot when it offers one
        heads = qkv.view(B, H + 2 * KV, 1, hd) if T == 1 else qkv.view(B, T, H + 2 * KV, hd).transpose(1, 2)
        slot = None if cache is None or torch.compiler.is_compiling() else cache.slot  # out= breaks compile graphs
        heads = rope_signed(heads, cos, sin, out=slot)
        if cache is None:
            v, k, q = heads.split((KV, KV, H), 1)
        else:
            q, k, v = cache.update(heads)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             dropout_p=p, enable_gqa=KV != H)
        out = out.view(B, 1, self.q_size) if T == 1 else out.transpose(1, 2).reshape(B, T, self.q_size)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate and up fused into ``gate_up`` (rows: gate, up)."""

    def __init__(self, s: StackConfig):
        super().__init__()
        self.ffn = s.ffn
        self.gate_up = nn.Linear(s.dim, 2 * s.ffn, bias=False)
        self.down = nn.Linear(s.ffn, s.dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).split(self.ffn, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, s: StackConfig):
        super().__init__()
        self.norm1 = RMSNorm(s.dim, s.eps)
        self.attn = Attention(s)
        self.norm2 = RMSNorm(s.dim, s.eps)
        self.mlp = MLP(s)

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        x = x + self.attn(self.norm1(x), cos, sin, mask, is_causal, cache)
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    """A Qwen2 model without token embedding: blocks + final RMSNorm; RoPE from a table of the positions."""

    def __init__(self, s: StackConfig):
        super().__init__()
        self.cfg = s
        self.layers = nn.ModuleList(Block(s) for _ in range(s.layers))
        self.norm = RMSNorm(s.dim, s.eps)
        self.register_buffer("inv_freq", rope_inv_freq(s.head_dim, s.rope_theta), persistent=False)
        self._rope: dict = {}

    def init_buffers(self, device=None):
        self.inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, device=device)
        self._rope = {}

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos / signed sin ``(B, 2 * kv_heads + heads, T, hd)`` for integer ``positions`` ``(B, T)`` in the head order
        of :class:`Attention` (v, k, q): the value heads' rows the identity (cos 1, sin 0), the others from a table
        built once per device and dtype for ``cfg.max_positions`` positions, so one RoPE call covers every head."""
        key = (self.inv_freq.device, dtype)
        table = self._rope.get(key)
        if table is None:
            cos, sin = rope_table(self.cfg.max_positions, self.inv_freq, dtype)
            table = self._rope[key] = (cos, sin, torch.ones_like(cos[:1]), torch.zeros_like(sin[:1]))
        cos, sin, one, zero = table
        B, T = positions.shape
        s = self.cfg
        rot, ident = s.heads + s.kv_heads, s.kv_heads
        c = F.embedding(positions, cos)[:, None].expand(B, rot, T, -1)
        n = F.embedding(positions, sin)[:, None].expand(B, rot, T, -1)
        return (torch.cat([one.expand(B, ident, T, -1), c], 1), torch.cat([zero.expand(B, ident, T, -1), n], 1))

    def forward(self, x, positions, mask=None, cache=None, rope=None):
        """``x`` ``(B, T, D)``, ``positions`` ``(B, T)`` or ``(1, T)``; ``mask`` bool ``(B, 1, T, T)`` or None
        (then causal per the config); ``cache``: a cache step (:mod:`mimo_audio.layers`; its mask replaces
        ``mask``, its RoPE tables, when it has them, ``rope``); ``rope``: :meth:`rope` of ``positions`` made
        beforehand. Returns the normed output."""
        if rope is None:
            rope = cache.rope if cache is not None and cache.rope is not None else self.rope(positions, x.dtype)
        cos, sin = rope
        is_causal = self.cfg.causal
        if cache is not None:
            mask, is_causal = cache.mask, False
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, mask, False, cache.layers[i])
        else:
            for layer in self.layers:
                x = layer(x, cos, sin, mask, is_causal)
        return self.norm(x)


# ------------------------------------------------------------------------------------------ outputs
@dataclass
class LMOutput:
    """``text_logits`` ``[B, N, vocab]``; ``local_inputs`` ``[B, N, local_dim]`` (the patch-decoder input of
    every group: ``hidden_states_downcast`` of the normed backbone output); ``hidden`` ``[B, N, hidden]``;
    with labels: ``loss`` (SPEC §8.3), ``text_loss``, ``channel_losses`` ``[C]``, ``local_logits`` (per channel
    ``[M, G, V_c]`` for the M supervised speech groups, teacher forced)."""

    text_logits: torch.Tensor | None  # None from forward(labels=, text_loss_chunk=): never built
    local_inputs: torch.Tensor
    hidden: torch.Tensor
    loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    channel_losses: torch.Tensor | None = None
    local_logits: list[torch.Tensor] | None = None


# ------------------------------------------------------------------------------------------ the model
class MimoAudioLM(nn.Module):
    """Text embedding, patch encoder, backbone, text head and delayed patch decoder (SPEC §3.2).

    Input grids are ``[B, 9, 4N]`` integer matrices (row 0 text with fillers, rows 1..8 RVQ codes; SPEC §4.1).
    The ``<|empty|>`` text id is a tokenizer fact: pass ``empty_id=`` or set ``lm.empty_id``.
    """

    def __init__(self, config: LMConfig, empty_id: int | None = None):
        super().__init__()
        self.config = config
        self.empty_id = empty_id
        c = config
        self.G, self.C = c.group_size, c.audio_channels
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.backbone = Stack(backbone_config(c))
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.patch_encoder = Stack(encoder_config(c))
        self.patch_decoder = Stack(decoder_config(c))
        self.speech_embeddings = nn.ModuleList(nn.Embedding(v, c.input_local_dim) for v in c.speech_vocab_size)
        self.local_heads = nn.ModuleList(nn.Linear(c.local_dim, v, bias=False) for v in c.speech_vocab_size)
        self.group_downcast = nn.Linear(c.input_local_dim * c.group_size, c.hidden_size, bias=False)
        self.hidden_downcast = nn.Linear(c.hidden_size, c.local_dim, bias=False)
        self.speech_to_local = (nn.Linear(c.input_local_dim, c.local_dim, bias=True)
                                if c.input_local_dim != c.local_dim else None)

    # -------------------------------------------------------------------------------- helpers
    # the text embedding's weight: embeddings are never swapped (adapters and quantization wrap the Linears)
    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def resolve_empty_id(self, empty_id: int | None) -> int:
        e = self.empty_id if empty_id is None else empty_id
        if e is None:
            raise PromptError("the <|empty|> text id is needed: pass empty_id=tokenizer.ids.empty or set lm.empty_id")
        if not 0 <= int(e) < self.config.vocab_size:
            raise PromptError(f"empty_id {e} is outside the text vocabulary [0, {self.config.vocab_size})")
        return int(e)

    def embed_speech(self, ids: torch.Tensor, *, zero_empty: bool = True) -> torch.Tensor:
        """Sum over channels of the speech embeddings of ``ids`` ``(..., C)``; each channel's empty id contributes
        zero (the reference zeroes those rows). ``zero_empty=False`` skips that mask for ids known not to be
        empty (sampled codes, where the empty ids are banned)."""
        per_channel = ids.unbind(-1)
        x = torch.stack([emb(per_channel[c]) for c, emb in enumerate(self.speech_embeddings)], -2)  # (..., C, Di)
        if zero_empty:
            x = x * (ids != self._empty_codes(ids.device))[..., None].to(x.dtype)
        return x.sum(-2)

    def _empty_codes(self, device) -> torch.Tensor:
        return self._cached(("empty", device), lambda: torch.tensor(self.config.speech_zeroemb_idx, device=device))

    def _cached(self, key, make):
        """Small config-derived tensors (never weights), made once per device."""
        cache = self.__dict__.setdefault("_derived", {})
        value = cache.get(key)
        if value is None:
            value = cache[key] = make()
        return value

    # -------------------------------------------------------------------------------- input embedding
    def embed(self, grid: torch.Tensor, empty_id: int | None = None) -> torch.Tensor:
        """LLM input embeddings ``[B, N, hidden]`` of a grid ``[B, 9, 4N]`` (SPEC §4.3)."""
        e = self.resolve_empty_id(empty_id)
        B, rows, cols = grid.shape
        G, C = self.G, self.C
        if rows != C + 1 or cols % G:
            raise PromptError(f"grid must be [B, {C + 1}, 4N]; got {tuple(grid.shape)}")
        N = cols // G
        text = grid[:, 0, ::G]
        is_speech = text == e
        codes = grid[:, 1:, :].reshape(B, C, N, G).permute(0, 2, 3, 1)  # (B, N, G, C)
        x = self.embed_tokens(text.clamp(0, self.config.vocab_size - 1))
        # the lookup's own dtype (not self.dtype): under FSDP2 mixed precision the stored weight stays fp32
        x = x * (~is_speech)[..., None].to(x.dtype)
        if bool(is_speech.any()):
            patches = self.embed_speech(codes[is_speech])  # (M, G, Di), accumulated in the model dtype
            pos = torch.arange(G, device=grid.device)[None]
            patches = self.patch_encoder(patches, pos)
            speech = torch.zeros(B, N, G * patches.shape[-1], dtype=x.dtype, device=x.device)
            speech[is_speech] = patches.reshape(patches.shape[0], -1)
            x = x + self.group_downcast(speech)
        return x

    # -------------------------------------------------------------------------------- forward
    def forward(self, grid: torch.Tensor, *, empty_id: int | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, loss_weights: LossWeights | None = None,
                text_loss_chunk: int | None = None) -> LMOutput:
        """Run the backbone over every group of ``grid`` ``[B, 9, 4N]``.

        ``attention_mask`` ``[B, N]`` (1 = real group) for right-padded batches; ``labels`` ``[B, 9, 4N]`` in
        the grid's layout with -100 on unsupervised columns (SPEC §8.3) to get the training loss, weighted by
        ``loss_weights`` (:class:`LossWeights`; stage 2 / SFT weights by default).

        ``text_loss_chunk`` (training, with ``labels``): compute the text cross entropy over chunks of that many
        positions, the LM head applied per chunk inside a checkpointed function, so the ``(positions x vocab)``
        logits are never held for backward (one chunk's are, while it is recomputed); the loss and gradients
        equal the unchunked ones. ``text_logits`` is then None (never built).
        """
        if text_loss_chunk is not None and int(text_loss_chunk) < 1:
            raise PromptError(f"text_loss_chunk must be a positive number of positions, got {text_loss_chunk}")
        e = self.resolve_empty_id(empty_id)
        x = self.embed(grid, e)
        unused = None
        if labels is not None and not bool((grid[:, 0, ::self.G] == e).any()):
            # embed() ran no patch encoder: run it on one zero patch here (weighted 0 in the loss) so every
            # data-parallel rank has it in its graph and calls it once, at the same point (FSDP2 gathers it there)
            unused = self._unused_encoder_term(grid.device)
        B, N, _ = x.shape
        positions = torch.arange(N, device=x.device)[None]
        mask = None
        if attention_mask is not None:
            am = attention_mask.to(torch.bool)
            positions = (am.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
            mask = (causal[None] & am[:, None, :]) | torch.eye(N, dtype=torch.bool, device=x.device)
            mask = mask[:, None]
        h = self.backbone(x, positions, mask)
        chunked = labels is not None and text_loss_chunk is not None
        out = LMOutput(None if chunked else self.lm_head(h), self.hidden_downcast(h), h)
        if labels is not None:
            self._loss(out, labels, e, loss_weights or LossWeights(), text_loss_chunk if chunked else None, unused)
        return out

    # -------------------------------------------------------------------------------- patch decoder
    def local_inputs_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder input vectors from sampled tokens ``(..., C)`` of one delayed step (empty ids -> zero)."""
        x = self.embed_speech(tokens)
        return self.speech_to_local(x) if self.speech_to_local is not None else x

    def decode_teacher_forced(self, first: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Patch-decoder logits with teacher forcing (SPEC §8.3).

        ``first`` ``(M, local_dim)``: the decoder input of each group (``hidden_states_downcast``); ``codes``
        ``(M, G, C)``: the target patches. Returns per channel ``c`` logits ``(M, G, V_c)``, where frame ``f``
        is read at step ``d_c + f``.
        """
        c = self.config
        empty = torch.tensor(c.speech_zeroemb_idx, device=codes.device)
        delayed = apply_delay(codes, c.delay_pattern, empty)  # (M, S, C)
        steps = delayed.shape[1]
        inp = torch.cat([first[:, None], self.local_inputs_of(delayed[:, : steps - 1])], 1)
        pos = torch.arange(steps, device=first.device)[None]
        o = self.patch_decoder(inp, pos)
        return [self.local_heads[ch](o[:, d: d + self.G]) for ch, d in enumerate(c.delay_pattern)]

    # -------------------------------------------------------------------------------- generation steps
    # The engine (mimo_audio.generate) calls these with static caches; they run the same modules as forward().
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty backbone cache for ``batch`` rows of ``capacity`` positions each."""
        s = self.backbone.cfg
        return KVCache(s.layers, batch, s.kv_heads, capacity, s.head_dim, dtype=self.dtype, device=self.device)

    def decoder_steps(self, batch: int) -> list:
        """The patch decoder's cache for ``batch`` rows, one step per decoder position (step ``p`` writes position
        ``p`` and reads ``0..p``; :class:`~mimo_audio.layers.ScheduleCache`); reusable for every group."""
        s = self.patch_decoder.cfg
        cache = ScheduleCache(s.layers, batch, s.heads, s.kv_heads, self.config.local_steps, s.head_dim,
                              dtype=self.dtype, device=self.device)
        return cache.steps(lambda positions: self.patch_decoder.rope(positions, self.dtype))

    def prefill(self, grid: torch.Tensor, lengths: torch.Tensor, cache: KVCache,
                empty_id: int | None = None) -> torch.Tensor:
        """Run the backbone over right-padded prompts ``grid`` ``[B, 9, 4N]`` (row ``b`` holds ``lengths[b]``
        groups), filling ``cache`` (``B`` rows) at positions ``0..N-1``; returns the normed hidden state of each
        row's last prompt group ``(B, hidden)``. Padding groups write entries that later positions overwrite."""
        x = self.embed(grid, empty_id)
        B, N, _ = x.shape
        positions = torch.arange(N, device=x.device)[None].expand(B, N)
        h = self.backbone(x, positions, cache=cache.step(positions, N))
        return h[torch.arange(B, device=x.device), lengths.to(x.device) - 1]

    def embed_group(self, text: torch.Tensor, codes: torch.Tensor | None = None,
                    speech: torch.Tensor | None = None) -> torch.Tensor:
        """Input embedding ``(B, hidden)`` of one new group per row, as :meth:`embed` computes it: the text
        embedding of ``text`` ``(B,)``, or, where ``speech`` ``(B,)`` is True (every row when None), the patch
        encoder + ``group_downcast`` of ``codes`` ``(B, G, C)`` (sampled codes, never an empty id)."""
        if codes is None:
            return self.embed_tokens(text)
        B = codes.shape[0]
        positions = self._cached(("enc_pos", codes.device), lambda: torch.arange(self.G, device=codes.device)[None])
        rope = self._cached(("enc_rope", codes.device, self.dtype), lambda: self.patch_encoder.rope(positions, self.dtype))
        patch = self.patch_encoder(self.embed_speech(codes, zero_empty=False), positions, rope=rope)
        x = self.group_downcast(patch.reshape(B, -1))
        return x if speech is None else torch.where(speech[:, None], x, self.embed_tokens(text))

    def backbone_step(self, x: torch.Tensor, step) -> torch.Tensor:
        """One new position per row: ``x`` ``(B, hidden)`` at ``step.positions`` ``(B, 1)`` (a
        :class:`~mimo_audio.layers.CacheStep` of a :meth:`new_cache`); returns the normed hidden state ``(B, hidden)``."""
        return self.backbone(x[:, None], step.positions, cache=step)[:, 0]

    def delay_plan(self, device) -> list[tuple[list[int], int, torch.Tensor]]:
        """Per decoder step: the active channels, the logits width ``V`` (the largest active vocabulary; smaller
        ones are padded with -inf) and the ban ``(n, V)`` (0 / -inf at each active channel's empty id) that samplers
        add after top-p."""

        def make():
            c = self.config
            plan = []
            for step in delay_schedule(c.delay_pattern, c.group_size):
                chans = [ch for ch, _ in step]
                width = max(c.speech_vocab_size[ch] for ch in chans)
                ban = torch.zeros(len(step), width, device=device)
                for j, ch in enumerate(chans):
                    ban[j, c.speech_zeroemb_idx[ch]] = float("-inf")
                plan.append((chans, width, ban))
            return plan

        return self._cached(("plan", device), make)

    def _code_order(self, device) -> torch.Tensor:
        """Index that puts the decoder's tokens, emitted in schedule order, into ``frame * C + channel`` order."""

        def make():
            c = self.config
            emitted = [f * self.C + ch for step in delay_schedule(c.delay_pattern, c.group_size) for ch, f in step]
            return torch.tensor(emitted, device=device).argsort()

        return self._cached(("order", device), make)

    def decode_patch(self, first: torch.Tensor, pick, steps: list | None = None) -> torch.Tensor:
        """The delayed patch decoder (SPEC §5.2): from ``first`` ``(B, local_dim)`` (``hidden_downcast`` of the
        backbone state), ``S`` steps that each emit one token per active channel. ``pick(step, logits)`` chooses
        them from ``logits`` ``(B, n, vmax)`` (raw head outputs of the ``n`` active channels, padded with -inf to
        the largest active vocabulary; ban the empty ids with :meth:`delay_plan`'s bans). ``steps``: a reusable
        :meth:`decoder_steps` cache (made here when None). Returns codes ``(B, G, C)``."""
        B = first.shape[0]
        steps = self.decoder_steps(B) if steps is None else steps
        plan = self.delay_plan(first.device)
        x = first[:, None]  # (B, 1, local_dim) throughout
        last = len(plan) - 1
        emitted = []
        for p, (chans, width, _ban) in enumerate(plan):
            h = self.patch_decoder(x, steps[p].positions, cache=steps[p])
            parts = []
            for ch in chans:
                lg = self.local_heads[ch](h)  # (B, 1, V_c)
                parts.append(lg if lg.shape[-1] == width else F.pad(lg, (0, width - lg.shape[-1]), value=float("-inf")))
            tok = pick(p, parts[0] if len(parts) == 1 else torch.cat(parts, 1))
            emitted.append(tok)
            if p < last:
                ids = (tok,) if len(chans) == 1 else tok.split(1, 1)
                e = []
                for j in range(len(chans)):
                    e.append(self.speech_embeddings[chans[j]](ids[j]))  # (B, 1, Di)
                e = e[0] if len(e) == 1 else torch.stack(e, -2).sum(-2)
                x = e if self.speech_to_local is None else self.speech_to_local(e)
        return torch.cat(emitted, 1).index_select(1, self._code_order(first.device)).view(B, self.G, self.C)

    # -------------------------------------------------------------------------------- loss
    @staticmethod
    def _text_ce(head, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-position text cross entropy (fp32) of hidden states ``h`` ``(P, hidden)`` against ``target`` ``(P,)``;
        ``head``: the LM head module, or its weight."""
        logits = F.linear(h, head) if isinstance(head, torch.Tensor) else head(h)
        return F.cross_entropy(logits.float(), target, reduction="none")

    def _chunked_text_ce(self, h: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
        """:meth:`_text_ce` of ``h`` ``(B, P, hidden)`` over chunks of ``chunk`` positions, each checkpointed
        (its logits are recomputed in backward, never saved)"""
        from torch.utils.checkpoint import checkpoint

        B, P, D = h.shape
        hf, tf = h.reshape(B * P, D), target.reshape(B * P)
        head = self.lm_head
        fsdp = hasattr(head, "unshard") and isinstance(head, nn.Linear)
        if fsdp:
            # an FSDP2 unit of its own (mimo_audio.train): gather it once for every chunk and use its weight
            # directly, so its collectives do not depend on this rank's number of chunks; FSDP2 reduce-scatters
            # the gradient and reshards it at the end of backward
            head.unshard()
            head = head.weight
        parts = []
        for i in range(0, B * P, chunk):
            hc, tc = hf[i: i + chunk], tf[i: i + chunk]
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._text_ce, head, hc, tc, use_reentrant=False))
            else:
                parts.append(self._text_ce(head, hc, tc))
        if fsdp and not torch.is_grad_enabled():
            self.lm_head.reshard()  # no backward will (validation)
        return torch.cat(parts).reshape(B, P)

    def _loss(self, out: LMOutput, labels: torch.Tensor, empty_id: int, lw: LossWeights,
              text_loss_chunk: int | None = None, unused_encoder: torch.Tensor | None = None) -> None:
        G = self.G
        text_t = labels[:, 0, ::G][:, 1:]  # target of position n = text of group n+1
        valid = text_t != -100
        w = torch.where(text_t == empty_id, lw.empty_text, 1.0).to(torch.float32) * valid
        if text_loss_chunk is None:
            logits = out.text_logits[:, :-1]
            ce = F.cross_entropy(logits.float().transpose(1, 2), text_t.clamp(min=0), reduction="none")
        else:
            ce = self._chunked_text_ce(out.hidden[:, :-1], text_t.clamp(min=0), int(text_loss_chunk))
        text_loss = (ce * w).sum() / (w.sum() + 1e-8)
        speech = (text_t == empty_id)  # groups n+1 carrying audio targets, predicted from position n
        B, _, cols = labels.shape
        N = cols // G
        codes = labels[:, 1:, :].reshape(B, self.C, N, G).permute(0, 2, 3, 1)[:, 1:]  # (B, N-1, G, C)
        tgt = codes[speech]  # (M, G, C)
        first = out.local_inputs[:, :-1][speech]
        chan_losses = []
        local_logits = None
        if tgt.shape[0]:
            local_logits = self.decode_teacher_forced(first, tgt.clamp(min=0))
            for ch, lg in enumerate(local_logits):
                chan_losses.append(F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), tgt[..., ch].reshape(-1),
                                                   ignore_index=-100))
        else:
            # no supervised speech group: one zero patch through the decoder, weighted 0, so that every parameter
            # is in the graph on every data-parallel rank (their gradients are reduced together)
            zero = self.decode_teacher_forced(out.local_inputs[:1, 0],
                                              torch.zeros(1, G, self.C, dtype=torch.long, device=labels.device))
            chan_losses = [lg.sum() * 0.0 for lg in zero]
        if unused_encoder is not None:  # the same for the patch encoder (forward ran it when embed() did not)
            text_loss = text_loss + 0.0 * unused_encoder
        chan = torch.stack(chan_losses)
        if len(lw.channels) < self.C:
            raise PromptError(f"loss_weights has {len(lw.channels)} channel weights; the model has {self.C} channels")
        weights = torch.tensor(lw.channels[: self.C], device=chan.device, dtype=chan.dtype)
        total = lw.text + float(weights.sum())
        out.loss = (lw.text * text_loss + (weights * chan).sum()) / total
        out.text_loss, out.channel_losses, out.local_logits = text_loss, chan, local_logits

    def _unused_encoder_term(self, device) -> torch.Tensor:
        """The patch encoder and ``group_downcast`` of one all-zero patch, summed (multiplied by 0 in the loss)."""
        codes = torch.zeros(1, self.G, self.C, dtype=torch.long, device=device)
        patch = self.patch_encoder(self.embed_speech(codes), torch.arange(self.G, device=device)[None])
        return self.group_downcast(patch.reshape(1, -1)).sum()

    # -------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device=None, dtype=None,
                        empty_id: int | None = None, quantize: str | None = None) -> MimoAudioLM:
        """Load a released checkpoint (local folder or hub id; one safetensors file or shards with an index).

        The model is built on the meta device and each weight is copied once into its place. ``dtype``
        None keeps the checkpoint's stored dtype. ``quantize`` ``"int8"``/``"int4"`` quantizes the linear
        layers with torchao while loading (:mod:`mimo_audio.quantize`); a folder written by
        ``mimo-audio quantize`` loads quantized as saved.
        """
        folder = checkpoint.resolve(path_or_hub_id)
        config = LMConfig.from_file(folder / "config.json")
        if empty_id is None:
            empty_id = _empty_id_of(folder)
        from . import quantize as q

        saved = q.saved_quantization(folder)
        if saved is not None:
            return q.load_saved(cls, folder, config, saved, device=device, dtype=dtype, empty_id=empty_id,
                                scheme=quantize)
        if q.parse_scheme(quantize) is not None:
            return q.load_lm(cls, folder, config, device=device, dtype=dtype, empty_id=empty_id, scheme=quantize)
        tensors = checkpoint.read_tensors(checkpoint.safetensors_files(folder))
        dev = checkpoint.parse_device(device)
        dt = checkpoint.parse_dtype(dtype)
        if dt is None:
            floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
            dt = floats[0] if floats else torch.float32
        with torch.device("meta"):
            model = cls(config, empty_id=empty_id)
        load_weights(model, tensors, device=dev, dtype=dt, source=str(folder))
        return model.eval()


def _empty_id_of(folder) -> int | None:
    """The ``<|empty|>`` id of the folder's ``tokenizer.json`` (None when there is no such file or token)."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file)).token_to_id("<|empty|>")
    except Exception:  # an unreadable tokenizer file: the id stays unknown (TextTokenizer reports the file)
        return None


# ------------------------------------------------------------------------------------------ key table
def _stack_keys(table: dict, ours: str, theirs: str, s: StackConfig) -> None:
    q, kv, f = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.ffn
    for i in range(s.layers):
        a, b = f"{theirs}.layers.{i}", f"{ours}.layers.{i}"
        for kind in ("weight", "bias"):
            # fused rows: v, k, q (see Attention)
            table[f"{a}.self_attn.v_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(0, kv))
            table[f"{a}.self_attn.k_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(kv, 2 * kv))
            table[f"{a}.self_attn.q_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(2 * kv, 2 * kv + q))
        table[f"{a}.self_attn.o_proj.weight"] = (f"{b}.attn.o_proj.weight", None)
        table[f"{a}.mlp.gate_proj.weight"] = (f"{b}.mlp.gate_up.weight", slice(0, f))
        table[f"{a}.mlp.up_proj.weight"] = (f"{b}.mlp.gate_up.weight", slice(f, 2 * f))
        table[f"{a}.mlp.down_proj.weight"] = (f"{b}.mlp.down.weight", None)
        table[f"{a}.input_layernorm.weight"] = (f"{b}.norm1.weight", None)
        table[f"{a}.post_attention_layernorm.weight"] = (f"{b}.norm2.weight", None)
    table[f"{theirs}.norm.weight"] = (f"{ours}.norm.weight", None)


def key_table(config: LMConfig) -> dict[str, tuple[str, slice | None]]:
    """Released key (SPEC §3.4) -> (our parameter name, row slice of it or None for the whole tensor)."""
    t: dict[str, tuple[str, slice | None]] = {
        "model.embed_tokens.weight": ("embed_tokens.weight", None),
        "lm_head.weight": ("lm_head.weight", None),
        "speech_group_downcast.weight": ("group_downcast.weight", None),
        "hidden_states_downcast.weight": ("hidden_downcast.weight", None),
    }
    _stack_keys(t, "backbone", "model", backbone_config(config))
    _stack_keys(t, "patch_decoder", "local_transformer", decoder_config(config))
    _stack_keys(t, "patch_encoder", "input_local_transformer", encoder_config(config))
    for c in range(config.audio_channels):
        t[f"speech_embeddings.{c}.weight"] = (f"speech_embeddings.{c}.weight", None)
        t[f"local_transformer_lm_heads.{c}.weight"] = (f"local_heads.{c}.weight", None)
    if config.input_local_dim != config.local_dim:
        t["speech_embeddings_to_local.weight"] = ("speech_to_local.weight", None)
        t["speech_embeddings_to_local.bias"] = ("speech_to_local.bias", None)
    return t


def load_weights(model: MimoAudioLM, tensors: dict[str, torch.Tensor], *, device=None, dtype=None,
                 source: str = "checkpoint") -> None:
    """Strictly copy released ``tensors`` into ``model`` (which may be on the meta device) via :func:`key_table`."""
    table = key_table(model.config)
    params = dict(model.named_parameters())
    shapes = {key: tuple((params[name] if sl is None else params[name][sl]).shape) for key, (name, sl) in table.items()}
    checkpoint.check_weights(tensors, shapes, source=source)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if any(p.is_meta for p in params.values()):
        model.to_empty(device=dev)
    model.to(device=dev, dtype=dtype or model.dtype)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, (name, sl) in table.items():
            target = params[name] if sl is None else params[name][sl]
            target.copy_(tensors[key])
    for stack in (model.backbone, model.patch_encoder, model.patch_decoder):
        stack.init_buffers(dev)


def released_state_dict(model: MimoAudioLM) -> dict[str, torch.Tensor]:
    """The model's weights under the released key names (inverse of :func:`load_weights`)."""
    params = dict(model.named_parameters())
    out = {}
    for key, (name, sl) in key_table(model.config).items():
        t = params[name].detach()
        out[key] = (t if sl is None else t[sl]).contiguous()
    return out

