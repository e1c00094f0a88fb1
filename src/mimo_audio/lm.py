"""The MiMo-Audio language model (SPEC §3, §4.3, §8.3).

One Qwen2-style transformer block (RMSNorm, GQA attention with q/k/v bias and RoPE, SwiGLU MLP) is written
once and used at three sizes:

- ``backbone``: the 7B LLM, causal over groups (one position per 4-frame group);
- ``patch_encoder``: bidirectional inside each 4-frame patch, positions ``0..G-1``;
- ``patch_decoder``: causal over the ``G + max(delay)`` steps of the delayed patch, positions ``0..S-1``.

``MimoAudioLM.forward(grid)`` serves training and inference: it returns the text logits and the
patch-decoder input of every group, and the training loss of SPEC §8.3 when ``labels`` are given. The
per-group generation steps against static caches live in :mod:`mimo_audio.stepper`; they use these modules'
weights unchanged.

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
from .delay import apply_delay
from .errors import PromptError
from .layers import RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq

TEXT_WEIGHT = 100.0
CHANNEL_WEIGHTS = (12.0, 8.0, 6.0, 4.0, 2.0, 2.0, 1.0, 1.0)
EMPTY_TEXT_WEIGHT = 0.01


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


def backbone_config(c: LMConfig) -> StackConfig:
    return StackConfig(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                       c.head_dim, c.intermediate_size, c.rope_theta, c.rms_norm_eps, causal=True)


def decoder_config(c: LMConfig) -> StackConfig:
    """Patch decoder: ``local_*`` sizes, heads = kv heads, head_dim = local_dim / local_attn_heads (SPEC §3.1)."""
    return StackConfig(c.local_dim, c.local_layers, c.local_attn_heads, c.local_attn_heads,
                       c.local_dim // c.local_attn_heads, c.local_ffn_dim, c.rope_theta, c.rms_norm_eps,
                       causal=True, dropout=c.local_attn_dropout)


def encoder_config(c: LMConfig) -> StackConfig:
    """Patch encoder: ``input_local_*`` sizes, ffn = 4 x width, bidirectional when input_full_attention."""
    return StackConfig(c.input_local_dim, c.input_local_layers, c.local_attn_heads, c.local_attn_heads,
                       c.input_local_dim // c.local_attn_heads, 4 * c.input_local_dim, c.rope_theta,
                       c.rms_norm_eps, causal=not c.input_full_attention)


# ------------------------------------------------------------------------------------------ the block
class Attention(nn.Module):
    """GQA self-attention; q/k/v fused into one biased projection ``qkv`` (rows: q, k, v), ``o`` has no bias."""

    def __init__(self, s: StackConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.head_dim
        self.q_size, self.kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.qkv = nn.Linear(s.dim, self.q_size + 2 * self.kv_size, bias=True)
        self.o_proj = nn.Linear(self.q_size, s.dim, bias=False)
        self.dropout = s.dropout

    def forward(self, x, cos, sin, mask=None, is_causal=False, kv_out=None):
        """``x`` ``(B, T, D)``; ``cos``/``sin`` ``(B or 1, 1, T, hd)``; ``mask`` bool ``(B or 1, 1, T, T)``.

        ``kv_out``: an optional ``(T, B, 2, kv_heads, hd)`` view of a position-major cache to receive k/v.
        """
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = apply_rope(q.view(B, T, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if kv_out is not None:
            kv_out[:, :, 0] = k.permute(2, 0, 1, 3)
            kv_out[:, :, 1] = v.permute(2, 0, 1, 3)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                             dropout_p=p, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.q_size))


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

    def forward(self, x, cos, sin, mask=None, is_causal=False, kv_out=None):
        x = x + self.attn(self.norm1(x), cos, sin, mask, is_causal, kv_out)
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    """A Qwen2 model without token embedding: blocks + final RMSNorm; RoPE tables computed from positions."""

    def __init__(self, s: StackConfig):
        super().__init__()
        self.cfg = s
        self.layers = nn.ModuleList(Block(s) for _ in range(s.layers))
        self.norm = RMSNorm(s.dim, s.eps)
        self.register_buffer("inv_freq", rope_inv_freq(s.head_dim, s.rope_theta), persistent=False)

    def init_buffers(self, device=None):
        self.inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta, device=device)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos/sin ``(B, 1, T, hd)`` for integer ``positions`` ``(B, T)``."""
        cos, sin = rope_cos_sin(positions, self.inv_freq, dtype)
        return cos[:, None], sin[:, None]

    def forward(self, x, positions, mask=None, caches=None):
        """``x`` ``(B, T, D)``, ``positions`` ``(B, T)`` or ``(1, T)``; ``mask`` bool ``(B, 1, T, T)`` or None
        (then causal per the config); ``caches``: per-layer ``(T, B, 2, kv, hd)`` views to fill. Returns the
        normed output."""
        cos, sin = self.rope(positions, x.dtype)
        is_causal = self.cfg.causal
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, is_causal, None if caches is None else caches[i])
        return self.norm(x)


