"""mimo_audio: Xiaomi's MiMo-Audio, clean and fast.

Public API (see README.md)::

    from mimo_audio import AudioTokenizer, MimoAudio, MimoAudioLM, generate
"""

from __future__ import annotations

from .errors import (
    AudioInputError,
    AudioTooLongError,
    CheckpointError,
    MimoAudioError,
    PromptError,
    QuantizationError,
)

__version__ = "0.1.0"

_LAZY = {
    "AudioTokenizer": ("codec", "AudioTokenizer"),
    "MimoAudioLM": ("lm", "MimoAudioLM"),
    "generate": ("generate", "generate"),
    "MimoAudio": ("pipeline", "MimoAudio"),
    "Speech": ("pipeline", "Speech"),
    "Reply": ("pipeline", "Reply"),
    "TokenizerConfig": ("config", "TokenizerConfig"),
    "LMConfig": ("config", "LMConfig"),
}

__all__ = ["AudioInputError", "AudioTooLongError", "CheckpointError", "MimoAudioError", "PromptError", "QuantizationError",
           "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mimo_audio' has no attribute {name!r}")
