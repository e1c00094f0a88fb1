"""Reading a generation back: text and the speech span (SPEC §5.5), in one go or group by group.

``generated`` is the ``(1 + C, 4·groups)`` block of new columns (stop group included). Only column 0 of each
group's text row is read, so both the reference layout (row 0 repeats the token in its 4 columns) and the
prompt layout (-100 fillers) work.

Text: the text tokens of every group, except the last group when it is a stop token (the reference always drops
the last group and so loses a real token when the length limit ends generation, SPEC §10.1.9). The markers
``<|empty|>``, ``<|eot|>``, ``<|eostm|>`` and ``<|sostm|>`` are removed *before* decoding (the reference
decodes, then deletes the marker strings; removing ids first keeps a character whose bytes straddle an audio
chunk intact and is otherwise identical), then the text is stripped. (The reference keeps ``<|sostm|>`` in the
text; it is a marker, never content, so we drop it too.)

Audio: the groups whose text token is ``<|empty|>`` inside the span that starts after the first generated
``<|sostm|>`` (``audio_open=False``), at the first group (``audio_open=True``: the prompt opened the span) or
by the reference rule (``None``: after the first ``<|sostm|>`` if one was generated, else at the first group),
and ends before the first later ``<|eostm|>``. Each kept group is one patch of G frames; the result is codes
``(frames, C)``. Worked example, G = 4, ``audio_open=None``, stop ids ``{eostm}``::

    text row (col 0 of each group)   Hi  </think>  sostm  ok  empty  empty  eot  empty  eostm
    text                             "Hi</think>ok"            (markers removed, stop group dropped)
    audio                            the 3 empty groups after sostm -> codes (12, C)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import PromptError

__all__ = ["Layout", "ParsedOutput", "ParsedDelta", "parse_output", "OutputParser", "split_thinking"]


@dataclass
class ParsedOutput:
    """Text and speech read from a generation. ``codes``: LongTensor (frames, C), possibly 0 frames."""

    text: str
    codes: torch.Tensor
    stopped: bool  # the last group was a stop token
    groups: int  # generated groups read

    @property
    def thinking(self) -> str | None:
        return split_thinking(self.text)[0]

    @property
    def answer(self) -> str:
        return split_thinking(self.text)[1]


@dataclass
class ParsedDelta:
    """What one :meth:`OutputParser.feed` adds: a text piece and the new audio patches (frames, C) or None."""

    text: str = ""
    codes: torch.Tensor | None = None
    done: bool = False


def split_thinking(text: str) -> tuple[str | None, str]:
    """``(thinking, answer)``: the text before ``</think>`` (a leading ``<think>`` removed) and after it.

    ``("", "A dog barks.")`` for ``"<think>\\n\\n</think>\\nA dog barks."``; ``(None, text)`` without ``</think>``.
    """
    head, sep, tail = text.partition("</think>")
    if not sep:
        return None, text.strip()
    head = head.strip()
    if head.startswith("<think>"):
        head = head[len("<think>"):]
    return head.strip(), tail.strip()


@dataclass(frozen=True)
class Layout:
    """What the grid needs from the LM config: per-channel empty ids and the group size."""

    empty_ids: tuple[int, ...]
    group_size: int = 4

    @property
    def channels(self) -> int:
        return len(self.empty_ids)

    @classmethod
    def of(cls, spec) -> Layout:
        """From a Layout, an :class:`~mimo_audio.config.LMConfig`, or a tuple ``(empty_ids, group_size)``."""
        if isinstance(spec, Layout):
            return spec
        if hasattr(spec, "empty_ids") and hasattr(spec, "group_size"):
            return cls(tuple(int(x) for x in spec.empty_ids), int(spec.group_size))
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls(tuple(int(x) for x in spec[0]), int(spec[1]))
        raise TypeError("layout must be a Layout, an LMConfig or a tuple (empty_ids, group_size)")

    def empty_column(self) -> torch.Tensor:
        return torch.tensor(self.empty_ids, dtype=torch.long).unsqueeze(1)


def _check_block(generated, channels: int, g: int) -> torch.Tensor:
    t = torch.as_tensor(generated)
    if t.dim() != 2 or t.shape[0] != 1 + channels or t.shape[1] % g:
        raise PromptError(
            f"generated columns must have shape ({1 + channels}, multiple of {g}), got {tuple(t.shape)}"
        )
    return t.to(torch.long)


class OutputParser:
    """Streaming form of :func:`parse_output`: feed groups as they are generated, get text and audio deltas.

    The concatenated deltas (``feed`` pieces and the ``finish`` piece) equal :func:`parse_output` on the whole
    block: text pieces hold back trailing whitespace and incomplete UTF-8 until they are settled, a stop token
    is held back until it is known to be the last group, and with ``audio_open=None`` audio that precedes any
    ``<|sostm|>`` is held until one arrives (it is then discarded) or the stream ends (then released).
    """

    def __init__(self, tokenizer, layout, *, stop_ids: Sequence[int] = (), audio_open: bool | None = None):
        self.tok = tokenizer
        ids = tokenizer.ids
        lay = Layout.of(layout)
        self.empty_ids, self.g, self.C = lay.empty_ids, lay.group_size, lay.channels
        self._limit = lay.empty_column()
        self.stop_ids = frozenset(int(s) for s in stop_ids)
        self.markers = frozenset((ids.empty, ids.eot, ids.eostm, ids.sostm))
        self.ids = ids
        self.audio_open = audio_open
        self._kept: list[int] = []  # text ids (markers removed)
        self._pending: int | None = None  # a stop token not yet known to be last
        self._emitted = ""
        self._settled_len = 0  # len(self._kept) when the text was last decoded
        # audio span state: "wait" (before sostm), "live", "ended"
        self._state = "live" if audio_open is True else "wait"
        self._held: list[tuple[torch.Tensor, int]] = []  # audio=None: (patch, group) before any sostm
        self._held_ended = False
        self._patches: list[torch.Tensor] = []  # every patch released so far
        self.groups = 0
        self.finished = False

    @property
    def done(self) -> bool:
        """True when the last group fed was a stop token."""
        return self._pending is not None

    def feed(self, group: torch.Tensor) -> ParsedDelta:
        """Feed one or more new groups ``(1 + C, k·G)``; returns the text and audio they settle."""
        if self.finished:
            raise PromptError("this OutputParser is finished; make a new one per generation")
        block = _check_block(group, self.C, self.g)
        new: list[torch.Tensor] = []
        for j in range(block.shape[1] // self.g):
            cols = block[:, j * self.g:(j + 1) * self.g]
            self._step(int(cols[0, 0]), cols[1:], self.groups, new)
            self.groups += 1
        return ParsedDelta(self._text_delta(final=False), torch.cat(new, dim=1).T.contiguous() if new else None, self.done)

    def finish(self) -> ParsedDelta:
        """End of generation: the remaining text and any held audio."""
        if self.finished:
            raise PromptError("finish() was already called on this OutputParser")
        self.finished = True
        new: list[torch.Tensor] = []
        if self._state == "wait" and self.audio_open is None:  # no <|sostm|> came: the held audio is the reply's
            new = [self._valid(audio, index) for audio, index in self._held]
            self._patches += new
            self._held = []
        codes = torch.cat(new, dim=1).T.contiguous() if new else None
        return ParsedDelta(self._text_delta(final=True), codes, True)

    @property
    def output(self) -> ParsedOutput:
        """Everything read so far (after :meth:`finish`, equal to :func:`parse_output`)."""
        text = self._decode(final=True) if self.finished else self._emitted
        codes = torch.cat(self._patches, dim=1).T.contiguous() if self._patches else torch.zeros(0, self.C, dtype=torch.long)
        return ParsedOutput(text, codes, self.done, self.groups)

    # ------------------------------------------------------------------ internals
    def _step(self, token: int, audio: torch.Tensor, index: int, new: list) -> None:
        if self._pending is not None:  # the held stop token was not the last group after all
            if self._pending not in self.markers:
                self._kept.append(self._pending)
            self._pending = None
        if token in self.stop_ids:
            self._pending = token
        elif token not in self.markers:
            self._kept.append(token)
        ids = self.ids
        if self._state == "wait":
            if token == ids.sostm:
                self._state, self._held = "live", []
            elif self.audio_open is None and not self._held_ended:
                if token == ids.eostm:
                    self._held_ended = True
                elif token == ids.empty:  # checked when released: a later <|sostm|> discards it
                    self._held.append((audio, index))
        elif self._state == "live":
            if token == ids.eostm:
                self._state = "ended"
            elif token == ids.empty:
                patch = self._valid(audio, index)
                new.append(patch)
                self._patches.append(patch)

    def _valid(self, audio: torch.Tensor, index: int) -> torch.Tensor:
        bad = (audio < 0) | (audio >= self._limit)
        if bad.any():
            ch, f = (int(x) for x in bad.nonzero()[0])
            raise PromptError(
                f"generated audio group {index} holds code {int(audio[ch, f])} on channel {ch}, outside "
                f"[0, {self.empty_ids[ch]}); the generation is not a MiMo-Audio patch (check the empty ids/layout)"
            )
        return audio

    def _decode(self, final: bool) -> str:
        text = self.tok.decode(self._kept, skip_special=False)
        return text.strip() if final else text.lstrip()

    def _text_delta(self, final: bool) -> str:
        if not final and len(self._kept) == self._settled_len:  # no new text ids (e.g. an audio group)
            return ""
        self._settled_len = len(self._kept)
        if final:
            settled = self._decode(final=True)
        else:
            settled = self._decode(final=False).rstrip("\ufffd").rstrip()
        if not settled.startswith(self._emitted):  # cannot happen with byte-level decoding; keep it safe
            return ""
        delta = settled[len(self._emitted):]
        self._emitted = settled
        return delta


def parse_output(generated: torch.Tensor, tokenizer, layout, *, stop_ids: Sequence[int] = (),
                 audio_open: bool | None = None) -> ParsedOutput:
    """Text and speech codes ``(frames, C)`` of a generation ``(1 + C, 4·groups)`` (see the module docstring).

    ``tokenizer`` is a :class:`~mimo_audio.text.TextTokenizer`; ``layout`` a Layout, LMConfig or
    ``(empty_ids, group_size)``; ``stop_ids`` the task's stop ids (only a final stop group is dropped).
    """
    parser = OutputParser(tokenizer, layout, stop_ids=stop_ids, audio_open=audio_open)
    parser.feed(generated)
    parser.finish()
    return parser.output


def transcript_separator(a: str, b: str) -> str:
    """The separator between two transcript pieces: nothing for CJK or existing spaces, else a space."""
    if not a or not b or a[-1].isspace() or b[0].isspace() or _cjk(a[-1]) or _cjk(b[0]):
        return ""
    return " "


def join_transcript(a: str, b: str) -> str:
    """Two transcript pieces as one text (each stripped; see :func:`transcript_separator`)."""
    a, b = a.strip(), b.strip()
    if not a or not b:
        return a or b
    return a + transcript_separator(a, b) + b


def _cjk(ch: str) -> bool:
    return "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uff00" <= ch <= "\uffef"
