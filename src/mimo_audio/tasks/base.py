"""Base-model formats (SPEC §6.3) and the pre-training formats without chat templates: prompt and example builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import PromptError
from ..prompt import text_grid
from .common import ICL_PREFIX, Parts, TokenGrid, _nonempty, check_examples


# ---------------------------------------------------------------------------------------------------------
# Base-model formats (SPEC §6.3)
# ---------------------------------------------------------------------------------------------------------
def _icl_pairs(pb, examples) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(pb.A(ex["input"], f"example {k} input"), pb.T("\n"), pb.S(ex["transcript"], ex["output"],
                                                                      f"example {k} output"))
            for k, ex in enumerate(check_examples(examples))]


def few_shot_prompt(pb, examples: Sequence[Mapping], audio, *, instruction: str | None = None) -> torch.Tensor:
    """In-context speech-to-speech (SPEC §6.3.11); examples are ``{"input", "output", "transcript"}``::

        T("[Int]:{instruction}\\n")
        per example: A(input) T("\\n") S(transcript, output) T(" \\n\\n")
        A(audio) T("\\n") T("<|sostm|>")

    No instruction gives ``T("[Int]:\\n")``.
    """
    parts = [pb.T(ICL_PREFIX.format(instruction=instruction or ""))]
    for a, nl, s in _icl_pairs(pb, examples):
        parts += [a, nl, s, pb.T(" \n\n")]
    parts += [pb.A(audio, "query audio"), pb.T("\n"), pb.T("<|sostm|>")]
    return pb.join(parts)


def few_shot_example(pb, examples: Sequence[Mapping], audio, output, transcript: str, *,
                     instruction: str | None = None) -> TokenGrid:
    """Few-shot S2S: the prompt's examples and query (masked), then ``S(transcript, output)`` (supervised): only
    the query's answer is learned. Use task ``icl`` to learn every pair of a sequence."""
    out = Parts(pb).ctx(pb.T(ICL_PREFIX.format(instruction=instruction or "")))
    for a, nl, s in _icl_pairs(pb, examples):
        out.ctx(a, nl, s, pb.T(" \n\n"))
    _nonempty(transcript, "transcript", "pass the words of the output audio")
    out.ctx(pb.A(audio, "query audio"), pb.T("\n")).sup(pb.S(transcript, output, "output audio"))
    return out.grid()


def icl_example(pb, examples: Sequence[Mapping], *, instruction: str | None = None) -> TokenGrid:
    """Pre-training few-shot sequence: several input→output pairs in the few-shot layout, every output
    ``S(transcript, output)`` supervised (the prefix, inputs and separators masked)::

        T("[Int]:{instruction}\\n") per pair: A(input) T("\\n") S(transcript, output)* T(" \\n\\n")   (* supervised)
    """
    out = Parts(pb).ctx(pb.T(ICL_PREFIX.format(instruction=instruction or "")))
    for a, nl, s in _icl_pairs(pb, examples):
        out.ctx(a, nl).sup(s).ctx(pb.T(" \n\n"))
    return out.grid()


def _mmlu_parts(pb, items) -> list[torch.Tensor]:
    if not items:
        raise PromptError("speech_mmlu needs the prompt items (beginning, shots, test question)")
    kinds, parts = [], []
    for k, it in enumerate(items):
        if not isinstance(it, Mapping):
            raise PromptError(f"item {k} must be a dict with 'text', or 'audio' (+ 'transcript' for answers)")
        audio, text, transcript = it.get("audio"), it.get("text"), it.get("transcript")
        if audio is not None and transcript is not None:
            kinds.append("speech")
            if not transcript.strip():
                raise PromptError(f"item {k}: the spoken answer's transcript is empty")
            parts.append(pb.S(transcript, audio, f"item {k} audio"))
        elif audio is not None:
            kinds.append("speech")
            parts.append(pb.A(audio, f"item {k} audio"))
        elif isinstance(text, str):
            kinds.append("text")
            parts.append(pb.T(text))
        else:
            raise PromptError(f"item {k} has neither 'text' nor 'audio'")
    prefix = "<Spe>:" if all(k == "speech" for k in kinds) else "[Int]:" if "speech" in kinds else ""
    return [pb.T(prefix), *parts]


