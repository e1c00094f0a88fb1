"""MimoAudio end to end on the fixture's tiny random models (outputs are gibberish: types, shapes, invariants)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mimo_audio.errors import AudioInputError, PromptError
from mimo_audio.generate import generate
from mimo_audio.pipeline import MimoAudio, Piece, Reply, Speech, TaskRequest

N = 12  # generated groups in forced-audio runs


@pytest.fixture(scope="module")
def mimo(fixture_path, manifest):
    s = manifest["streaming"]  # small streaming windows so that a short reply is decoded in several pieces
    return MimoAudio.from_pretrained(
        fixture_path / "lm", fixture_path / "tokenizer", device="cpu",
        stream_chunk_frames=s["chunk_frames"], stream_left_context=s["left_overlap"], stream_lookahead=s["right_overlap"],
    )


@pytest.fixture(scope="module")
def clips(fixture_path, manifest):
    return [str(fixture_path / "audio" / name) for name in manifest["audio"]["24k"]]


def forced_audio(mimo, req: TaskRequest, groups: int = N) -> TaskRequest:
    """Ban every text id but <|empty|> so that all ``groups`` generated groups are audio patches."""
    V = mimo.lm.config.vocab_size
    banned = tuple(i for i in range(V) if i != mimo.ids.empty)
    req.config = dataclasses.replace(req.config, banned_ids=banned, max_new_tokens=groups)
    return req


def collect(stream):
    pieces = {}
    for index, piece in stream:
        assert isinstance(piece, Piece) and piece.index == index
        pieces.setdefault(index, []).append(piece)
    return pieces


# ------------------------------------------------------------------------------------------ every task
def test_transcribe_single_and_batch(mimo, clips):
    text = mimo.transcribe(clips[0], max_new_tokens=8)
    assert isinstance(text, str)
    texts = mimo.transcribe(clips[:2], max_new_tokens=8)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts[0] == text  # ASR preset is greedy: the batch mate does not change the result


def test_speak_returns_24k_speech(mimo):
    sp = mimo.speak("Hello world.", seed=1, max_new_tokens=16)
    assert isinstance(sp, Speech) and isinstance(sp.text, str)
    assert sp.sample_rate == mimo.codec.sample_rate == 24000
    assert sp.audio.dtype == torch.float32 and sp.audio.dim() == 1
    assert sp.audio.numel() == sp.codes.shape[0] * mimo.codec.samples_per_code
    req = forced_audio(mimo, mimo.prepare("speak", text="Hello world.", seed=1))
    reply = mimo.run([req])[0]
    assert req.prompt_groups == req.grid.shape[1] // mimo.lm.config.group_size == reply.prompt_tokens
    assert reply.codes.shape == (N * mimo.lm.config.group_size, mimo.lm.config.audio_channels)
    assert reply.audio.numel() == reply.codes.shape[0] * mimo.codec.samples_per_code
    assert torch.isfinite(reply.audio).all() and reply.finish_reason == "length"


@pytest.mark.parametrize("kw", [{"instruct": "Speak slowly"}, {"natural": True}, {"voice": "clip"},
                                {"instruct": "Speak slowly", "voice": "clip"}])
def test_speak_variants(mimo, clips, kw):
    kw = {k: (clips[2] if v == "clip" else v) for k, v in kw.items()}
    sp = mimo.speak("A short sentence to say.", seed=0, max_new_tokens=8, **kw)
    assert isinstance(sp, Speech) and sp.audio is not None and sp.sample_rate == 24000


def test_audio_span_is_the_generated_patches(mimo):
    """All groups are audio and the prompt opens the span: the reply's codes are exactly the generated patches."""
    req = forced_audio(mimo, mimo.prepare("speak", text="Hello world.", greedy=True))
    gen = generate(mimo.lm, [req.grid], [req.config], empty_id=mimo.ids.empty)[0]
    C, G = mimo.lm.config.audio_channels, mimo.lm.config.group_size
    assert (gen[0, ::G] == mimo.ids.empty).all()
    expected = gen[1:].reshape(C, -1).T  # (frames, C)
    reply = mimo.run([req])[0]
    assert torch.equal(reply.codes, expected.cpu())
    # instruct TTS: the model must write <|sostm|> first; audio groups before it are not speech
    req = forced_audio(mimo, mimo.prepare("speak", text="Hello world.", instruct="Happily", greedy=True))
    reply = mimo.run([req])[0]
    assert reply.codes.shape[0] == 0 and reply.audio.numel() == 0


