"""The tokenizer's training objective for the generic loop (:func:`mimo_audio.train.trainer.fit`), SPEC §8.1.

Stage 1 (part ``generator``): encoder, RVQ (EMA), decoder, vocoder and the A2T decoder, ``L = 10·L_A2T + L_recon +
L_commit``. Stage 2 (parts ``generator`` and ``discriminator``): encoder and RVQ frozen; per step one discriminator
update on ``L_D`` then one generator update on ``L_G = L_recon + L_adv + 2·L_fm``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from ...codec import AudioTokenizer, released_to_ours
from ...config import TokenizerConfig
from ..config import TrainConfigError
from ..trainer import Part, dist_info, fit, full_state
from .config import CodecTrainConfig
from .data import ClipBatches
from .discriminators import Discriminators, adv_loss, disc_loss, fm_loss
from .model import CodecTrainee, RVQTrainer, TextDecoder, multiscale_mel_l1, text_tokenizer

LM_LAYERS = 8  # the LM reads the first 8 codebooks: validation also reports the mel distance with those


# ------------------------------------------------------------------------------------------ released layout
def ours_to_released(name: str) -> str:
    """Our :class:`AudioTokenizer` parameter name -> the released checkpoint key (inverse of its key table)."""
    for prefix, repl in (("encoder.down_sample.weight", "encoder.down_sample_layer.0.weight"),
                         ("vocoder.head_out.", "decoder.vocoder.head.out."),
                         ("vocoder.window", "decoder.vocoder.head.istft.window")):
        if name.startswith(prefix):
            return repl + name[len(prefix):]
    if name.startswith("quantizer.codebooks."):
        return f"encoder.quantizer.vq.layers.{name.rsplit('.', 1)[1]}._codebook.embed"
    if name.startswith("vocoder."):
        return "decoder." + name
    if name.startswith(("encoder.", "decoder.")):
        return name
    raise ValueError(f"no released key for tokenizer parameter {name}")


def tokenizer_config_dict(config: TokenizerConfig) -> dict:
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    d.update({"architectures": ["MiMoAudioTokenizer"], "model_type": "mimo_audio_tokenizer"})
    return d


def export_tokenizer(config: TokenizerConfig, codec_state: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                     dest: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` with the released key names (plus the EMA buffers) to ``dest``,
    built under a temporary sibling and swapped in; :meth:`AudioTokenizer.from_pretrained` loads it unchanged."""
    from safetensors.torch import save_file

    from ..export import _write_folder

    tensors = {}
    for name, t in codec_state.items():
        key = ours_to_released(name)
        if released_to_ours(key) != name:  # the two tables must agree, or the export would not load
            raise RuntimeError(f"released key {key} does not map back to {name}")
        tensors[key] = t.detach().to("cpu", torch.float32).contiguous()
    tensors.update({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in ema.items()})

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(tokenizer_config_dict(config), indent=2))

    _write_folder(Path(dest), write)
    return Path(dest)


# ------------------------------------------------------------------------------------------ building
def load_codec(cfg: CodecTrainConfig) -> tuple[AudioTokenizer, dict | None]:
    """The tokenizer to train (``--init`` or a random one of the config's sizes) and the init's tensors."""
    if cfg.init:
        from ... import checkpoint

        codec = AudioTokenizer.from_pretrained(cfg.init, device="cpu", dtype="float32")
        folder = checkpoint.resolve(cfg.init)
        ema_keys = ("._codebook.inited", "._codebook.cluster_size", "._codebook.embed_avg")
        tensors = {k: v for k, v in checkpoint.read_tensors(checkpoint.safetensors_files(Path(folder))).items()
                   if k.endswith(ema_keys)}
        return codec, tensors
    try:
        config = cfg.model_config()
        codec = AudioTokenizer(config)
    except Exception as exc:
        raise TrainConfigError(f"the [tokenizer] settings describe no valid tokenizer: {exc}") from None
    return codec._finalize(), None


