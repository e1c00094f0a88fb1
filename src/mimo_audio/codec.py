"""The MiMo-Audio tokenizer (SPEC §2): waveform <-> RVQ codes at 25 Hz, plus streaming decode.

>>> codec = AudioTokenizer.from_pretrained("XiaomiMiMo/MiMo-Audio-Tokenizer")      # doctest: +SKIP
>>> codes = codec.encode(wav, sample_rate=16000)      # LongTensor (frames, 8)     # doctest: +SKIP
>>> wav24 = codec.decode(codes)                       # FloatTensor (frames * 960,) # doctest: +SKIP

Length arithmetic (released config, SPEC §11): ``N`` samples -> ``1 + N // 240`` mel frames ``F`` ->
``ceil(F / 2)`` encoder frames -> ``ceil(ceil(F / 2) / 2)`` codes (``Encoder.code_length``); decoding returns
960 samples per code (``samples_per_code``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .audio import load_audio, log_mel
from .codec_modules import Decoder, Encoder, ResidualVQ, Vocoder
from .config import TokenizerConfig
from .errors import AudioInputError, is_int
from .files import atomic_output

SEGMENT_FRAMES = 6000  # mel frames per encoding segment (60 s; SPEC §1.3)
GROUP_FRAMES = 256_000  # summed mel frames per reference batch (SPEC §1.3)
DECODE_WINDOW = 1500  # code frames per window of the reference's final decode (SPEC §10.1 item 5)

# released key -> our parameter name; first full match wins (SPEC §2.8)
KEY_TABLE: list[tuple[str, str]] = [
    (r"encoder\.down_sample_layer\.0\.weight", r"encoder.down_sample.weight"),
    (r"encoder\.quantizer\.vq\.layers\.(\d+)\._codebook\.embed", r"quantizer.codebooks.\1"),
    (r"decoder\.vocoder\.head\.out\.(weight|bias)", r"vocoder.head_out.\1"),
    (r"decoder\.vocoder\.head\.istft\.window", r"vocoder.window"),
    (r"decoder\.vocoder\.(embeddings\.weight|layer_norm\.\w+|layers\.\d+\..+)", r"vocoder.\1"),
    (r"encoder\.(conv[12]\.\w+|layer_norm\.\w+|down_sample_norm\.\w+|layers\.\d+\..+)", r"encoder.\1"),
    (r"decoder\.(dconv[12]\.(conv|norm)\.\w+|layer_norm\.\w+|layers\.\d+\..+)", r"decoder.\1"),
]
OPTIONAL_KEYS = re.compile(r"encoder\.quantizer\.vq\.layers\.\d+\._codebook\.(embed_avg|cluster_size|inited)")
_COMPILED = [(re.compile(p), r) for p, r in KEY_TABLE]


def released_to_ours(key: str) -> str | None:
    """Our parameter name for a released checkpoint key (``None`` for the optional EMA buffers / unknown keys)."""
    for pattern, repl in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return None


def _pack(sizes: list[int], limit: int) -> list[list[int]]:
    """Greedy in-order packing: indices grouped so each group's sizes sum to <= ``limit`` (or it holds one item)."""
    groups, cur, total = [], [], 0
    for i, n in enumerate(sizes):
        if cur and total + n > limit:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        groups.append(cur)
    return groups


def _counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[], None]:
    """A ``tick()`` that counts steps and reports ``progress(done, total)`` after each."""
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


