"""``python -m mimo_audio.train ...`` (the entry point for ``torchrun --nproc-per-node N -m mimo_audio.train``)."""

import sys

from .cli import run

sys.exit(run(sys.argv[1:], prog="python -m mimo_audio.train"))
