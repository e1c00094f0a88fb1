"""Scorers of the evaluation harness (SPEC §9.1): WER/CER with the toolkit's normalisation, the multiple-choice
answer extraction rules, and the aggregate helpers. Pure Python: no model, no optional dependency.

Normalisation (the toolkit's, for ASR and TTS): punctuation removed (ASCII and CJK punctuation) except the
apostrophe, runs of spaces collapsed, English lower-cased, Chinese split into characters::

    >>> normalize_text("Hello, World!  It's  me.")
    "hello world it's me"
    >>> normalize_text("今天，天气很好。", "zh")
    '今 天 天 气 很 好'
    >>> word_errors("the cat sat", "the bat sat down")
    (2, 3)
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

_ASCII_PUNCT = set(string.punctuation) - {"'"}
_APOSTROPHES = {"\u2019": "'", "\u02bc": "'"}  # typographic apostrophes fold to ASCII (kept as apostrophes)


def _is_punct(ch: str) -> bool:
    if ch == "'":
        return False
    if ch in _ASCII_PUNCT:
        return True
    cat = unicodedata.category(ch)
    if cat.startswith("P"):
        return True
    # full-width forms of ASCII symbols (＄ ＋ ＜ ＝ ＞ ＾ ｀ ｜ ～) are CJK punctuation too (zhon.hanzi)
    return cat.startswith("S") and "\uff00" <= ch <= "\uffef"


def is_chinese(text: str) -> bool:
    """True if ``text`` has a CJK unified ideograph."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def normalize_text(text: str, language: str | None = None) -> str:
    """The toolkit's normalisation; ``language`` ``"zh"`` splits into characters (``None``: detect from the text).

    Punctuation is deleted (not replaced by a space), as the toolkit does: ``"well-known"`` becomes
    ``"wellknown"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    text = "".join(_APOSTROPHES.get(ch, ch) for ch in text)
    text = "".join(ch for ch in text if not _is_punct(ch))
    lang = language or ("zh" if is_chinese(text) else "en")
    text = text.lower()
    if lang == "zh":
        return " ".join(ch for ch in text if not ch.isspace())
    return " ".join(text.split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance between two token sequences (substitutions + deletions + insertions)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref  # distance is symmetric; keep the row short
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def word_errors(ref: str, hyp: str, language: str | None = None) -> tuple[int, int]:
    """``(errors, reference tokens)`` after :func:`normalize_text` (tokens are characters for Chinese)."""
    lang = language or ("zh" if is_chinese(ref) else "en")
    r = normalize_text(ref, lang).split()
    h = normalize_text(hyp, lang).split()
    return edit_distance(r, h), len(r)


def error_rates(pairs: Iterable[tuple[int, int]]) -> dict[str, float]:
    """From per-utterance ``(errors, reference tokens)``: ``mean`` — the toolkit's mean of per-utterance rates —
    and ``corpus`` — total errors over total reference tokens; both in percent. Utterances with an empty
    reference are skipped (their rate is undefined)."""
    pairs = [(e, n) for e, n in pairs if n > 0]
    if not pairs:
        return {"mean": float("nan"), "corpus": float("nan")}
    mean = 100.0 * sum(e / n for e, n in pairs) / len(pairs)
    corpus = 100.0 * sum(e for e, _ in pairs) / sum(n for _, n in pairs)
    return {"mean": mean, "corpus": corpus}


# ================================================================================================ MCQ
THINK_END = "</think>"


def after_thinking(text: str) -> str:
    """The text after the first ``</think>`` (the whole text when there is none)."""
    i = text.find(THINK_END)
    return text if i < 0 else text[i + len(THINK_END):]


_ANSWER_LINE = re.compile(r"(?:the\s+)?correct\s+(?:choice|answer|option)\s+is\s*:?\s*(.+)|answer\s*:\s*(.+)", re.I)
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _clean_answer(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^[#>*\-\s]+", "", text)  # markdown heading/quote/list/bold markers
    text = text.replace("**", "").replace("`", "")
    text = text.strip().strip("\"'“”‘’").strip()
    text = re.sub(r"[.。,，;；:：!！?？\s]+$", "", text)
    return text.strip().strip("\"'“”‘’").strip()


def extract_answer(text: str) -> str:
    """The answer in a free-form reply (SPEC §9.1 string match): the last "(the) correct choice/answer is …" or
    "answer: …" line, else the last bold text, else the first non-empty line; quotes, markdown and trailing
    punctuation removed::

        >>> extract_answer("Let me think.\\nThe correct answer is: \\"a dog barking\\".")
        'a dog barking'
        >>> extract_answer("I hear **rain** here.")
        'rain'
    """
    candidates = []
    for line in text.splitlines():
        m = _ANSWER_LINE.search(line)
        if m:
            candidates.append(m.group(1) or m.group(2))
    if candidates:
        return _clean_answer(candidates[-1])
    bold = _BOLD.findall(text)
    if bold:
        return _clean_answer(bold[-1])
    for line in text.splitlines():
        if line.strip():
            return _clean_answer(line)
    return ""


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def string_match(prediction: str, answer: str, choices: Sequence[str]) -> bool:
    """True iff every word token of ``answer`` is in ``prediction`` and ``prediction`` has no token that belongs
    only to the other choices (SPEC §9.1)::

        >>> string_match("a dog barking", "dog barking", ["dog barking", "cat meowing"])
        True
        >>> string_match("dog barking and cat meowing", "dog barking", ["dog barking", "cat meowing"])
        False
    """
    gold = _tokens(answer)
    pred = _tokens(prediction)
    if not gold:
        return False
    others: set[str] = set()
    for c in choices:
        if c != answer:
            others |= _tokens(c)
    return gold <= pred and not (pred & (others - gold))


def mmsu_letter(text: str) -> str:
    """MMSU's answer letter: the first character if it is A–D, else the second-to-last character (SPEC §9.1)."""
    t = text.strip()
    if not t:
        return ""
    if t[0] in "ABCD":
        return t[0]
    return t[-2] if len(t) >= 2 else ""


