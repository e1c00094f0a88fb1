"""The task table: every task's supervised example (SPEC §8.3 masks) and the LM loss on it (SPEC §8.3 weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimo_audio.config import LMConfig
from mimo_audio.errors import PromptError
from mimo_audio.lm import LossWeights, MimoAudioLM
from mimo_audio.prompt import PromptBuilder
from mimo_audio.tasks import NO_THINK, PROMPT_TASKS, TASKS, THINK, TokenGrid, command_of, get_task, preset
from mimo_audio.text import TextTokenizer


@pytest.fixture(scope="module")
def pb(fixture_path):
    tok = TextTokenizer.from_folder(fixture_path / "lm")
    return PromptBuilder(tok, LMConfig.from_file(fixture_path / "lm" / "config.json"))


@pytest.fixture(scope="module")
def lm(fixture_path, pb):
    return MimoAudioLM.from_pretrained(fixture_path / "lm", device="cpu", dtype=torch.float32,
                                       empty_id=pb.ids.empty).eval()


def codes(pb, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    lim = torch.tensor(pb.layout.empty_ids)
    return (torch.rand(frames, pb.layout.channels, generator=g) * lim).long()


def fields(pb, name):
    """Sample fields for every task of the table (a task without a row fails test_every_task_has_fields)."""
    a, b, c, d = codes(pb, 9, 1), codes(pb, 23, 2), codes(pb, 14, 3), codes(pb, 6, 4)
    ex = [{"input": a, "output": b, "transcript": "one two"}, {"input": c, "output": d, "transcript": "three"}]
    talk = [{"role": "user", "audio": a}, {"role": "assistant", "text": "hello there", "audio": b},
            {"role": "user", "audio": c}, {"role": "assistant", "text": "fine", "audio": d}]
    chat = [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hey"},
            {"role": "user", "audio": c}, {"role": "assistant", "text": "yes", "thinking": True, "reasoning": "hm"}]
    return {
        "asr": dict(audio=a, text="hello world"),
        "tts": dict(text="Say this now", audio=b),
        "tts_instruct": dict(text="Say this", instruct="whisper", audio=b, reasoning="soft voice"),
        "tts_natural": dict(text="A calm man says: hi", audio=b, transcript="hi"),
        "understand": dict(audio=a, question="What is it?", answer="A dog.", thinking=True, reasoning="barks"),
        "dialogue": dict(audio=a, answer="sure thing", answer_audio=b, system_prompt="Be brief."),
        "dialogue_multiturn": dict(messages=talk, voice=d),
        "s2t_dialogue": dict(audio=a, answer="ok"),
        "s2t_dialogue_multiturn": dict(messages=chat),
        "text_dialogue": dict(text="hi", answer="hello", thinking=True, reasoning="greet"),
        "text_dialogue_multiturn": dict(messages=chat[:2] + [{"role": "user", "text": "more"},
                                                             {"role": "assistant", "text": "done"}]),
        "chat": dict(messages=talk[:2] + chat[2:]),
        "few_shot": dict(examples=ex, audio=c, output=d, transcript="four", instruction="Convert."),
        "speech_mmlu": dict(items=[{"text": "Q: 1+1?\n"}, {"audio": a}], answer="2"),
        "speech_mmlu_speech": dict(items=[{"audio": a}, {"audio": c, "transcript": "two"}], answer="two",
                                   answer_audio=d),
        "audio_qa": dict(audio=a, question="Who?", answer="a man"),
        "audio_qa_few_shot": dict(examples=[{"audio": c, "question": "Who?", "answer": "a woman"}], audio=a,
                                  question="Who?", answer="a man"),
        "continuation": dict(audio=b),
        "interleaved": dict(text="the quick brown fox jumps over the dog", audio=b),
        "asr_pair": dict(audio=a, text="hello"),
        "tts_pair": dict(text="hello", audio=b),
        "caption": dict(audio=a, caption="rain on a roof"),
        "icl": dict(examples=ex, instruction="Convert."),
    }[name]


def runs(ex: TokenGrid) -> list[tuple[int, int]]:
    """Supervised group spans [start, end)."""
    out, start = [], None
    flags = ex.supervised_groups()
    for i, s in enumerate([*flags, False]):
        if s and start is None:
            start = i
        elif not s and start is not None:
            out.append((start, i))
            start = None
    return out


def text_of(pb, ex, lo, hi):
    """Decoded text row of groups [lo, hi) without <|empty|> placeholders."""
    ids = [int(t) for t in ex.tokens[0, ::4][lo:hi] if int(t) != pb.ids.empty]
    return pb.tok.decode(ids)


def prompt_args(name, f):
    """The example's fields that the prompt builder takes (the rest is the response)."""
    drop = {"text": name in ("asr",), "answer": True, "answer_audio": True, "reasoning": True, "output": True,
            "transcript": name in ("few_shot", "tts_natural"), "caption": True}
    keep = {k: v for k, v in f.items() if not drop.get(k, False)}
    if name == "tts" or name.startswith("tts_"):
        keep.pop("audio")
    if "messages" in keep:  # the prompt ends before the last assistant message, thinking as that message
        if name.endswith("dialogue_multiturn") and name != "dialogue_multiturn":
            keep["thinking"] = bool(keep["messages"][-1].get("thinking", f.get("thinking", False)))
        keep["messages"] = keep["messages"][:-1]
    if name in ("dialogue", "s2t_dialogue"):
        keep.pop("answer", None)
    if name in ("understand", "text_dialogue"):
        keep["thinking"] = f.get("thinking", False)
    return keep


