"""Parity of the audio front end and AudioTokenizer with the reference (fixture from MIMO_AUDIO_FIXTURE).

Everything (clip names, sizes, streaming parameters, number of LM codebooks) is read from the fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mimo_audio.audio import load_audio, log_mel
from mimo_audio.codec import AudioTokenizer
from mimo_audio.config import LMConfig

WAVE_ATOL = 1e-5


def clip_names(manifest) -> list[tuple[str, str]]:
    """(expected-key prefix, 24 kHz file name) per clip: ``speech_0_24k.wav`` -> ``speech_0``."""
    return [(Path(f).stem.removesuffix("_24k"), f) for f in manifest["audio"]["24k"]]


@pytest.fixture(scope="module")
def codec(fixture_path) -> AudioTokenizer:
    return AudioTokenizer.from_pretrained(fixture_path / "tokenizer", device="cpu")


@pytest.fixture(scope="module")
def lm_codebooks(fixture_path) -> int:
    """How many codebooks the LM path (and the expected decodes) use."""
    return LMConfig.from_file(fixture_path / "lm" / "config.json").audio_channels


def test_mel(codec, fixture_path, manifest, expected):
    for name, file in clip_names(manifest):
        mel = log_mel(load_audio(fixture_path / "audio" / file), codec.config)
        ref = expected[f"{name}.mel"]
        assert mel.shape == ref.shape
        # float32 FFTs round differently across CPUs (MKL code paths): near-silent bins move by up to ~5e-3 in
        # log units while the error relative to each frame's peak stays ~1e-6 (see test_mel_bit_exact_...)
        rel = (mel.exp() - ref.exp()).abs() / ref.exp().amax(dim=1, keepdim=True)
        assert rel.max() < 1e-5, name
        assert (mel - ref).abs().mean() < 1e-4, name
        assert (mel - ref).abs().max() < 2e-2, name


def test_codes_from_reference_mel_exact(codec, manifest, expected):
    for name, _ in clip_names(manifest):
        ref = expected[f"{name}.codes"]
        codes = codec.encode_mel(expected[f"{name}.mel"], num_quantizers=ref.shape[1])
        assert codes.dtype == torch.int64
        assert torch.equal(codes, ref), f"{name}: {(codes != ref).sum()} entries differ"


def test_codes_from_audio(codec, fixture_path, manifest, expected):
    clips = clip_names(manifest)
    wavs = [load_audio(fixture_path / "audio" / f) for _, f in clips]
    batch = codec.encode(wavs, num_quantizers=expected[f"{clips[0][0]}.codes"].shape[1])
    for (name, _), wav, codes in zip(clips, wavs, batch):
        ref = expected[f"{name}.codes"]
        assert codes.shape == ref.shape
        # exact here; a near-tie can flip on a CPU whose FFT rounds differently (see test_mel)
        assert (codes == ref).float().mean() >= 0.99, name
        assert torch.equal(codec.encode(wav, num_quantizers=ref.shape[1]), codes)  # batch == one by one


def test_long_codes(codec, fixture_path, manifest, expected):
    ref = expected["long.codes"]
    codes = codec.encode(load_audio(fixture_path / "audio" / manifest["audio"]["long"]), num_quantizers=ref.shape[1])
    assert codes.shape == ref.shape
    assert (codes == ref).float().mean() >= 0.99


def test_decoded(codec, manifest, expected, lm_codebooks):
    for name, _ in clip_names(manifest):
        ref = expected[f"{name}.decoded"]
        codes = expected[f"{name}.codes"]
        wav = codec.decode(codes[:, :lm_codebooks])
        assert wav.dtype == torch.float32 and wav.shape == ref.shape
        assert (wav - ref).abs().max() <= WAVE_ATOL, name
        # num_quantizers= selects the same prefix; windows longer than the clip change nothing
        torch.testing.assert_close(codec.decode(codes, num_quantizers=lm_codebooks, windowed=True), wav, rtol=0, atol=0)


def test_blockwise_vocoder_attention_matches(codec, manifest, expected, lm_codebooks):
    name, _ = clip_names(manifest)[0]
    old = codec.vocoder.block, codec.vocoder.full_mask_limit
    try:
        codec.vocoder.block, codec.vocoder.full_mask_limit = 16, 0  # force the O(T * window) path
        wav = codec.decode(expected[f"{name}.codes"][:, :lm_codebooks])
    finally:
        codec.vocoder.block, codec.vocoder.full_mask_limit = old
    assert (wav - expected[f"{name}.decoded"]).abs().max() <= WAVE_ATOL


def _stream_case(manifest, expected):
    s = manifest["streaming"]
    name = next(k.removesuffix(".streamed") for k in expected if k.endswith(".streamed"))
    codes = expected[f"{name}.codes"][:, : s["codebooks"]]
    chunks = list(torch.split(codes, s["chunk_frames"]))
    return s, name, chunks


def test_streamed(codec, manifest, expected):
    s, name, chunks = _stream_case(manifest, expected)
    pieces = list(codec.stream_decode(chunks, left_context=s["left_overlap"], lookahead=s["right_overlap"]))
    assert [p.shape[0] for p in pieces] == expected[f"{name}.stream_chunk_lengths"].tolist()
    wav = torch.cat(pieces)
    assert wav.shape == expected[f"{name}.streamed"].shape
    assert (wav - expected[f"{name}.streamed"]).abs().max() <= WAVE_ATOL


def test_streamed_from_a_generator_flushes_at_the_end(codec, manifest, expected):
    s, name, chunks = _stream_case(manifest, expected)
    ref_lengths = expected[f"{name}.stream_chunk_lengths"].tolist()
    pieces = list(codec.stream_decode(iter(chunks), left_context=s["left_overlap"], lookahead=s["right_overlap"]))
    lengths = [p.shape[0] for p in pieces]
    # the end of a generator is only known after its last chunk: the held-back tail comes as one extra piece
    assert lengths[:-2] == ref_lengths[:-1] and lengths[-2] + lengths[-1] == ref_lengths[-1]
    assert (torch.cat(pieces) - expected[f"{name}.streamed"]).abs().max() <= WAVE_ATOL


def test_mel_and_long_codes_bit_exact_with_compatible_fft(fixture_path, manifest):
    """With MKL's conditional-numerical-reproducibility mode the FFT rounds like the fixture's machine; then the
    mel matches to float32 rounding and the long clip's codes (padded batch artefacts included) exactly."""
    if not torch.backends.mkl.is_available():
        pytest.skip("torch without MKL: cannot select the FFT code path")
    script = textwrap.dedent("""
        import json, sys, torch
        from pathlib import Path
        from safetensors.torch import load_file
        from mimo_audio.audio import load_audio, log_mel
        from mimo_audio.codec import AudioTokenizer
        fx = Path(sys.argv[1]); man = json.loads((fx / "expected/manifest.json").read_text())
        exp = load_file(str(fx / "expected/expected.safetensors"))
        codec = AudioTokenizer.from_pretrained(fx / "tokenizer", device="cpu")
        mel_err = 0.0
        for f in man["audio"]["24k"]:
            name = Path(f).stem.removesuffix("_24k")
            mel = log_mel(load_audio(fx / "audio" / f), codec.config)
            mel_err = max(mel_err, float((mel - exp[name + ".mel"]).abs().max()))
        ref = exp["long.codes"]
        codes = codec.encode(load_audio(fx / "audio" / man["audio"]["long"]), num_quantizers=ref.shape[1])
        print(json.dumps({"mel_err": mel_err, "differ": int((codes != ref).sum())}))
    """)
    env = dict(os.environ, MKL_CBWR="COMPATIBLE")
    out = subprocess.run([sys.executable, "-c", script, str(fixture_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["mel_err"] > 1e-5:
        pytest.skip(f"this fixture's FFT rounding is not MKL's compatible path (mel differs by {result['mel_err']:.1e})")
    assert result["differ"] == 0
