"""Instruct-model tasks (SPEC §6.2): each one's prompt builder and supervised-example builder (SPEC §8.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import PromptError
from .common import (
    DEFAULT_ASR_TEMPLATE,
    DEFAULT_TTS_TEMPLATE,
    NO_THINK,
    THINK,
    THINK_CLOSE,
    TTS_INSTRUCT_FORMAT,
    TTS_USER_FORMAT,
    VOICE_INTRO,
    Parts,
    TokenGrid,
    _conversation,
    _nonempty,
    _pick,
    _reply_text,
    _speech_reply,
    _style_system,
    _text_reply,
    _think_parts,
    _tts_text,
    detect_language,
)


# ---------------------------------------------------------------------------------------------------------
# Instruct-model tasks: prompt builders (SPEC §6.2) and example builders (SPEC §8.3)
# ---------------------------------------------------------------------------------------------------------
def asr_prompt(pb, audio, *, template: str | None = None, language: str = "en") -> torch.Tensor:
    """ASR (SPEC §6.2.1)::

        T("<|im_start|>user\\n") A(audio) T(template) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
        T("<think>\\n\\n</think>\\n")

    ``template`` defaults to :data:`DEFAULT_ASR_TEMPLATE` of ``language`` ("en" or "zh").
    """
    template = _pick(template, DEFAULT_ASR_TEMPLATE, language, "language")
    return pb.join([pb.T("<|im_start|>user\n"), pb.A(audio), pb.T(template), pb.T("<|im_end|>\n"),
                    pb.T("<|im_start|>assistant\n"), pb.T(NO_THINK)])


def asr_example(pb, audio, text: str, *, template: str | None = None, language: str = "en") -> TokenGrid:
    """The ASR prompt (masked) + ``T(text) T("<|im_end|>\\n")`` (supervised)."""
    _nonempty(text, "the transcript", "pass the words spoken in the audio as text=")
    out = Parts(pb).ctx(asr_prompt(pb, audio, template=template, language=language))
    _reply_text(pb, out, "", text)
    return out.grid()


def tts_prompt(pb, text: str, *, voice=None, template: str | None = None, normalize: bool = True) -> torch.Tensor:
    """Plain TTS (SPEC §6.2.2)::

        T("<|im_start|>user\\n{template}: {text}<|im_end|>\\n") T("<|im_start|>assistant\\n<|sostm|>")

    ``template`` defaults to :data:`DEFAULT_TTS_TEMPLATE` of the text's language. The reference ignores a
    voice prompt here (SPEC §10.1.10); we honour it with the clone system turn before the user turn
    (``T("<|im_start|>system\\n") T(SYS_STYLE_CLONE) A(voice) T("<|im_end|>\\n")``, the vLLM-Omni variant).
    """
    return pb.join([*_tts_head(pb, text, voice, template, normalize)[0], pb.T("<|im_start|>assistant\n<|sostm|>")])


def _tts_head(pb, text, voice, template, normalize):
    text = _tts_text(text, normalize)
    template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
    user = TTS_USER_FORMAT.format(template=template, text=text)
    parts = _style_system(pb, voice) if voice is not None else []
    return [*parts, pb.T(f"<|im_start|>user\n{user}<|im_end|>\n")], text


def _speech_response(pb, out: Parts, head: str, text: str, audio, what: str) -> None:
    """A spoken reply: [chain of thought] ``S(text, audio)`` ``T("<|im_end|>\\n")``, all supervised."""
    if head:
        out.sup(pb.T(head))
    out.sup(pb.S(text, audio, what), pb.T("<|im_end|>\n"))


def tts_example(pb, text: str, audio, *, voice=None, template: str | None = None, normalize: bool = True,
                transcript: str | None = None) -> TokenGrid:
    """Plain TTS: the prompt up to ``<|im_start|>assistant\\n`` (masked), ``S(transcript, audio)``
    ``T("<|im_end|>\\n")`` (supervised; the span's ``<|sostm|>`` included). ``transcript`` defaults to the text as
    it appears in the user turn (normalised when ``normalize``)."""
    head, spoken = _tts_head(pb, text, voice, template, normalize)
    out = Parts(pb).ctx(*head, pb.T("<|im_start|>assistant\n"))
    _speech_response(pb, out, "", transcript or spoken, audio, "audio")
    return out.grid()


def tts_instruct_prompt(pb, text: str, instruct: str, *, voice=None, template: str | None = None,
                        normalize: bool = True) -> torch.Tensor:
    """TTS styled by an instruction, optionally in the voice of a prompt clip (SPEC §6.2.3-4)::

        T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
        T("<|im_start|>user\\n{template}: {text}({instruct})<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")

    The model thinks, closes the block and emits ``<|sostm|>`` itself (task ``tts_instruct``).
    """
    return pb.join([*_tts_instruct_head(pb, text, instruct, voice, template, normalize)[0],
                    pb.T("<|im_start|>assistant\n" + THINK)])


def _tts_instruct_head(pb, text, instruct, voice, template, normalize):
    text = _tts_text(text, normalize)
    _nonempty(instruct, "instruct", "pass a style instruction or use tts() for plain speech")
    template = template if template is not None else DEFAULT_TTS_TEMPLATE[detect_language(text)]
    user = TTS_INSTRUCT_FORMAT.format(template=template, text=text, instruct=instruct)
    return [*_style_system(pb, voice), pb.T(f"<|im_start|>user\n{user}<|im_end|>\n")], text


def tts_instruct_example(pb, text: str, instruct: str, audio, *, reasoning: str | None = None, voice=None,
                         template: str | None = None, normalize: bool = True,
                         transcript: str | None = None) -> TokenGrid:
    """Instruct TTS: the prompt through ``<|im_start|>assistant\\n<think>\\n`` (masked; thinking is always on
    in this format), then ``T("{reasoning}\\n</think>\\n")`` ``S(transcript, audio)`` ``T("<|im_end|>\\n")``
    (supervised). Without ``reasoning`` the supervised head is ``"\\n</think>\\n"`` (an empty thought)."""
    head, spoken = _tts_instruct_head(pb, text, instruct, voice, template, normalize)
    out = Parts(pb).ctx(*head, pb.T("<|im_start|>assistant\n" + THINK))
    _speech_response(pb, out, (reasoning or "").strip() + THINK_CLOSE, transcript or spoken, audio, "audio")
    return out.grid()


def tts_natural_prompt(pb, text: str, *, voice=None, normalize: bool = True) -> torch.Tensor:
    """Natural-instruction TTS: the description and the words are one string (SPEC §6.2.5)::

        T("<|im_start|>system\\n") T(SYS_STYLE) T("<|im_end|>\\n")          # with voice: SYS_STYLE_CLONE A(voice)
        T("<|im_start|>user\\n{text}<|im_end|>\\n") T("<|im_start|>assistant\\n<think>\\n")
    """
    text = _tts_text(text, normalize)
    return pb.join([*_style_system(pb, voice), pb.T(f"<|im_start|>user\n{text}<|im_end|>\n"),
                    pb.T("<|im_start|>assistant\n" + THINK)])


def tts_natural_example(pb, text: str, audio, transcript: str, *, reasoning: str | None = None, voice=None,
                        normalize: bool = True) -> TokenGrid:
    """Natural-instruction TTS; ``transcript`` is the words actually spoken (the text also holds the description).
    Masking as :func:`tts_instruct_example`."""
    _nonempty(transcript, "transcript", "pass the words spoken in the audio (text also holds the description)")
    out = Parts(pb).ctx(tts_natural_prompt(pb, text, voice=voice, normalize=normalize))
    _speech_response(pb, out, (reasoning or "").strip() + THINK_CLOSE, transcript, audio, "audio")
    return out.grid()


def _understand_user(pb, audio, question) -> list[torch.Tensor]:
    _nonempty(question, "the question", "pass a question or instruction, e.g. 'Describe the audio.'")
    clips = list(audio) if isinstance(audio, (list, tuple)) else [audio]
    if not clips:
        raise PromptError("understand needs at least one audio clip")
    parts = [pb.T("<|im_start|>user\n")]
    parts += [pb.A(c, f"audio clip {i}" if len(clips) > 1 else "audio") for i, c in enumerate(clips)]
    return [*parts, pb.T(question), pb.T("<|im_end|>\n"), pb.T("<|im_start|>assistant\n")]


def understand_prompt(pb, audio, question: str, *, thinking: bool = False) -> torch.Tensor:
    """Audio understanding (SPEC §6.2.6); ``audio`` is one clip or a list of clips (each its own ``A``)::

        T("<|im_start|>user\\n") A(audio)… T(question) T("<|im_end|>\\n") T("<|im_start|>assistant\\n")
        T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")
    """
    return pb.join([*_understand_user(pb, audio, question), pb.T(THINK if thinking else NO_THINK)])


def understand_example(pb, audio, question: str, answer: str, *, thinking: bool = False,
                       reasoning: str | None = None) -> TokenGrid:
    """Audio understanding: the prompt (masked, its think header included), then
    ``T("{reasoning}\\n</think>\\n{answer}")`` with thinking or ``T(answer)`` without, and ``T("<|im_end|>\\n")``
    (supervised). Also the instruct form of audio captioning (``question`` "Describe the audio.", ``answer`` the
    caption)."""
    _nonempty(answer, "the answer", "pass the reply text as answer=")
    out = Parts(pb).ctx(*_understand_user(pb, audio, question))
    head = _think_parts(pb, out, bool(thinking), reasoning, "understand")
    _reply_text(pb, out, head, answer)
    return out.grid()


# ----------------------------------------------------------------- dialogue
def dialogue_multiturn_prompt(pb, messages: Sequence[Mapping], *, voice=None,
                              system_prompt: str | None = None) -> torch.Tensor:
    """Spoken dialogue from a message list, speech reply (SPEC §6.2.8)::

        [T("<|im_start|>system\\n") T("Your voice should be:") A(voice) T("<|im_end|>\\n")]   # if voice
        user:      T("<|im_start|>user\\n") [T(system_prompt) T("\\n\\n")]  A(audio) [T(text)] T("<|im_end|>\\n")
                   (system prompt only in the first user turn)
        assistant: T("<|im_start|>assistant\\n") S(text, audio) T("<|im_end|>\\n")
        end:       T("<|im_start|>assistant\\n<|sostm|>")

    Messages are mappings ``{"role": "user"|"assistant"|"system", "text": str, "audio": codes}``. A leading
    ``system`` message gives the system prompt. User turns take audio, text or both (the reference uses
    audio); earlier assistant turns need both their text and their audio codes.
    """
    def assistant(i, m):
        text, audio = _speech_reply(pb, i, m)
        return [pb.T("<|im_start|>assistant\n"), pb.S(text, audio, f"assistant message {i} audio"),
                pb.T("<|im_end|>\n")]

    parts = _voice_block(pb, voice)
    parts += _conversation(pb, messages, system_prompt, assistant)
    parts.append(pb.T("<|im_start|>assistant\n<|sostm|>"))
    return pb.join(parts)


def _voice_block(pb, voice) -> list[torch.Tensor]:
    if voice is None:
        return []
    return [pb.T("<|im_start|>system\n"), pb.T(VOICE_INTRO), pb.A(voice, "voice"), pb.T("<|im_end|>\n")]


def dialogue_multiturn_example(pb, messages: Sequence[Mapping], *, voice=None,
                               system_prompt: str | None = None) -> TokenGrid:
    """Spoken dialogue: the conversation of :func:`dialogue_multiturn_prompt` ending with an assistant message.
    Every assistant turn is ``T("<|im_start|>assistant\\n")`` (masked) ``S(text, audio) T("<|im_end|>\\n")``
    (supervised); voice block, system prompt and user turns are masked."""
    out = Parts(pb).ctx(*_voice_block(pb, voice))

    def assistant(i, m, last, out):
        text, audio = _speech_reply(pb, i, m)
        out.ctx(pb.T("<|im_start|>assistant\n"))
        _speech_response(pb, out, "", text, audio, f"assistant message {i} audio")

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()


def dialogue_prompt(pb, audio, *, voice=None, system_prompt: str | None = None) -> torch.Tensor:
    """Spoken dialogue, one turn (SPEC §6.2.7): ``dialogue_multiturn([{"role": "user", "audio": audio}])``."""
    return dialogue_multiturn_prompt(pb, [{"role": "user", "audio": audio}], voice=voice, system_prompt=system_prompt)


def dialogue_example(pb, audio, answer: str, answer_audio, *, voice=None, system_prompt: str | None = None):
    """One spoken exchange: user ``audio``, reply ``answer`` (text) spoken as ``answer_audio``."""
    return dialogue_multiturn_example(pb, [{"role": "user", "audio": audio},
                                           {"role": "assistant", "text": answer, "audio": answer_audio}],
                                      voice=voice, system_prompt=system_prompt)


def s2t_dialogue_multiturn_prompt(pb, messages: Sequence[Mapping], *, thinking: bool = False,
                                  system_prompt: str | None = None) -> torch.Tensor:
    """Dialogue with a text reply (SPEC §6.2.9-10); user turns hold audio and/or text::

        user:      T("<|im_start|>user\\n") [T(system_prompt) T("\\n\\n")] [A(audio)] [T(text)] T("<|im_end|>\\n")
        assistant: T("<|im_start|>assistant\\n") T(text) T("<|im_end|>\\n")
        end:       T("<|im_start|>assistant\\n") T("<think>\\n") if thinking else T("<think>\\n\\n</think>\\n")

    ``system_prompt`` (not in the reference's text formats) goes where spoken dialogue puts it.
    """
    def assistant(i, m):
        return [pb.T("<|im_start|>assistant\n"), pb.T(_text_reply(i, m)), pb.T("<|im_end|>\n")]

    parts = _conversation(pb, messages, system_prompt, assistant)
    parts += [pb.T("<|im_start|>assistant\n"), pb.T(THINK if thinking else NO_THINK)]
    return pb.join(parts)


def s2t_dialogue_multiturn_example(pb, messages: Sequence[Mapping], *, thinking: bool = False,
                                   system_prompt: str | None = None) -> TokenGrid:
    """Text-reply dialogue ending with an assistant message; every assistant turn supervised.

    Assistant turn: ``T("<|im_start|>assistant\\n")`` + think header (masked) + ``T([reasoning \\n</think>\\n] text)``
    ``T("<|im_end|>\\n")`` (supervised). The think header follows the message's ``"thinking"`` (None: no block,
    False: the no-think block, True: ``<think>\\n`` and the message's ``"reasoning"`` supervised). Without the key
    the last assistant turn takes ``thinking`` (as the prompt's final turn) and earlier turns have no block (as the
    prompt's history turns, SPEC §6.2.9).
    """
    out = Parts(pb)

    def assistant(i, m, last, out):
        text = _text_reply(i, m)
        out.ctx(pb.T("<|im_start|>assistant\n"))
        think = m.get("thinking", bool(thinking) if last else None)
        head = _think_parts(pb, out, think, m.get("reasoning"), f"assistant message {i}")
        _reply_text(pb, out, head, text)

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()


def s2t_dialogue_prompt(pb, audio, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
    """Speech-to-text dialogue, one turn (SPEC §6.2.9)::

        T("<|im_start|>user\\n") A(audio) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
    """
    return s2t_dialogue_multiturn_prompt(pb, [{"role": "user", "audio": audio}], thinking=thinking,
                                         system_prompt=system_prompt)


def s2t_dialogue_example(pb, audio, answer: str, *, thinking: bool = False, reasoning: str | None = None,
                         system_prompt: str | None = None) -> TokenGrid:
    reply = {"role": "assistant", "text": answer, "thinking": bool(thinking), "reasoning": reasoning}
    return s2t_dialogue_multiturn_example(pb, [{"role": "user", "audio": audio}, reply], system_prompt=system_prompt)


def text_dialogue_prompt(pb, text: str, *, thinking: bool = False, system_prompt: str | None = None) -> torch.Tensor:
    """Text dialogue, one turn (SPEC §6.2.10)::

        T("<|im_start|>user\\n") T(text) T("<|im_end|>\\n") T("<|im_start|>assistant\\n") <think block>
    """
    return s2t_dialogue_multiturn_prompt(pb, [{"role": "user", "text": text}], thinking=thinking,
                                         system_prompt=system_prompt)


def text_dialogue_example(pb, text: str, answer: str, *, thinking: bool = False, reasoning: str | None = None,
                          system_prompt: str | None = None) -> TokenGrid:
    reply = {"role": "assistant", "text": answer, "thinking": bool(thinking), "reasoning": reasoning}
    return s2t_dialogue_multiturn_example(pb, [{"role": "user", "text": text}, reply], system_prompt=system_prompt)


def chat_example(pb, messages: Sequence[Mapping], *, voice=None, system_prompt: str | None = None,
                 thinking: bool = False) -> TokenGrid:
    """A chat of SPEC §8.4 (the data loader's chat JSONL): each assistant message with ``"audio"`` is spoken
    (``S(text, audio)``, as in spoken dialogue), one without is text (with its ``thinking``/``reasoning``); all
    assistant turns supervised. Text-only replies with ``voice`` are refused (the voice block is for speech)."""
    out = Parts(pb).ctx(*_voice_block(pb, voice))

    def assistant(i, m, last, out):
        out.ctx(pb.T("<|im_start|>assistant\n"))
        if m.get("audio") is not None:
            text, audio = _speech_reply(pb, i, m)
            head = _think_parts(pb, out, m.get("thinking"), m.get("reasoning"), f"assistant message {i}")
            _speech_response(pb, out, head, text, audio, f"assistant message {i} audio")
        else:
            think = m.get("thinking", bool(thinking) if last else None)
            head = _think_parts(pb, out, think, m.get("reasoning"), f"assistant message {i}")
            _reply_text(pb, out, head, _text_reply(i, m))

    _conversation(pb, messages, system_prompt, assistant, final="assistant", out=out)
    return out.grid()