# ----------------------------------------------------------------------------------------------- masks
def test_every_task_has_fields_and_a_valid_example(pb):
    for name, task in TASKS.items():
        ex = task.example(pb, **fields(pb, name))
        t, lab = ex.tokens, ex.labels
        assert t.dtype == lab.dtype == torch.long and t.shape == lab.shape and t.shape[0] == 9, name
        assert t.shape[1] % 4 == 0 and ex.groups == t.shape[1] // 4
        sup = lab != -100
        # a column is supervised on all nine rows or on none, and labels copy the tokens there
        assert torch.equal(sup.all(0) | (~sup).all(0) | (t == -100).any(0), torch.ones_like(sup[0])), name
        assert torch.equal(lab[sup], t[sup]), name
        assert any(ex.supervised_groups()), name


def test_prompt_is_the_masked_prefix_of_the_example(pb):
    """For every task with a prompt, the example starts with the inference prompt (the tasks whose prompt opens
    the speech span end with <|sostm|>, which the example supervises as the first response group) and the
    supervision starts exactly where generation starts."""
    for name, task in PROMPT_TASKS.items():
        f = fields(pb, name)
        ex = task.example(pb, **f)
        prompt = task.prompt(pb, **prompt_args(name, f))
        P = prompt.shape[1]
        assert torch.equal(ex.tokens[:, :P], prompt), name
        first = runs(ex)[-1][0]  # the reply to the prompt (multi-turn: earlier replies are supervised too)
        if name == "continuation":
            assert first == 0  # speech-only data: every group is a target
        elif task.audio_open:
            assert first == P // 4 - 1 and int(prompt[0, -4]) == pb.ids.sostm, name
        else:
            assert first == P // 4, name


