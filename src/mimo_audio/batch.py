"""The batch core's data and runner: requests, results, and the loop that streams them out of the generator.

:class:`TaskRequest` is what :meth:`MimoAudio.prepare <mimo_audio.pipeline.MimoAudio.prepare>` makes;
:class:`RequestStream` runs them as one generation batch over the parts in an :class:`Engine` (the LM, the codec,
the text tokenizer; it knows nothing of the facade), parses each row's new groups into text deltas and speech
codes as they arrive, decodes speech (whole at the end, or piece by piece through the codec's streaming decoder),
and yields :class:`Piece` objects ending with one ``done`` piece carrying the :class:`Reply`. Requests can join a
running stream (:meth:`RequestStream.add`): they start at the next group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import MimoAudioError, PromptError
from .output import OutputParser, split_thinking

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class Engine:
    """The parts a :class:`RequestStream` runs on: the LM, the audio tokenizer (codec), the LM's text tokenizer,
    the streaming decoder's settings (code frames per decoder run, left context and lookahead in code frames,
    SPEC §2.7), and whether the step functions are compiled (:func:`mimo_audio.generate.step_functions`)."""

    lm: Any
    codec: Any
    text: Any
    stream_chunk_frames: int = 20
    stream_left_context: int = 250
    stream_lookahead: int = 40
    compile: bool | None = None

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.codec, "sample_rate", SAMPLE_RATE))

    def parser(self, req: TaskRequest) -> OutputParser:
        return OutputParser(self.text, self.lm.config, stop_ids=req.config.stop_ids, audio_open=req.span_open)


# ================================================================================================ results
@dataclass
class Reply:
    """What a task produced.

    ``text``: the generated text (special markers removed, SPEC §5.5); for thinking runs it includes the
    ``<think>…</think>`` section (see :attr:`answer` / :attr:`thinking`). ``audio``: FloatTensor (samples,) at
    ``sample_rate`` (24 kHz) or None for text-only tasks. ``codes``: the generated audio codes (frames, 8) or None.
    ``finish_reason``: "stop" (a stop token), "length" (max_new_tokens or the model's positions) or "cancelled".
    ``prompt_tokens`` / ``new_tokens`` count LM positions (groups of 4 audio frames).
    """

    text: str
    audio: torch.Tensor | None = None
    sample_rate: int = SAMPLE_RATE
    codes: torch.Tensor | None = None
    finish_reason: str = "stop"
    task: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def thinking(self) -> str:
        """The content of a ``<think>…</think>`` section at the start of :attr:`text` ("" when there is none)."""
        return split_thinking(self.text)[0] or ""

    @property
    def answer(self) -> str:
        """:attr:`text` without a leading ``<think>…</think>`` section."""
        return split_thinking(self.text)[1]

    @property
    def duration(self) -> float:
        """Seconds of audio (0.0 for text replies)."""
        return 0.0 if self.audio is None else self.audio.numel() / self.sample_rate

    def as_message(self) -> dict:
        """This reply as an assistant message for the next :meth:`MimoAudio.chat` call.

        The generated codes travel with it (key ``"codes"``), so the history is not re-encoded.
        """
        msg: dict[str, Any] = {"role": "assistant", "text": self.answer}
        if self.codes is not None and self.codes.numel():
            msg["codes"] = self.codes
            if self.audio is not None and self.audio.numel():
                msg["audio"] = (self.audio, self.sample_rate)
        return msg

    def save(self, path: str | os.PathLike) -> str:
        """Write :attr:`audio` to ``path`` (.wav/.flac, atomically); returns the path."""
        if self.audio is None:
            raise MimoAudioError("this reply has no audio to save (the task produced text only)")
        from .audio import save_audio

        return str(save_audio(path, self.audio, self.sample_rate))


@dataclass
class Speech(Reply):
    """A reply that always carries audio (what :meth:`MimoAudio.speak` returns)."""


@dataclass
class Piece:
    """One streamed increment of a reply.

    ``text``: the new text (may be ""); ``audio``: new samples at 24 kHz or None; ``done``: the last piece of
    this request, with the complete :class:`Reply` in ``reply``. ``index``: the request's position in its batch.
    Concatenating every piece's ``text`` gives ``reply.text``; concatenating the audio gives ``reply.audio``.
    """

    text: str = ""
    audio: torch.Tensor | None = None
    done: bool = False
    reply: Reply | None = None
    index: int = 0


# ================================================================================================ request
@dataclass
class TaskRequest:
    """A validated, ready-to-run request: the prompt grid, its generation config and how to read the output.

    Made by :meth:`MimoAudio.prepare`; run by :meth:`MimoAudio.run` / :meth:`MimoAudio.stream`.
    """

    task: str
    grid: torch.Tensor  # (1 + audio channels, group_size * prompt_groups) LongTensor, on the CPU
    config: Any  # generate.GenerationConfig
    audio_out: bool  # the reply carries speech
    span_open: bool  # the prompt ends inside an open <|sostm|> span (audio starts at the first new group)
    prompt_groups: int  # LM positions of the prompt: grid columns // the model's group_size
    max_audio_frames: int | None = None  # trim the reply's audio to this many code frames (continuation)


# ================================================================================================ streaming
class _ChunkedDecoder:
    """The codec's :class:`~mimo_audio.codec.StreamingDecoder` fed in chunks of ``chunk_frames`` code frames
    (a decoder run per generated patch would cost more than it saves in latency)."""

    def __init__(self, codec, left_context: int, lookahead: int, chunk_frames: int):
        from .codec import StreamingDecoder

        self._decoder = StreamingDecoder(codec, left_context, lookahead)
        self._chunk = max(1, chunk_frames)
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0

    def push(self, codes: torch.Tensor | None) -> list[torch.Tensor]:
        """Add codes ``(frames, C)``; returns the waveform pieces that became ready."""
        if codes is None or codes.shape[0] == 0:
            return []
        self._buffer.append(codes)
        self._buffered += int(codes.shape[0])
        if self._buffered < self._chunk:
            return []
        return self._send(last=False)

    def close(self) -> list[torch.Tensor]:
        """End of the codes: decode what is buffered and flush the held-back audio."""
        if self._buffer:
            return self._send(last=True)
        tail = self._decoder.flush()
        return [] if tail is None else [tail]

    def _send(self, *, last: bool) -> list[torch.Tensor]:
        chunk = torch.cat(self._buffer)
        self._buffer, self._buffered = [], 0
        piece = self._decoder.push(chunk, last=last)
        return [] if piece is None else [piece]


def _check_request(i: int, r: Any) -> None:
    if not isinstance(r, TaskRequest):
        raise PromptError(f"request {i} is a {type(r).__name__}; make requests with MimoAudio.prepare()")


def _cat(pieces: list[torch.Tensor]) -> torch.Tensor | None:
    pieces = [p.detach().float().cpu() for p in pieces if p is not None and p.numel()]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


class _Row:
    """Per-request state of a running batch: output parser, audio decoder, limits."""

    def __init__(self, engine: Engine, req: TaskRequest, decode: str):
        self.req = req
        self.parser = engine.parser(req)
        self.decoder = None
        if req.audio_out and decode == "stream":
            self.decoder = _ChunkedDecoder(engine.codec, engine.stream_left_context, engine.stream_lookahead,
                                           engine.stream_chunk_frames)
        self.frames = 0
        self.audio: list[torch.Tensor] = []
        self.finished = False
        self.cancelled = False
        self.full = False  # reached max_audio_frames

    def take_codes(self, codes: torch.Tensor | None) -> torch.Tensor | None:
        """Apply the audio-frame limit (continuation) to new codes."""
        if codes is None or not self.req.audio_out:
            return None
        limit = self.req.max_audio_frames
        if limit is not None:
            codes = codes[: max(0, limit - self.frames)]
            if self.frames + codes.shape[0] >= limit:
                self.full = True
        self.frames += int(codes.shape[0])
        return codes if codes.shape[0] else None


class RequestStream:
    """A running batch of :class:`TaskRequest`: iterate for ``(index, Piece)``; :meth:`cancel` stops one request,
    :meth:`add` admits one more into the running batch.

    Made by :meth:`MimoAudio.stream` (and used by :meth:`MimoAudio.run`) from an :class:`Engine`. Each request
    ends with exactly one piece with ``done=True`` whose ``reply`` is the complete :class:`Reply`.
    """

    def __init__(self, engine: Engine, requests: Sequence[TaskRequest], *, decode: str = "stream",
                 emit: bool = True, capacity: int | None = None):
        from .generate import stream_generate

        requests = list(requests)
        if not requests:
            raise PromptError("no requests to run")
        for i, r in enumerate(requests):
            _check_request(i, r)
        self.engine = engine
        self.requests = requests
        self.decode = decode
        self.emit = emit
        self.rows = [_Row(engine, r, decode) for r in requests]
        self._gen = stream_generate(engine.lm, [r.grid for r in requests], [r.config for r in requests],
                                    empty_id=engine.text.ids.empty, capacity=capacity, compile=engine.compile)
        self._iter: Iterator | None = None

    def add(self, request: TaskRequest) -> int:
        """Admit ``request`` into the running batch (it makes its first group at the next step); returns its index."""
        _check_request(len(self.requests), request)
        if self._gen is None:
            raise MimoAudioError("this stream is closed; start a new one")
        index = self._gen.add(request.grid, request.config)
        self.requests.append(request)
        self.rows.append(_Row(self.engine, request, self.decode))
        return index

    def __len__(self) -> int:
        return len(self.requests)

    def cancel(self, index: int) -> None:
        """Stop request ``index``: it ends at the next step with ``finish_reason="cancelled"``."""
        row = self.rows[index]
        if not row.finished:
            row.cancelled = True
            self._gen.cancel(index)

    def close(self) -> None:
        """Stop every unfinished request (frees the generation state)."""
        for i, row in enumerate(self.rows):
            if not row.finished:
                self.cancel(i)
        self._gen = None

    def __iter__(self) -> Iterator[tuple[int, Piece]]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[tuple[int, Piece]]:
        gen = self._gen
        while gen is not None and not all(r.finished for r in self.rows):
            try:
                step = gen.step()
            except StopIteration:  # every row the engine knows has ended; rows added meanwhile go on next step
                step = [None] * len(self.rows)
            live = [i for i, g in enumerate(step) if g is not None and not self.rows[i].finished]
            host = {}
            if live:  # one device->host copy for the whole step, then split into rows
                host = dict(zip(live, torch.stack([step[i] for i in live]).cpu().unbind(0)))
            for i, group in enumerate(step):
                row = self.rows[i]
                if row.finished:
                    continue
                if group is None:
                    yield i, self._finish(i)
                    continue
                delta = row.parser.feed(host[i])
                codes = row.take_codes(delta.codes)
                audio = self._audio(row, codes)
                if row.full:
                    gen.cancel(i)
                if self.emit and (delta.text or audio is not None):
                    yield i, Piece(text=delta.text, audio=audio, index=i)
            gen = self._gen
        for i, row in enumerate(self.rows):
            if not row.finished:
                yield i, self._finish(i)

    def _audio(self, row: _Row, codes: torch.Tensor | None) -> torch.Tensor | None:
        if row.decoder is None or codes is None:
            return None
        audio = _cat(row.decoder.push(codes))
        if audio is not None:
            row.audio.append(audio)
        return audio

    def _finish(self, i: int) -> Piece:
        row = self.rows[i]
        row.finished = True
        last = row.parser.finish()
        codes = row.take_codes(last.codes)
        audio_parts = []
        if row.decoder is not None:
            if codes is not None:
                audio_parts += row.decoder.push(codes)
            audio_parts += row.decoder.close()
        tail = _cat(audio_parts)
        if tail is not None:
            row.audio.append(tail)
        out = row.parser.output
        req = row.req
        if row.cancelled and not out.stopped:
            reason = "cancelled"
        else:
            reason = "stop" if out.stopped else "length"
        codes_all = out.codes
        if req.max_audio_frames is not None:
            codes_all = codes_all[: req.max_audio_frames]
        wav = None
        if req.audio_out:
            if row.decoder is not None:
                wav = _cat(row.audio)
            elif codes_all.shape[0]:
                codec = self.engine.codec
                wav = codec.decode(codes_all.to(codec.device)).detach().float().cpu()
            if wav is None:
                wav = torch.zeros(0)
        reply = Reply(text=out.text, audio=wav, sample_rate=self.engine.sample_rate,
                      codes=codes_all if req.audio_out else None, finish_reason=reason, task=req.task,
                      prompt_tokens=req.prompt_groups, new_tokens=out.groups)
        return Piece(text=last.text if self.emit else "", audio=tail if self.emit else None, done=True,
                     reply=reply, index=i)
