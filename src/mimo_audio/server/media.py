"""Audio in and out of the HTTP layer: decode uploads under limits, encode replies, split long audio.

Uploads are bytes (multipart files) or base64 / ``data:`` URLs in JSON; nothing here ever opens a path or
fetches a URL named in a request. Decoding is :func:`mimo_audio.audio.load_audio` with the server's limits: it
checks the header (sample rate, channels, declared length, decoded size) before reading, reads at most the
allowed number of frames, and rejects truncated, empty or non-finite audio.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass

import numpy as np

from ..audio import split_at_silences  # noqa: F401  (shared with the library's long-audio transcription)
from .errors import APIError, bad_request

MAX_CHANNELS = 8
SAMPLE_RATE = 24000
MIN_SECONDS = 0.1
OUTPUT_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm", "pcm16": "audio/pcm"}
KNOWN_UNSUPPORTED = {"mp3", "opus", "aac", "ogg", "webm", "m4a", "mp4"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class AudioLimits:
    """Limits on decoded audio. Its size in bytes is capped once, for the whole request body, by the
    BodyLimitMiddleware: a multipart file or a base64 string is a part of that body."""

    max_seconds: float
    max_decoded_bytes: int


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (samples,) float32 mono, finite, in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def as_pair(self) -> tuple[np.ndarray, int]:
        return self.samples, self.sample_rate


def is_data_url(value: str) -> bool:
    """Whether ``value`` is a ``data:`` URL: the scheme is case-insensitive (RFC 3986), leading blanks ignored,
    the same rule :func:`decode_base64_audio` applies."""
    return value.lstrip()[:5].lower() == "data:"


def decode_base64_audio(value: str, param: str) -> bytes:
    """base64 text or a ``data:`` URL -> bytes. URLs of any other scheme and file paths are refused, unread."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"'{param}' must be base64-encoded audio or a data: URL, got an empty value", param)
    value = value.strip()
    match = _DATA_URL.match(value)
    if match:
        if not match.group("b64"):
            raise bad_request(f"'{param}': only base64 data URLs are accepted (data:audio/wav;base64,...)", param)
        value = value[match.end():]
    elif _SCHEME.match(value) and not re.fullmatch(r"[A-Za-z0-9+/=\s]+", value):
        raise bad_request(f"'{param}': URLs are never fetched by this server; send the audio itself as base64 "
                          "or a data:audio/...;base64 URL", param, code="url_not_allowed")
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"'{param}' is not valid base64 (send the audio file's bytes base64-encoded, or a "
                          "data:audio/wav;base64,... URL; file paths and URLs are not accepted)", param,
                          code="invalid_base64") from None
    return data


def decode_audio(data: bytes, limits: AudioLimits, param: str = "file") -> DecodedAudio:
    """Audio file bytes -> mono float32 at 24 kHz within the limits (else a 4xx APIError).

    The checks are :func:`mimo_audio.audio.load_audio`'s (rate, channels, header duration, decoded size while
    reading, truncation, finite samples); the server adds its own channel cap and a minimum length.
    """
    from ..audio import load_audio
    from ..errors import AudioInputError, AudioTooLongError

    if not data:
        raise bad_request(f"'{param}' is empty; send an audio file (wav, flac, ogg, mp3)", param, code="empty_audio")
    try:
        wav = load_audio(data, target_rate=SAMPLE_RATE, max_seconds=limits.max_seconds, max_channels=MAX_CHANNELS,
                         max_decoded_bytes=limits.max_decoded_bytes)
    except AudioTooLongError as exc:
        raise APIError(413, _named(exc, param), param=param, code="audio_too_long") from None
    except AudioInputError as exc:
        raise bad_request(_named(exc, param), param, code="invalid_audio") from None
    samples = wav.numpy()
    if len(samples) < MIN_SECONDS * SAMPLE_RATE:
        raise bad_request(f"'{param}' holds {len(samples) / SAMPLE_RATE:.3f} s of audio; at least {MIN_SECONDS} s "
                          "is needed", param, code="audio_too_short")
    return DecodedAudio(np.clip(samples, -1.0, 1.0), SAMPLE_RATE)


INPUT_FORMATS = ("wav", "flac", "mp3", "ogg")


def sniff_container(data: bytes) -> str | None:
    """The container of audio file bytes from their magic number: wav, flac, ogg, mp3, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" or data[:4] in (b"RF64", b"BW64"):
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def check_input_format(declared, data: bytes, param: str) -> None:
    """``input_audio.format`` against the bytes: it must name a readable format, and not another container than
    the one the bytes hold (the bytes decide how they are decoded; a wrong label is refused, not ignored)."""
    if declared is None:
        return
    if not isinstance(declared, str) or declared.lower() not in INPUT_FORMATS:
        raise bad_request(f"'{param}' must be one of {', '.join(INPUT_FORMATS)}, got {str(declared)[:20]!r}",
                          param, code="unsupported_format")
    found = sniff_container(data)
    if found is not None and found != declared.lower():
        raise bad_request(f"'{param}' says {declared.lower()} but the audio data is a {found} file; send the "
                          "matching format (or leave it out)", param, code="format_mismatch")


@dataclass(frozen=True)
class AudioHeader:
    """What an upload's header declares, read before any decoding."""

    frames: int
    channels: int
    sample_rate: int
    cost: int  # bytes the decode will hold at its peak (audio.decode_cost)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