def test_single_turn_masks(pb):
    ids = pb.ids
    a, b = codes(pb, 9, 1), codes(pb, 23, 2)
    ex = get_task("asr").example(pb, audio=a, text="hello world")
    [(lo, hi)] = runs(ex)
    assert hi == ex.groups and text_of(pb, ex, lo, hi) == "hello world<|im_end|>\n"
    assert text_of(pb, ex, 0, lo).endswith("<|im_start|>assistant\n" + NO_THINK)

    # understanding, thinking off: the whole no-think block masked; on: only <think>\n, the chain supervised
    off = get_task("understand").example(pb, audio=a, question="Q?", answer="A dog.")
    [(lo, hi)] = runs(off)
    assert text_of(pb, off, lo, hi) == "A dog.<|im_end|>\n" and text_of(pb, off, 0, lo).endswith(NO_THINK)
    on = get_task("understand").example(pb, audio=a, question="Q?", answer="A dog.", thinking=True, reasoning="barks")
    [(lo, hi)] = runs(on)
    assert text_of(pb, on, lo, hi) == "barks\n</think>\nA dog.<|im_end|>\n"
    assert text_of(pb, on, 0, lo).endswith("assistant\n" + THINK)
    with pytest.raises(PromptError, match="thinking"):
        get_task("understand").example(pb, audio=a, question="Q?", answer="x", reasoning="r")

    # TTS: only <|im_start|>assistant\n masked; the span (its <|sostm|> included) and <|im_end|>\n supervised
    ex = get_task("tts").example(pb, text="Say this now", audio=b)
    [(lo, hi)] = runs(ex)
    row = ex.tokens[0, ::4].tolist()
    assert row[lo] == ids.sostm and ids.eostm in row[lo:hi] and text_of(pb, ex, lo, hi).endswith("<|im_end|>\n")
    assert text_of(pb, ex, 0, lo).endswith("<|im_start|>assistant\n")
    assert row[lo:hi].count(ids.empty) == 6  # 23 frames -> 6 patches
    sup_codes = ex.labels[1:, 4 * lo:4 * hi][:, [i for i in range(4 * (hi - lo)) if row[lo + i // 4] == ids.empty]]
    assert torch.equal(sup_codes[:, :23], b.T)

    ex = get_task("tts_instruct").example(pb, text="Say this", instruct="whisper", audio=b, reasoning="soft")
    [(lo, hi)] = runs(ex)
    assert text_of(pb, ex, lo, hi).startswith("soft\n</think>\n<|sostm|>")
    assert text_of(pb, ex, 0, lo).endswith("assistant\n" + THINK)


def test_multi_turn_supervises_every_assistant_turn_and_nothing_else(pb):
    f = fields(pb, "dialogue_multiturn")
    ex = get_task("dialogue_multiturn").example(pb, **f)
    spans = runs(ex)
    assert len(spans) == 2  # two assistant replies; voice block and user turns masked
    for (lo, hi), reply in zip(spans, [m for m in f["messages"] if m["role"] == "assistant"]):
        assert text_of(pb, ex, 0, lo).endswith("<|im_start|>assistant\n")
        assert text_of(pb, ex, lo, hi) == f"<|sostm|>{reply['text']}<|eot|><|eostm|><|im_end|>\n"
    masked = text_of(pb, ex, 0, spans[0][0]) + text_of(pb, ex, spans[0][1], spans[1][0])
    assert masked.count("<|im_start|>user\n") == 2 and masked.count("<|im_start|>assistant\n") == 2

    # text replies: history turn without a think block, last turn with its thinking
    ex = get_task("s2t_dialogue_multiturn").example(pb, **fields(pb, "s2t_dialogue_multiturn"))
    (lo1, hi1), (lo2, hi2) = runs(ex)
    assert text_of(pb, ex, lo1, hi1) == "hey<|im_end|>\n" and text_of(pb, ex, 0, lo1).endswith("assistant\n")
    assert text_of(pb, ex, lo2, hi2) == "hm\n</think>\nyes<|im_end|>\n"
    assert text_of(pb, ex, hi1, lo2).endswith("assistant\n" + THINK)

    # the SPEC §8.4 chat mixes both: a spoken reply, then a thinking text reply
    ex = get_task("chat").example(pb, **fields(pb, "chat"))
    (lo1, hi1), (lo2, hi2) = runs(ex)
    assert text_of(pb, ex, lo1, hi1).startswith("<|sostm|>hello there") and hi2 == ex.groups
    with pytest.raises(PromptError, match="end with an assistant"):
        get_task("dialogue_multiturn").example(pb, messages=f["messages"][:-1])


def test_pretraining_formats(pb):
    ids = pb.ids
    a, b = codes(pb, 9, 1), codes(pb, 23, 2)
    ex = get_task("interleaved").example(pb, text="the quick brown fox jumps over the dog", audio=b)
    assert all(ex.supervised_groups()) and torch.equal(ex.tokens, pb.S("the quick brown fox jumps over the dog", b))
    ex = get_task("continuation").example(pb, audio=b)
    assert all(ex.supervised_groups()) and ex.tokens[0, 0] == ids.sosp and ex.tokens[0, -4] == ids.eosp
    ex = get_task("asr_pair").example(pb, audio=a, text="hello")
    [(lo, hi)] = runs(ex)
    assert lo == 1 + 3 + 1 and pb.tok.decode(ex.tokens[0, ::4][lo:hi].tolist()[:-1]) == "hello"
    assert int(ex.tokens[0, -4]) == ids.eos and "<|im_start|>" not in pb.tok.decode(ex.tokens[0, ::4].tolist())
    ex = get_task("tts_pair").example(pb, text="hello", audio=b)
    [(lo, hi)] = runs(ex)
    assert int(ex.tokens[0, 4 * lo]) == ids.sosp and hi == ex.groups and lo == len(pb.tok.encode("hello"))
    ex = get_task("caption").example(pb, audio=a, caption="rain")
    [(lo, hi)] = runs(ex)
    assert text_of(pb, ex, lo, hi - 1) == "rain" and int(ex.tokens[0, -4]) == ids.eos
    f = fields(pb, "icl")
    ex = get_task("icl").example(pb, **f)
    spans = runs(ex)
    assert len(spans) == len(f["examples"])
    for (lo, hi), pair in zip(spans, f["examples"]):
        assert text_of(pb, ex, lo, hi) == f"<|sostm|>{pair['transcript']}<|eot|><|eostm|>"
    few = get_task("few_shot").example(pb, **fields(pb, "few_shot"))
    assert len(runs(few)) == 1 and runs(few)[0][1] == few.groups  # only the query's answer


def test_table_drives_names_presets_and_limits(pb):
    assert command_of("asr") == "transcribe" and command_of("tts") == "speak" and command_of("few-shot") == "few_shot"
    assert command_of("continuation") == command_of("continue_speech") == "continue"
    with pytest.raises(PromptError, match="unknown task"):
        command_of("sing")
    with pytest.raises(PromptError, match="training format"):
        get_task("interleaved").prompt(pb, text="x", audio=codes(pb, 4))
    assert get_task("asr").max_new_tokens == 2048 and get_task("tts").max_new_tokens == 4096
    cfg = get_task("speech_mmlu").config(stop_ids=get_task("speech_mmlu").stop_ids(pb.ids))
    assert (cfg.min_new_tokens, cfg.max_new_tokens, cfg.stop_ids) == (5, 10, (pb.ids.eos,))
    assert preset("asr").text.do_sample is False and preset("tts_instruct").text == preset("tts").text
    for task in TASKS.values():
        assert task.reply in ("text", "speech") and task.model in ("instruct", "base", "pretrain")
        assert task.fields and set(task.fields) >= set(fields(pb, task.name)) - {"system_prompt", "instruction",
                                                                                 "question"}
    from pathlib import Path

    import mimo_audio.generate as generate
    import mimo_audio.tasks as tasks

    src = Path(generate.__file__).read_text(encoding="utf-8")
    assert not any(f'"{n}"' in src for n in tasks.TASKS), "generate.py names a task"


def test_adding_a_task_is_one_entry(pb, monkeypatch):
    """The docs' (docs/tasks.md) example entry: once in TASKS it has a prompt method, an example and a preset."""
    from mimo_audio import tasks

    def spoken_qa_prompt(pb, audio):
        return pb.join([pb.T("[Int]:"), pb.A(audio), pb.T("\n"), pb.T("<|sostm|>")])

    def spoken_qa_example(pb, audio, answer, answer_audio):
        return tasks.Parts(pb).ctx(pb.T("[Int]:"), pb.A(audio), pb.T("\n")).sup(pb.S(answer, answer_audio)).grid()

    entry = tasks.Task("spoken_qa", "qa", ("eos", "eostm"), "speech", True, "base", spoken_qa_example,
                       spoken_qa_prompt, doc="spoken question, spoken answer", fields=("audio", "answer", "answer_audio"))
    monkeypatch.setitem(tasks.TASKS, "spoken_qa", entry)
    a, b = codes(pb, 9, 1), codes(pb, 7, 2)
    prompt = pb.spoken_qa(a)
    ex = get_task("spoken_qa").example(pb, audio=a, answer="yes", answer_audio=b)
    assert torch.equal(ex.tokens[:, :prompt.shape[1]], prompt) and runs(ex) == [(prompt.shape[1] // 4 - 1, ex.groups)]
    assert preset("spoken_qa").text.do_sample is False


# ----------------------------------------------------------------------------------------------- loss
def reference_parts(lm, tokens, labels, empty_id: int):
    """SPEC §8.3 written out, the parts that do not depend on the weights: per-target text CE and targets of the
    shifted group labels, and per channel the mean CE of the delayed teacher-forced patch decoder over every group
    whose text label is <|empty|>."""
    c = lm.config
    G, C = c.group_size, c.audio_channels
    out = lm(tokens, empty_id=empty_id)
    B, _, cols = tokens.shape
    N = cols // G
    tgt = labels[:, 0, ::G][:, 1:]
    logits = out.text_logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1).clamp(min=0), reduction="none")

    hidden = lm.hidden_downcast(out.hidden)  # (B, N, local_dim)
    delays, S = list(c.delay_pattern), G + max(c.delay_pattern)
    per_channel = [[] for _ in range(C)]
    for bi in range(B):
        for n in range(1, N):
            if int(labels[bi, 0, n * G]) != empty_id:
                continue
            patch = labels[bi, 1:, n * G:(n + 1) * G]  # (C, G) target frames
            steps = [hidden[bi, n - 1]]  # step 0: the previous position's hidden state
            for s in range(S - 1):  # step s+1 takes the summed embeddings of delayed grid step s
                v = torch.zeros(c.input_local_dim)
                for ch in range(C):
                    f = s - delays[ch]
                    if 0 <= f < G:
                        v = v + lm.speech_embeddings[ch].weight[int(patch[ch, f])]
                steps.append(v if lm.speech_to_local is None else lm.speech_to_local(v))
            o = lm.patch_decoder(torch.stack(steps)[None], torch.arange(S)[None])[0]
            for ch in range(C):
                lg = lm.local_heads[ch](o[delays[ch]:delays[ch] + G])
                per_channel[ch].append(F.cross_entropy(lg.float(), patch[ch], reduction="none"))
    chan = torch.stack([torch.cat(x).mean() if x else torch.zeros(()) for x in per_channel])
    return ce, tgt.reshape(-1), chan


def reference_loss(parts, w: LossWeights, empty_id: int):
    """(total, text loss, channel losses) of SPEC §8.3 with weights ``w``."""
    ce, tgt, chan = parts
    weight = torch.where(tgt == empty_id, w.empty_text, 1.0) * (tgt != -100)
    text = (ce * weight).sum() / (weight.sum() + 1e-8)
    cw = torch.tensor(w.channels[:len(chan)])
    return (w.text * text + (cw * chan).sum()) / (w.text + cw.sum()), text, chan


@pytest.mark.parametrize("name", sorted(TASKS))
def test_lm_loss_on_examples_matches_spec(pb, lm, name):
    ex = get_task(name).example(pb, **fields(pb, name))
    tokens, labels = ex.tokens[None], ex.labels[None]
    with torch.no_grad():
        parts = reference_parts(lm, tokens, labels, pb.ids.empty)
        for w in (LossWeights(), LossWeights.stage1(), LossWeights(text=3.0, channels=(1.0,) * 8, empty_text=0.5)):
            got = lm(tokens, empty_id=pb.ids.empty, labels=labels, loss_weights=w)
            want, text, chan = reference_loss(parts, w, pb.ids.empty)
            assert torch.allclose(got.text_loss, text, atol=1e-5), name
            assert torch.allclose(got.channel_losses, chan, atol=1e-5), name
            assert torch.allclose(got.loss, want, atol=1e-5), (name, w)
            if w == LossWeights.stage1():
                assert torch.allclose(got.loss, got.text_loss, atol=1e-6)  # stage 1: text only
    speech = bool(labels[0, 0].eq(pb.ids.empty).any())
    assert (float(chan.sum()) > 0) == speech, name  # speech targets are scored exactly when there are some


def test_loss_of_a_right_padded_batch(pb, lm):
    """Two examples right-padded (ids 0, labels -100, attention mask 0) give the loss over both examples' targets."""
    a = get_task("asr").example(pb, **fields(pb, "asr"))
    b = get_task("tts").example(pb, **fields(pb, "tts"))
    T = max(a.tokens.shape[1], b.tokens.shape[1])

    def pad(x, fill):
        return torch.cat([x, torch.full((9, T - x.shape[1]), fill, dtype=torch.long)], 1)

    tokens = torch.stack([pad(a.tokens, 0), pad(b.tokens, 0)])
    labels = torch.stack([pad(a.labels, -100), pad(b.labels, -100)])
    mask = torch.stack([torch.arange(T // 4) < x.groups for x in (a, b)]).long()
    with torch.no_grad():
        got = lm(tokens, empty_id=pb.ids.empty, labels=labels, attention_mask=mask)
        # right padding changes nothing before it: the reference loss of the unpadded examples, pooled
        w = LossWeights()
        short = [reference_loss(reference_parts(lm, x.tokens[None], x.labels[None], pb.ids.empty), w, pb.ids.empty)
                 for x in (a, b)]
    text_w = [((x.labels[0, ::4][1:] != -100) * torch.where(x.labels[0, ::4][1:] == pb.ids.empty, 0.01, 1.0)).sum()
              for x in (a, b)]
    pooled_text = sum(s[1] * tw for s, tw in zip(short, text_w)) / sum(text_w)
    assert torch.allclose(got.text_loss, pooled_text, atol=1e-5)


def test_bad_fields_are_named(pb):
    with pytest.raises(PromptError, match="transcript"):
        get_task("asr").example(pb, audio=codes(pb, 4), text=" ")
    with pytest.raises(PromptError, match="unknown task"):
        get_task("sing")
    with pytest.raises(PromptError, match="no audio"):
        get_task("dialogue_multiturn").example(pb, messages=[{"role": "user", "audio": codes(pb, 4)},
                                                             {"role": "assistant", "text": "hi"}])
    with pytest.raises(PromptError, match="num_quantizers"):
        get_task("asr").example(pb, audio=torch.zeros(4, 3, dtype=torch.long), text="x")
