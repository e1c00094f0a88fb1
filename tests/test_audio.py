"""Audio front end: loading, validation, saving, log-mel arithmetic."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mimo_audio.audio import load_audio, log_mel, save_audio
from mimo_audio.config import TokenizerConfig
from mimo_audio.errors import AudioInputError

RATE = 24000


def tone(seconds=0.5, rate=RATE, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


# --------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt,subtype,suffix", [
    ("WAV", "PCM_16", ".wav"), ("WAV", "FLOAT", ".wav"), ("FLAC", "PCM_24", ".flac"),
    ("OGG", "VORBIS", ".ogg"), ("OGG", "OPUS", ".opus"), ("MP3", "MPEG_LAYER_III", ".mp3"),
])
def test_formats_load_to_mono_24k(tmp_path, fmt, subtype, suffix):
    rate = 48000 if subtype == "OPUS" else 16000
    x = tone(1.0, rate, channels=2)
    path = tmp_path / f"a{suffix}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(wav.shape[0] - RATE) <= 0.05 * RATE  # lossy codecs may pad a little
    # the mono mix of channels scaled 0.5 and 1.0 has amplitude 0.225
    assert 0.15 < float(wav.abs().max()) < 0.3
    assert load_audio(path.read_bytes()).shape == wav.shape  # raw bytes work as well


def test_channel_mix_and_resample_exact_length():
    x = tone(1.0, 16000, channels=2)
    wav = load_audio(x, sample_rate=16000)
    assert wav.shape == (RATE,)
    same = load_audio(torch.from_numpy(x.T.copy()), sample_rate=16000)  # (channels, samples) layout
    torch.testing.assert_close(wav, same)
    pair = load_audio((x, 16000))
    torch.testing.assert_close(wav, pair)


def test_24k_input_is_unchanged_and_int_pcm_is_scaled():
    x = tone(0.2)
    torch.testing.assert_close(load_audio(x, sample_rate=RATE), torch.from_numpy(x))
    pcm = (x * 32768).astype(np.int16)
    torch.testing.assert_close(load_audio(pcm, sample_rate=RATE), torch.from_numpy(pcm / 32768.0).float())


def test_resampled_fixture_clip_matches_its_24k_original(fixture_path, manifest):
    raw, ref = manifest["audio"]["raw"][0], manifest["audio"]["24k"][0]
    a = load_audio(fixture_path / "audio" / raw)
    b = load_audio(fixture_path / "audio" / ref)
    n = min(a.shape[0], b.shape[0])
    assert abs(a.shape[0] - b.shape[0]) <= 2
    corr = torch.corrcoef(torch.stack([a[:n], b[:n]]))[0, 1]
    assert corr > 0.95


# --------------------------------------------------------------------------------------------- errors
def _wav_bytes(x, rate=RATE, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _expect(match, source, **kw):
    with pytest.raises(AudioInputError, match=match):
        load_audio(source, **kw)


def test_bad_files(tmp_path):
    good = _wav_bytes(tone(1.0))
    cases = {
        "header_only.wav": (good[:44], "truncated"),  # header promises samples that are missing
        "no_frames.wav": (_wav_bytes(np.zeros(0, np.float32)), "empty"),
        "truncated.wav": (good[: len(good) // 2], "truncated"),
        "garbage.wav": (os.urandom(4096), "not an audio file"),
        "text.wav": (b"hello, this is not audio\n" * 40, "not an audio file"),
        "rate1.wav": (_wav_bytes(np.zeros(100, np.float32), rate=1), "sample rate"),
        "rate999.wav": (_wav_bytes(np.zeros(1000, np.float32), rate=999), "sample rate"),
        "rate400k.wav": (_wav_bytes(np.zeros(1000, np.float32), rate=400_000), "sample rate"),
        "nan.wav": (_wav_bytes(np.array([0.1, np.nan, 0.2] * 100, np.float32), subtype="FLOAT"), "NaN"),
        "inf.wav": (_wav_bytes(np.array([0.1, np.inf, 0.2] * 100, np.float32), subtype="FLOAT"), "NaN or infinite"),
        "channels.wav": (_wav_bytes(np.zeros((100, 17), np.float32)), "channels"),
        "empty.wav": (b"", "not an audio file|empty"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _expect(match, path)
        if data:
            _expect(match, data)  # the same bytes in memory
    _expect("no such file", tmp_path / "missing.wav")
    _expect("folder", tmp_path)


def test_too_long_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.0), RATE)
    _expect("longer than the limit", path, max_seconds=2.0)
    assert load_audio(path, max_seconds=3.5).shape[0] == 3 * RATE

    def no_read(*a, **k):  # the header check must stop before any decoding
        raise AssertionError("decoded although the header says too long")

    monkeypatch.setattr(sf.SoundFile, "read", no_read)
    _expect("longer than the limit", path, max_seconds=1.0)


def test_too_long_array_and_bad_rates():
    _expect("longer than the limit", np.zeros(3 * RATE, np.float32), sample_rate=RATE, max_seconds=2)
    for rate in (0, 1, 999, 384_001, -16000, float("nan"), 16000.5, "fast", True, None):
        _expect("sample rate|sample_rate", np.zeros(2000, np.float32), sample_rate=rate)


def test_bad_arrays():
    _expect("NaN", np.array([0.0, np.nan, 0.1], np.float32), sample_rate=RATE)
    _expect("empty", np.zeros(0, np.float32), sample_rate=RATE)
    _expect("empty", np.zeros((0, 1), np.float16), sample_rate=RATE)  # read as 1 frame x 0 channels
    _expect("empty", np.zeros((3, 0), np.float32), sample_rate=RATE)
    _expect("single number", np.float32(0.5), sample_rate=RATE)
    _expect("1-D or 2-D", np.zeros((2, 3, 400), np.float32), sample_rate=RATE)
    _expect("dtype", np.zeros(100, np.complex64), sample_rate=RATE)
    _expect("channels", np.zeros((20, 4000), np.float32), sample_rate=RATE)
    _expect("sample_rate=", np.zeros(100, np.float32))
    _expect("unsupported audio source", {"not": "audio"}, sample_rate=RATE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_audio_input_error(data):
    try:
        wav = load_audio(data, max_seconds=5)
    except AudioInputError:
        return
    assert wav.dtype == torch.float32 and wav.ndim == 1 and torch.isfinite(wav).all()


_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
                           np.bool_, np.complex64])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)),
       st.one_of(st.integers(-10, 500_000), st.floats(allow_nan=True, allow_infinity=True), st.none()))
def test_odd_arrays_only_raise_audio_input_error(arr, rate):
    for source in (arr, torch.from_numpy(arr)):
        try:
            wav = load_audio(source, sample_rate=rate, max_seconds=5)
        except AudioInputError:
            continue
        assert wav.dtype == torch.float32 and wav.ndim == 1 and torch.isfinite(wav).all()


# --------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize(("suffix", "float32", "subtype", "atol"), [
    (".wav", False, "PCM_16", 1 / 32767), (".wav", True, "FLOAT", 1e-7), (".flac", False, "PCM_24", 2e-7 * 2**7),
])
def test_save_round_trip(tmp_path, suffix, float32, subtype, atol):
    x = torch.from_numpy(tone(0.3))
    out = save_audio(tmp_path / f"x{suffix}", x, float32=float32)
    back, rate = sf.read(out, dtype="float32")
    assert rate == RATE and sf.info(str(out)).subtype == subtype
    np.testing.assert_allclose(back, x.numpy(), atol=atol)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"x{suffix}"]


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old contents")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(OSError):
        save_audio(target, torch.zeros(100))
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(AudioInputError, match="unsupported output"):
        save_audio(tmp_path / "x.mp4", torch.zeros(10))
    with pytest.raises(AudioInputError, match="NaN"):
        save_audio(tmp_path / "x.wav", torch.tensor([0.0, float("nan")]))
    with pytest.raises(AudioInputError, match="empty"):
        save_audio(tmp_path / "x.wav", torch.zeros(0))
    with pytest.raises(AudioInputError, match="mono"):
        save_audio(tmp_path / "x.wav", torch.zeros(2, 100))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- mel
def test_mel_frame_count_and_short_input():
    cfg = TokenizerConfig(n_mels=128, nfft=960, window_size=960, hop_length=240)
    for n in (481, 482, 719, 720, 960, 24000, 24001, 24239, 24240):
        assert log_mel(torch.randn(n) * 0.1, cfg).shape == (1 + n // cfg.hop_length, cfg.n_mels)
    with pytest.raises(AudioInputError, match="too short"):
        log_mel(torch.zeros(cfg.nfft // 2), cfg)


def test_mel_of_a_pure_tone_peaks_at_its_band():
    cfg = TokenizerConfig(n_mels=128, nfft=960, window_size=960, hop_length=240)
    mel = log_mel(torch.from_numpy(tone(0.5, freq=1000.0)), cfg)
    peak = int(mel[10].argmax())
    mel_hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    top = 2595 * math.log10(1 + 12000 / 700)
    centre = mel_hz(top * (peak + 1) / (cfg.n_mels + 1))
    assert abs(centre - 1000) < 60
    assert mel.min() >= math.log(1e-7) - 1e-4


_VALID = {fmt: None for fmt in ("WAV", "FLAC", "OGG")}


def _valid_bytes(fmt):
    if _VALID[fmt] is None:
        buf = io.BytesIO()
        sf.write(buf, tone(0.2, 16000), 16000, format=fmt)
        _VALID[fmt] = buf.getvalue()
    return _VALID[fmt]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_VALID)), st.integers(0, 10_000), st.lists(st.tuples(st.integers(0, 10_000),
       st.integers(0, 255)), max_size=8))
def test_damaged_files_only_raise_audio_input_error(fmt, cut, flips):
    data = bytearray(_valid_bytes(fmt)[: max(1, len(_valid_bytes(fmt)) - cut)])
    for pos, val in flips:
        data[pos % len(data)] = val
    try:
        wav = load_audio(bytes(data), max_seconds=5)
    except AudioInputError:
        return
    assert wav.dtype == torch.float32 and wav.ndim == 1 and torch.isfinite(wav).all()


def test_decoded_size_limit_and_too_long_error_type(tmp_path):
    """A file whose decoded float32 samples would pass ``max_decoded_bytes`` (here: 1 s at 192 kHz x 8 channels
    = 6.1 MB) is refused from its header with AudioTooLongError (a subclass of AudioInputError), as is audio over
    max_seconds; within both limits it loads."""
    import io as _io

    import soundfile as sf

    from mimo_audio.errors import AudioTooLongError

    buf = _io.BytesIO()
    sf.write(buf, np.zeros((192_000, 8), np.float32), 192_000, format="FLAC")
    data = buf.getvalue()
    with pytest.raises(AudioTooLongError, match="decoded-size limit"):
        load_audio(data, max_decoded_bytes=1_000_000)
    with pytest.raises(AudioTooLongError, match="longer than the limit"):
        load_audio(data, max_seconds=0.5)
    assert load_audio(data, max_decoded_bytes=8_000_000).shape == (24000,)


def test_length_is_checked_again_while_decoding(monkeypatch):
    """A stream whose header declares no frames passes the header check; the limits still hold while the samples
    are decoded (here a WAV read as an unseekable stream of unknown length)."""
    from mimo_audio.errors import AudioTooLongError

    buf = io.BytesIO()
    sf.write(buf, tone(2.0), RATE, format="WAV")
    monkeypatch.setattr(sf.SoundFile, "frames", property(lambda self: 0))
    monkeypatch.setattr(sf.SoundFile, "seekable", lambda self: False)
    with pytest.raises(AudioTooLongError, match="longer than the limit"):
        load_audio(buf.getvalue(), max_seconds=1)
    with pytest.raises(AudioTooLongError, match="decoded-size limit"):
        load_audio(buf.getvalue(), max_decoded_bytes=4 * RATE)
    assert load_audio(buf.getvalue(), max_seconds=3).shape == (2 * RATE,)
