"""The training-time tokenizer (SPEC §8.1, §2.4): the inference modules of :class:`~mimo_audio.codec.AudioTokenizer`
run differentiably, plus what only training needs, kept outside the inference code so that encode/decode stay
exactly as they are:

- :class:`RVQTrainer`: the residual quantizer's training forward: nearest-code search (as inference), a
  straight-through estimator, per-layer commitment loss ``MSE(q.detach(), r)``, EMA codebook updates (decay 0.99,
  Laplace smoothing) with k-means initialisation on the first batch and dead-code re-initialisation from the batch
  (codes whose EMA count falls below ``threshold_ema_dead_code``), and quantizer dropout (a share of the clips use a
  random prefix of the layers, so any prefix decodes). Its buffers are the released checkpoint's
  ``inited`` / ``cluster_size`` / ``embed_avg``.
- :class:`TextDecoder`: the small A2T transformer that reads the quantized features and predicts the transcript.
- :func:`multiscale_mel_l1`: ``L_recon`` of SPEC §8.1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...audio import log_mel, mel_filterbank
from ...codec import AudioTokenizer
from ...codec_modules import AttnPlan, make_layers, run_layers

# SPEC §8.1: scales i = 5, 6, 7 -> (2^i mel bins, window 15 * 2^(i-1), hop 15 * 2^(i-2))
MEL_SCALES = tuple((2 ** i, 15 * 2 ** (i - 1), 15 * 2 ** (i - 2)) for i in (5, 6, 7))


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# ------------------------------------------------------------------------------------------ losses
class MultiScaleMel(nn.Module):
    """Log-mel spectrograms at the three scales of SPEC §8.1 from a normalised STFT (Hann window, centred)."""

    def __init__(self, sample_rate: int, scales=MEL_SCALES):
        super().__init__()
        self.scales = tuple(scales)
        for k, (n_mels, win, _) in enumerate(self.scales):
            self.register_buffer(f"fb{k}", mel_filterbank(sample_rate, win, n_mels, 0.0, None), persistent=False)
            self.register_buffer(f"win{k}", torch.hann_window(win, periodic=True), persistent=False)

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, (_, win, hop) in enumerate(self.scales):
            spec = torch.stft(wav.float(), n_fft=win, hop_length=hop, win_length=win, window=getattr(self, f"win{k}"),
                              center=True, normalized=True, onesided=True, return_complex=True).abs()
            mel = spec.transpose(-1, -2) @ getattr(self, f"fb{k}")
            out.append(torch.log(mel.clamp(min=1e-5)))
        return out


def multiscale_mel_l1(mels: MultiScaleMel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L_recon = Σ_i ‖S_i(x) − S_i(y)‖₁`` over the three scales (each L1 a mean over bins and frames)."""
    return sum(F.l1_loss(a, b) for a, b in zip(mels(x), mels(y)))