def test_understand_one_and_several_clips(mimo, clips):
    assert isinstance(mimo.understand(clips[0], "What is said?", max_new_tokens=8), str)
    req = mimo.prepare("understand", audio=clips[:2], question="Compare them.", thinking=True)
    assert int((req.grid[0] == mimo.ids.sosp).sum()) == 2
    reply = mimo.run([dataclasses.replace(req, config=dataclasses.replace(req.config, max_new_tokens=8))])[0]
    assert reply.audio is None and isinstance(reply.text, str)
    out = mimo.understand([clips[0], clips[1]], ["Q1?", "Q2?"], max_new_tokens=4)
    assert isinstance(out, list) and len(out) == 2


def test_chat_speech_and_text_with_history(mimo, clips):
    r1 = mimo.chat([{"role": "user", "audio": clips[0]}], seed=2, max_new_tokens=12)
    assert isinstance(r1, Reply) and r1.audio is not None and r1.sample_rate == 24000
    req = forced_audio(mimo, mimo.prepare("chat", messages=[{"role": "user", "audio": clips[0]}], seed=2), 8)
    r1 = mimo.run([req])[0]
    r1.text = r1.text or "ok"  # the random model may write no text; history needs some
    history = [{"role": "system", "text": "Be brief."}, {"role": "user", "audio": clips[0]}, r1.as_message(),
               {"role": "user", "audio": clips[1]}]
    r2 = mimo.chat(history, voice=clips[2], seed=2, max_new_tokens=8)
    assert isinstance(r2, Reply) and r2.audio is not None
    t = mimo.chat([{"role": "user", "text": "hi"}], reply="text", thinking=True, max_new_tokens=8)
    assert t.audio is None and t.codes is None and isinstance(t.text, str)
    t2 = mimo.chat([{"role": "user", "audio": clips[1]}, {"role": "assistant", "text": "yes"},
                    {"role": "user", "text": "and?"}], reply="text", max_new_tokens=8)
    assert t2.audio is None
    with pytest.raises(PromptError, match="thinking"):
        mimo.prepare("chat", messages=[{"role": "user", "text": "hi"}], thinking=True)


def test_history_is_the_list_passed(mimo, clips):
    msgs = [{"role": "user", "text": "hello there"}]
    a = mimo.chat(msgs, reply="text", greedy=True, max_new_tokens=8)
    mimo.chat([{"role": "user", "text": "something else entirely"}], reply="text", greedy=True, max_new_tokens=8)
    b = mimo.chat(msgs, reply="text", greedy=True, max_new_tokens=8)
    assert a.text == b.text and msgs == [{"role": "user", "text": "hello there"}]


def test_few_shot_and_continuation(mimo, clips, manifest):
    texts = manifest["audio"]["texts"]
    examples = [{"input": clips[0], "output": clips[1], "transcript": texts[1]}]
    r = mimo.few_shot(examples, clips[2], instruction="Convert the timbre.", seed=0, max_new_tokens=12)
    assert isinstance(r, Reply) and r.audio is not None and r.sample_rate == 24000
    seconds = 0.5
    req = forced_audio(mimo, mimo.prepare("continue", audio=clips[0], seconds=seconds, seed=0), 40)
    reply = mimo.run([req])[0]
    frames = math.ceil(seconds * mimo.frames_per_second)
    assert reply.codes.shape[0] == frames  # cut at the requested length, generation stopped early
    assert reply.audio.numel() == frames * mimo.codec.samples_per_code
    assert reply.new_tokens < 40 and reply.finish_reason == "length"
    r = mimo.continue_speech(clips[0], seconds=0.3, transcript=texts[0], seed=1)
    assert r.codes.shape[0] <= math.ceil(0.3 * mimo.frames_per_second)


def test_audio_qa_prepare_builds_the_base_prompts(mimo, clips):
    codes = [mimo.encode(c) for c in clips[:2]]
    req = mimo.prepare("audio_qa", audio=clips[1], question="Who?")
    assert torch.equal(req.grid, mimo.prompts.audio_qa(codes[1], "Who?")) and not req.audio_out
    ex = [{"audio": clips[0], "question": "Who?", "answer": "a man"}]
    req = mimo.prepare("audio_qa", audio=clips[1], question="Who?", examples=ex)
    want = mimo.prompts.audio_qa_few_shot([{**ex[0], "audio": codes[0]}], codes[1], "Who?")
    assert torch.equal(req.grid, want) and req.config.max_new_tokens == 256
    with pytest.raises(PromptError, match="example 0"):
        mimo.prepare("audio_qa", audio=clips[1], question="Who?", examples=["x"])


