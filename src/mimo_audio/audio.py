"""Audio front end: load / mono / resample / validate / save, and the tokenizer's log-mel (SPEC §1).

Pure functions. Every problem with the input is an :class:`~mimo_audio.errors.AudioInputError` that names
the problem and the fix; nothing else escapes :func:`load_audio`.

Accepted sources (``load_audio``):

* a path (``str`` / ``os.PathLike``) to any file soundfile/libsndfile reads: wav, flac, ogg/vorbis,
  ogg/opus, mp3, aiff, ...;
* raw file contents (``bytes`` / ``bytearray`` / ``memoryview``);
* a ``(samples, sample_rate)`` pair;
* a numpy array or torch tensor together with ``sample_rate=``. 1-D is mono; 2-D is
  ``(channels, samples)`` or ``(samples, channels)`` (the shorter axis is taken as channels); extra
  leading/trailing axes of size 1 are dropped. Integer PCM is scaled to [-1, 1].

The result is always a 1-D float32 CPU tensor at ``target_rate`` (24 kHz by default): channels are
averaged, the rate is converted with soxr.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import AudioInputError, AudioTooLongError
from .files import atomic_output

MIN_RATE = 1_000
MAX_RATE = 384_000
MAX_CHANNELS = 16
DEFAULT_MAX_SECONDS = 1800.0
_BLOCK_FRAMES = 1 << 16


# --------------------------------------------------------------------------------------------- checks
def check_rate(sample_rate: Any, what: str = "audio") -> int:
    """An integer sample rate in [1 kHz, 384 kHz], else :class:`AudioInputError`."""
    if isinstance(sample_rate, bool) or sample_rate is None:
        raise AudioInputError(f"{what}: sample rate {sample_rate!r} is not a number; pass sample_rate=<Hz>")
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioInputError(f"{what}: sample rate {sample_rate!r} is not a number; pass sample_rate=<Hz>") from None
    if not math.isfinite(rate) or rate != int(rate):
        raise AudioInputError(f"{what}: sample rate {sample_rate!r} must be a whole number of Hz")
    rate = int(rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(
            f"{what}: sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz; "
            "resample the audio or pass its true rate"
        )
    return rate


def _check_duration(frames: int, rate: int, max_seconds: float | None, what: str,
                    max_frames: int | None = None) -> None:
    """``max_frames``: a cap from the decoded-size limit (frames x channels x 4 bytes)."""
    if max_seconds is not None and frames > max_seconds * rate:
        raise AudioTooLongError(
            f"{what}: {frames / rate:.1f} s of audio is longer than the limit of {max_seconds:g} s; "
            "cut it into shorter pieces or raise max_seconds"
        )
    if max_frames is not None and frames > max_frames:
        raise AudioTooLongError(
            f"{what}: {frames / rate:.1f} s of audio decodes to more than the decoded-size limit "
            f"({max_frames / rate:.1f} s at this rate and channel count); send less or shorter audio"
        )


def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise AudioInputError(f"{what}: the audio contains NaN or infinite samples; fix or re-export the file")


def _finish(x: np.ndarray, rate: int, target_rate: int, what: str) -> torch.Tensor:
    """``x`` (frames, channels) float32 finite -> mono float32 tensor at ``target_rate``."""
    if x.shape[0] == 0:
        raise AudioInputError(f"{what}: the audio is empty (0 samples)")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate != target_rate:
        import soxr

        mono = soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
        if mono.size == 0:
            raise AudioInputError(f"{what}: the audio is too short to resample ({x.shape[0]} samples)")
        _check_finite(mono, what)
    return torch.from_numpy(np.array(mono, dtype=np.float32, copy=True))


# --------------------------------------------------------------------------------------------- arrays
def _to_numpy(data: Any, what: str) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        t = data.detach()
        if t.is_complex():
            raise AudioInputError(f"{what}: complex tensors are not audio; pass real samples")
        if t.dtype == torch.bool:
            raise AudioInputError(f"{what}: boolean tensors are not audio; pass float samples")
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        try:
            return t.cpu().numpy()
        except (RuntimeError, TypeError) as exc:
            raise AudioInputError(f"{what}: cannot read tensor of dtype {t.dtype} as audio ({exc})") from None
    if isinstance(data, (np.ndarray, np.generic)):
        return np.asarray(data)
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise AudioInputError(f"{what}: cannot read this sequence as an array of samples ({exc})") from None
    raise AudioInputError(
        f"{what}: unsupported audio source of type {type(data).__name__}; pass a path, file bytes, "
        "a (samples, sample_rate) pair, or an array/tensor with sample_rate="
    )


def _scale(arr: np.ndarray, what: str) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype.itemsize > 8:
            arr = arr.astype(np.float64)
        if arr.dtype == np.float32:
            return arr
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: refused later
            return arr.astype(np.float32)
    if kind == "i":
        scale = float(2 ** (8 * arr.dtype.itemsize - 1))
        return (arr.astype(np.float64) / scale).astype(np.float32)
    if kind == "u":
        half = float(2 ** (8 * arr.dtype.itemsize - 1))
        return ((arr.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioInputError(f"{what}: arrays of dtype {arr.dtype} are not audio; pass float or integer PCM samples")


def _array_frames(arr: np.ndarray, max_channels: int, what: str) -> np.ndarray:
    """Any accepted layout -> (frames, channels)."""
    if arr.ndim > 2:
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
    if arr.ndim == 0:
        raise AudioInputError(f"{what}: a single number is not audio; pass a 1-D array of samples")
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim > 2:
        raise AudioInputError(f"{what}: audio arrays must be 1-D or 2-D (channels x samples), got shape {arr.shape}")
    frames = arr.T if arr.shape[0] <= arr.shape[1] else arr
    if frames.shape[1] > max_channels:
        raise AudioInputError(
            f"{what}: {frames.shape[1]} channels is more than the {max_channels} supported; "
            "pass (channels, samples) or (samples, channels) with at most that many channels"
        )
    return frames


def _from_array(data, sample_rate, target_rate, max_seconds, max_channels, what) -> torch.Tensor:
    arr = _to_numpy(data, what)
    if arr.dtype == object:
        raise AudioInputError(f"{what}: cannot read an object array as audio; pass numeric samples")
    rate = check_rate(sample_rate, what)  # before any work on the samples
    frames = _array_frames(arr, max_channels, what)
    if frames.size == 0:  # no frames, or frames without channels (e.g. shape (0, 1) read as 1 x 0)
        raise AudioInputError(f"{what}: the audio is empty (0 samples), shape {tuple(arr.shape)}")
    _check_duration(frames.shape[0], rate, max_seconds, what)
    frames = _scale(frames, what)
    _check_finite(frames, what)
    return _finish(frames, rate, target_rate, what)


# --------------------------------------------------------------------------------------------- files
_DATA_SHOULD_BE = re.compile(r"^\s*(data|SSND)\s*:\s*\d+\s*\(should be", re.MULTILINE)


def _open(source, what: str):
    import soundfile as sf

    try:
        return sf.SoundFile(source)
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError, ValueError, OSError, ...
        detail = str(exc).split(":")[-1].strip() or type(exc).__name__
        raise AudioInputError(
            f"{what}: not an audio file that can be read ({detail}); use wav, flac, ogg/opus or mp3"
        ) from None


TRUNCATED_FIX = ("repair it by rewriting the file from the audio it holds (e.g. `sox in.wav fixed.wav` or "
                 "`ffmpeg -i in.wav fixed.wav`), re-export it, or read what is there with allow_truncated=True")


def _truncated(what: str, detail: str, allow: bool) -> None:
    """A truncated file: an error saying how to repair it, or with ``allow`` a warning (what is there is used)."""
    if not allow:
        raise AudioInputError(f"{what}: the file is truncated ({detail}); {TRUNCATED_FIX}")
    import warnings

    warnings.warn(f"{what}: the file is truncated ({detail}); using the audio it holds", stacklevel=4)


def _from_file(source, target_rate, max_seconds, max_channels, what, max_decoded_bytes=None,
               allow_truncated: bool = False) -> torch.Tensor:
    with _open(source, what) as f:
        try:
            rate = check_rate(f.samplerate, what)
            channels = int(f.channels)
            if channels < 1 or channels > max_channels:
                raise AudioInputError(
                    f"{what}: {channels} channels is outside the supported 1-{max_channels}; mix it down first"
                )
            declared = int(f.frames)
            max_frames = None if max_decoded_bytes is None else int(max_decoded_bytes) // (4 * channels)
            _check_duration(declared, rate, max_seconds, what, max_frames)
            limits = [v for v in (None if max_seconds is None else int(max_seconds * rate), max_frames) if v is not None]
            limit = min(limits) if limits else None
            info = f.extra_info or ""
            header_truncated = bool(_DATA_SHOULD_BE.search(info))
            if header_truncated:
                _truncated(what, "its header promises more audio than it holds", allow_truncated)
            blocks, total = [], 0
            while True:
                try:
                    block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                except Exception as exc:  # a decoder error mid-stream: keep what came before, if allowed
                    if not (allow_truncated and blocks):
                        raise
                    _truncated(what, f"decoding stopped: {exc}", True)
                    break
                if block.shape[0] == 0:
                    break
                total += block.shape[0]
                if limit is not None and total > limit:
                    _check_duration(total, rate, max_seconds, what, max_frames)
                # mixed down block by block: a decode holds the mono signal, not every channel twice over
                blocks.append(block.mean(axis=1, dtype=np.float32, keepdims=True) if channels > 1 else block)
                if declared > 0 and total >= declared and block.shape[0] < _BLOCK_FRAMES:
                    break
            fmt = f.format
        except AudioInputError:
            raise
        except Exception as exc:  # decoder errors in the middle of the stream
            raise AudioInputError(f"{what}: the audio data is corrupt or truncated ({exc}); {TRUNCATED_FIX}") from None
    if total == 0:
        raise AudioInputError(f"{what}: the audio is empty (no samples in the file)")
    slack = max(2048, declared // 100) if fmt in ("MP3", "MPEG") else 0
    if declared > 0 and total + slack < declared and not header_truncated:
        _truncated(what, f"{total} of the {declared} frames its header announces", allow_truncated)
    x = np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    _check_finite(x, what)
    return _finish(x, rate, target_rate, what)


def probe_audio(source: Any) -> tuple[int, int, int]:
    """``(frames, channels, sample_rate)`` a file or file bytes declare in their header, without decoding the
    audio (:class:`AudioInputError` when they cannot be opened)."""
    what = "audio bytes" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    src = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    with _open(src, what) as f:
        return int(f.frames), int(f.channels), int(f.samplerate)


def decode_cost(frames: int, channels: int, rate: int, target_rate: int = 24000) -> int:
    """Bytes :func:`load_audio` holds at its peak for a file of this shape: one block of every channel, the mono
    blocks and their concatenation at the file's rate, and the resampled mono signal (all float32)."""
    out = frames if rate == target_rate else -(-frames * target_rate // max(rate, 1))
    return 4 * (min(frames, _BLOCK_FRAMES) * max(channels, 1) + 2 * frames + out)


def load_audio(
    source: Any,
    sample_rate: int | None = None,
    *,
    target_rate: int = 24000,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_channels: int = MAX_CHANNELS,
    max_decoded_bytes: int | None = None,
    allow_truncated: bool = False,
) -> torch.Tensor:
    """Load ``source`` as mono float32 at ``target_rate`` (1-D CPU tensor).

    ``sample_rate`` is the rate of an array/tensor source (required for those); for files and bytes the
    file's own rate is used and ``sample_rate`` is ignored. ``max_seconds`` (default 30 minutes, ``None``
    for no limit) is checked from the header before decoding and again while decoding; ``max_decoded_bytes``
    caps the float32 samples a file or bytes source may decode to (a guard against forged sample rates and
    highly compressed silence). Over either limit: :class:`AudioTooLongError`. A truncated file (fewer frames
    than its header announces, or a decoder error part-way) is an :class:`AudioInputError` saying how to repair
    it; with ``allow_truncated=True`` the audio it holds is used, with a warning (as sox does).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        what = str(source)
        if not path.exists():
            raise AudioInputError(f"{what}: no such file; check the path")
        if path.is_dir():
            raise AudioInputError(f"{what}: is a folder, not an audio file")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise AudioInputError(f"{what}: cannot open the file ({exc.strerror or exc})") from None
        return _from_file(str(path), target_rate, max_seconds, max_channels, what, max_decoded_bytes,
                          allow_truncated)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise AudioInputError("audio bytes: empty input (0 bytes)")
        return _from_file(io.BytesIO(data), target_rate, max_seconds, max_channels, "audio bytes", max_decoded_bytes,
                          allow_truncated)
    if isinstance(source, tuple) and len(source) == 2 and not isinstance(source[1], (np.ndarray, torch.Tensor, list)):
        samples, rate = source
        return _from_array(samples, rate, target_rate, max_seconds, max_channels, "audio array")
    if sample_rate is None and isinstance(source, (np.ndarray, torch.Tensor, list, tuple)):
        raise AudioInputError("audio array: pass sample_rate= with an array or tensor (or a (samples, rate) pair)")
    return _from_array(source, sample_rate, target_rate, max_seconds, max_channels, "audio array")


# --------------------------------------------------------------------------------------------- save
_SUBTYPES = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_24")}


def save_audio(path: str | os.PathLike, wav: Any, sample_rate: int = 24000, *, float32: bool = False) -> Path:
    """Write a mono waveform to ``path``: ``.wav`` as 16-bit PCM (the format every player and tool reads; with
    ``float32=True``, 32-bit float with the ``fact`` chunk such files need), ``.flac`` as 24-bit PCM. PCM samples
    are clipped to [-1, 1].

    The file appears atomically (written to a temporary file in the same folder, then renamed): a failure
    never leaves a half-written file behind.
    """
    path = Path(os.fspath(path)).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _SUBTYPES:
        raise AudioInputError(f"{path}: unsupported output type {suffix or '(none)'!r}; use .wav or .flac")
    rate = check_rate(sample_rate, str(path))
    arr = _to_numpy(wav, str(path))
    if sum(s > 1 for s in arr.shape) > 1:
        raise AudioInputError(f"{path}: expected a mono waveform, got shape {tuple(arr.shape)}; mix it down first")
    arr = _scale(arr, str(path)).reshape(-1)
    if arr.size == 0:
        raise AudioInputError(f"{path}: refusing to write an empty waveform")
    _check_finite(arr, str(path))
    fmt, subtype = _SUBTYPES[suffix]
    if float32:
        if fmt != "WAV":
            raise AudioInputError(f"{path}: float samples can be written to .wav only; use a .wav path or drop "
                                  "the float option")
        subtype = "FLOAT"
    if subtype.startswith("PCM"):
        arr = np.clip(arr, -1.0, 1.0)
    import soundfile as sf

    with atomic_output(path) as tmp:
        sf.write(tmp, arr, rate, format=fmt, subtype=subtype)
    return path


# --------------------------------------------------------------------------------------------- long audio
def split_at_silences(samples: np.ndarray, sample_rate: int, max_seconds: float = 30.0) -> list[tuple[int, int]]:
    """Cut audio into consecutive pieces of at most ``max_seconds``, each cut at the quietest point.

    Returns (start, end) sample indices covering the whole input without gaps. A cut is placed at the centre of
    the latest of the quietest 100 ms windows (within 5% of the minimum energy) in the second half of the
    allowed span (so no piece is needlessly short);
    audio no longer than ``max_seconds`` is one piece. The timings are real positions in the input, which is why
    transcription segments built from them are honest (MiMo itself produces no timestamps).
    """
    n = len(samples)
    max_len = max(1, int(max_seconds * sample_rate))
    if n <= max_len:
        return [(0, n)]
    hop = max(1, sample_rate // 100)  # 10 ms
    frames = n // hop
    energy = np.empty(frames)
    rows = 500  # 5 s at a time: the float64 energy never copies the whole signal
    for i in range(0, frames, rows):
        seg = samples[i * hop: min(i + rows, frames) * hop].astype(np.float64)
        energy[i: i + rows] = np.square(seg).reshape(-1, hop).mean(axis=1)
    width = 10  # 100 ms smoothing
    smooth = np.convolve(energy, np.ones(width) / width, mode="same")
    pieces, start = [], 0
    while n - start > max_len:
        lo, hi = (start + max_len // 2) // hop, (start + max_len) // hop
        hi = min(hi, frames)
        if hi <= lo:
            cut = start + max_len
        else:
            window = smooth[lo:hi]
            low, high = float(window.min()), float(window.max())
            quiet = np.flatnonzero(window <= low + 0.05 * (high - low))  # near-silent frames; take the latest
            cut = (lo + int(quiet[-1])) * hop + hop // 2
            cut = min(max(cut, start + 1), start + max_len)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, n))
    return pieces


def iter_pieces(source: Any, sample_rate: int | None = None, *, piece_seconds: float = 30.0,
                target_rate: int = 24000, max_seconds: float | None = None, allow_truncated: bool = False,
                max_channels: int = MAX_CHANNELS) -> Iterator[tuple[int, np.ndarray]]:
    """Long audio as consecutive mono pieces of at most ``piece_seconds`` at ``target_rate``, each cut at the
    quietest point (:func:`split_at_silences`); yields ``(start_sample, samples)``.

    A file or bytes is read block by block, mixed down and resampled as a stream, so memory stays bounded by a
    few pieces whatever the length (a 2-hour recording needs no more than a 1-minute one). Arrays are already in
    memory and are split as they are. ``max_seconds`` (None: no limit) caps the input's duration, checked from
    the header first.
    """
    max_len = max(1, int(piece_seconds * target_rate))
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        wav = load_audio(source, sample_rate, target_rate=target_rate, max_seconds=max_seconds,
                         max_channels=max_channels).numpy()
        for s, e in split_at_silences(wav, target_rate, piece_seconds):
            yield s, wav[s:e]
        return
    what = "audio bytes" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        if not path.is_file():
            raise AudioInputError(f"{what}: no such file; check the path")
        src = str(path)
    else:
        src = io.BytesIO(bytes(source))
    import soxr

    with _open(src, what) as f:
        rate = check_rate(f.samplerate, what)
        channels = int(f.channels)
        if not 1 <= channels <= max_channels:
            raise AudioInputError(f"{what}: {channels} channels is outside the supported 1-{max_channels}; mix it "
                                  "down first")
        declared = int(f.frames)
        _check_duration(declared, rate, max_seconds, what)
        if _DATA_SHOULD_BE.search(f.extra_info or ""):
            _truncated(what, "its header promises more audio than it holds", allow_truncated)
            declared = 0
        resampler = None if rate == target_rate else soxr.ResampleStream(rate, target_rate, 1, dtype="float32",
                                                                         quality="HQ")
        parts: list[np.ndarray] = []  # mono blocks not yet cut into pieces (concatenated once per cut)
        buffered = start = total = 0
        while True:
            try:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            except Exception as exc:  # a decoder error part-way
                if not (allow_truncated and total):
                    raise AudioInputError(f"{what}: the audio data is corrupt or truncated ({exc}); "
                                          f"{TRUNCATED_FIX}") from None
                _truncated(what, f"decoding stopped: {exc}", True)
                block = np.zeros((0, channels), np.float32)
            last = block.shape[0] == 0
            total += block.shape[0]
            if max_seconds is not None and total > max_seconds * rate:
                _check_duration(total, rate, max_seconds, what)
            mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
            _check_finite(mono, what)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if mono.size:
                parts.append(np.asarray(mono, np.float32))
                buffered += mono.size
            if parts and (last or buffered >= 2 * max_len):
                buf = np.concatenate(parts) if len(parts) > 1 else parts[0]
                parts = []
                bounds = split_at_silences(buf, target_rate, piece_seconds)
                keep = len(bounds) if last else len(bounds) - 1  # the tail may continue in the next block
                for s, e in bounds[:keep]:
                    yield start + s, np.clip(buf[s:e], -1.0, 1.0)
                cut = bounds[keep - 1][1] if keep else 0
                start += cut
                if cut < buf.size:
                    parts = [buf[cut:].copy()]
                buffered = buf.size - cut
                del buf
            if last:
                break
        if total == 0:
            raise AudioInputError(f"{what}: the audio is empty (no samples in the file)")
        if declared > 0 and total < declared:
            _truncated(what, f"{total} of the {declared} frames its header announces", allow_truncated)


# --------------------------------------------------------------------------------------------- mel
def _hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """HTK mel filterbank without area normalisation, ``(n_fft // 2 + 1, n_mels)``, computed in float32."""
    fmax = float(sample_rate // 2) if fmax is None else float(fmax)
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    m_pts = torch.linspace(_hz_to_mel(float(fmin)), _hz_to_mel(fmax), n_mels + 2)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def log_mel(wav: torch.Tensor, config) -> torch.Tensor:
    """Log-mel spectrogram of SPEC §1.2: ``(..., samples)`` float -> ``(..., frames, n_mels)`` float32.

    ``frames = 1 + samples // hop_length``; needs more than ``nfft // 2`` samples (reflect padding).
    """
    wav = torch.as_tensor(wav)
    if wav.shape[-1] <= config.nfft // 2:
        raise AudioInputError(
            f"audio of {wav.shape[-1]} samples is too short: the tokenizer needs at least "
            f"{config.nfft // 2 + 1} samples ({(config.nfft // 2 + 1) / config.sampling_rate * 1000:.0f} ms)"
        )
    wav = wav.to(torch.float32)
    window = torch.hann_window(config.window_size, periodic=True, device=wav.device)
    lead = wav.shape[:-1]
    spec = torch.stft(
        wav.reshape(-1, wav.shape[-1]), n_fft=config.nfft, hop_length=config.hop_length,
        win_length=config.window_size, window=window, center=True, pad_mode="reflect",
        normalized=False, onesided=True, return_complex=True,
    ).abs()
    fb = mel_filterbank(config.sampling_rate, config.nfft, config.n_mels, float(config.fmin), config.fmax)
    mel = torch.matmul(spec.transpose(-1, -2), fb.to(wav.device))
    mel = torch.log(torch.clamp(mel, min=1e-7))
    return mel.reshape(*lead, mel.shape[-2], mel.shape[-1])
