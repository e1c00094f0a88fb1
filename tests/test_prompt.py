"""Prompt layout, task table, output parsing (batch and streaming) and every bad input's error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from mimo_audio.config import LMConfig
from mimo_audio.errors import PromptError
from mimo_audio.prompt import (
    DEFAULT_ASR_TEMPLATE,
    DEFAULT_TTS_TEMPLATE,
    FILLER,
    NO_THINK,
    TASKS,
    THINK,
    Layout,
    PromptBuilder,
    chat_task,
    detect_language,
    multiple_choice,
    normalize_tts_text,
    pad_codes,
    split_thinking,
    stop_ids,
    task_spec,
    text_grid,
)
from mimo_audio.text import TextTokenizer

PRESETS = {"default", "asr", "tts", "spoken_dialogue", "audio_understanding", "text_chat",
           "in_context_learning_s2s", "qa"}


@pytest.fixture(scope="module")
def pb(fixture_path):
    tok = TextTokenizer.from_folder(fixture_path / "lm")
    return PromptBuilder(tok, LMConfig.from_file(fixture_path / "lm" / "config.json"))


def codes_for(pb, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    lim = torch.tensor(pb.layout.empty_ids)
    return (torch.rand(frames, pb.layout.channels, generator=g) * lim).long()


def groups(grid, g):
    """Column 0 of each group of row 0."""
    return grid[0, ::g].tolist()


# ----------------------------------------------------------------------------------------------- segments
def test_text_segment_layout(pb):
    lay, g = pb.layout, pb.layout.group_size
    ids = pb.tok.encode("hello world")
    grid = pb.T("hello world")
    assert grid.shape == (1 + lay.channels, g * len(ids))
    assert groups(grid, g) == ids
    fill = grid[0].view(-1, g)[:, 1:]
    assert (fill == FILLER).all()
    assert torch.equal(grid[1:], torch.tensor(lay.empty_ids).unsqueeze(1).expand(-1, grid.shape[1]))
    assert pb.T("").shape == (1 + lay.channels, 0)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 8, 11])
def test_audio_segment_and_padding(pb, frames):
    lay, g, ids = pb.layout, pb.layout.group_size, pb.ids
    codes = codes_for(pb, frames, seed=frames)
    padded_len = -(-frames // g) * g
    padded = pad_codes(codes, g)
    assert padded.shape == (padded_len, lay.channels)
    assert torch.equal(padded[:frames], codes)
    assert (padded[frames:] == codes[-1]).all()  # repeats the last frame
    grid = pb.A(codes)
    assert grid.shape[1] == padded_len + 2 * g
    assert groups(grid, g) == [ids.sosp] + [ids.empty] * (padded_len // g) + [ids.eosp]
    assert torch.equal(grid[1:, g:-g].T, padded)
    empty = torch.tensor(lay.empty_ids).unsqueeze(1)
    assert (grid[1:, :g] == empty).all() and (grid[1:, -g:] == empty).all()
    bare = pb.audio(codes)
    assert groups(bare, g) == [ids.empty] * (padded_len // g)
    assert torch.equal(bare, grid[:, g:-g])
    # the caller's tensor is not modified
    assert codes.shape == (frames, lay.channels)


def _stream_expect(pb, text_ids, n_patches, tc=5, ac=5):
    """The text row of S(text, codes), written out from SPEC §4.4's rule."""
    ids = pb.ids
    chunks = [text_ids[i:i + tc] for i in range(0, len(text_ids), tc)]
    chunks[-1] = chunks[-1] + [ids.eot]
    audio = [min(ac, n_patches - i) for i in range(0, n_patches, ac)]
    row = [ids.sostm]
    for i in range(min(len(chunks), len(audio))):
        row += chunks[i] + [ids.empty] * audio[i]
    for c in chunks[len(audio):]:
        row += c
    for a in audio[len(chunks):]:
        row += [ids.empty] * a
    return row + [ids.eostm]