# ------------------------------------------------------------------------------------------ invariants
def test_seeded_reproducibility(mimo):
    a = mimo.speak("Seeded speech.", seed=7, max_new_tokens=16)
    b = mimo.speak("Seeded speech.", seed=7, max_new_tokens=16)
    assert a.text == b.text and torch.equal(a.codes, b.codes) and torch.equal(a.audio, b.audio)
    outs = {mimo.speak("Seeded speech.", seed=s, max_new_tokens=16).text for s in range(4)}
    assert len(outs) > 1  # the seed matters


def test_batch_equals_one_by_one_greedy(mimo, clips):
    reqs = [mimo.prepare("speak", text="First one.", greedy=True, max_new_tokens=12),
            mimo.prepare("chat", messages=[{"role": "user", "audio": clips[1]}], greedy=True, max_new_tokens=12),
            mimo.prepare("transcribe", audio=clips[2], max_new_tokens=12)]
    together = mimo.run(reqs)
    alone = [mimo.run([r])[0] for r in reqs]
    for x, y in zip(together, alone):
        assert x.text == y.text and x.finish_reason == y.finish_reason
        assert (x.codes is None) == (y.codes is None)
        if x.codes is not None:
            assert torch.equal(x.codes, y.codes)
            assert torch.allclose(x.audio, y.audio, atol=1e-5)


def test_stream_pieces_concatenate_to_the_reply(mimo):
    req = forced_audio(mimo, mimo.prepare("speak", text="Streaming test.", seed=3))
    pieces = collect(mimo.stream([req]))[0]
    assert pieces[-1].done and sum(p.done for p in pieces) == 1
    reply = pieces[-1].reply
    audio = [p.audio for p in pieces if p.audio is not None]
    assert len(audio) > 2  # really streamed in several pieces
    assert torch.equal(torch.cat(audio), reply.audio)
    assert "".join(p.text for p in pieces) == reply.text
    ref = mimo.run([req], decode="stream")[0]  # the non-streaming run, decoded as a stream would
    assert torch.equal(ref.audio, reply.audio) and ref.text == reply.text and torch.equal(ref.codes, reply.codes)
    whole = mimo.run([req])[0]  # whole-sequence decode: same codes; audio close, not equal (windowed context)
    assert torch.equal(whole.codes, reply.codes) and whole.audio.shape == reply.audio.shape
    # measured on the fixture: relative L2 difference 0.03-0.04 (unrelated audio would give about 1.4)
    assert float((whole.audio - reply.audio).norm() / whole.audio.norm()) < 0.1


def test_stream_equals_whole_decode_when_the_window_covers_the_clip(mimo):
    wide = MimoAudio(mimo.lm, mimo.codec, mimo.text, stream_chunk_frames=4, stream_left_context=4 * N,
                     stream_lookahead=4 * N)
    req = forced_audio(wide, wide.prepare("speak", text="Streaming test.", seed=3))
    pieces = collect(wide.stream([req]))[0]
    streamed = torch.cat([p.audio for p in pieces if p.audio is not None])
    assert torch.equal(streamed, wide.run([req])[0].audio)


def test_stream_text_tasks_and_method_twins(mimo, clips):
    for pieces, final in (
        (list(mimo.stream_transcribe(clips[0], max_new_tokens=10)), mimo.transcribe(clips[0], max_new_tokens=10)),
        (list(mimo.stream_chat([{"role": "user", "text": "hi"}], reply="text", greedy=True, max_new_tokens=10)),
         mimo.chat([{"role": "user", "text": "hi"}], reply="text", greedy=True, max_new_tokens=10).text),
    ):
        assert pieces[-1].done and all(p.audio is None for p in pieces)
        assert "".join(p.text for p in pieces) == pieces[-1].reply.text == final
    for pieces in (list(mimo.stream_speak(["One.", "Two."], seed=1, max_new_tokens=8)),
                   list(mimo.stream_few_shot([{"input": clips[0], "output": clips[1], "transcript": "hi"}], clips[2],
                                             seed=1, max_new_tokens=8)),
                   list(mimo.stream_continue_speech(clips[0], seconds=0.2, seed=1)),
                   list(mimo.stream_understand(clips[0], "What?", max_new_tokens=4))):
        done = [p for p in pieces if p.done]
        assert len(done) == len({p.index for p in pieces}) and all(isinstance(p.reply, Reply) for p in done)


def test_cancel_stops_one_request(mimo):
    reqs = [forced_audio(mimo, mimo.prepare("speak", text="Keep going.", seed=1), 3 * N),
            forced_audio(mimo, mimo.prepare("speak", text="Stop me.", seed=2), 3 * N)]
    stream = mimo.stream(reqs)
    replies = {}
    for index, piece in stream:
        if index == 1 and not piece.done:
            stream.cancel(1)
        if piece.done:
            replies[index] = piece.reply
    assert replies[1].finish_reason == "cancelled" and replies[1].new_tokens < 3 * N
    assert replies[0].finish_reason == "length" and replies[0].new_tokens == 3 * N


