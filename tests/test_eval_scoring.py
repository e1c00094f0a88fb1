"""The harness's scorers against hand-computed cases (SPEC §9.1)."""

from __future__ import annotations

import math

import pytest

from mimo_audio.eval.scoring import (
    after_thinking,
    edit_distance,
    error_rates,
    extract_answer,
    mmsu_letter,
    normalize_text,
    score_choice,
    speechmmlu_option,
    string_match,
    word_errors,
)


@pytest.mark.parametrize("text, lang, want", [
    ("Hello, World!", "en", "hello world"),
    ("It's  a   TEST.", "en", "it's a test"),          # apostrophe kept, spaces collapsed, lower-cased
    ("don\u2019t stop", "en", "don't stop"),            # typographic apostrophe folded to ASCII
    ("well-known (sic) $5 #1", "en", "wellknown sic 5 1"),  # punctuation deleted, not spaced
    ("今天，天气很好。", "zh", "今 天 天 气 很 好"),          # CJK punctuation removed, characters split
    ("《你好》！ OK", "zh", "你 好 o k"),
    ("“引号”…——", None, "引 号"),                        # language detected from the ideographs
])
def test_normalize(text, lang, want):
    assert normalize_text(text, lang) == want


def test_edit_distance_by_hand():
    assert edit_distance([], []) == 0
    assert edit_distance(list("abc"), []) == 3
    assert edit_distance([], list("ab")) == 2
    assert edit_distance(list("kitten"), list("sitting")) == 3  # k->s, e->i, +g
    assert edit_distance(["a", "b", "c", "d"], ["a", "x", "c"]) == 2  # b->x, -d


def test_word_errors_english_and_chinese():
    # ref "the cat sat on the mat" (6), hyp "the cat sat on mat" -> 1 deletion
    assert word_errors("The cat sat on the mat.", "the cat sat on mat") == (1, 6)
    # CER: 4 characters, one substituted
    assert word_errors("今天很好", "今天很坏") == (1, 4)


def test_mean_of_utterances_differs_from_corpus():
    # utt 1: 1 error / 2 words = 50 %; utt 2: 0 / 8 = 0 % -> mean 25 %, corpus 1/10 = 10 %
    pairs = [word_errors("hello world", "hello"), word_errors("one two three four five six seven eight",
                                                             "one two three four five six seven eight")]
    assert pairs == [(1, 2), (0, 8)]
    r = error_rates(pairs)
    assert r["mean"] == pytest.approx(25.0) and r["corpus"] == pytest.approx(10.0)
    assert math.isnan(error_rates([(0, 0)])["mean"])  # empty references are skipped


def test_string_match_rules():
    choices = ["dog barking", "cat meowing", "car horn"]
    assert string_match("a dog is barking", "dog barking", choices)
    assert not string_match("dog", "dog barking", choices)                     # a gold token missing
    assert not string_match("dog barking then a cat", "dog barking", choices)  # "cat" belongs only to another choice
    # a token shared by gold and another choice does not count against the prediction
    assert string_match("man speaking", "man speaking", ["man speaking", "woman speaking"])
    assert not string_match("woman speaking", "man speaking", ["man speaking", "woman speaking"])


def test_extract_answer_cases():
    assert extract_answer("The correct answer is: 'car horn'.") == "car horn"
    assert extract_answer("Reasoning...\nAnswer: dog barking\nso the correct choice is cat meowing!") == "cat meowing"
    assert extract_answer("Hmm, I think it is **Car horn**.") == "Car horn"
    assert extract_answer("\n\n  Dog barking.\nbecause of the sound") == "Dog barking"
    assert extract_answer("") == ""


def test_thinking_keeps_text_after_first_think_end():
    assert after_thinking("<think>\nmaybe cat</think>\ndog barking") == "\ndog barking"
    assert after_thinking("no think") == "no think"
    choices = ["dog barking", "cat meowing"]
    r = score_choice("<think>cat meowing? no</think>dog barking", "dog barking", choices, thinking=True)
    assert r == {"prediction": "dog barking", "correct": True}
    # without thinking the think text is the first line and names the other choice
    assert not score_choice("<think>cat meowing? no</think>dog barking", "dog barking", choices)["correct"]


def test_mmsu_letter_rule():
    assert mmsu_letter("B. the second") == "B"
    assert mmsu_letter("The answer is C.") == "C"   # second-to-last character
    assert mmsu_letter("(C).") == ")"             # the rule is positional, as the toolkit's
    assert mmsu_letter("  A") == "A"
    assert mmsu_letter("") == ""
    choices = ["red", "green", "blue", "pink"]
    assert score_choice("C", "blue", choices, rule="letter")["correct"]
    assert score_choice("C", "C", choices, rule="letter")["correct"]
    assert not score_choice("the answer is D.", "C", choices, rule="letter")["correct"]


def test_speechmmlu_option_rule():
    assert speechmmlu_option("I choose Option B, then option c") == "b"
    assert speechmmlu_option("no choice") == ""
    assert speechmmlu_option("答案是选项 C", "zh") == "c"
    assert score_choice("Option a.", "A", ["x", "y", "z", "w"], rule="option")["correct"]


def test_edit_distance_agrees_with_jiwer():
    jiwer = pytest.importorskip("jiwer", reason="jiwer is in the eval extra")
    import random

    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e"]
    for _ in range(200):
        ref = [rng.choice(words) for _ in range(rng.randint(1, 9))]
        hyp = [rng.choice(words) for _ in range(rng.randint(0, 9))]
        if not hyp:
            continue  # jiwer refuses an empty hypothesis string
        m = jiwer.process_words(" ".join(ref), " ".join(hyp))
        assert edit_distance(ref, hyp) == m.substitutions + m.deletions + m.insertions, (ref, hyp)