def _groups(named, weight_decay: float, lr: float) -> list[dict]:
    decay, plain = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if p.ndim >= 2 and "norm" not in name else plain).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": plain, "lr": lr, "weight_decay": 0.0}]


def _schedule(optimizer, cfg: CodecTrainConfig):
    warm = math.ceil(cfg.warmup_ratio * cfg.max_steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule != "cosine":
            return 1.0
        t = (step - warm) / max(1, cfg.max_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def _shard(trainee: CodecTrainee, disc: Discriminators | None) -> None:
    """FSDP2: every transformer layer, then each network; the RVQ (no gradient, EMA-updated identically on every
    rank) stays replicated."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    # the decoder returns a transposed view; nothing modifies it in place (the vocoder reads it), so FSDP's warning
    # about in-place ops on a view does not apply
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    c = trainee.codec
    for net in (c.encoder, c.decoder, c.vocoder, trainee.a2t):
        if net is None:
            continue
        for layer in net.layers:
            fully_shard(layer)
        fully_shard(net)
    if disc is not None:
        for sub in disc.subs:
            fully_shard(sub)


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist_info()[1] > 1:
        dist.all_reduce(values)
        values /= dist_info()[1]
    return values


# ------------------------------------------------------------------------------------------ the objective
class CodecObjective:
    throughput_key = "audio_s_per_s"

    def __init__(self, cfg: CodecTrainConfig, device: torch.device, *, data=None, val_data=None, out=None):
        rank, world = dist_info()
        self.cfg, self.device, self.world, self.out = cfg, device, world, out
        torch.manual_seed(cfg.seed)
        codec, init_tensors = load_codec(cfg)
        config = codec.config
        sr, spc = config.sampling_rate, config.samples_per_code
        self.samples = max(1, round(cfg.segment_seconds * sr / spc)) * spc
        if data is None:
            if not cfg.data:
                raise TrainConfigError("no --data: name a JSONL manifest of {\"audio\", \"text\"} or a folder of audio")
            data = ClipBatches.from_path(cfg.data, cfg.batch_size, self.samples, sr, seed=cfg.seed, rank=rank,
                                         world=world, out=out)
        val_samples = max(1, round(cfg.val_seconds * sr / spc)) * spc
        if val_data is None and cfg.val_data:
            val_data = ClipBatches.from_path(cfg.val_data, 1, val_samples, sr, shuffle=False, multiple=spc, out=out)
        self.data, self.val_data = data, val_data
        self.sample_source = val_data
        if cfg.sample_every and val_data is None:
            self.sample_source = ClipBatches(data.clips, 1, val_samples, sr, shuffle=False, multiple=spc, out=out)

        threshold = cfg.dead_code_threshold if cfg.dead_code_threshold is not None else config.threshold_ema_dead_code
        rvq = RVQTrainer(codec.quantizer, threshold=float(threshold), decay=cfg.ema_decay, eps=cfg.ema_eps,
                         kmeans_iters=cfg.kmeans_iters, dropout=cfg.quantizer_dropout)
        if init_tensors is not None and not rvq.import_buffers(init_tensors):
            rvq.mark_trained()
        self.text = None
        a2t = None
        if cfg.stage == 1 and cfg.a2t_weight > 0:
            try:
                self.text = text_tokenizer(cfg.text_tokenizer)
            except Exception as exc:
                raise TrainConfigError(f"--text-tokenizer {cfg.text_tokenizer}: {exc}") from None
            a2t = TextDecoder(config.d_model, self.text.size, cfg.a2t_dim, cfg.a2t_layers, cfg.a2t_heads, cfg.a2t_ffn,
                              config.rope_theta)
        trainee = CodecTrainee(codec, rvq, a2t)
        trainee.requires_grad_(False)
        trained = [codec.decoder, codec.vocoder] + ([codec.encoder] if cfg.stage == 1 else []) + (
            [a2t] if a2t is not None else [])
        for m in trained:
            m.requires_grad_(True)
        rvq.update = cfg.stage == 1
        trainee.to(device)
        trainee.train()
        disc = None
        if cfg.stage == 2:
            disc = Discriminators(cfg.mpd_channels, cfg.mpd_max_channels, cfg.stft_channels, cfg.stft_ffts).to(device)
            disc.train()
        if world > 1:
            _shard(trainee, disc)
        self.trainee, self.disc = trainee, disc
        betas = tuple(cfg.betas)
        g_opt = torch.optim.AdamW(_groups(trainee.named_parameters(), cfg.weight_decay, cfg.lr), betas=betas)
        self.parts = [Part("generator", trainee, g_opt, _schedule(g_opt, cfg))]
        if disc is not None:  # no weight decay on the discriminators (SPEC §8.1)
            d_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr_disc or cfg.lr, betas=betas, weight_decay=0.0)
            self.parts.append(Part("discriminator", disc, d_opt, _schedule(d_opt, cfg)))
        self.g_params = [p for p in trainee.parameters() if p.requires_grad]
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16
                         else nullcontext())
        if rank == 0 and a2t is not None and not any(t for _, t in getattr(data, "clips", [])[:1000]):
            print("note: the data has no transcripts; the A2T loss is 0 (set a2t-weight = 0 to drop the decoder)",
                  file=out or sys.stderr)

    # ------------------------------------------------------------------------------------ pieces
    def _a2t(self, q: torch.Tensor, texts: list) -> torch.Tensor:
        """Mean next-token NLL of the transcripts given the quantized features; every rank runs the decoder (a
        batch without text runs it on one dummy token with weight 0, so FSDP's collectives stay matched)."""
        tok, cfg = self.text, self.cfg
        rows = [i for i, t in enumerate(texts) if t]
        weight = 1.0
        if not rows:
            rows, weight = [0], 0.0
        seqs = [tok.encode(texts[i])[: cfg.max_text_tokens] if texts[i] else [] for i in rows]
        U = max(len(s) for s in seqs) + 1
        tokens = torch.zeros(len(rows), U, dtype=torch.long)
        labels = torch.full((len(rows), U), -100, dtype=torch.long)
        for j, s in enumerate(seqs):
            tokens[j, : len(s) + 1] = torch.tensor([tok.bos] + s)
            labels[j, : len(s) + 1] = torch.tensor(s + [tok.eos])
        with self.autocast:
            loss = self.trainee.a2t(q[rows], tokens.to(q.device), labels.to(q.device))
        return loss * weight

    def _codebook_stats(self, codes: torch.Tensor, used: torch.Tensor) -> dict:
        sizes = self.trainee.codec.quantizer.sizes
        flat = codes.reshape(-1, len(sizes))
        usage, perplexity = [], []
        for r, k in enumerate(sizes):
            counts = torch.bincount(flat[used > r, r], minlength=k).double()
            if self.world > 1:
                dist.all_reduce(counts)
            p = counts / counts.sum().clamp(min=1)
            usage.append(round(float((counts > 0).double().mean()), 4))
            perplexity.append(round(float(torch.exp(-(p * p.clamp(min=1e-12).log()).sum())), 3))
        return {"codebook_usage": usage, "codebook_perplexity": perplexity}

    def _update(self, part, loss: torch.Tensor, params) -> tuple[float, float]:
        """One optimizer step of ``part`` on ``loss``: backward, clip ``params``' gradient norm, step the optimizer
        and the schedule. Returns (gradient norm, learning rate used)."""
        part.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        lr = part.optimizer.param_groups[0]["lr"]
        part.optimizer.step()
        part.scheduler.step()
        return float(gn), lr

    # ------------------------------------------------------------------------------------ one step
    def step(self, step: int) -> tuple[dict, float]:
        cfg, tr = self.cfg, self.trainee
        batch = next(self.data)
        wav = batch["wav"].to(self.device)
        S = wav.shape[1]
        nl = tr.draw_layers(wav.shape[0], wav.device)
        rec: dict = {}
        if cfg.stage == 1:
            with self.autocast:
                q, codes, commit, used = tr.encode(wav, nl)
                y = tr.decode(q, S)
            recon = multiscale_mel_l1(tr.mels, wav, y)
            a2t = self._a2t(q, batch["text"]) if tr.a2t is not None else torch.zeros((), device=wav.device)
            loss = cfg.recon_weight * recon + cfg.commit_weight * commit + cfg.a2t_weight * a2t
            gn, lr = self._update(self.parts[0], loss, self.g_params)
            vals = torch.stack([loss.detach(), recon.detach(), commit.detach(), a2t.detach()]).double()
            names = ["loss", "loss_recon", "loss_commit", "loss_a2t"]
        else:
            with torch.no_grad(), self.autocast:
                q, codes, commit, used = tr.encode(wav, nl)
            with self.autocast:
                y = tr.decode(q, S)
            # discriminator step on the current generator's output
            l_disc = disc_loss(self.disc(wav), self.disc(y.detach()))
            dgn, _ = self._update(self.parts[1], l_disc, list(self.disc.parameters()))
            # generator step against the updated discriminators
            with torch.no_grad():
                real = self.disc(wav)
            fake = self.disc(y)
            recon = multiscale_mel_l1(tr.mels, wav, y)
            l_adv, l_fm = adv_loss(fake), fm_loss(real, fake)
            loss = cfg.recon_weight * recon + cfg.adv_weight * l_adv + cfg.fm_weight * l_fm
            gn, lr = self._update(self.parts[0], loss, self.g_params)
            zero = torch.zeros((), device=wav.device)
            vals = torch.stack([loss.detach(), recon.detach(), commit.detach(), zero, l_adv.detach(), l_fm.detach(),
                                l_disc.detach()]).double()
            names = ["loss", "loss_recon", "loss_commit", "loss_a2t", "loss_adv", "loss_fm", "loss_disc"]
            rec["disc_grad_norm"] = dgn
        with torch.no_grad():
            md = tr.mel_distance(wav, y.detach())
        vals = _mean_over_ranks(torch.cat([vals, md.double()[None]]))
        out = dict(zip(names + ["mel_distance"], vals.tolist()))
        out.update(rec)
        out.update({"lr": lr, "grad_norm": gn, **self._codebook_stats(codes, used.view(codes.shape[:2]).reshape(-1)),
                    "skipped_clips": int(getattr(self.data, "skipped", 0))})
        if cfg.stage == 1:
            out["codebook_reinit"] = [round(v, 4) for v in tr.rvq.dead]
        return out, batch["seconds"] * self.world

    # ------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def _reconstruct(self, wav: torch.Tensor, layers: int | None = None):
        tr = self.trainee
        nl = None if layers is None else torch.full((wav.shape[0],), layers, device=wav.device)
        with self.autocast:
            q, codes, commit, used = tr.encode(wav, nl)
            y = tr.decode(q, wav.shape[1])
        return q, codes, commit, used, y.float()

    @torch.no_grad()
    def validate(self, step: int, output: Path) -> dict:
        """Losses, mel distance (all layers and the LM's 8), codebook statistics and STOI / PESQ (when pystoi /
        pesq are installed) averaged over the first ``val_clips`` validation clips, each at its own length."""
        tr = self.trainee
        L = len(tr.codec.quantizer.sizes)
        sums: dict[str, list[float]] = {}
        all_codes, all_used = [], []

        def add(k, v):
            sums.setdefault(k, []).append(float(v))

        tr.eval()
        try:
            for _ in range(min(self.cfg.val_clips, len(self.val_data.clips))):
                batch = next(self.val_data)
                wav = batch["wav"].to(self.device)
                q, codes, commit, used, y = self._reconstruct(wav)
                add("val_loss_recon", multiscale_mel_l1(tr.mels, wav, y))
                add("val_loss_commit", commit)
                add("val_mel_distance", tr.mel_distance(wav, y))
                if tr.a2t is not None and any(batch["text"]):
                    add("val_loss_a2t", self._a2t(q, batch["text"]))
                if L > LM_LAYERS:
                    add(f"val_mel_distance_{LM_LAYERS}", tr.mel_distance(wav, self._reconstruct(wav, LM_LAYERS)[-1]))
                for k, v in _intelligibility(wav.cpu(), y.cpu(), tr.codec.sample_rate).items():
                    add(k, v)
                all_codes.append(codes.reshape(-1, L))
                all_used.append(used)
        finally:
            tr.train()
        res = {k: sum(v) / len(v) for k, v in sums.items()}
        stats = self._codebook_stats(torch.cat(all_codes), torch.cat(all_used))
        res.update({"val_" + k: v for k, v in stats.items()})
        return res

    def after_step(self, step: int, output: Path) -> None:
        """Every ``sample_every`` steps: ``OUTPUT/samples/step-N/clip-I.wav`` (and ``clip-I.ref.wav``)."""
        if not self.cfg.sample_every or step % self.cfg.sample_every or self.sample_source is None:
            return
        from ...audio import save_audio

        tr = self.trainee
        start = self.sample_source.state_dict()
        tr.eval()
        try:
            pairs = []
            for _ in range(min(self.cfg.samples, len(self.sample_source.clips))):
                wav = next(self.sample_source)["wav"].to(self.device)
                pairs.append((wav[0].cpu(), self._reconstruct(wav)[-1][0].cpu()))
        finally:
            tr.train()
            self.sample_source.load_state_dict(start)
        if dist_info()[0] != 0:
            return
        folder = output / "samples" / f"step-{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (ref, rec) in enumerate(pairs):
            save_audio(folder / f"clip-{i}.wav", rec.clamp(-1, 1), tr.codec.sample_rate)
            save_audio(folder / f"clip-{i}.ref.wav", ref.clamp(-1, 1), tr.codec.sample_rate)

    # ------------------------------------------------------------------------------------ export
    def export(self, output: Path) -> None:
        """``OUTPUT/final/``: the tokenizer in the released layout (no discriminators, no A2T decoder)."""
        sd = full_state(self.trainee)
        if dist_info()[0] != 0:
            return
        codec_state = {k[len("codec."):]: v for k, v in sd.items() if k.startswith("codec.")}
        ema = {}
        for r in range(len(self.trainee.codec.quantizer.sizes)):
            p = f"encoder.quantizer.vq.layers.{r}._codebook."
            for ours, rel in ((f"rvq.inited{r}", "inited"), (f"rvq.cluster_size{r}", "cluster_size"),
                              (f"rvq.embed_avg{r}", "embed_avg")):
                ema[p + rel] = sd[ours]
        export_tokenizer(self.trainee.codec.config, codec_state, ema, output / "final")


def _intelligibility(ref: torch.Tensor, out: torch.Tensor, rate: int) -> dict:
    """Mean STOI / PESQ of the evaluation harness's scorer over clips (absent keys when not installed)."""
    import numpy as np
    import soxr

    from ...eval.judges import JUDGE_RATE
    from ...eval.scoring import intelligibility

    sums: dict[str, list[float]] = {}
    for a, b in zip(ref, out):
        r16 = soxr.resample(a.numpy().astype(np.float64), rate, JUDGE_RATE)
        o16 = soxr.resample(b.numpy().astype(np.float64), rate, JUDGE_RATE)
        for k, v in intelligibility(r16, o16, JUDGE_RATE).items():
            sums.setdefault(k, []).append(v)
    return {f"val_{k}": float(sum(v) / len(v)) for k, v in sums.items()}


def train_codec(cfg: CodecTrainConfig, *, data=None, val_data=None, out=None) -> list[dict]:
    """Train (or resume) a tokenizer into ``cfg.output`` (stage ``cfg.stage``); returns this call's metric records.
    ``data`` / ``val_data`` replace reading ``cfg.data`` / ``cfg.val_data`` (:class:`ClipBatches` or any batch source
    of ``{"wav", "text", "seconds"}`` with ``state_dict`` / ``load_state_dict``)."""
    cfg.validate()
    return fit(cfg, lambda device: CodecObjective(cfg, device, data=data, val_data=val_data, out=out),
               out=out or sys.stderr)
