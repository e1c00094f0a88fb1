"""Training data: manifests people already have -> prepared shards of codes -> batches of supervised examples.

- :mod:`.manifest` reads JSONL pairs, chat JSONL (SPEC §8.4) and Hugging Face ``datasets`` datasets into
  :class:`~.manifest.Item` s (audio not read yet).
- :mod:`.prepare` encodes every item's audio once with the audio tokenizer and writes Arrow shards
  (``mimo-audio data prepare``), sharded by rank, resumable, bad items logged and counted.
- :mod:`.loader` turns shard records into examples through the task table (:func:`mimo_audio.tasks.get_task`)
  and yields length-bucketed, right-padded batches with a deterministic, resumable order.

``datasets`` and ``pyarrow`` come with the ``train`` extra: ``pip install "mimo-audio[train]"``.
"""

from __future__ import annotations

from ..errors import MimoAudioError


class DataError(MimoAudioError, ValueError):
    """A manifest, shard folder or data option that cannot be used (the message names the fix)."""


def require(module: str):
    """Import ``module`` (``pyarrow``, ``datasets``) or raise :class:`DataError` saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"the training data tools need {module.split('.')[0]}; install the train extra: "
            'pip install "mimo-audio[train]" (or pip install datasets pyarrow)'
        ) from None