# ------------------------------------------------------------------------------------------ RVQ
class RVQTrainer(nn.Module):
    """Training forward and EMA state of an :class:`~mimo_audio.codec_modules.ResidualVQ` (see module doc)."""

    def __init__(self, quantizer, *, threshold: float, decay: float = 0.99, eps: float = 1e-5, kmeans_iters: int = 10,
                 dropout: float = 0.5):
        super().__init__()
        self.quantizer = quantizer
        self.threshold, self.decay, self.eps, self.kmeans_iters, self.dropout = threshold, decay, eps, kmeans_iters, dropout
        for r, k in enumerate(quantizer.sizes):
            d = quantizer.codebooks[r].shape[1]
            self.register_buffer(f"inited{r}", torch.zeros(1))
            self.register_buffer(f"cluster_size{r}", torch.zeros(k))
            self.register_buffer(f"embed_avg{r}", torch.zeros(k, d))
        # a new (k-means, re-initialised or loaded without statistics) code starts at the threshold: a code that wins
        # no frame in the next batch is replaced again, so the codebook follows the moving encoder output
        self.fresh = float(threshold)
        self.dead = [0.0] * len(quantizer.sizes)  # share of each codebook re-initialised at the last update
        self.update = True  # EMA updates in training mode (stage 2 freezes the RVQ: False)

    def buffers_of(self, r: int):
        return getattr(self, f"inited{r}"), getattr(self, f"cluster_size{r}"), getattr(self, f"embed_avg{r}")

    def mark_trained(self) -> None:
        """A codebook loaded without EMA statistics: every code counts as new (``fresh`` uses)."""
        for r in range(len(self.quantizer.sizes)):
            inited, cs, ea = self.buffers_of(r)
            embed = self.quantizer.codebooks[r]
            inited.fill_(1)
            cs.fill_(self.fresh)
            ea.copy_(embed.data * self.fresh)

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if _world() > 1:
            dist.broadcast(t, 0)
        return t

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if _world() > 1:
            dist.all_reduce(t)
        return t

    @torch.no_grad()
    def _kmeans(self, x: torch.Tensor, k: int) -> torch.Tensor:
        pick = torch.randint(0, x.shape[0], (k,), device=x.device)
        c = x[pick].clone()
        for _ in range(self.kmeans_iters):
            idx = torch.cdist(x, c).argmin(1)
            counts = torch.bincount(idx, minlength=k).to(x.dtype)
            sums = torch.zeros_like(c).index_add_(0, idx, x)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
        return c

    @torch.no_grad()
    def _ema(self, r: int, x: torch.Tensor, idx: torch.Tensor) -> None:
        inited, cs, ea = self.buffers_of(r)
        embed = self.quantizer.codebooks[r]
        k = embed.shape[0]
        counts = self._sum(torch.bincount(idx, minlength=k).float())
        sums = self._sum(torch.zeros(k, x.shape[1], device=x.device).index_add_(0, idx, x))
        cs.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        ea.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = cs.sum()
        smoothed = (cs + self.eps) / (n + k * self.eps) * n
        embed.data.copy_(ea / smoothed[:, None])
        dead = cs < self.threshold
        self.dead[r] = float(dead.float().mean())
        if bool(dead.any()) and x.shape[0] > 0:
            fresh = self._broadcast(x[torch.randint(0, x.shape[0], (k,), device=x.device)].contiguous())
            embed.data[dead] = fresh[dead]
            ea[dead] = fresh[dead] * self.fresh
            cs[dead] = self.fresh

    def forward(self, x: torch.Tensor, *, n_layers: torch.Tensor | None = None):
        """``x`` ``(N, d)`` encoder frames -> ``(quantized (N, d) float32 with a straight-through gradient, codes
        (N, layers), commitment loss, layers used per frame (N,))``. ``n_layers`` fixes the layers per frame; by
        default all, or in training mode a random prefix for a ``dropout`` share of the frames' clips (the caller
        passes per-frame counts built from per-clip draws)."""
        x = x.float()
        L = len(self.quantizer.sizes)
        if n_layers is None:
            n_layers = torch.full((x.shape[0],), L, device=x.device)
        residual = x
        total = torch.zeros_like(x)
        commit = x.new_zeros(())
        codes = []
        learn = self.training and self.update
        for r in range(L):
            embed = self.quantizer.codebooks[r]
            used = n_layers > r
            res_d = residual.detach()
            inited = self.buffers_of(r)[0]
            if learn and not bool(inited.item()):
                with torch.no_grad():
                    src = res_d[used] if bool(used.any()) else res_d
                    embed.data.copy_(self._broadcast(self._kmeans(src, embed.shape[0]).contiguous()))
                    _, cs, ea = self.buffers_of(r)
                    cs.fill_(self.fresh)
                    ea.copy_(embed.data * self.fresh)
                    inited.fill_(1)
            with torch.no_grad():
                dist_ = -(res_d.pow(2).sum(1, keepdim=True) - 2 * res_d @ embed.t() + embed.pow(2).sum(1)[None, :])
                idx = dist_.argmax(dim=-1)
                q = F.embedding(idx, embed).clone()
            codes.append(idx)
            m = used.to(x.dtype)[:, None]
            if bool(used.any()):
                commit = commit + (((q - residual) ** 2) * m).sum() / (m.sum() * x.shape[1])
            total = total + q * m
            if learn:
                self._ema(r, res_d[used], idx[used])
            residual = residual - q
        quantized = x + (total - x).detach() if x.requires_grad else total
        return quantized, torch.stack(codes, 1), commit, n_layers

    def export_buffers(self) -> dict[str, torch.Tensor]:
        """The released checkpoint's EMA keys (``encoder.quantizer.vq.layers.N._codebook.*``)."""
        out = {}
        for r in range(len(self.quantizer.sizes)):
            inited, cs, ea = self.buffers_of(r)
            p = f"encoder.quantizer.vq.layers.{r}._codebook."
            out[p + "inited"], out[p + "cluster_size"], out[p + "embed_avg"] = inited.clone(), cs.clone(), ea.clone()
        return out

    def import_buffers(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Load EMA buffers from released-name ``tensors``; False when the checkpoint has none."""
        found = False
        for r in range(len(self.quantizer.sizes)):
            p = f"encoder.quantizer.vq.layers.{r}._codebook."
            if all(p + n in tensors for n in ("inited", "cluster_size", "embed_avg")):
                inited, cs, ea = self.buffers_of(r)
                inited.copy_(tensors[p + "inited"].reshape(-1)[:1].float())
                cs.copy_(tensors[p + "cluster_size"].float().reshape(cs.shape))
                ea.copy_(tensors[p + "embed_avg"].float().reshape(ea.shape))
                found = True
        return found


# ------------------------------------------------------------------------------------------ A2T
class ByteText:
    """UTF-8 bytes as text tokens (ids 3..258; 0 pad, 1 bos, 2 eos): the A2T decoder's vocabulary when no LM text
    tokenizer is named (a 151 k-token vocabulary would dwarf a small tokenizer)."""

    size, bos, eos = 259, 1, 2

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]


class LMText:
    """An LM checkpoint's text tokenizer (:class:`~mimo_audio.text.TextTokenizer`) for the A2T decoder."""

    def __init__(self, source: str):
        from ...text import TextTokenizer

        self.tok = TextTokenizer.from_folder(source)
        self.size = self.tok.size
        self.eos = self.tok.ids.eos
        self.bos = self.tok.ids.eos  # Qwen has no BOS: the end-of-text id starts the sequence too

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)


