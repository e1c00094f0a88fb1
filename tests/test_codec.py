"""AudioTokenizer unit tests on tiny random configs: lengths, masks, RVQ, batching, streaming, dtypes, loading."""

from __future__ import annotations

import io
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from mimo_audio.codec import AudioTokenizer, StreamingDecoder, random_tokenizer, released_to_ours
from mimo_audio.codec_modules import AttnPlan, ResidualVQ
from mimo_audio.config import LMConfig, TokenizerConfig
from mimo_audio.errors import AudioInputError, CheckpointError
from mimo_audio.layers import window_mask

TINY = dict(
    d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, encoder_skip_layer_id=1,
    decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=64, vocoder_dim=16, vocoder_num_layers=2,
    vocoder_attention_heads=2, vocoder_intermediate_dim=32, n_mels=128, nfft=960, window_size=960,
    hop_length=240, avg_pooler=2, num_quantizers=6, codebook_size=[64, 64, 16], scale_embedding=False,
)


@pytest.fixture(scope="module")
def tiny() -> AudioTokenizer:
    return random_tokenizer(TokenizerConfig.from_dict(TINY), seed=1)


def speechlike(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 24000
    return (0.2 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
            + 0.02 * torch.randn(n, generator=g)).float()


# --------------------------------------------------------------------------------------------- lengths
def test_length_formulas_follow_spec_example(tiny):
    # SPEC §11 (the tiny config has the released hop, stride and pooling):
    # 24 000 samples -> 101 mel frames -> 51 -> 26 codes -> 24 960 samples
    assert tiny.encoder.conv_length(101) == 51 and tiny.encoder.code_length(101) == 26
    assert 26 * tiny.samples_per_code == 24960


@pytest.mark.parametrize("n", [481, 719, 960, 961, 1199, 1200, 4799, 4800, 4801, 9839, 24000, 24239, 47999])
def test_length_arithmetic(tiny, n):
    codes = tiny.encode(speechlike(n), num_quantizers=3)
    f = 1 + n // 240
    assert codes.shape == (tiny.encoder.code_length(f), 3) == (math.ceil(math.ceil(f / 2) / 2), 3)
    wav = tiny.decode(codes)
    assert wav.shape == (codes.shape[0] * tiny.samples_per_code,)


def test_long_input_is_segmented(tiny):
    saved = tiny.segment_frames, tiny.encode_batch_frames
    tiny.segment_frames = 40  # tiny segments so that the code path for > 60 s audio runs fast
    try:
        n = 240 * 130 + 17  # 131 mel frames: segments of 40, 40, 40 and 11 (odd, the artefact case)
        codes = tiny.encode(speechlike(n), num_quantizers=2)
        assert codes.shape[0] == 3 * tiny.encoder.code_length(40) + tiny.encoder.code_length(11)
        tiny.encode_batch_frames = 40  # one segment per encoder pass: same codes (memory knob only)
        assert torch.equal(tiny.encode(speechlike(n), num_quantizers=2), codes)
    finally:
        tiny.segment_frames, tiny.encode_batch_frames = saved


def test_batch_equals_one_by_one(tiny):
    clips = [speechlike(n, seed=n) for n in (4800, 5050, 7300, 961)]
    batch = tiny.encode(clips, num_quantizers=4)
    for clip, codes in zip(clips, batch):
        assert torch.equal(tiny.encode(clip, num_quantizers=4), codes)
    assert tiny.encode([], num_quantizers=4) == [] and tiny.encode_mel([], num_quantizers=4) == []


def test_resampling_input(tiny):
    clip = speechlike(16000)
    codes = tiny.encode(clip.numpy(), sample_rate=16000, num_quantizers=2)
    assert codes.shape[0] == tiny.encoder.code_length(1 + 24000 // 240)
    buf = io.BytesIO()
    sf.write(buf, clip.numpy(), 16000, format="WAV", subtype="FLOAT")
    # a file brings its own rate: sample_rate= is ignored for it
    assert torch.equal(tiny.encode(buf.getvalue(), sample_rate=24000, num_quantizers=2), codes)


# --------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("q_len,k_len,causal,window,offset", [
    (7, 7, False, (-1, -1), 0), (7, 7, True, (-1, -1), 0), (9, 9, False, (2, 1), 0), (9, 9, True, (3, -1), 0),
    (5, 12, False, (4, 2), 3), (6, 6, True, (0, 0), 0), (8, 10, False, (-1, 3), 2),
])
def test_window_mask_matches_direct_loop(q_len, k_len, causal, window, offset):
    left, right = window
    want = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(k_len):
            pos = i + offset
            ok = (left < 0 or j >= pos - left) and (right < 0 or j <= pos + right) and (not causal or j <= pos)
            want[i, j] = ok
    got = window_mask(q_len, k_len, causal=causal, window=window, q_offset=offset)
    assert torch.equal(got, want)


