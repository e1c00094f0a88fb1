"""Prompt layout: segments -> the ``(9, columns)`` grid (SPEC §4). The task formats live in :mod:`mimo_audio.tasks`.

Pure layout code: no model, no randomness (templates are parameters with fixed defaults, SPEC §13.6).
Output parsing (SPEC §5.5) lives in :mod:`mimo_audio.output` and is re-exported here.

The grid (SPEC §4.1)
--------------------
Row 0 is the text channel, rows 1..C the audio channels (C = 8). Every ``G = group_size = 4`` columns form
one group, which is one LM position; only column 0 of a group's text row is read, the other three hold
the filler ``-100``. Rows 1..C hold the channel's empty id (``E``: 1024, 1024, 128, …) except in audio
groups, which carry one patch of G frames. Worked example, ``T("x") + A(codes with 5 frames)`` where the
5 frames ``f0..f4`` are padded to 8 by repeating ``f4``::

    column  0  1  2  3 | 4    5  6  7 | 8     9  10 11 | 12    13 14 15 | 16   17 18 19
    row 0   x  -  -  - | sosp -  -  - | empty -  -  -  | empty -  -  -  | eosp -  -  -      (- = -100)
    rows 1+ E  E  E  E | E    E  E  E | f0    f1 f2 f3 | f4    f4 f4 f4 | E    E  E  E

Segments, each tokenized on its own (BPE does not merge across segment boundaries):

- ``T(s)``: text; ``n`` tokens -> ``4n`` columns (empty string -> 0 columns).
- ``A(codes)``: ``<|sosp|>``, one ``<|empty|>`` group per patch, ``<|eosp|>``.
- ``S(text, codes)`` (SPEC §4.4): ``<|sostm|>``, then 5 text tokens / 5 patches alternately (``<|eot|>``
  appended to the last text chunk), leftover text, leftover patches, ``<|eostm|>``. For 7 text tokens
  ``a..g`` and 12 patches ``p0..p11`` the text row reads::

      sostm a b c d e | empty×5 (p0..p4) | f g eot | empty×5 (p5..p9) | empty×2 (p10, p11) | eostm

Use :class:`PromptBuilder` (tokenizer + layout) to build task prompts::

    pb = PromptBuilder(tokenizer, lm_config)           # or PromptBuilder(tokenizer, (empty_ids, 4))
    grid = pb.asr(codes)                               # LongTensor (9, 4·groups): the asr entry of the task table
    grid = pb.build("tts", text="Hello there.")        # by task name
    grid = pb.join([pb.T("<|im_start|>user\n"), pb.A(codes), pb.T("<|im_end|>\n")])   # segments by hand

Every task method (``pb.asr``, ``pb.tts``, …) is the prompt builder of that entry of
:data:`mimo_audio.tasks.TASKS`; the names of the task table (``TASKS``, ``task_spec``, ``stop_ids``, templates, …)
are importable from here too, for older code (``prompt.TASKS`` holds the tasks that have a prompt).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from .errors import PromptError
from .output import Layout, OutputParser, ParsedDelta, ParsedOutput, parse_output, split_thinking
from .text import SpecialIds, TextTokenizer

__all__ = [
    "Layout", "PromptBuilder", "text_grid", "audio_grid", "stream_grid", "pad_codes", "check_codes",
    "parse_output", "OutputParser", "ParsedOutput", "ParsedDelta", "split_thinking", "FILLER",
]

FILLER = -100

# ---------------------------------------------------------------------------------------------------------
# Pure segment functions (Layout, which the output parser shares, lives in output.py)
# ---------------------------------------------------------------------------------------------------------
def text_grid(ids: Sequence[int], layout: Layout) -> torch.Tensor:
    """``T``: each token followed by G−1 fillers on row 0, empty ids below. ``[t0, t1]`` with G = 4 gives::

        row 0   t0 -100 -100 -100 t1 -100 -100 -100
        row c   E_c (8 columns)
    """
    n, g = len(ids), layout.group_size
    grid = torch.empty(1 + layout.channels, n * g, dtype=torch.long)
    row0 = torch.full((n, g), FILLER, dtype=torch.long)
    if n:
        row0[:, 0] = torch.tensor([int(i) for i in ids], dtype=torch.long)
    grid[0] = row0.reshape(-1)
    grid[1:] = layout.empty_column()
    return grid


def check_codes(codes, layout: Layout, what: str = "audio") -> torch.Tensor:
    """Validate audio codes ``(frames, C)``: integers, at least one frame, each below its channel's empty id."""
    if codes is None:
        raise PromptError(f"{what} is missing; pass the audio (encoded codes of shape (frames, {layout.channels}))")
    t = torch.as_tensor(codes)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise PromptError(
            f"{what} must be integer codes of shape (frames, {layout.channels}), got a {t.dtype} tensor; "
            "encode the waveform with AudioTokenizer.encode first"
        )
    if t.dim() != 2 or t.shape[1] != layout.channels:
        raise PromptError(
            f"{what} codes must have shape (frames, {layout.channels}), got {tuple(t.shape)}; "
            f"encode with num_quantizers={layout.channels}"
        )
    if t.shape[0] == 0:
        raise PromptError(f"{what} has no frames; pass a non-empty clip")
    t = t.to(torch.long)
    limit = torch.tensor(layout.empty_ids, dtype=torch.long)
    bad = (t < 0) | (t >= limit)
    if bad.any():
        frame, ch = (int(x) for x in bad.nonzero()[0])
        raise PromptError(
            f"{what} code {int(t[frame, ch])} at frame {frame}, channel {ch} is outside [0, {int(limit[ch])}); "
            "pass codes from the audio tokenizer (first 8 codebooks)"
        )
    return t