_OPTION_EN = re.compile(r"option\s*([abcd])")
_OPTION_ZH = re.compile(r"选项\s*([abcd])")


def speechmmlu_option(text: str, language: str = "en") -> str:
    """SpeechMMLU's answer: the first ``option X`` (zh: ``选项X`` with spaces removed) in the lower-cased text."""
    t = text.lower()
    m = _OPTION_ZH.search(t.replace(" ", "")) if language == "zh" else _OPTION_EN.search(t)
    return m.group(1) if m else ""


def score_choice(reply: str, answer: str, choices: Sequence[str], *, rule: str = "string",
                 thinking: bool = False) -> dict:
    """Score one multiple-choice reply: ``{"prediction", "correct"}``.

    ``rule``: ``"string"`` (MMAU/MMAR string match on :func:`extract_answer`), ``"letter"`` (MMSU; ``answer`` is
    the gold letter or the gold choice), ``"option"`` (SpeechMMLU). With ``thinking`` only the text after
    ``</think>`` counts.
    """
    text = after_thinking(reply) if thinking else reply
    if rule == "string":
        pred = extract_answer(text)
        return {"prediction": pred, "correct": string_match(pred, answer, choices)}
    if rule in ("letter", "option"):
        gold = answer.strip()
        if gold not in ("A", "B", "C", "D", "a", "b", "c", "d") and answer in choices:
            gold = "ABCD"[list(choices).index(answer)]
        pred = mmsu_letter(text) if rule == "letter" else speechmmlu_option(text)
        return {"prediction": pred, "correct": bool(pred) and pred.upper() == gold.upper()}
    raise ValueError(f"unknown rule {rule!r}; use 'string', 'letter' or 'option'")


def token_f1(prediction: str, reference: str) -> float:
    """Word-token F1 of a free answer against a reference answer (counts, lower-cased ``\\w+`` tokens), in [0, 1]:
    the reference-based score of open-ended items::

        >>> round(token_f1("a dog is barking", "the dog barks"), 4)  # 1 common token: P 1/4, R 1/3, F1 2/7
        0.2857
    """
    from collections import Counter

    p, r = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def intelligibility(ref, out, rate: int) -> dict[str, float]:
    """STOI and wide/narrow-band PESQ of ``out`` against ``ref`` (1-D float arrays at ``rate``, 16 kHz for PESQ)
    when pystoi / pesq are installed (optional: absent keys otherwise; PESQ refuses silent or too-short clips)."""
    res: dict[str, float] = {}
    try:
        from pystoi import stoi

        res["stoi"] = float(stoi(ref, out, rate, extended=False))
    except ImportError:
        pass
    try:
        from pesq import pesq

        res["pesq_wb"] = float(pesq(rate, ref, out, "wb"))
        res["pesq_nb"] = float(pesq(rate, ref, out, "nb"))
    except ImportError:
        pass
    except Exception:  # pesq refuses silent or too-short clips
        pass
    return res
