"""Long audio from the library and the CLI (issue 16 item 9): split at silences as a stream with bounded memory,
transcribed piece by piece with progress; --max-seconds; understand on audio longer than the context."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from mimo_audio.audio import iter_pieces, load_audio, split_at_silences
from mimo_audio.errors import PromptError
from mimo_audio.pipeline import MimoAudio


def gated_tone(path, seconds: float, rate: int = 16000):
    """A 220 Hz tone on for 4 s, off for 3 s, repeated: speech-like pauses to cut at."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * ((t % 7.0) < 4.0)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return path


def test_split_at_silences_is_shared_by_the_server():
    from mimo_audio.server import media

    assert media.split_at_silences is split_at_silences


def test_iter_pieces_streams_with_bounded_memory(tmp_path):
    path = gated_tone(tmp_path / "long.wav", 600.0)  # 10 minutes
    tracemalloc.start()
    try:
        pieces = []
        peak_piece = 0
        for start, piece in iter_pieces(path, piece_seconds=30.0):
            pieces.append((start, piece.size, float(np.abs(piece[:10]).sum()), piece[::997].copy()))
            peak_piece = max(peak_piece, piece.size)
            del piece
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole_bytes = 600 * 24000 * 4
    # a few pieces (one is 2.9 MB), never the whole recording (57.6 MB decoded)
    assert peak < 20 * 2**20 and peak < 0.35 * whole_bytes, (peak, whole_bytes)
    assert peak_piece <= 30 * 24000
    starts = [p[0] for p in pieces]
    assert starts[0] == 0 and all(a + n == b for (a, n, *_), b in zip(pieces, starts[1:]))
    whole = load_audio(path, max_seconds=None).numpy()
    assert pieces[-1][0] + pieces[-1][1] == whole.size
    for start, n, _, sub in pieces:  # the streamed pieces are the one-shot decode, sample for sample
        np.testing.assert_allclose(sub, whole[start:start + n][::997], atol=1e-6)
    # cut in the pauses: each cut lands where the tone is off
    t_cut = np.array(starts[1:]) / 24000
    assert ((t_cut % 7.0) >= 4.0 - 0.06).all(), t_cut % 7.0


def test_iter_pieces_max_seconds(tmp_path):
    from mimo_audio.errors import AudioTooLongError

    path = gated_tone(tmp_path / "a.wav", 70.0)
    with pytest.raises(AudioTooLongError, match="max_seconds"):
        next(iter_pieces(path, max_seconds=60))
    assert sum(p.size for _, p in iter_pieces(path, max_seconds=80)) == 70 * 24000


@pytest.fixture(scope="module")
def mimo(fixture_path):
    return MimoAudio.from_pretrained(fixture_path / "lm", fixture_path / "tokenizer", device="cpu")


def test_transcribe_splits_long_audio_with_progress(mimo, tmp_path, monkeypatch):
    path = gated_tone(tmp_path / "long.wav", 75.0)
    seen, progress = [], []
    original = MimoAudio.prepare

    def prepare(self, task, **kw):
        seen.append(kw["audio"][0].size / kw["audio"][1])
        return original(self, task, **kw)

    monkeypatch.setattr(MimoAudio, "prepare", prepare)
    text = mimo.transcribe(str(path), max_new_tokens=2, progress=lambda d, t: progress.append((d, t)))
    assert isinstance(text, str)
    assert len(seen) >= 3 and max(seen) <= 30.0 and abs(sum(seen) - 75.0) < 1e-6
    assert progress[-1][0] == pytest.approx(75.0) and progress[-1][1] == pytest.approx(75.0)


def test_understand_on_audio_longer_than_the_context_says_so(mimo):
    fits = mimo.max_positions / (mimo.frames_per_second / mimo.lm.config.group_size)
    long = (np.zeros(int((fits + 60) * 1000), np.float32), 1000)
    with pytest.raises(PromptError, match=r"the audio is \d+ s long, but the model's context holds at most about"):
        mimo.understand(long, "What is said?")


def test_cli_max_seconds_and_long_transcription(fixture_path, tmp_path, capsys):
    from mimo_audio.cli import main

    path = gated_tone(tmp_path / "long.wav", 70.0)
    models = ["--model", str(fixture_path / "lm"), "--tokenizer", str(fixture_path / "tokenizer"), "--device", "cpu",
              "--max-new-tokens", "2"]
    assert main(["transcribe", str(path), *models, "--max-seconds", "60"]) == 2
    err = capsys.readouterr().err
    assert "longer than the limit of 60 s" in err and "--max-seconds" in err and "raise max_seconds" not in err
    assert main(["transcribe", str(path), *models]) == 0