class AudioTokenizer(nn.Module):
    """Encoder + 20-layer RVQ + causal decoder + windowed vocoder with ISTFT head.

    ``encode`` returns codes on the model's device; ``decode`` returns a float32 waveform on the model's
    device. The RVQ codebooks and the ISTFT window stay float32 whatever the model dtype.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = ResidualVQ(config.d_model, config.codebook_sizes)
        self.decoder = Decoder(config)
        self.vocoder = Vocoder(config)
        self.sample_rate = config.sampling_rate
        self.samples_per_code = config.samples_per_code
        self.segment_frames = SEGMENT_FRAMES
        self.encode_batch_frames = 4 * SEGMENT_FRAMES  # mel frames per encoder pass (memory bound only)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike = "XiaomiMiMo/MiMo-Audio-Tokenizer",
                        device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, quantize: str | None = None) -> AudioTokenizer:
        """Load a released-format tokenizer (``config.json`` + safetensors) from a folder or a hub id.

        ``dtype`` (default float32) applies to the networks; codebooks and the ISTFT window stay float32.
        ``quantize="int8"``: int8 weight-only (torchao) for the linear layers of the transformer layers, after
        loading (see :func:`mimo_audio.quantize.quantize_codec` and docs/benchmarks.md "Audio tokenizer
        quantization, measured"); other schemes are refused.
        """
        from . import quantize as qz

        scheme = qz.check_codec_scheme(quantize, device, dtype)
        folder = checkpoint.resolve(path_or_hub_id)
        config = TokenizerConfig.from_file(Path(folder) / "config.json")
        dev = checkpoint.parse_device(device)
        dt = checkpoint.parse_dtype(dtype) or torch.float32
        tensors = checkpoint.read_tensors(checkpoint.safetensors_files(Path(folder)))
        with torch.device("meta"):
            model = cls(config)
        keep = lambda name: name.startswith("quantizer.") or name == "vocoder.window"
        checkpoint.load_into(model, tensors, rename=released_to_ours, optional=lambda k: bool(OPTIONAL_KEYS.fullmatch(k)),
                             dtype=dt, device=dev, keep_dtype=keep, source=str(folder))
        model._finalize()
        return qz.quantize_codec(model, scheme) if scheme else model

    def _finalize(self) -> AudioTokenizer:
        for p in self.quantizer.codebooks:
            p.data = p.data.float()
        self.vocoder.window = self.vocoder.window.float()
        self.requires_grad_(False)
        return self.eval()

    @property
    def device(self) -> torch.device:
        return self.vocoder.head_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vocoder.head_out.weight.dtype

    def to_dtype(self, dtype) -> AudioTokenizer:
        """Cast the networks to ``dtype`` keeping codebooks and the ISTFT window in float32."""
        self.to(checkpoint.parse_dtype(dtype))
        return self._finalize()

    # ----------------------------------------------------------------------------------------- encode
    def encode(self, audio, sample_rate: int = 24000, num_quantizers: int = 8, *,
               progress: Callable[[int, int], None] | None = None):
        """Waveform -> codes ``(frames, num_quantizers)`` int64.

        ``audio``: a 1-D array/tensor at ``sample_rate`` (resampled to 24 kHz if different), a file path,
        or a list of those (encoded as one batch; returns a list). Each clip's codes equal what encoding it
        alone gives.
        """
        single = not isinstance(audio, list)
        # files and bytes carry their own rate: load_audio ignores sample_rate for them
        wavs = [load_audio(clip, sample_rate=sample_rate, target_rate=self.sample_rate,
                           max_seconds=self.config.max_audio_seconds) for clip in ([audio] if single else audio)]
        codes = self.encode_loaded(wavs, num_quantizers, progress=progress)
        return codes[0] if single else codes

    def encode_loaded(self, wav, num_quantizers: int = 8, *, progress: Callable[[int, int], None] | None = None):
        """Like :meth:`encode` for audio already read by :func:`~mimo_audio.audio.load_audio` at 24 kHz (a 1-D
        float tensor, or a list of them): no second round of checks and resampling."""
        single = isinstance(wav, torch.Tensor)
        mels = [log_mel(w.to(self.device), self.config) for w in ([wav] if single else wav)]
        if not mels:
            return []
        codes = self.encode_mel(mels, num_quantizers, progress=progress)
        return codes[0] if single else codes

    @torch.inference_mode()
    def encode_mel(self, mel, num_quantizers: int = 8, *, progress: Callable[[int, int], None] | None = None):
        """Log-mel ``(frames, n_mels)`` (or a list of them) -> codes ``(codes, num_quantizers)`` (or a list).

        Long input is cut into 6000-frame segments that run as the reference's zero-padded batches (the
        padding artefacts of SPEC §2.4 are reproduced per clip, so results do not depend on batch mates).
        """
        single = isinstance(mel, torch.Tensor)
        mels = [mel] if single else list(mel)
        n_q = self._check_nq(num_quantizers)
        segs, owner, ref_max = [], [], []
        for ci, m in enumerate(mels):
            if m.ndim != 2 or m.shape[-1] != self.config.n_mels or m.shape[0] < 1:
                raise AudioInputError(f"mel must be (frames, {self.config.n_mels}), got {tuple(m.shape)}")
            pieces = list(torch.split(m, self.segment_frames, dim=0))
            # the reference groups segments greedily into batches of <= GROUP_FRAMES summed frames
            for group in _pack([p.shape[0] for p in pieces], GROUP_FRAMES):
                ref_max += [max(pieces[i].shape[0] for i in group)] * len(group)
            segs += pieces
            owner += [ci] * len(pieces)
        out_segments: list[torch.Tensor] = [None] * len(segs)  # type: ignore[list-item]
        # micro-batches bound memory; results do not depend on them
        batches = _pack([s.shape[0] for s in segs], self.encode_batch_frames)
        tick = _counter(len(batches) * len(self.encoder.layers), progress)
        for b in batches:
            codes = self._encode_batch([segs[i] for i in b], [ref_max[i] for i in b], n_q, tick)
            for i, c in zip(b, codes):
                out_segments[i] = c
        result = [torch.cat([c for c, o in zip(out_segments, owner) if o == ci]) for ci in range(len(mels))]
        return result[0] if single else result

    def _encode_batch(self, segs: list[torch.Tensor], ref_max: list[int], n_q: int, tick=None) -> list[torch.Tensor]:
        dev, dt = self.device, self.dtype
        lengths = torch.tensor([s.shape[0] for s in segs], device=dev)
        f_max = int(lengths.max())
        x = torch.zeros(len(segs), self.config.n_mels, f_max + 1, device=dev, dtype=dt)
        for i, s in enumerate(segs):
            x[i, :, : s.shape[0]] = s.to(device=dev, dtype=dt).t()
        hidden, code_len = self.encoder(x, lengths, torch.tensor(ref_max, device=dev), progress=tick)
        valid = torch.arange(hidden.shape[1], device=dev)[None, :] < code_len[:, None]
        codes = self.quantizer.encode(hidden[valid], n_q)
        return list(torch.split(codes, code_len.tolist()))

    def _check_nq(self, n) -> int:
        total = len(self.quantizer.sizes)
        if not is_int(n) or not 1 <= int(n) <= total:
            raise AudioInputError(f"num_quantizers must be an integer in 1..{total}, got {n!r}")
        return int(n)

    # ----------------------------------------------------------------------------------------- decode
    def _check_codes(self, codes, num_quantizers: int | None, *, allow_empty: bool = False) -> torch.Tensor:
        if isinstance(codes, np.ndarray):
            codes = torch.from_numpy(codes)
        if not isinstance(codes, torch.Tensor):
            raise AudioInputError(f"codes must be a (frames, n_q) integer tensor, got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise AudioInputError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise AudioInputError(f"codes must have shape (frames, n_q), got {tuple(codes.shape)}")
        total = len(self.quantizer.sizes)
        n = codes.shape[1] if num_quantizers is None else self._check_nq(num_quantizers)
        if n > codes.shape[1]:
            raise AudioInputError(f"asked for {n} codebooks but the codes have only {codes.shape[1]} columns")
        if n > total:
            raise AudioInputError(f"codes have {n} columns but the tokenizer has {total} codebooks; pass num_quantizers=")
        if codes.shape[0] == 0 and not allow_empty:
            raise AudioInputError("codes hold no frames; nothing to decode")
        codes = codes[:, :n].to(device=self.device, dtype=torch.long)
        if codes.numel():
            sizes = torch.tensor(self.quantizer.sizes[:n], device=codes.device)
            bad = (codes < 0) | (codes >= sizes[None, :])
            if bool(bad.any()):
                f, col = (int(v) for v in bad.nonzero()[0])
                raise AudioInputError(
                    f"code {int(codes[f, col])} at frame {f}, codebook {col} is outside 0..{self.quantizer.sizes[col] - 1}"
                )
        return codes

    @torch.inference_mode()
    def decode_hidden(self, hidden: torch.Tensor, progress=None) -> torch.Tensor:
        """RVQ-decoded hidden ``(T, d)`` float32 -> waveform ``(T * samples_per_code,)`` float32."""
        mel = self.decoder(hidden[None].to(self.dtype), progress=progress)
        return self.vocoder(mel, progress=progress)[0]

    def decode(self, codes, windowed: bool = False, *, window: int | None = None,
               num_quantizers: int | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Codes ``(frames, n_q)`` -> float32 waveform ``(frames * samples_per_code,)`` at 24 kHz.

        The whole sequence is decoded at once by default. ``windowed=True`` (or ``window=N``, a positive integer)
        reproduces the reference, which decodes independent windows of 1500 (N) frames and concatenates them. The
        first ``num_quantizers`` columns are used (default: all columns).
        """
        if window is not None and (not is_int(window) or window < 1):
            raise AudioInputError(f"window must be a positive integer number of code frames, got {window!r}")
        codes = self._check_codes(codes, num_quantizers)
        T = codes.shape[0]
        step = int(window) if window is not None else (DECODE_WINDOW if windowed else T)
        spans = [(s, min(T, s + step)) for s in range(0, T, step)]
        tick = _counter((len(self.decoder.layers) + len(self.vocoder.layers)) * len(spans), progress)
        with torch.inference_mode():
            pieces = [self.decode_hidden(self.quantizer.decode(codes[a:b]), progress=tick) for a, b in spans]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def stream_decode(self, chunks: Iterable, left_context: int = 250, lookahead: int = 40, *,
                      num_quantizers: int | None = None) -> Iterator[torch.Tensor]:
        """Decode code chunks ``(frames_i, n_q)`` as they arrive; yields float32 waveform pieces.

        Semantics of the reference's ``streaming_decode`` (SPEC §2.7) for one stream (see
        :class:`StreamingDecoder`, its push-style form). The state belongs to this call. When ``chunks`` is a
        sequence its last chunk is decoded as the reference's ``last_chunk`` (one piece); for any other iterable
        the held-back tail is flushed as one extra piece when it ends (same samples in total). One ``(frames,
        n_q)`` tensor is one chunk (the whole stream at once), not a sequence of rows.
        """
        if isinstance(chunks, torch.Tensor):
            if chunks.ndim != 2:
                raise AudioInputError(f"stream_decode: codes must be (frames, n_q) or an iterable of such chunks, "
                                      f"got a tensor of shape {tuple(chunks.shape)}")
            chunks = [chunks]
        decoder = StreamingDecoder(self, left_context, lookahead, num_quantizers=num_quantizers)
        count = len(chunks) if isinstance(chunks, Sequence) and not isinstance(chunks, (torch.Tensor, str)) else None
        for index, chunk in enumerate(chunks):
            last = count is not None and index == count - 1
            piece = decoder.push(chunk, last=last)
            if piece is not None:
                yield piece
            if last:
                return
        tail = decoder.flush()
        if tail is not None:
            yield tail