# ------------------------------------------------------------------------------------------ outputs
@dataclass
class LMOutput:
    """``text_logits`` ``[B, N, vocab]``; ``local_inputs`` ``[B, N, local_dim]`` (the patch-decoder input of
    every group: ``hidden_states_downcast`` of the normed backbone output); ``hidden`` ``[B, N, hidden]``;
    with labels: ``loss`` (SPEC §8.3), ``text_loss``, ``channel_losses`` ``[C]``, ``local_logits`` (per channel
    ``[M, G, V_c]`` for the M supervised speech groups, teacher forced)."""

    text_logits: torch.Tensor
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
        self._fast = None  # derived inference weights, built by mimo_audio.stepper on first use

    # -------------------------------------------------------------------------------- helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def resolve_empty_id(self, empty_id: int | None) -> int:
        e = self.empty_id if empty_id is None else empty_id
        if e is None:
            raise PromptError("the <|empty|> text id is needed: pass empty_id=tokenizer.ids.empty or set lm.empty_id")
        if not 0 <= int(e) < self.config.vocab_size:
            raise PromptError(f"empty_id {e} is outside the text vocabulary [0, {self.config.vocab_size})")
        return int(e)

    def speech_table(self) -> torch.Tensor:
        """All channels' speech embeddings stacked ``(sum V_c, Di)`` with each channel's empty row zeroed
        (the reference zeroes embeddings of empty ids); row ``offset_c + id``."""
        rows = []
        for c, emb in enumerate(self.speech_embeddings):
            keep = torch.ones(emb.weight.shape[0], 1, dtype=emb.weight.dtype, device=emb.weight.device)
            keep[self.config.speech_zeroemb_idx[c]] = 0
            rows.append(emb.weight * keep)
        return torch.cat(rows, 0)

    def speech_offsets(self, device=None) -> torch.Tensor:
        sizes = torch.tensor((0,) + self.config.speech_vocab_size[:-1], device=device)
        return sizes.cumsum(0)

    def embed_speech(self, ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over channels of the speech embeddings of ``ids`` ``(..., C)`` (empty ids contribute zero)."""
        table = self.speech_table() if table is None else table
        return F.embedding(ids + self.speech_offsets(ids.device), table).sum(-2)

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
        x = self.embed_tokens(text.clamp(0, self.config.vocab_size - 1)) * (~is_speech)[..., None].to(self.dtype)
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
                labels: torch.Tensor | None = None) -> LMOutput:
        """Run the backbone over every group of ``grid`` ``[B, 9, 4N]``.

        ``attention_mask`` ``[B, N]`` (1 = real group) for right-padded batches; ``labels`` ``[B, 9, 4N]`` in
        the grid's layout with -100 on unsupervised columns (SPEC §8.3) to get the training loss.
        """
        e = self.resolve_empty_id(empty_id)
        x = self.embed(grid, e)
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
        out = LMOutput(self.lm_head(h), self.hidden_downcast(h), h)
        if labels is not None:
            self._loss(out, labels, e)
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

    # -------------------------------------------------------------------------------- loss
    def _loss(self, out: LMOutput, labels: torch.Tensor, empty_id: int) -> None:
        G = self.G
        text_t = labels[:, 0, ::G][:, 1:]  # target of position n = text of group n+1
        logits = out.text_logits[:, :-1]
        valid = text_t != -100
        w = torch.where(text_t == empty_id, EMPTY_TEXT_WEIGHT, 1.0).to(torch.float32) * valid
        ce = F.cross_entropy(logits.float().transpose(1, 2), text_t.clamp(min=0), reduction="none")
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
            chan_losses = [logits.sum() * 0.0 for _ in range(self.C)]
        chan = torch.stack(chan_losses)
        weights = torch.tensor(CHANNEL_WEIGHTS[: self.C], device=chan.device)
        total = TEXT_WEIGHT + float(weights.sum())
        out.loss = (TEXT_WEIGHT * text_loss + (weights * chan).sum()) / total
        out.text_loss, out.channel_losses, out.local_logits = text_loss, chan, local_logits

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


# ------------------------------------------------------------------------------------------ key table
def _stack_keys(table: dict, ours: str, theirs: str, s: StackConfig) -> None:
    q, kv, f = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.ffn
    for i in range(s.layers):
        a, b = f"{theirs}.layers.{i}", f"{ours}.layers.{i}"
        for kind in ("weight", "bias"):
            table[f"{a}.self_attn.q_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(0, q))
            table[f"{a}.self_attn.k_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(q, q + kv))
            table[f"{a}.self_attn.v_proj.{kind}"] = (f"{b}.attn.qkv.{kind}", slice(q + kv, q + 2 * kv))
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
    model._fast = None


def released_state_dict(model: MimoAudioLM) -> dict[str, torch.Tensor]:
    """The model's weights under the released key names (inverse of :func:`load_weights`)."""
    params = dict(model.named_parameters())
    out = {}
    for key, (name, sl) in key_table(model.config).items():
        t = params[name].detach()
        out[key] = (t if sl is None else t[sl]).contiguous()
    return out

