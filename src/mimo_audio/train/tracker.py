"""Optional experiment trackers beside ``OUTPUT/metrics.jsonl``: ``--tensorboard`` (``tracker = "tensorboard"``)
writes the same per-step scalars with ``torch.utils.tensorboard`` to ``OUTPUT/tensorboard/`` (rank 0 only)."""

from __future__ import annotations

from pathlib import Path

from .config import check_tracker

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    """One event file per run segment in ``folder``; a resumed run drops the events after its checkpoint's step
    (``purge_step``), as metrics.jsonl drops those records."""

    def __init__(self, folder: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict) -> None:
        """``record``: a metrics.jsonl record (``step`` + numbers; lists such as per-layer codebook usage are left to
        metrics.jsonl); ``val_X`` goes to ``val/X``, the rest under ``train/``."""
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NoTracker:
    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def open_tracker(name: str | None, output: Path, *, rank: int = 0, start_step: int = 0):
    """The run's tracker (a no-op without one, and on every rank but 0)."""
    if name is None or rank != 0:
        return NoTracker()
    check_tracker(name)
    return TensorBoardTracker(Path(output) / TENSORBOARD_DIR, start_step)