# ------------------------------------------------------------------------------------------ audio arguments
def test_audio_argument_forms_agree(mimo, clips):
    wav, sr = sf.read(clips[0], dtype="float32")
    by_path = mimo.encode(clips[0])
    assert torch.equal(mimo.encode((wav, sr)), by_path)
    assert torch.equal(mimo.encode(torch.from_numpy(wav), sample_rate=sr), by_path)
    with open(clips[0], "rb") as f:
        assert torch.equal(mimo.encode(f.read()), by_path)
    a = mimo.transcribe(clips[0], max_new_tokens=6)
    b = mimo.transcribe(np.asarray(wav), sample_rate=sr, max_new_tokens=6)
    assert a == b


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_get_clear_errors(mimo, clips, tmp_path, fixture_path):
    with pytest.raises(AudioInputError, match="no such file"):
        mimo.transcribe(str(tmp_path / "missing.wav"))
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio")
    with pytest.raises(AudioInputError):
        mimo.transcribe(str(junk))
    with pytest.raises(AudioInputError, match="sample_rate"):
        mimo.transcribe(np.zeros(24000, dtype=np.float32))
    with pytest.raises(PromptError, match="empty"):
        mimo.speak("   ")
    with pytest.raises(PromptError, match="transcript"):
        mimo.few_shot([{"input": clips[0], "output": clips[1]}], clips[2])
    with pytest.raises(PromptError, match="question"):
        mimo.understand(clips[0], "")
    with pytest.raises(PromptError, match="unknown task"):
        mimo.prepare("sing", text="la")
    with pytest.raises(PromptError, match="max_new_tokens"):
        mimo.prepare("speak", text="hi", max_new_tokens=0)
    with pytest.raises(PromptError, match="user message"):
        mimo.chat([{"role": "assistant", "text": "hi"}])


def test_prepare_names_a_wrong_keyword_but_does_not_disguise_inner_errors(mimo, clips, monkeypatch):
    with pytest.raises(PromptError, match="transcribe: .*unexpected keyword argument 'lang'"):
        mimo.prepare("transcribe", audio=clips[0], lang="en")
    with pytest.raises(PromptError, match="speak: missing a required argument: 'text'"):
        mimo.prepare("speak", instruct="Happily")

    def broken(*args, **kwargs):
        raise TypeError("a bug inside the prompt builder")

    monkeypatch.setattr(mimo.prompts, "asr", broken)
    with pytest.raises(TypeError, match="a bug inside the prompt builder"):  # not turned into a PromptError
        mimo.prepare("transcribe", audio=clips[0])


def test_prompt_longer_than_the_model_is_refused(mimo):
    positions = mimo.lm.config.max_position_embeddings
    word = "hello "
    per_word = len(mimo.text.encode(word * 64)) / 64
    text = word * int(positions / per_word + 64)
    with pytest.raises(PromptError, match="max_position_embeddings"):
        mimo.prepare("speak", text=text)


def test_audio_over_the_codec_limit_is_refused_once_with_its_type(mimo):
    """The pipeline reads each clip once, under the codec's duration limit; the error keeps its type (the server
    answers 413 for AudioTooLongError) and names the argument."""
    from mimo_audio.errors import AudioTooLongError

    codec = mimo.codec
    saved = codec.config
    codec.config = dataclasses.replace(saved, max_audio_seconds=1)
    try:
        with pytest.raises(AudioTooLongError, match="^audio.*longer than the limit of 1 s"):
            mimo.encode(np.zeros(2 * 24000, dtype=np.float32), sample_rate=24000)
        assert mimo.encode(np.zeros(24000 // 2, dtype=np.float32), sample_rate=24000).shape[1] == 8
    finally:
        codec.config = saved


def test_temperature_zero_means_greedy(mimo):
    """temperature=0 is greedy text decoding (as in the server and the CLI), audio_temperature=0 greedy audio; the
    two together are greedy=True."""
    req = mimo.prepare("chat", messages=[{"role": "user", "text": "hi"}], reply="speech", temperature=0)
    assert not req.config.text.do_sample and req.config.local.do_sample
    req = mimo.prepare("speak", text="Hi.", temperature=0, audio_temperature=0)
    assert not req.config.text.do_sample and not req.config.local.do_sample
    msgs = [{"role": "user", "text": "hello there"}]
    a = mimo.chat(msgs, reply="text", temperature=0, audio_temperature=0, max_new_tokens=8, seed=1)
    b = mimo.chat(msgs, reply="text", greedy=True, max_new_tokens=8, seed=2)
    assert a.text == b.text