class StreamingDecoder:
    """Push-style streaming decode of one stream (SPEC §2.7): ``push`` code chunks as they are made, get waveform
    pieces back; ``flush`` (or ``push(..., last=True)``) ends the stream.

    Each chunk is decoded together with up to ``left_context`` cached frames; the audio of the last ``lookahead``
    frames is held back until more context arrives (or the stream ends).
    """

    def __init__(self, codec: AudioTokenizer, left_context: int = 250, lookahead: int = 40, *,
                 num_quantizers: int | None = None):
        for name, v in (("left_context", left_context), ("lookahead", lookahead)):
            if not is_int(v) or v < 0:
                raise AudioInputError(f"{name} must be a non-negative integer, got {v!r}")
        if left_context < lookahead:
            raise AudioInputError(f"left_context ({left_context}) must be at least lookahead ({lookahead})")
        self.codec, self.left_context, self.lookahead = codec, int(left_context), int(lookahead)
        self.num_quantizers = num_quantizers
        self._cache: torch.Tensor | None = None  # decoder input (hidden) frames kept as left context
        self._processed = 0  # frames of the cache whose audio was already emitted
        self._held: torch.Tensor | None = None  # last decoded waveform; its audio from _held_from on is unsent
        self._held_from = 0
        self._ended = False

    def push(self, chunk: torch.Tensor, *, last: bool = False) -> torch.Tensor | None:
        """Add codes ``(frames, n_q)``; returns the waveform piece that became ready, or None. ``last=True``
        decodes the chunk as the end of the stream and returns everything left."""
        if self._ended:
            raise AudioInputError("this stream has ended (last chunk pushed or flushed); start a new decoder")
        codec = self.codec
        c = codec._check_codes(chunk, self.num_quantizers, allow_empty=True)
        if c.shape[0] == 0:
            return self.flush() if last else None
        with torch.inference_mode():
            h = codec.quantizer.decode(c)
            if self._cache is not None:
                h = torch.cat([self._cache, h])
            wav = codec.decode_hidden(h)
        fpt = codec.samples_per_code
        n, start = h.shape[0], self._processed
        if last:
            self._ended = True
            return wav[start * fpt:]
        if n <= self.lookahead:
            self._cache, self._processed, self._held, self._held_from = h, 0, wav, start
            return None
        end = n - self.lookahead
        self._held, self._held_from = wav, end
        self._cache, self._processed = h, end
        if n > self.left_context:
            self._cache, self._processed = h[n - self.left_context:], end - (n - self.left_context)
        return wav[start * fpt: end * fpt]

    def flush(self) -> torch.Tensor | None:
        """End the stream: the held-back audio (None if nothing is left)."""
        self._ended = True
        held, cut = self._held, self._held_from * self.codec.samples_per_code
        self._held = None
        if held is None or held.shape[0] <= cut:
            return None
        return held[cut:]


