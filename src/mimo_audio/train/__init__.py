"""Training the MiMo-Audio LM (SPEC §8.2, §8.3; docs/training.md).

- :mod:`.config`: the stages, :class:`TrainConfig`, TOML config files;
- :mod:`.data`: the batch-source protocol and an in-memory implementation;
- :mod:`.trainer`: the loop (FSDP2 under torchrun, checkpoints, metrics, export);
- :mod:`.export`: the released layout and adapter folders; :mod:`.lora`: peft LoRA and merging;
- :mod:`.cli`: ``mimo-audio train`` / ``python -m mimo_audio.train``.
"""

from .config import STAGES, TrainConfig, TrainConfigError, make_config
from .lm_objective import train

__all__ = ["STAGES", "TrainConfig", "TrainConfigError", "make_config", "train"]
