"""Training the audio tokenizer (SPEC §8.1; docs/training.md "Training the tokenizer") on the generic loop of
:mod:`mimo_audio.train.trainer`:

- :mod:`.config`: :class:`CodecTrainConfig`, the shipped configs (``small``, ``released``), TOML files;
- :mod:`.data`: manifests / audio folders -> random crops (bad clips skipped and counted);
- :mod:`.model`: RVQ training (EMA, dead codes, dropout, commitment), the A2T text decoder, the multi-scale mel loss;
- :mod:`.discriminators`: MPD + multi-scale STFT discriminators, hinge and feature-matching losses;
- :mod:`.objective`: stage 1 / stage 2 steps, validation, samples, export in the released layout;
- :mod:`.cli`: ``mimo-audio train-codec`` / ``python -m mimo_audio.train_codec``.
"""

from .config import CodecTrainConfig, make_codec_config, read_config
from .objective import train_codec

__all__ = ["CodecTrainConfig", "make_codec_config", "read_config", "train_codec"]