def speech_mmlu_prompt(pb, items: Sequence[Mapping]) -> torch.Tensor:
    """SpeechMMLU-style few-shot QA with a text answer (SPEC §6.3.12).

    ``items`` in order (the subject's beginning, the shots' questions and answers, the test question), each
    ``{"text": str}`` → ``T``, ``{"audio": codes}`` → ``A``, or ``{"audio": codes, "transcript": str}``
    (a spoken answer) → ``S``. Prefix ``T("<Spe>:")`` if every item is speech, ``T("[Int]:")`` if mixed,
    none if all text. Text items carry their own newlines.
    """
    return pb.join(_mmlu_parts(pb, items))


def speech_mmlu_speech_prompt(pb, items: Sequence[Mapping]) -> torch.Tensor:
    """As :func:`speech_mmlu_prompt`, answered in speech: ``T("<|sostm|>")`` appended."""
    return pb.join([*_mmlu_parts(pb, items), pb.T("<|sostm|>")])


def _eos(pb) -> torch.Tensor:
    return text_grid([pb.ids.eos], pb.layout)


def speech_mmlu_example(pb, items: Sequence[Mapping], answer: str) -> TokenGrid:
    """The prompt (masked), ``T(answer)`` and eos (supervised)."""
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(*_mmlu_parts(pb, items)).sup(pb.T(answer), _eos(pb)).grid()


def speech_mmlu_speech_example(pb, items: Sequence[Mapping], answer: str, answer_audio) -> TokenGrid:
    """The prompt without its final ``<|sostm|>`` (masked), ``S(answer, answer_audio)`` (supervised)."""
    return Parts(pb).ctx(*_mmlu_parts(pb, items)).sup(pb.S(answer, answer_audio, "answer audio")).grid()


def audio_qa_prompt(pb, audio, question: str = "") -> torch.Tensor:
    """Zero-shot audio QA, base model (SPEC §6.3.13)::

        T("[Int]:") A(audio) [T("Question: {question}")] T("\\nAnswer:")
    """
    parts = [pb.T("[Int]:"), pb.A(audio)]
    if question:
        parts.append(pb.T(f"Question: {question}"))
    parts.append(pb.T("\nAnswer:"))
    return pb.join(parts)


def audio_qa_example(pb, audio, answer: str, question: str = "") -> TokenGrid:
    """The prompt (masked), ``T(" {answer}")`` and eos (supervised; the space as in the few-shot answers)."""
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(audio_qa_prompt(pb, audio, question)).sup(pb.T(" " + answer), _eos(pb)).grid()


def _qa_shots(pb, examples, audio, question) -> list[torch.Tensor]:
    _nonempty(question, "the question", "pass the question (see multiple_choice())")
    parts = [pb.T("[Int]:")]
    for k, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or ex.get("audio") is None:
            raise PromptError(f"example {k} needs 'audio', 'question' and 'answer'")
        q, a = ex.get("question"), ex.get("answer")
        if not isinstance(q, str) or not isinstance(a, str) or not a.strip():
            raise PromptError(f"example {k} needs a 'question' and a non-empty 'answer' string")
        parts += [pb.A(ex["audio"], f"example {k} audio"), pb.T(f"Question: {q}"), pb.T(f"Answer: {a}\n\n")]
    return [*parts, pb.A(audio, "query audio"), pb.T(f"Question: {question}"), pb.T("\nAnswer:")]


def audio_qa_few_shot_prompt(pb, examples: Sequence[Mapping], audio, question: str) -> torch.Tensor:
    """Few-shot audio QA, base model (SPEC §6.3.14); examples ``{"audio", "question", "answer"}``::

        T("[Int]:") per example: A(audio) T("Question: {q}") T("Answer: {answer}\\n\\n")
        A(audio) T("Question: {question}") T("\\nAnswer:")

    Build multiple-choice questions with :func:`multiple_choice`.
    """
    return pb.join(_qa_shots(pb, examples, audio, question))