def _reference_attention(q, k, v, lengths, causal, window):
    """One sequence at a time, with an explicit mask over its valid frames only."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        n = int(lengths[b]) if lengths is not None else q.shape[2]
        m = window_mask(n, causal=causal, window=window)
        out[b, :, :n] = torch.nn.functional.scaled_dot_product_attention(
            q[b, :, :n], k[b, :, :n], v[b, :, :n], attn_mask=m)
    return out


@pytest.mark.parametrize("T,window,causal,block,lengths", [
    (300, (40, 10), False, 16, None), (300, (40, 10), False, 64, [300, 123]), (97, (5, 3), True, 8, [97, 50]),
    (257, (0, 0), False, 32, None), (200, (7, 0), False, 128, [3, 200]),
])
def test_blockwise_attention_equals_full_mask(T, window, causal, block, lengths):
    g = torch.Generator().manual_seed(T)
    B = 1 if lengths is None else len(lengths)
    q, k, v = (torch.randn(B, 2, T, 8, generator=g) for _ in range(3))
    lens = None if lengths is None else torch.tensor(lengths)
    plan = AttnPlan(T, lens, causal=causal, window=window, block=block, full_mask_limit=0)
    assert plan.mode == "block"
    got = plan(q, k, v)
    want = _reference_attention(q, k, v, lens, causal, window)
    full = AttnPlan(T, lens, causal=causal, window=window, full_mask_limit=10**9)
    assert full.mode == "mask"
    for b in range(B):
        n = T if lens is None else int(lens[b])
        torch.testing.assert_close(got[b, :, :n], want[b, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full(q, k, v)[b, :, :n], want[b, :, :n], atol=1e-5, rtol=1e-5)


def test_block_mask_memory_is_linear_in_length():
    plan = AttnPlan(100_000, None, causal=False, window=(40, 10), block=128)
    assert plan.mask.numel() <= 100_000 * (128 + 50) * 1.01 + 128 * 178


def test_padded_full_attention_ignores_padding():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 10, 4, generator=g) for _ in range(3))
    lens = torch.tensor([10, 6])
    for causal in (False, True):
        got = AttnPlan(10, lens, causal=causal)(q, k, v)
        want = _reference_attention(q, k, v, lens, causal, (-1, -1))
        torch.testing.assert_close(got[1, :, :6], want[1, :, :6])
        torch.testing.assert_close(got[0], want[0])


# --------------------------------------------------------------------------------------------- RVQ
def test_rvq_matches_a_naive_search():
    g = torch.Generator().manual_seed(3)
    vq = ResidualVQ(8, (16, 16, 4, 4))
    for p in vq.codebooks:
        p.data = torch.randn(p.shape, generator=g)
    x = torch.randn(50, 8, generator=g)
    codes = vq.encode(x, 4)
    residual = x.clone()
    for r in range(4):
        for t in range(x.shape[0]):
            d = ((residual[t][None] - vq.codebooks[r]) ** 2).sum(-1)
            assert int(d.argmin()) == int(codes[t, r])
        residual = residual - vq.codebooks[r][codes[:, r]]
    torch.testing.assert_close(vq.decode(codes), x - residual)
    torch.testing.assert_close(vq.decode(codes[:, :2]), vq.codebooks[0][codes[:, 0]] + vq.codebooks[1][codes[:, 1]])


def test_code_validation(tiny):
    codes = tiny.encode(speechlike(4800), num_quantizers=3)
    for bad, match in [
        (codes.float(), "integers"), (codes[:, 0], "shape"), (codes[:0], "no frames"),
        (torch.full_like(codes, 64), "outside"), (codes - 100, "outside"),
        (torch.zeros(3, 7, dtype=torch.long), "codebooks"), ([[1, 2]], "tensor"),
    ]:
        with pytest.raises(AudioInputError, match=match):
            tiny.decode(bad)
    with pytest.raises(AudioInputError, match="num_quantizers"):
        tiny.encode(speechlike(4800), num_quantizers=0)
    with pytest.raises(AudioInputError, match="only 3 columns"):
        tiny.decode(codes, num_quantizers=5)


# --------------------------------------------------------------------------------------------- decode / stream
def test_windowed_decode_is_independent_windows(tiny):
    codes = tiny.encode(speechlike(24000 * 2), num_quantizers=4)
    w = 7
    got = tiny.decode(codes, window=w)
    want = torch.cat([tiny.decode(codes[s: s + w]) for s in range(0, codes.shape[0], w)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == tiny.decode(codes).shape
    assert torch.equal(tiny.decode(codes, window=np.int64(w)), got)


@pytest.mark.parametrize("window", [0, -3, True, 7.9, "7"])
def test_decode_window_must_be_a_positive_integer(tiny, window):
    codes = torch.zeros(10, 2, dtype=torch.long)
    with pytest.raises(AudioInputError, match="window must be a positive integer"):
        tiny.decode(codes, window=window)


def test_samples_per_code_follows_the_decoder_stride():
    """The decoder's stride (not the encoder's) sets how many samples each code decodes to."""
    cfg = TokenizerConfig.from_dict({**TINY, "stride_size": 2, "decoder_stride_size": 3})
    model = random_tokenizer(cfg)
    assert model.samples_per_code == 2 * 3 * 240
    assert model.decode(torch.zeros(5, 2, dtype=torch.long)).shape == (5 * model.samples_per_code,)


def test_streaming_equals_one_shot_decoding_of_the_prefix(tiny):
    """With a left context covering the clip each piece is exactly the matching part of decoding everything
    received so far (the decoder's GroupNorm sees the whole prefix), and the pieces tile the clip."""
    codes = tiny.encode(speechlike(24000 * 2), num_quantizers=4)
    chunk, lookahead, spc = 6, 4, tiny.samples_per_code
    chunks = list(torch.split(codes, chunk))
    pieces = list(tiny.stream_decode(chunks, left_context=codes.shape[0], lookahead=lookahead))
    assert sum(p.shape[0] for p in pieces) == codes.shape[0] * spc
    emitted = 0
    for i, piece in enumerate(pieces):
        received = min(codes.shape[0], (i + 1) * chunk)
        full = tiny.decode(codes[:received])
        end = received if i == len(pieces) - 1 else received - lookahead
        torch.testing.assert_close(piece, full[emitted * spc: end * spc], atol=1e-6, rtol=1e-5)
        emitted = end


def test_streaming_state_belongs_to_the_call(tiny):
    codes = tiny.encode(speechlike(24000), num_quantizers=2)
    chunks = list(torch.split(codes, 5))
    a = list(tiny.stream_decode(chunks, left_context=12, lookahead=3))
    gen1 = tiny.stream_decode(iter(chunks), left_context=12, lookahead=3)
    gen2 = tiny.stream_decode(iter(chunks), left_context=12, lookahead=3)
    b1, b2 = next(gen1), next(gen2)  # interleaved streams do not disturb each other
    rest1, rest2 = list(gen1), list(gen2)
    for got in (torch.cat([b1, *rest1]), torch.cat([b2, *rest2])):
        torch.testing.assert_close(got, torch.cat(a), rtol=0, atol=0)
    with pytest.raises(AudioInputError, match="at least lookahead"):
        list(tiny.stream_decode(chunks, left_context=2, lookahead=3))
    assert list(tiny.stream_decode([])) == []


def test_push_decoder_matches_the_generator(tiny):
    """StreamingDecoder (push) gives the generator's pieces: the same piece per chunk, the end either as a
    last chunk (one piece) or as a flush after it; a push after the end is an error."""
    codes = tiny.encode(speechlike(24000), num_quantizers=2)
    chunks = list(torch.split(codes, 5))
    ref = list(tiny.stream_decode(chunks, left_context=12, lookahead=3))
    dec = StreamingDecoder(tiny, 12, 3)
    got = [dec.push(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    got = [p for p in got if p is not None]
    assert len(got) == len(ref) and all(torch.equal(a, b) for a, b in zip(got, ref))
    dec = StreamingDecoder(tiny, 12, 3)
    pieces = [p for p in (dec.push(c) for c in chunks) if p is not None]
    tail = dec.flush()
    assert tail is not None and torch.equal(torch.cat([*pieces, tail]), torch.cat(ref))
    with pytest.raises(AudioInputError, match="ended"):
        dec.push(chunks[0])


# --------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,max_rel", [("bfloat16", 0.05), ("float16", 0.01)])
def test_half_precision_stays_close_to_float32(fixture_path, manifest, expected, dtype, max_rel):
    """Half precision keeps codebooks and the ISTFT window in float32. Bounds measured on the fixture model:
    bf16 ~1.0% relative waveform error, fp16 ~0.13%."""
    model = AudioTokenizer.from_pretrained(fixture_path / "tokenizer", device="cpu", dtype=dtype)
    assert model.dtype == getattr(torch, dtype)
    assert all(p.dtype == torch.float32 for p in model.quantizer.codebooks) and model.vocoder.window.dtype == torch.float32
    n_lm = LMConfig.from_file(fixture_path / "lm" / "config.json").audio_channels
    name = next(k.removesuffix(".decoded") for k in expected if k.endswith(".decoded"))
    ref = expected[f"{name}.decoded"]
    wav = model.decode(expected[f"{name}.codes"][:, :n_lm])
    assert wav.dtype == torch.float32 and wav.shape == ref.shape
    assert float((wav - ref).norm() / ref.norm()) < max_rel
    codes = model.encode_mel(expected[f"{name}.mel"], num_quantizers=n_lm)
    agree = (codes == expected[f"{name}.codes"][:, :n_lm]).float()
    assert agree[:, 0].mean() >= 0.95 and agree.mean() >= 0.8


# --------------------------------------------------------------------------------------------- checkpoints
def _copy_with(fixture_path, tmp_path, edit):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(fixture_path / "tokenizer" / "config.json", folder / "config.json")
    tensors = load_file(str(fixture_path / "tokenizer" / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_every_released_key_maps_once(fixture_path):
    tensors = load_file(str(fixture_path / "tokenizer" / "model.safetensors"))
    names = [released_to_ours(k) for k in tensors]
    mapped = [n for n in names if n is not None]
    assert len(mapped) == len(set(mapped))
    model = random_tokenizer(TokenizerConfig.from_file(fixture_path / "tokenizer" / "config.json"))
    ours = set(dict(model.named_parameters())) | set(dict(model.named_buffers()))
    assert set(mapped) == ours


def test_checkpoint_without_ema_buffers_loads(fixture_path, tmp_path, manifest, expected):
    def drop_ema(t):
        for k in [k for k in t if k.endswith(("embed_avg", "cluster_size", "inited"))]:
            del t[k]

    model = AudioTokenizer.from_pretrained(_copy_with(fixture_path, tmp_path, drop_ema), device="cpu")
    name = next(k.removesuffix(".mel") for k in expected if k.endswith(".mel"))
    ref = expected[f"{name}.codes"]
    assert torch.equal(model.encode_mel(expected[f"{name}.mel"], num_quantizers=ref.shape[1]), ref)


def test_checkpoint_key_errors(fixture_path, tmp_path):
    tensors = load_file(str(fixture_path / "tokenizer" / "model.safetensors"))
    some_key = next(k for k in tensors if k.endswith("fc1.weight"))

    def missing(t):
        del t[some_key]

    def extra(t):
        t["encoder.mystery.weight"] = torch.zeros(3)

    def misshaped(t):
        t[some_key] = torch.zeros(t[some_key].shape[0] + 1, t[some_key].shape[1])

    # each error names the key: ours for a missing weight, the checkpoint's for an unknown or mis-shaped one
    for i, (edit, match, named) in enumerate([(missing, "lacks", released_to_ours(some_key)),
                                              (extra, "unexpected", "encoder.mystery.weight"),
                                              (misshaped, "shape", some_key)]):
        (tmp_path / str(i)).mkdir()
        folder = _copy_with(fixture_path, tmp_path / str(i), edit)
        with pytest.raises(CheckpointError, match=match) as info:
            AudioTokenizer.from_pretrained(folder, device="cpu")
        assert repr(named) in str(info.value)
    with pytest.raises(CheckpointError):
        AudioTokenizer.from_pretrained(tmp_path / "does-not-exist", device="cpu")


def test_config_with_indivisible_heads_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="not divisible"):
        random_tokenizer(TokenizerConfig.from_dict({**TINY, "vocoder_attention_heads": 3}))


def test_random_model_is_deterministic():
    cfg = TokenizerConfig.from_dict(TINY)
    a, b = random_tokenizer(cfg, seed=5), random_tokenizer(cfg, seed=5)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    x = np.asarray(speechlike(4800))
    assert torch.equal(a.encode(x, num_quantizers=3), b.encode(x, num_quantizers=3))


def test_stream_decode_takes_one_codes_tensor(tiny):
    """A single ``(frames, n_q)`` tensor is the whole stream as one chunk (iterating it would give rows)."""
    codes = tiny.encode(speechlike(24000), num_quantizers=2)
    whole = torch.cat(list(tiny.stream_decode(codes, left_context=codes.shape[0], lookahead=3)))
    torch.testing.assert_close(whole, torch.cat(list(tiny.stream_decode([codes], left_context=codes.shape[0],
                                                                        lookahead=3))), rtol=0, atol=0)
    assert whole.shape[0] == codes.shape[0] * tiny.samples_per_code
    with pytest.raises(AudioInputError, match=r"\(frames, n_q\)"):
        list(tiny.stream_decode(codes[0]))