def pad_codes(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pad ``(frames, C)`` to a multiple of ``group_size`` frames by repeating the last frame (SPEC §1.4)::

        >>> pad_codes(torch.arange(5)[:, None], 4).flatten().tolist()
        [0, 1, 2, 3, 4, 4, 4, 4]
    """
    extra = (-codes.shape[0]) % group_size
    if extra:
        codes = torch.cat([codes, codes[-1:].expand(extra, -1)], dim=0)
    return codes


def audio_grid(codes: torch.Tensor, layout: Layout, *, empty: int, sosp: int | None = None,
               eosp: int | None = None) -> torch.Tensor:
    """``A``: one ``<|empty|>`` group per patch of padded ``codes`` (frames, C); optional sosp/eosp groups.

    With markers, 5 frames give ``sosp | empty (f0..f3) | empty (f4 f4 f4 f4) | eosp`` (16 + 4 columns).
    Without markers (inside ``S``) only the ``<|empty|>`` groups remain. ``codes`` must be validated already.
    """
    g = layout.group_size
    padded = pad_codes(codes, g)
    patches = padded.shape[0] // g
    body = text_grid([empty] * patches, layout)
    body[1:] = padded.T
    parts = []
    if sosp is not None:
        parts.append(text_grid([sosp], layout))
    parts.append(body)
    if eosp is not None:
        parts.append(text_grid([eosp], layout))
    return torch.cat(parts, dim=1)


def stream_grid(text_ids: Sequence[int], codes: torch.Tensor, layout: Layout, ids: SpecialIds, *,
                text_chunk: int = 5, audio_chunk: int = 5, open_span: bool = True, close: bool = True,
                end_text: bool = True) -> torch.Tensor:
    """``S(text, codes)`` (SPEC §4.4): interleaved chunks of ``text_chunk`` tokens and ``audio_chunk`` patches.

    ``open_span``/``close`` add the ``<|sostm|>``/``<|eostm|>`` groups and ``end_text`` appends ``<|eot|>`` to
    the last text chunk (all True for the reference segment; speech continuation turns them off).
    """
    g = layout.group_size
    tokens = [int(i) for i in text_ids]
    chunks = [tokens[i:i + text_chunk] for i in range(0, len(tokens), text_chunk)]
    if end_text:
        if chunks:
            chunks[-1] = [*chunks[-1], ids.eot]
        else:
            chunks = [[ids.eot]]
    padded = pad_codes(codes, g)
    step = audio_chunk * g
    audio = [padded[i:i + step] for i in range(0, padded.shape[0], step)]
    parts = [text_grid([ids.sostm], layout)] if open_span else []
    for i in range(max(len(chunks), len(audio))):
        if i < len(chunks):
            parts.append(text_grid(chunks[i], layout))
        if i < len(audio) and i < len(chunks):
            parts.append(audio_grid(audio[i], layout, empty=ids.empty))
    for a in audio[len(chunks):]:
        parts.append(audio_grid(a, layout, empty=ids.empty))
    if close:
        parts.append(text_grid([ids.eostm], layout))
    return torch.cat(parts, dim=1) if parts else text_grid([], layout)


# ---------------------------------------------------------------------------------------------------------
# The builder: segments of one tokenizer and layout; task formats come from the task table
# ---------------------------------------------------------------------------------------------------------
class PromptBuilder:
    """Builds the ``(1 + C, 4·groups)`` prompt grid of every task (SPEC §6) for one tokenizer and layout.

    Audio arguments are codes ``(frames, C)`` (LongTensor, unpadded; padding repeats the last frame).
    Every task method returns the grid; :meth:`build` calls one by task name. ``T``/``A``/``S`` below are the
    segments of the module docstring.
    """

    def __init__(self, tokenizer: TextTokenizer, layout):
        self.tok = tokenizer
        self.ids: SpecialIds = tokenizer.ids
        self.layout = Layout.of(layout)

    # ----------------------------------------------------------------- segments
    def T(self, text: str) -> torch.Tensor:
        """Text segment: ``text`` tokenized on its own (special tokens in it become single ids)."""
        return text_grid(self.tok.encode(text), self.layout)

    def A(self, codes, what: str = "audio", *, close: bool = True) -> torch.Tensor:
        """Audio segment with ``<|sosp|>`` and (unless ``close=False``) ``<|eosp|>``."""
        c = check_codes(codes, self.layout, what)
        return audio_grid(c, self.layout, empty=self.ids.empty, sosp=self.ids.sosp,
                          eosp=self.ids.eosp if close else None)

    def audio(self, codes, what: str = "audio") -> torch.Tensor:
        """Audio patches without sosp/eosp markers (the form used inside ``S``)."""
        return audio_grid(check_codes(codes, self.layout, what), self.layout, empty=self.ids.empty)

    def S(self, text: str, codes, what: str = "audio", **kw) -> torch.Tensor:
        """Interleaved segment ``S(text, codes)``; keyword arguments go to :func:`stream_grid`."""
        c = check_codes(codes, self.layout, what)
        return stream_grid(self.tok.encode(text), c, self.layout, self.ids, **kw)

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=1) if parts else text_grid([], self.layout)

    def build(self, task: str, **kwargs) -> torch.Tensor:
        """The prompt of ``task`` (a key of :data:`mimo_audio.tasks.TASKS`) with that task's arguments."""
        from .tasks import get_task

        return get_task(task).prompt(self, **kwargs)

    def __getattr__(self, name: str):
        """``pb.<task>(...)``: the prompt builder of the task table's entry ``name`` bound to this builder."""
        if name.startswith("_"):
            raise AttributeError(name)
        from .tasks import TASKS

        task = TASKS.get(name)
        if task is None or task.build_prompt is None:
            raise AttributeError(f"PromptBuilder has no attribute {name!r} (and no task of that name has a prompt)")
        return functools.partial(task.build_prompt, self)

    # ----------------------------------------------------------------- output
    def parse(self, generated: torch.Tensor, *, task: str | None = None, stop_ids: Sequence[int] | None = None,
              audio_open: bool | None = None) -> ParsedOutput:
        """:func:`~mimo_audio.output.parse_output` with this builder's tokenizer and layout.

        With ``task``, its stop ids and ``audio_open`` are the defaults.
        """
        stops, audio_open = self._parse_defaults(task, stop_ids, audio_open)
        return parse_output(generated, self.tok, self.layout, stop_ids=stops, audio_open=audio_open)

    def parser(self, *, task: str | None = None, stop_ids: Sequence[int] | None = None,
               audio_open: bool | None = None) -> OutputParser:
        """A streaming :class:`~mimo_audio.output.OutputParser` that agrees with :meth:`parse`."""
        stops, audio_open = self._parse_defaults(task, stop_ids, audio_open)
        return OutputParser(self.tok, self.layout, stop_ids=stops, audio_open=audio_open)

    def _parse_defaults(self, task, stops, audio_open):
        if task is not None:
            from .tasks import get_task

            spec = get_task(task)
            stops = spec.stop_ids(self.ids) if stops is None else stops
            audio_open = spec.audio_open if audio_open is None else audio_open
        return tuple(stops or ()), audio_open


_MOVED = frozenset((
    "TaskSpec", "TASKS", "task_spec", "stop_ids", "chat_task", "check_examples", "normalize_tts_text",
    "detect_language", "multiple_choice", "ASR_TEMPLATES", "TTS_TEMPLATES", "DEFAULT_ASR_TEMPLATE",
    "DEFAULT_TTS_TEMPLATE", "TTS_USER_FORMAT", "TTS_INSTRUCT_FORMAT", "SYS_STYLE", "SYS_STYLE_CLONE", "VOICE_INTRO",
    "DEFAULT_SYSTEM_PROMPT", "NO_THINK", "THINK", "ICL_PREFIX", "MC_SUFFIX", "ROLES",
))


def __getattr__(name):
    """The task-table names that used to live here, importable from their old path."""
    if name in _MOVED:
        from . import tasks

        return tasks.PROMPT_TASKS if name == "TASKS" else getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