def audio_qa_few_shot_example(pb, examples: Sequence[Mapping], audio, question: str, answer: str) -> TokenGrid:
    _nonempty(answer, "the answer", "pass the answer text")
    return Parts(pb).ctx(*_qa_shots(pb, examples, audio, question)).sup(pb.T(" " + answer), _eos(pb)).grid()


def continuation_prompt(pb, audio, *, transcript: str | None = None) -> torch.Tensor:
    """Speech continuation, base model. No published format (SPEC §6.3.15, §12.4); our design:

    - audio only (default): the prompt audio as an *unclosed* audio segment, ``T("<|sosp|>")`` followed by
      its patches and no ``<|eosp|>``. The model continues with more ``<|empty|>`` patch groups, the shape of
      the speech-only data that gives the base model this ability, and needs nothing but the audio. It
      ends by emitting ``<|eosp|>`` (a stop id of the task) or at the length limit.
    - with ``transcript`` (the prompt audio's words): an *open* interleaved span, ``S(transcript, audio)``
      without ``<|eot|>`` and without ``<|eostm|>``, so the model goes on writing text and speech in the
      ``S`` schedule and closes with ``<|eot|>``/``<|eostm|>`` itself. This yields the continuation's text too.

    The reply's audio (parsed with ``audio_open=True``) is the continuation only, without the prompt.
    See docs/prompts.md.
    """
    if transcript is None:
        return pb.A(audio, "prompt audio", close=False)
    _nonempty(transcript, "transcript", "pass the prompt audio's words or None for audio-only")
    return pb.S(transcript, audio, "prompt audio", close=False, end_text=False)


def continuation_example(pb, audio, *, transcript: str | None = None) -> TokenGrid:
    """Speech continuation (pre-training, audio only): ``A(audio)`` with sosp and eosp, every column supervised
    (the speech-only data of SPEC §8.2). With ``transcript``: the whole ``S(transcript, audio)`` span, i.e. the
    interleaved format."""
    if transcript is None:
        return Parts(pb).sup(pb.A(audio, "audio")).grid()
    return interleaved_example(pb, transcript, audio)


# ---------------------------------------------------------------------------------------------------------
# Pre-training formats without chat templates (our layout; SPEC §8.2 names the data, not the sequences)
# ---------------------------------------------------------------------------------------------------------
def interleaved_example(pb, text: str, audio) -> TokenGrid:
    """Interleaved speech-text: one ``S(text, audio)`` span (SPEC §4.4), every column supervised."""
    _nonempty(text, "text", "pass the words of the audio")
    return Parts(pb).sup(pb.S(text, audio, "audio")).grid()


def asr_pair_example(pb, audio, text: str) -> TokenGrid:
    """Plain ASR pair: ``A(audio)`` (masked), ``T(text)`` + eos (supervised)."""
    _nonempty(text, "the transcript", "pass the words spoken in the audio as text=")
    return Parts(pb).ctx(pb.A(audio, "audio")).sup(pb.T(text), _eos(pb)).grid()


def tts_pair_example(pb, text: str, audio) -> TokenGrid:
    """Plain TTS pair: ``T(text)`` (masked), ``A(audio)`` with sosp/eosp (supervised)."""
    _nonempty(text, "the text", "pass the words spoken in the audio as text=")
    return Parts(pb).ctx(pb.T(text)).sup(pb.A(audio, "audio")).grid()


def caption_example(pb, audio, caption: str) -> TokenGrid:
    """Audio captioning pair: ``A(audio)`` (masked), ``T(caption)`` + eos (supervised)."""
    _nonempty(caption, "the caption", "pass a description of the audio as caption=")
    return Parts(pb).ctx(pb.A(audio, "audio")).sup(pb.T(caption), _eos(pb)).grid()
