"""Audio clips for tokenizer training: a pairs manifest (JSONL of ``{"audio", "text"}``, read with
:func:`mimo_audio.data.manifest.open_manifest`) or a folder of audio files (a ``NAME.txt`` next to a clip is its
transcript), drawn as random fixed-length crops.

Bad clips (missing, unreadable, not finite, a manifest line that cannot be used) are skipped and counted: the
headers are probed once at start, and a clip that still fails to decode when drawn is skipped then. The position
(draws so far) and the skip count are the source's state, so a resumed run reads the same crops.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import torch

from ...audio import load_audio, probe_audio
from ...errors import MimoAudioError
from ..config import TrainConfigError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
CACHE_SECONDS = 1800.0  # decoded audio kept in memory (seconds, per source)


def read_clips(source: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``(clips, problems)``: ``(audio path, transcript or None)`` per usable entry and one line per skipped one."""
    path = Path(source).expanduser()
    if not path.exists():
        raise TrainConfigError(f"--data {source} does not exist; pass a JSONL manifest of {{\"audio\", \"text\"}} "
                               "lines or a folder of audio files")
    problems: list[str] = []
    clips: list[tuple[str, str | None]] = []
    if path.is_dir():
        if (path / "summary.json").is_file() or any(path.glob("*.arrow")):
            raise TrainConfigError(f"{path} holds prepared shards (codes, not audio); the tokenizer trains on audio: "
                                   "pass the manifest the shards were prepared from, or a folder of audio files")
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        for f in files:
            txt = f.with_suffix(".txt")
            clips.append((str(f), txt.read_text(encoding="utf-8").strip() if txt.is_file() else None))
    else:
        from ...data.manifest import open_manifest

        try:
            m = open_manifest(path)
        except MimoAudioError as exc:
            raise TrainConfigError(f"--data {source}: {exc}") from None
        if m.format != "pairs":
            raise TrainConfigError(f"--data {source} is a {m.format} manifest; the tokenizer trains on a pairs "
                                   "manifest (one {\"audio\": path, \"text\": transcript} per line)")
        for item in m:
            if item.error or not item.audio:
                problems.append(f"{item.id}: {item.error or 'no audio'}")
                continue
            clips.append((str(item.audio[0]), item.fields.get("text") or None))
    good = []
    for audio, text in clips:
        try:
            frames, _, _ = probe_audio(audio)
            if frames < 1:
                raise MimoAudioError("no audio frames")
        except (MimoAudioError, OSError) as exc:
            problems.append(f"{audio}: {' '.join(str(exc).split())}")
            continue
        good.append((audio, text))
    if not good:
        raise TrainConfigError(f"--data {source}: no usable audio clip" + (f" ({problems[0]})" if problems else ""))
    return good, problems


class ClipBatches:
    """Endless batches ``{"wav": (B, samples) float32, "text": [str | None] * B, "seconds": float}`` of random crops.

    Draw ``i`` of rank ``r`` is global draw ``i * world + r``; its clips and crop offsets come from a generator
    seeded by ``(seed, global draw)``, so any number of ranks together read one sequence and a resumed run the same
    crops. Clips shorter than the crop are zero-padded at the end. ``shuffle=False`` gives fixed clips in order (cut
    at the centre): validation and samples; with ``batch_size=1`` a clip keeps its own length up to the crop
    (rounded down to a multiple of ``multiple`` samples)."""

    def __init__(self, clips, batch_size: int, samples: int, sample_rate: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle: bool = True, skipped: int = 0, problems=(), multiple: int = 1,
                 out=None):
        self.clips = list(clips)
        self.batch_size, self.samples, self.rate = batch_size, samples, sample_rate
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.draws, self.skipped = 0, skipped
        self.multiple = multiple  # unshuffled single clips are cut to a multiple of this many samples
        self.bad: set[int] = set()
        self.out = out  # None: sys.stderr at the time of writing
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached = 0
        for line in problems:
            if rank == 0:
                print(f"skipped clip {line}", file=out or sys.stderr)

    @classmethod
    def from_path(cls, source: str, batch_size: int, samples: int, sample_rate: int, **kw) -> ClipBatches:
        clips, problems = read_clips(source)
        return cls(clips, batch_size, samples, sample_rate, skipped=len(problems), problems=problems, **kw)

    def state_dict(self) -> dict:
        return {"draws": self.draws, "skipped": self.skipped, "bad": sorted(self.bad)}

    def load_state_dict(self, state: dict) -> None:
        self.draws, self.skipped, self.bad = int(state["draws"]), int(state["skipped"]), set(state["bad"])

    def __iter__(self):
        return self

    def _load(self, i: int) -> torch.Tensor | None:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        audio, _ = self.clips[i]
        try:
            wav = load_audio(audio, target_rate=self.rate)
        except (MimoAudioError, OSError, RuntimeError) as exc:
            self.bad.add(i)
            self.skipped += 1
            if self.rank == 0:
                print(f"skipped clip {audio}: {' '.join(str(exc).split())}", file=self.out or sys.stderr)
            return None
        self._cache[i] = wav
        self._cached += wav.numel()
        while self._cached > CACHE_SECONDS * self.rate and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.numel()
        return wav

    def _crop(self, wav: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n = self.samples
        if gen is None and self.batch_size == 1:  # one fixed clip: its own length (a whole number of multiple frames)
            keep = max(self.multiple, min(n, wav.numel() // self.multiple * self.multiple))
            return torch.nn.functional.pad(wav, (0, max(0, keep - wav.numel())))[:keep]
        if wav.numel() <= n:
            return torch.nn.functional.pad(wav, (0, n - wav.numel()))
        start = ((wav.numel() - n) // 2 if gen is None
                 else int(torch.randint(0, wav.numel() - n + 1, (1,), generator=gen)))
        return wav[start: start + n]

    def __next__(self) -> dict:
        g = self.draws * self.world + self.rank
        self.draws += 1
        gen = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + g)
        wavs, texts = [], []
        k = 0
        while len(wavs) < self.batch_size:
            if len(self.bad) >= len(self.clips):
                raise TrainConfigError("every audio clip of the data failed to load; check the files")
            if gen is None:
                i = (g * self.batch_size + k) % len(self.clips)
                k += 1
            else:
                i = int(torch.randint(0, len(self.clips), (1,), generator=gen))
            if i in self.bad:
                continue
            wav = self._load(i)
            if wav is None:
                continue
            wavs.append(self._crop(wav, gen))
            texts.append(self.clips[i][1])
        return {"wav": torch.stack(wavs), "text": texts, "seconds": len(wavs) * self.samples / self.rate}
