"""``python -m mimo_audio.train_codec ...``: the entry point for ``torchrun --nproc-per-node N -m
mimo_audio.train_codec`` (the same as ``mimo-audio train-codec``)."""

import sys

from .train.codec.cli import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], prog="python -m mimo_audio.train_codec"))