@pytest.mark.parametrize("text,frames", [
    ("Hi.", 150),  # text much shorter than audio
    ("This sentence has clearly more tokens than the audio has patches, so text runs on.", 9),  # longer
    ("Exactly some words here to test it all out", 40),
    ("今天天气真好，我们去公园散步吧。", 37),
])
def test_interleaved_segment(pb, text, frames):
    g = pb.layout.group_size
    codes = codes_for(pb, frames, seed=frames)
    text_ids = pb.tok.encode(text)
    grid = pb.S(text, codes)
    row = groups(grid, g)
    assert row == _stream_expect(pb, text_ids, -(-frames // g))
    # the audio groups carry the padded codes in order
    audio_cols = [i for i, t in enumerate(row) if t == pb.ids.empty]
    got = torch.cat([grid[1:, i * g:(i + 1) * g] for i in audio_cols], dim=1).T
    assert torch.equal(got, pad_codes(codes, g))
    # text groups carry no audio
    text_cols = [i for i, t in enumerate(row) if t != pb.ids.empty]
    empty = torch.tensor(pb.layout.empty_ids).unsqueeze(1)
    assert all((grid[1:, i * g:(i + 1) * g] == empty).all() for i in text_cols)


def test_interleave_ratio(pb):
    """5 text tokens per 5 patches while both last."""
    g, ids = pb.layout.group_size, pb.ids
    text = " ".join(["word"] * 40)
    n_tok = len(pb.tok.encode(text))
    row = groups(pb.S(text, codes_for(pb, 4 * 60)), g)[1:-1]
    # first 2·5·k groups alternate 5 text, 5 empty
    for k in range(min(n_tok // 5, 12) - 1):
        block = row[10 * k:10 * k + 10]
        assert all(t != ids.empty for t in block[:5]) and all(t == ids.empty for t in block[5:])


# ----------------------------------------------------------------------------------------------- text rules
def test_capitalisation_rule():
    assert normalize_tts_text("THIS ONE IS SHOUTED.") == "This one is shouted."
    assert normalize_tts_text("all lower. and more") == "All lower. and more"
    assert normalize_tts_text("Mixed Case stays") == "Mixed Case stays"
    assert normalize_tts_text("今天天气真好") == "今天天气真好"
    assert normalize_tts_text("123 !") == "123 !"


def test_tts_applies_capitalisation_only_to_spoken_text(pb):
    assert torch.equal(pb.tts("HELLO THERE"), pb.tts("Hello there"))
    assert not torch.equal(pb.tts("HELLO THERE", normalize=False), pb.tts("Hello there"))
    a = pb.tts_instruct("hello there", "SPEAK LOUDLY")
    b = pb.tts_instruct("Hello there", "SPEAK LOUDLY")
    c = pb.tts_instruct("Hello there", "Speak loudly")
    assert torch.equal(a, b) and not torch.equal(b, c)
    q = "describe this audio"  # questions are never re-cased
    assert q in pb.tok.decode(pb.understand(codes_for(pb, 8), q)[0].tolist())


def test_default_templates(pb):
    assert detect_language("今天") == "zh" and detect_language("hello") == "en"
    assert torch.equal(pb.tts("Hello there."), pb.tts("Hello there.", template=DEFAULT_TTS_TEMPLATE["en"]))
    assert torch.equal(pb.tts("今天好"), pb.tts("今天好", template=DEFAULT_TTS_TEMPLATE["zh"]))
    text = pb.tok.decode(pb.tts("Hello there.")[0].tolist())
    assert f"{DEFAULT_TTS_TEMPLATE['en']}: Hello there." in text and "：:" not in text
    assert torch.equal(pb.asr(codes_for(pb, 8)), pb.asr(codes_for(pb, 8), template=DEFAULT_ASR_TEMPLATE["en"]))
    assert not torch.equal(pb.asr(codes_for(pb, 8)), pb.asr(codes_for(pb, 8), language="zh"))


def _decoded(pb, grid):
    return pb.tok.decode(grid[0].tolist())


def test_task_formats_read_back(pb):
    a = codes_for(pb, 10)
    assert _decoded(pb, pb.understand(a, "Why?", thinking=True)).endswith("Why?<|im_end|>\n<|im_start|>assistant\n"
                                                                          + THINK)
    assert _decoded(pb, pb.s2t_dialogue(a)).endswith("<|im_end|>\n<|im_start|>assistant\n" + NO_THINK)
    assert _decoded(pb, pb.dialogue(a)).endswith("<|im_start|>assistant\n<|sostm|>")
    assert _decoded(pb, pb.few_shot([{"input": a, "output": a, "transcript": "x"}], a)).startswith("[Int]:\n")
    qa = _decoded(pb, pb.audio_qa(a, "Who?"))
    assert qa.startswith("[Int]:<|sosp|>") and qa.endswith("<|eosp|>Question: Who?\nAnswer:")
    assert _decoded(pb, pb.audio_qa(a)).endswith("<|eosp|>\nAnswer:")
    fq = pb.audio_qa_few_shot([{"audio": a, "question": "Q1", "answer": "A1"}], a, "Q2")
    assert _decoded(pb, fq).endswith("Question: Q1Answer: A1\n\n<|sosp|>" + "<|empty|>" * 3
                                     + "<|eosp|>Question: Q2\nAnswer:")
    mc = multiple_choice("Who?", ["a", "b", "c"])
    assert mc.endswith("Choice: \na\nb\nc\n\nMake a choice from the given 3 choices.")
    # two clips -> two audio segments
    two = _decoded(pb, pb.understand([a, a], "Compare."))
    assert two.count("<|sosp|>") == 2
    # a tts with a voice gets the clone system turn and still opens the speech span
    voiced = _decoded(pb, pb.tts("Hello.", voice=a))
    assert voiced.startswith("<|im_start|>system\n") and voiced.endswith("<|sostm|>")


def test_speech_mmlu_prefixes(pb):
    a = codes_for(pb, 8)
    text_only = _decoded(pb, pb.speech_mmlu([{"text": "Q: 1+1?\n"}, {"text": "A: 2\n"}]))
    assert text_only == "Q: 1+1?\nA: 2\n"
    mixed = pb.speech_mmlu([{"text": "Subject.\n"}, {"audio": a}])
    assert _decoded(pb, mixed).startswith("[Int]:Subject.")
    speech = pb.speech_mmlu_speech([{"audio": a}, {"audio": a, "transcript": "two"}, {"audio": a}])
    s = _decoded(pb, speech)
    assert s.startswith("<Spe>:<|sosp|>") and s.endswith("<|eosp|><|sostm|>") and "two<|eot|>" in s


def test_continuation_layouts(pb):
    g, ids = pb.layout.group_size, pb.ids
    a = codes_for(pb, 30)
    n = -(-30 // g)
    row = groups(pb.continuation(a), g)
    assert row == [ids.sosp] + [ids.empty] * n  # open: no <|eosp|>
    row = groups(pb.continuation(a, transcript="Once upon a time"), g)
    assert row[0] == ids.sostm and ids.eot not in row and ids.eostm not in row
    assert row.count(ids.empty) == n
    spec = task_spec("continuation")
    assert spec.model == "base" and spec.audio_open is True and ids.eosp in stop_ids("continuation", ids)


# ----------------------------------------------------------------------------------------------- tasks
def test_task_table(pb):
    ids = pb.ids
    for name, spec in TASKS.items():
        assert callable(getattr(pb, name)), name
        assert spec.preset in PRESETS, name
        stops = stop_ids(name, ids)
        assert ids.eos in stops and len(set(stops)) == len(stops)
        assert (ids.eostm in stops) == (spec.reply == "speech"), name
    assert set(stop_ids("asr", ids)) == {ids.eos, ids.im_end}
    assert set(stop_ids("tts", ids)) == {ids.eos, ids.eostm, ids.im_end}
    assert set(stop_ids("few_shot", ids)) == {ids.eos, ids.eostm}
    assert set(stop_ids("audio_qa", ids)) == {ids.eos, ids.sosp}
    assert task_spec("asr").preset == "asr" and task_spec("s2t_dialogue").preset == "spoken_dialogue"
    with pytest.raises(PromptError, match="unknown task"):
        task_spec("sing")
    a = codes_for(pb, 9)
    assert torch.equal(pb.build("asr", audio=a), pb.asr(a))
    assert chat_task([{"role": "user", "audio": a}], "text") == "s2t_dialogue_multiturn"
    assert chat_task([{"role": "user", "text": "hi"}], "text") == "text_dialogue_multiturn"
    assert chat_task([{"role": "user", "audio": a}], "speech") == "dialogue_multiturn"


def test_layout_forms(pb, fixture_path):
    cfg = LMConfig.from_file(fixture_path / "lm" / "config.json")
    assert Layout.of(cfg) == Layout.of((cfg.empty_ids, cfg.group_size)) == pb.layout
    other = PromptBuilder(pb.tok, (cfg.empty_ids, cfg.group_size))
    assert torch.equal(other.asr(codes_for(pb, 7)), pb.asr(codes_for(pb, 7)))


def test_messages_system_and_single_turn_equivalence(pb):
    a, b = codes_for(pb, 9, 1), codes_for(pb, 13, 2)
    sp = "Be brief."
    assert torch.equal(pb.dialogue(a, system_prompt=sp),
                       pb.dialogue_multiturn([{"role": "system", "text": sp}, {"role": "user", "audio": a}]))
    assert torch.equal(pb.dialogue(a, voice=b), pb.dialogue_multiturn([{"role": "user", "audio": a}], voice=b))
    assert torch.equal(pb.text_dialogue("hi"), pb.text_dialogue_multiturn([{"role": "user", "text": "hi"}]))
    # system prompt only in the first user turn
    conv = [{"role": "user", "audio": a}, {"role": "assistant", "text": "Ok.", "audio": b},
            {"role": "user", "audio": a}]
    assert _decoded(pb, pb.dialogue_multiturn(conv, system_prompt=sp)).count(sp) == 1


# ----------------------------------------------------------------------------------------------- errors
def test_errors(pb):
    a = codes_for(pb, 8)
    cases = [
        (lambda: pb.tts(""), "empty"),
        (lambda: pb.tts("   "), "empty"),
        (lambda: pb.tts_instruct("Hi", ""), "instruct"),
        (lambda: pb.tts_natural(""), "empty"),
        (lambda: pb.asr(None), "missing"),
        (lambda: pb.asr(a, language="fr"), "language"),
        (lambda: pb.understand(a, ""), "question"),
        (lambda: pb.understand(None, "Why?"), "missing"),
        (lambda: pb.few_shot([{"input": a, "output": a}], a), "transcript"),
        (lambda: pb.few_shot([{"input": a, "output": a, "transcript": ""}], a), "transcript"),
        (lambda: pb.few_shot([{"input": a, "transcript": "x"}], a), "output"),
        (lambda: pb.few_shot([], a), "at least one example"),
        (lambda: pb.few_shot([{"input": a, "output": a, "transcript": "x"}], None), "query audio is missing"),
        (lambda: pb.dialogue_multiturn([{"role": "robot", "audio": a}]), "unknown role"),
        (lambda: pb.dialogue_multiturn([{"role": "user"}]), "neither audio nor text"),
        (lambda: pb.dialogue_multiturn([{"role": "user", "audio": a}, {"role": "assistant", "audio": a},
                                        {"role": "user", "audio": a}]), "assistant message 1 has no text"),
        (lambda: pb.dialogue_multiturn([{"role": "user", "audio": a}, {"role": "assistant", "text": "x"},
                                        {"role": "user", "audio": a}]), "assistant message 1 has no audio"),
        (lambda: pb.dialogue_multiturn([{"role": "user", "audio": a}, {"role": "assistant", "text": "x",
                                                                       "audio": a}]), "end with a user"),
        (lambda: pb.dialogue_multiturn([]), "no user message"),
        (lambda: pb.dialogue_multiturn("hello"), "list of dicts"),
        (lambda: pb.dialogue_multiturn([{"role": "user", "audio": a}, {"role": "system", "text": "x"},
                                        {"role": "user", "audio": a}]), "system message after"),
        (lambda: pb.dialogue_multiturn([{"role": "system", "text": "x"}, {"role": "user", "audio": a}],
                                       system_prompt="y"), "only one"),
        (lambda: pb.s2t_dialogue_multiturn([{"role": "user", "audio": a}, {"role": "assistant"},
                                            {"role": "user", "audio": a}]), "has no text"),
        (lambda: pb.asr(a.float()), "integer codes"),
        (lambda: pb.asr(a[:, :3]), "shape"),
        (lambda: pb.asr(a[:0]), "no frames"),
        (lambda: pb.asr(a + 5000), "outside"),
        (lambda: pb.asr(a - 5000), "outside"),
        (lambda: pb.continuation(a, transcript=" "), "transcript"),
        (lambda: pb.speech_mmlu([{"foo": 1}]), "neither"),
        (lambda: pb.audio_qa_few_shot([{"audio": a, "question": "q"}], a, "q"), "answer"),
        (lambda: multiple_choice("q", []), "choice"),
    ]
    for fn, needle in cases:
        with pytest.raises(PromptError, match=needle):
            fn()


# ----------------------------------------------------------------------------------------------- parsing
def _as_generated(grid, g):
    """The reference layout of generated columns: row 0 repeats each group's token in its G columns."""
    out = grid.clone()
    out[0] = grid[0, ::g].repeat_interleave(g)
    return out


@pytest.mark.parametrize("text,frames", [("Hello there, how are you doing today?", 57),
                                         ("今天天气真好，我们去公园散步吧。", 33), ("Hi.", 4)])
def test_parse_round_trip(pb, text, frames):
    g, ids = pb.layout.group_size, pb.ids
    codes = codes_for(pb, frames, seed=frames)
    span = pb.S(text, codes)
    stops = stop_ids("tts", ids)
    # TTS: the prompt ends with <|sostm|>, so generation starts after it and ends with the <|eostm|> stop group
    gen = _as_generated(span[:, g:], g)
    out = pb.parse(gen, task="tts")
    assert out.text == text and out.stopped
    assert torch.equal(out.codes, pad_codes(codes, g))
    # thinking TTS: some text, then the model opens the span itself
    think = torch.cat([pb.T("<think>\nslow</think>\n"), span], dim=1)
    out = pb.parse(_as_generated(think, g), task="tts_instruct")
    assert torch.equal(out.codes, pad_codes(codes, g))
    assert out.answer == text and out.thinking == "slow"
    # length limit: the last group is a real token and is kept (the reference drops it)
    cut = torch.cat([pb.T("The end")], dim=1)
    out = pb.parse(_as_generated(cut, g), stop_ids=stops)
    assert out.text == "The end" and not out.stopped and out.codes.shape == (0, pb.layout.channels)
    # the same text stopped by <|im_end|>
    out = pb.parse(_as_generated(torch.cat([cut, pb.T("<|im_end|>")], dim=1), g), stop_ids=stops)
    assert out.text == "The end" and out.stopped


def test_parse_span_rules(pb):
    a, b = codes_for(pb, 8, 1), codes_for(pb, 12, 2)
    before, after = pb.audio(a), pb.audio(b)
    gen = torch.cat([before, pb.T("<|sostm|>"), after, pb.T("<|eostm|>"), pb.audio(a)], dim=1)
    assert torch.equal(pb.parse(gen).codes, b)  # reference rule: after the generated <|sostm|>
    assert torch.equal(pb.parse(gen, audio_open=False).codes, b)
    assert torch.equal(pb.parse(gen, audio_open=True).codes, torch.cat([a, b]))  # span opened by the prompt
    no_sostm = torch.cat([before, pb.T("<|eostm|>"), after], dim=1)
    assert torch.equal(pb.parse(no_sostm).codes, a)
    assert pb.parse(no_sostm, audio_open=False).codes.shape[0] == 0
    bad = pb.audio(a)
    bad[1, 0] = pb.layout.empty_ids[0]
    with pytest.raises(PromptError, match="outside"):
        pb.parse(bad)
    with pytest.raises(PromptError, match="shape"):
        pb.parse(bad[:, :3])
    assert pb.parse(bad[:, :0]).text == ""


def test_parse_keeps_characters_split_by_audio_chunks(pb):
    """A character whose bytes straddle an audio chunk decodes intact (marker ids removed before decoding)."""
    text = "今天天气真好，我们去公园散步吧。" * 2
    gen = pb.S(text, codes_for(pb, 200))[:, pb.layout.group_size:]
    assert pb.parse(gen, task="dialogue").text == text


def _random_block(pb, rng, n):
    ids = pb.ids
    pool = pb.tok.encode("Hello, world! 今天 天气 真好 ok  .") + [ids.eos, ids.im_end, ids.eot, ids.sostm,
                                                                   ids.eostm, ids.sosp]
    tokens = [ids.empty if rng.random() < 0.45 else rng.choice(pool) for _ in range(n)]
    parts = []
    for t in tokens:
        if t == ids.empty:
            parts.append(pb.audio(codes_for(pb, pb.layout.group_size, seed=rng.randrange(10**6))))
        else:
            parts.append(text_grid([t], pb.layout))
    return _as_generated(pb.join(parts), pb.layout.group_size)


def test_streaming_parser_equals_batch(pb):
    rng = random.Random(1234)
    g = pb.layout.group_size
    for trial in range(150):
        block = _random_block(pb, rng, rng.randrange(0, 30))
        stops = rng.choice([(), stop_ids("tts", pb.ids), stop_ids("asr", pb.ids), (pb.ids.empty,)])
        for audio_open in (None, True, False):
            want = pb.parse(block, stop_ids=stops, audio_open=audio_open)
            parser = pb.parser(stop_ids=stops, audio_open=audio_open)
            text, codes = "", []
            step = rng.choice([1, 1, 2, 3])
            for j in range(0, block.shape[1] // g, step):
                d = parser.feed(block[:, j * g:(j + step) * g])
                text += d.text
                if d.codes is not None:
                    codes.append(d.codes)
            last = parser.finish()
            text += last.text
            if last.codes is not None:
                codes.append(last.codes)
            got = torch.cat(codes) if codes else torch.zeros(0, pb.layout.channels, dtype=torch.long)
            assert text == want.text, (trial, audio_open)
            assert torch.equal(got, want.codes), (trial, audio_open)
            assert parser.output.text == want.text and torch.equal(parser.output.codes, want.codes)
            assert parser.output.stopped == want.stopped and parser.output.groups == want.groups


def test_parser_checks_held_audio_only_when_it_is_released(pb):
    """With ``audio_open=None`` audio before any ``<|sostm|>`` is held: a later ``<|sostm|>`` discards it (bad
    codes in it are no error, as in the one-shot rule), the end of the stream releases it (then they are)."""
    bad = pb.audio(codes_for(pb, 4, 3))
    bad[1, 0] = pb.layout.empty_ids[0]
    good = codes_for(pb, 8, 4)
    out = pb.parse(torch.cat([bad, pb.T("<|sostm|>"), pb.audio(good)], dim=1))
    assert torch.equal(out.codes, good)
    parser = pb.parser()
    parser.feed(bad)
    with pytest.raises(PromptError, match="outside"):
        parser.finish()


def test_parser_decodes_text_only_when_text_arrives(pb):
    """Audio groups add no text: feeding them must not decode the reply's text again (that made streaming
    quadratic in the reply's length)."""
    calls = []
    decode = pb.tok.decode
    parser = pb.parser(task="dialogue")
    g = pb.layout.group_size
    gen = _as_generated(pb.S("Hello there, friend.", codes_for(pb, 40))[:, g:], g)
    text_groups = sum(1 for t in gen[0, ::g].tolist() if t not in (pb.ids.empty,))
    try:
        pb.tok.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
        for j in range(gen.shape[1] // g):
            parser.feed(gen[:, j * g:(j + 1) * g])
    finally:
        pb.tok.decode = decode
    assert 0 < len(calls) <= text_groups < gen.shape[1] // g


def test_streaming_parser_streams_early(pb):
    """With the span opened by the prompt, audio and settled text come out as the groups arrive."""
    g = pb.layout.group_size
    gen = _as_generated(pb.S("Hello there, friend.", codes_for(pb, 40))[:, g:], g)
    parser = pb.parser(task="dialogue")
    first_text = first_audio = None
    for j in range(gen.shape[1] // g):
        d = parser.feed(gen[:, j * g:(j + 1) * g])
        if d.text and first_text is None:
            first_text = j
        if d.codes is not None and first_audio is None:
            first_audio = j
    assert first_text is not None and first_text < 5
    assert first_audio is not None and first_audio < 10
    assert parser.done
    parser.finish()
    with pytest.raises(PromptError):
        parser.feed(gen[:, :g])
    with pytest.raises(PromptError):
        parser.finish()


def test_split_thinking():
    assert split_thinking("<think>\n\n</think>\nA dog barks.") == ("", "A dog barks.")
    assert split_thinking("<think>\nhmm\n</think>\n\nYes") == ("hmm", "Yes")
    assert split_thinking("plain") == (None, "plain")


# The modules whose docstrings hold runnable ``>>>`` examples (codec's are all ``+SKIP``: they need a checkpoint).
DOCTEST_MODULES = ("mimo_audio.delay", "mimo_audio.eval.scoring", "mimo_audio.layers", "mimo_audio.prompt",
                   "mimo_audio.sampling", "mimo_audio.tasks.common")


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} runs no docstring examples; drop it from DOCTEST_MODULES"
    assert result.failed == 0, name


def test_every_module_with_examples_is_listed():
    import mimo_audio

    root = Path(mimo_audio.__file__).parent
    have = {".".join(("mimo_audio", *f.relative_to(root).with_suffix("").parts)) for f in root.rglob("*.py")
            if any(">>>" in line and "+SKIP" not in line for line in f.read_text(encoding="utf-8").splitlines())}
    assert have == set(DOCTEST_MODULES)
