"""Settings of a tokenizer training run (SPEC §8.1): :class:`CodecTrainConfig`, the shipped configs
(``small``, ``released``) and TOML files (training keys at the top level, the tokenizer's ``config.json`` fields in a
``[tokenizer]`` table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ...config import TokenizerConfig
from ..config import SCHEDULES, LoopConfig, TrainConfigError, read_settings

SHIPPED = ("small", "released")


@dataclass
class CodecTrainConfig(LoopConfig):
    """Every setting of a tokenizer run (the loop's, :class:`~mimo_audio.train.config.LoopConfig`, then the
    tokenizer's); ``mimo-audio train-codec`` flags and config-file keys share the names."""

    stage: int = 1
    tokenizer: dict = field(default_factory=dict)  # TokenizerConfig fields (ignored with --init: its config wins)
    init: str | None = None  # a released or exported tokenizer folder / hub id to start from
    data: str | None = None
    val_data: str | None = None
    max_steps: int = 2000
    batch_size: int = 8  # clips per rank
    segment_seconds: float = 1.0  # random crop length
    lr: float = 1e-3  # generator (encoder, decoder, vocoder, A2T decoder)
    lr_disc: float | None = None  # discriminators (default: lr)
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.01  # generator matrices only; never on the discriminators (SPEC §8.1)
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    recon_weight: float = 1.0
    commit_weight: float = 1.0
    a2t_weight: float = 10.0  # 0 disables the A2T decoder
    adv_weight: float = 1.0
    fm_weight: float = 2.0
    quantizer_dropout: float = 0.5  # share of clips that use a random prefix of the RVQ layers
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_code_threshold: float | None = None  # default: the tokenizer's threshold_ema_dead_code
    kmeans_iters: int = 10  # k-means iterations of the first-batch codebook initialisation
    a2t_layers: int = 2
    a2t_dim: int = 256
    a2t_heads: int = 4
    a2t_ffn: int = 1024
    text_tokenizer: str = "bytes"  # "bytes", or a folder / tokenizer.json (the LM checkpoint's)
    max_text_tokens: int = 256
    mpd_channels: int = 16
    mpd_max_channels: int = 256
    stft_channels: int = 16
    stft_ffts: tuple[int, ...] = (1024, 512, 256)
    output: str = "runs/mimo-audio-codec"
    val_clips: int = 8
    val_seconds: float = 5.0
    sample_every: int = 0  # write reconstructions of the first validation (or training) clips every N steps
    samples: int = 2
    bf16: bool = False  # autocast on CUDA for the networks (losses and RVQ stay float32)

    def model_config(self) -> TokenizerConfig:
        return TokenizerConfig.from_dict(dict(self.tokenizer))

    def validate(self) -> None:
        """Raise :class:`TrainConfigError` naming the first setting that cannot work."""
        if self.stage not in (1, 2):
            raise TrainConfigError(f"--stage must be 1 (reconstruction + text alignment) or 2 (adversarial), "
                                   f"got {self.stage!r}")
        if self.stage == 2 and not self.init:
            raise TrainConfigError("stage 2 fine-tunes the decoder of a trained tokenizer with encoder and RVQ frozen; "
                                   "pass --init FOLDER (a stage-1 run's final/ or a released tokenizer)")
        self.check_loop()
        for name in ("batch_size", "val_clips", "samples",
                     "a2t_layers", "a2t_dim", "a2t_heads", "max_text_tokens", "mpd_channels", "stft_channels"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("sample_every", "kmeans_iters", "a2t_weight", "recon_weight", "commit_weight",
                     "adv_weight", "fm_weight", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        for name in ("lr", "lr_disc"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise TrainConfigError(f"{name.replace('_', '-')} must be positive, got {v}")
        if not self.segment_seconds > 0 or not self.val_seconds > 0:
            raise TrainConfigError("segment-seconds and val-seconds must be positive")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise TrainConfigError(f"quantizer-dropout must be in [0, 1], got {self.quantizer_dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise TrainConfigError(f"ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.schedule not in SCHEDULES:
            raise TrainConfigError(f"unknown schedule {self.schedule!r}; use constant or cosine")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainConfigError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.a2t_dim % self.a2t_heads:
            raise TrainConfigError(f"a2t-dim {self.a2t_dim} is not divisible by a2t-heads {self.a2t_heads}")
        if not self.stft_ffts or any(int(n) < 16 for n in self.stft_ffts):
            raise TrainConfigError(f"stft-ffts must list FFT sizes of at least 16, got {self.stft_ffts}")
        if self.val_every and not self.val_data:
            raise TrainConfigError("val-every is set but there is no --val-data")
        if not self.init:
            c = self.model_config()
            if c.n_mels < 1 or len(c.codebook_sizes) < 1:
                raise TrainConfigError("the [tokenizer] table describes no codebooks; set num_quantizers and "
                                       "codebook_size")


_FIELDS = {f.name: f for f in dataclasses.fields(CodecTrainConfig)}
_TUPLES = ("betas", "stft_ffts")


def shipped_config_path(name: str) -> Path:
    return Path(str(files("mimo_audio.train.codec") / "configs" / f"{name}.toml"))


def read_config(spec: str) -> dict:
    """Settings of ``--config``: a shipped config by name (``small``, ``released``) or a TOML / YAML file (read as
    :func:`~mimo_audio.train.config.read_settings` reads the LM's), with a ``tokenizer`` table of ``config.json``
    fields."""
    if spec in SHIPPED:
        path = shipped_config_path(spec)
    elif not Path(spec).expanduser().is_file():
        raise TrainConfigError(f"--config {spec}: not a shipped config ({', '.join(SHIPPED)}) and no such file")
    else:
        path = Path(spec).expanduser()
    out = read_settings(path, _FIELDS)
    if "tokenizer" in out:
        if not isinstance(out["tokenizer"], dict):
            raise TrainConfigError(f"config file {path}: 'tokenizer' must be a table of config.json fields")
        known = {f.name for f in dataclasses.fields(TokenizerConfig)}
        bad = sorted(set(out["tokenizer"]) - known)
        if bad:
            raise TrainConfigError(f"config file {path}: unknown [tokenizer] field(s) {', '.join(bad)}")
    return out


def make_codec_config(file_settings: dict | None = None, **overrides) -> CodecTrainConfig:
    """A :class:`CodecTrainConfig` from config-file settings with ``overrides`` (flags; None = not given) on top."""
    settings = dict(file_settings or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for name in _TUPLES:
        if name in settings and isinstance(settings[name], (list, str)):
            v = settings[name]
            settings[name] = tuple(float(x) if name == "betas" else int(x)
                                   for x in (v.split(",") if isinstance(v, str) else v))
    try:
        cfg = CodecTrainConfig(**settings)
    except TypeError as exc:
        raise TrainConfigError(f"bad tokenizer training settings: {exc}") from None
    cfg.validate()
    return cfg