def random_tokenizer(config: TokenizerConfig | dict, *, seed: int = 0, dtype=None, device=None) -> AudioTokenizer:
    """A randomly initialised tokenizer of the given config (benchmarks, tests); not a trained model."""
    if isinstance(config, dict):
        config = TokenizerConfig.from_dict(config)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(checkpoint.parse_device(device or "cpu")):
            model = AudioTokenizer(config)
    finally:
        torch.random.set_rng_state(gen_state)
    return model._finalize() if dtype is None else model.to_dtype(dtype)


def load_codes(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Read codes written by ``mimo-audio codec encode`` (safetensors key ``codes``) and their metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if "codes" not in f.keys():  # noqa: SIM118
                raise AudioInputError(f"{path}: no 'codes' tensor in this safetensors file")
            codes, meta = f.get_tensor("codes"), dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise AudioInputError(f"{path}: cannot read codes ({exc})") from None
    if codes.ndim != 2:
        raise AudioInputError(f"{path}: codes must have shape (frames, n_q), got {tuple(codes.shape)}")
    return codes, meta


def save_codes(path: str | os.PathLike, codes: torch.Tensor, sample_rate: int = 24000, **meta) -> Path:
    """Write codes ``(frames, n_q)`` under key ``codes`` with metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(os.fspath(path))
    metadata = {"sample_rate": str(sample_rate), **{k: str(v) for k, v in meta.items()}}
    with atomic_output(path) as tmp:
        save_file({"codes": codes.detach().cpu().to(torch.int64).contiguous()}, tmp, metadata=metadata)
    return path