def probe_header(data: bytes, limits: AudioLimits, param: str = "file") -> AudioHeader:
    """The header of upload ``data`` checked against the limits before decoding (the same checks the decoder
    repeats while reading): unreadable, too many channels, too long or too large to decode are 4xx here."""
    from ..audio import check_rate, decode_cost, probe_audio
    from ..errors import AudioInputError

    if not data:
        raise bad_request(f"'{param}' is empty; send an audio file (wav, flac, ogg, mp3)", param, code="empty_audio")
    try:
        frames, channels, rate = probe_audio(data)
        rate = check_rate(rate, "audio bytes")
    except AudioInputError as exc:
        raise bad_request(_named(exc, param), param, code="invalid_audio") from None
    if not 1 <= channels <= MAX_CHANNELS:
        raise bad_request(f"'{param}' has {channels} channels; at most {MAX_CHANNELS} are supported", param,
                          code="invalid_audio")
    header = AudioHeader(max(frames, 0), channels, rate, decode_cost(max(frames, 0), channels, rate, SAMPLE_RATE))
    if header.seconds > limits.max_seconds:
        raise APIError(413, f"'{param}' holds {header.seconds:.1f} s of audio; the limit is {limits.max_seconds:g} s",
                       param=param, code="audio_too_long")
    if frames * channels * 4 > limits.max_decoded_bytes:
        raise APIError(413, f"'{param}' decodes to {frames * channels * 4 / MiB_:.0f} MB of samples; the limit is "
                       f"{limits.max_decoded_bytes / MiB_:.0f} MB (send less, mono or lower-rate audio)", param=param,
                       code="audio_too_large")
    return header


MiB_ = 1024 * 1024


def _named(exc: Exception, param: str) -> str:
    """The library's message with the request field named instead of "audio bytes"."""
    return str(exc).replace("audio bytes", f"'{param}'", 1)


def check_output_format(fmt: str | None, param: str = "response_format", *, stream: bool = False) -> str:
    fmt = (fmt or "wav").lower()
    if fmt not in OUTPUT_FORMATS:
        if fmt in KNOWN_UNSUPPORTED:
            raise bad_request(f"{param} '{fmt}' is not supported by this server; use wav, flac or pcm "
                              "(pcm = raw 24 kHz 16-bit little-endian mono)", param, code="unsupported_format")
        raise bad_request(f"Unknown {param} '{fmt}'; use wav, flac or pcm", param, code="unsupported_format")
    if stream and fmt == "flac":
        raise bad_request(f"{param} 'flac' cannot be streamed; stream wav or pcm, or turn streaming off", param,
                          code="unsupported_format")
    return "pcm" if fmt == "pcm16" else fmt


class NoAudio(APIError):
    """The generation ended without producing any audio (the model emitted end-of-speech at once)."""

    def __init__(self):
        super().__init__(422, "The model produced no audio for this input (it ended before any speech); retry "
                         "with another seed, or rephrase or lengthen the text", code="no_audio")


def require_audio(audio) -> np.ndarray:
    """A reply's waveform as a numpy array; NoAudio (422) when it is missing or holds no samples."""
    if audio is None or len(audio) == 0:
        raise NoAudio()
    return audio


def _clean(wav) -> np.ndarray:
    """A float waveform as 1-D float32 in [-1, 1], non-finite samples set to 0."""
    arr = np.asarray(wav, dtype=np.float32).reshape(-1)
    return np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


def to_int16(wav) -> bytes:
    return (_clean(wav) * 32767.0).round().astype("<i2").tobytes()


def encode_audio(wav, sample_rate: int, fmt: str) -> bytes:
    """float waveform -> file bytes: 'wav' / 'flac' (16-bit) or 'pcm' (raw int16 little-endian)."""
    if fmt == "pcm":
        return to_int16(wav)
    import soundfile as sf

    arr = _clean(wav)
    buf = io.BytesIO()
    sf.write(buf, arr, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header with 'unknown' sizes (0xFFFFFFFF), for streaming: players read until EOF."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", unknown))


class PCMStream:
    """Streamed 16-bit mono audio: raw pcm, or for 'wav' the same bytes after a header with unknown sizes."""

    def __init__(self, fmt: str, sample_rate: int):
        self._header = wav_stream_header(sample_rate) if fmt == "wav" else b""

    def encode(self, samples) -> bytes:
        """The next bytes for ``samples`` (float, may be None or empty); the first call carries the wav header."""
        data = self._header + (to_int16(samples) if samples is not None else b"")
        self._header = b""
        return data


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict]) -> str:
    blocks = [f"{i + 1}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
              for i, s in enumerate(segments)]
    return "\n".join(blocks)


def to_vtt(segments: list[dict]) -> str:
    blocks = [f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
              for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
