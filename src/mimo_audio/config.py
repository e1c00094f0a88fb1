"""Frozen configuration dataclasses read tolerantly from the checkpoints' ``config.json``.

Unknown keys are ignored; an absent key takes the reference class default (SPEC §13.3): for the audio
tokenizer the reference ``MiMoAudioTokenizerConfig`` defaults, for the LM Qwen2's defaults plus the MiMo
fields of SPEC §3.1. Dash-joined strings such as ``"1025-1025-129-..."`` become tuples.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    """``"1-2-3"``, ``[1, 2, 3]``, ``3`` -> ``(1, 2, 3)`` / ``(3,)``."""
    if isinstance(value, str):
        parts = [p for p in value.replace(",", "-").split("-") if p.strip() != ""]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise CheckpointError(f"config field {name!r} = {value!r} is not a dash-separated list of integers") from None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if isinstance(value, int):
        return (value,)
    raise CheckpointError(f"config field {name!r} = {value!r} has an unsupported type {type(value).__name__}")


def _window(value: Any, name: str) -> tuple[int, int]:
    if value is None:
        return (-1, -1)
    t = _int_tuple(value, name)
    if len(t) != 2:
        raise CheckpointError(f"config field {name!r} must have two entries (left, right), got {value!r}")
    return (t[0], t[1])


def read_config_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no config.json at {path}; point to a folder holding the checkpoint's config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


# Fields only one kind of checkpoint has: the LM's config.json vs the audio tokenizer's.
_LM_KEYS = {"speech_vocab_size", "delay_pattern", "group_size", "num_hidden_layers", "local_layers"}
_TOKENIZER_KEYS = {"codebook_size", "encoder_layers", "decoder_layers", "n_mels", "hop_length"}


def checkpoint_kind(data: dict) -> str | None:
    """"lm", "tokenizer" or None (neither's tell-tale fields) for a parsed config.json."""
    lm, tok = len(_LM_KEYS & data.keys()), len(_TOKENIZER_KEYS & data.keys())
    return "lm" if lm > tok else "tokenizer" if tok > lm else None


def check_kind(data: dict, want: str, path) -> None:
    """Refuse the other kind of checkpoint, naming it (an LM folder given as the tokenizer, or the reverse)."""
    from .checkpoint import INSTRUCT_ID, TOKENIZER_ID

    found = checkpoint_kind(data)
    if found is None or found == want:
        return
    folder = Path(path).parent
    if found == "lm":
        raise CheckpointError(f"{folder} is a MiMo-Audio LM checkpoint, not the audio tokenizer: pass it as the "
                              f"model (--model / model=) and the tokenizer folder or '{TOKENIZER_ID}' as "
                              "--tokenizer / tokenizer=")
    raise CheckpointError(f"{folder} is the MiMo-Audio audio tokenizer checkpoint, not the LM: pass it as "
                          f"--tokenizer / tokenizer=, and the LM folder or '{INSTRUCT_ID}' as --model / model=")


def _from_dict(cls, data: dict, converters: dict):
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            continue
        if value is None and key not in converters:
            # null means "use the default" unless the field accepts None explicitly
            continue
        conv = converters.get(key)
        kwargs[key] = conv(value, key) if conv else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid {cls.__name__}: {exc}") from None


@dataclass(frozen=True)
class TokenizerConfig:
    """The audio tokenizer's configuration (SPEC §2.1). Defaults are the reference class defaults."""

    max_audio_seconds: int = 1800
    stride_size: int = 2
    avg_pooler: int = 1
    d_model: int = 768
    scale_embedding: bool = True
    kernel_size: int = 3
    activation_function: str = "gelu"
    encoder_layers: int = 8
    encoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    encoder_skip_layer_id: int | None = None
    encoder_causal: bool = False
    encoder_attn_window_size: tuple[int, int] = (-1, -1)
    decoder_layers: int = 8
    decoder_attention_heads: int = 12
    decoder_ffn_dim: int = 3072
    decoder_kernel_size: int = 3
    decoder_stride_size: int = 2
    decoder_causal: bool = True
    decoder_attn_window_size: tuple[int, int] = (-1, -1)
    nfft: int = 1024
    window_size: int = 1024
    hop_length: int = 240
    vocoder_dim: int = 512
    vocoder_intermediate_dim: int = 4096
    vocoder_num_layers: int = 30
    vocoder_attention_heads: int = 4
    vocoder_attn_window_size: tuple[int, int] = (40, 10)
    vocoder_padding: str = "same"
    n_mels: int = 80
    sampling_rate: int = 24000
    fmin: float = 0.0
    fmax: float | None = None
    num_quantizers: int = 12
    codebook_size: tuple[int, ...] = (1024,)
    threshold_ema_dead_code: int = 10
    position_embedding_type: str = "rope"
    rope_theta: float = 10000.0
    rope_type: str = "default"
    ln_type: str = "LayerNorm"

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerConfig:
        conv = {
            "encoder_attn_window_size": _window,
            "decoder_attn_window_size": _window,
            "vocoder_attn_window_size": _window,
            "codebook_size": _int_tuple,
            "encoder_skip_layer_id": lambda v, n: None if v is None else int(v),
            "fmax": lambda v, n: None if v is None else float(v),
        }
        return _from_dict(cls, data, conv)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenizerConfig:
        data = read_config_json(path)
        check_kind(data, "tokenizer", path)
        return cls.from_dict(data)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """One size per quantizer layer; a short list is extended with its last value (as the reference does)."""
        sizes = list(self.codebook_size)
        while len(sizes) < self.num_quantizers:
            sizes.append(sizes[-1])
        return tuple(sizes[: self.num_quantizers])

    @property
    def samples_per_code(self) -> int:
        """Waveform samples per decoded code frame: avg_pooler · decoder_stride_size · hop (960 for the released
        model). The decoder's stride sets it: its transposed convolutions stretch each code to that many mel frames."""
        return self.avg_pooler * self.decoder_stride_size * self.hop_length


@dataclass(frozen=True)
class LMConfig:
    """The MiMo-Audio LM's configuration (SPEC §3.1): Qwen2 fields plus the MiMo fields."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    torch_dtype: str | None = None
    # MiMo fields
    speech_vocab_size: tuple[int, ...] = (1025, 1025, 129, 129, 129, 129, 129, 129)
    speech_zeroemb_idx: tuple[int, ...] = (1024, 1024, 128, 128, 128, 128, 128, 128)
    delay_pattern: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    group_size: int = 4
    audio_channels: int = 8
    local_dim: int = 1024
    local_layers: int = 16
    local_attn_heads: int = 64
    local_ffn_dim: int = 4096
    local_attn_dropout: float = 0.1
    input_local_layers: int = 6
    input_local_dim: int = 1024
    input_full_attention: bool = True

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        c = self.audio_channels
        for name in ("speech_vocab_size", "speech_zeroemb_idx", "delay_pattern"):
            if len(getattr(self, name)) != c:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but audio_channels is {c}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_dict(cls, data: dict) -> LMConfig:
        conv = {
            "speech_vocab_size": _int_tuple,
            "speech_zeroemb_idx": _int_tuple,
            "delay_pattern": _int_tuple,
            "sliding_window": lambda v, n: None if v is None else int(v),
            "num_key_value_heads": lambda v, n: None if v is None else int(v),
            "head_dim": lambda v, n: None if v is None else int(v),
            "torch_dtype": lambda v, n: None if v is None else str(v),
        }
        return _from_dict(cls, data, conv)

    @classmethod
    def from_file(cls, path: str | Path) -> LMConfig:
        data = read_config_json(path)
        check_kind(data, "lm", path)
        return cls.from_dict(data)

    @property
    def empty_ids(self) -> tuple[int, ...]:
        """Per-channel empty (padding) id of the audio channels."""
        return self.speech_zeroemb_idx

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @property
    def local_steps(self) -> int:
        """Patch-decoder steps per group: group_size + max(delay) (11 for the released model)."""
        return self.group_size + self.max_delay