def text_tokenizer(spec: str):
    if spec == "bytes":
        return ByteText()
    from pathlib import Path

    p = Path(spec).expanduser()
    return LMText(str(p.parent if p.is_file() else p))


class TextDecoder(nn.Module):
    """A causal transformer over ``[quantized frames projected to dim; BOS; text]`` predicting the text (A2T)."""

    def __init__(self, d_in: int, vocab: int, dim: int, layers: int, heads: int, ffn: int, theta: float = 10000.0):
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.layers = make_layers(layers, dim, heads, ffn)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.theta = theta

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``feats`` ``(B, T, d_in)``, ``tokens`` ``(B, U)`` (BOS + text, padded), ``labels`` ``(B, U)`` (text + EOS,
        -100 on padding) -> mean next-token NLL."""
        T = feats.shape[1]
        x = torch.cat([self.proj(feats), self.embed(tokens)], 1)
        lengths = T + (labels != -100).sum(1)
        plan = AttnPlan(x.shape[1], lengths, causal=True, device=x.device)
        h = self.norm(run_layers(self.layers, x, plan, self.theta))[:, T:]
        return F.cross_entropy(self.head(h).float().flatten(0, 1), labels.flatten(), ignore_index=-100)


# ------------------------------------------------------------------------------------------ the trainee
class CodecTrainee(nn.Module):
    """What the generator optimizer trains: the tokenizer, its RVQ training state and the A2T decoder."""

    def __init__(self, codec: AudioTokenizer, rvq: RVQTrainer, a2t: TextDecoder | None):
        super().__init__()
        self.codec, self.rvq, self.a2t = codec, rvq, a2t
        self.mels = MultiScaleMel(codec.config.sampling_rate)

    def encode(self, wav: torch.Tensor, n_layers_per_clip: torch.Tensor | None = None):
        """``wav`` ``(B, S)`` -> ``(quantized (B, T, d), codes (B, T, L), commitment loss, layers per frame)``."""
        c = self.codec
        mel = log_mel(wav, c.config).transpose(1, 2)  # (B, n_mels, F)
        B, _, Fr = mel.shape
        mel = F.pad(mel, (0, 1))
        lengths = torch.full((B,), Fr, device=wav.device)
        hidden, _ = c.encoder(mel.to(c.dtype), lengths, lengths)
        T = hidden.shape[1]
        per_frame = None if n_layers_per_clip is None else n_layers_per_clip.repeat_interleave(T)
        q, codes, commit, used = self.rvq(hidden.reshape(B * T, -1), n_layers=per_frame)
        return q.view(B, T, -1), codes.view(B, T, -1), commit, used

    def decode(self, q: torch.Tensor, samples: int) -> torch.Tensor:
        c = self.codec
        return c.vocoder(c.decoder(q.to(c.dtype)))[:, :samples].float()

    def draw_layers(self, B: int, device) -> torch.Tensor | None:
        """Quantizer dropout: per clip, all layers, or with probability ``dropout`` a uniform 1..L."""
        L = len(self.codec.quantizer.sizes)
        if not self.training or self.rvq.dropout <= 0:
            return None
        n = torch.full((B,), L, device=device)
        drop = torch.rand(B, device=device) < self.rvq.dropout
        return torch.where(drop, torch.randint(1, L + 1, (B,), device=device), n)

    def mel_distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean absolute difference of the tokenizer's own log-mel features (its encoder input, SPEC §1.2)."""
        cfg = self.codec.config
        return F.l1_loss(log_mel(y, cfg), log_mel(x, cfg))
