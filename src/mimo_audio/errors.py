"""The project's exception types.

Every error a user can cause is one of these, with a message that names the problem and the fix.
Each also subclasses ``ValueError`` so generic handlers keep working.
"""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """True for an ``int`` or a NumPy integer, False for ``bool`` and anything else (for argument checks)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class MimoAudioError(Exception):
    """Base class of every error this package raises on purpose."""


class AudioInputError(MimoAudioError, ValueError):
    """Audio that cannot be used: missing, unreadable, empty, non-finite, bad rate, too long, not audio."""


class AudioTooLongError(AudioInputError):
    """Audio over a duration or decoded-size limit (a server answers 413 rather than 400)."""


class CheckpointError(MimoAudioError, ValueError):
    """A checkpoint folder or hub id that cannot be loaded: missing files or keys, wrong shapes, bad config."""


class PromptError(MimoAudioError, ValueError):
    """A request that cannot be turned into a prompt: empty text, missing transcript, too long for the model."""


class QuantizationError(MimoAudioError, ValueError):
    """A weight-quantization request that cannot be met: unknown scheme, a scheme this device cannot run,
    torchao missing, or a layer the library left unquantized."""
