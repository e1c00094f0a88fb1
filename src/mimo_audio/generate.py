"""The generation engine (SPEC §5): batched, streaming, per-row configs, rows that join a running batch; no task
knowledge.

    prefill -> [backbone step -> text sample -> (patch decoder) -> append -> stop checks] per group

Every step runs the model's own modules (:meth:`MimoAudioLM.backbone_step <mimo_audio.lm.MimoAudioLM.backbone_step>`,
:meth:`~mimo_audio.lm.MimoAudioLM.decode_patch`, ...) against static caches (:class:`~mimo_audio.layers.KVCache`)
where every row has its own position: a row can be admitted into a free slot of a running batch
(:meth:`GenerationStream.add`) and leaves it when it finishes. One host sync per group (the sampled text tokens),
which decides whether the patch decoder runs at all and which rows stop.

Speed is applied from outside: with ``compile=True`` (or ``MIMO_AUDIO_COMPILE=1``) the backbone step and the whole
patch-decoder loop are wrapped with ``torch.compile`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA);
the eager path is the default and gives the same tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .errors import PromptError
from .sampling import GREEDY, Sampler, SamplingParams, params_tensors

__all__ = ["SamplingParams", "GenerationConfig", "DEFAULT_TEXT", "DEFAULT_LOCAL", "preset", "generate",
           "stream_generate", "GenerationStream"]


@dataclass(frozen=True)
class GenerationConfig:
    """Limits are counted in groups (one group = 4 frames = 160 ms of audio, or one text token)."""

    text: SamplingParams = field(default_factory=lambda: DEFAULT_TEXT)
    local: SamplingParams = field(default_factory=lambda: DEFAULT_LOCAL)
    max_new_tokens: int = 8192
    min_new_tokens: int = 0
    stop_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise PromptError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")


#: the samplers of a config that names none (the reference's default sampler, SPEC §5.3)
DEFAULT_TEXT = SamplingParams(True, 0.6, 50, 0.95)
DEFAULT_LOCAL = SamplingParams(True, 0.9, 50, 0.95)


def preset(name: str, **overrides) -> GenerationConfig:
    """A :class:`GenerationConfig` with a named preset's samplers; the presets live in the task table
    (:data:`mimo_audio.tasks.PRESETS`), this engine knows no task."""
    from .tasks import preset as task_preset

    return task_preset(name, **overrides)


def __getattr__(name):  # ``from mimo_audio.generate import PRESETS`` keeps working
    if name == "PRESETS":
        from .tasks import PRESETS

        return PRESETS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _configs(config, n: int) -> list[GenerationConfig]:
    if config is None:
        config = GenerationConfig()
    if isinstance(config, str):
        config = preset(config)
    if isinstance(config, GenerationConfig):
        return [config] * n
    config = list(config)
    if len(config) != n:
        raise PromptError(f"{len(config)} generation configs for {n} prompts; pass one config or one per prompt")
    return [preset(c) if isinstance(c, str) else c for c in config]


def _check_prompts(lm, prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    c = lm.config
    if isinstance(prompts, torch.Tensor):
        prompts = [prompts]
    if len(prompts) == 0:
        raise PromptError("no prompts given")
    out = []
    for i, p in enumerate(prompts):
        p = torch.as_tensor(p)
        if p.dim() != 2 or p.shape[0] != c.audio_channels + 1 or p.shape[1] == 0 or p.shape[1] % c.group_size:
            raise PromptError(f"prompt {i} has shape {tuple(p.shape)}; expected ({c.audio_channels + 1}, 4*groups) "
                              "with at least one group (build it with mimo_audio.prompt)")
        text = p[0, :: c.group_size]
        if bool(((text < 0) | (text >= c.vocab_size)).any()):
            raise PromptError(f"prompt {i} has text ids outside [0, {c.vocab_size}) in the first column of a group")
        out.append(p.to(device=lm.device, dtype=torch.long))
    return out


def compile_enabled(compile: bool | None = None) -> bool:
    """``compile`` if given, else the ``MIMO_AUDIO_COMPILE`` environment switch (``1``/``0``; default off)."""
    if compile is not None:
        return bool(compile)
    value = os.environ.get("MIMO_AUDIO_COMPILE", "0").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise PromptError(f"MIMO_AUDIO_COMPILE={value!r}: set it to 1 (compile the step functions) or 0 (eager)")


def step_functions(lm, compile: bool = False):
    """``(backbone_step, decode_patch)`` of ``lm``: its own methods, or ``torch.compile`` of them (made once per
    model; ``mode="reduce-overhead"`` (CUDA graphs) on CUDA, inductor's default on the CPU)."""
    if not compile:
        return lm.backbone_step, lm.decode_patch
    made = lm.__dict__.setdefault("_compiled_steps", {})
    key = str(lm.device)
    if key not in made:
        mode = "reduce-overhead" if lm.device.type == "cuda" else None
        made[key] = (torch.compile(lm.backbone_step, mode=mode, dynamic=False),
                     torch.compile(lm.decode_patch, mode=mode, dynamic=False))
    return made[key]


class _Row:
    """One prompt's state in a stream: its slot, limits, stop ids, sampler settings, generator and output."""

    __slots__ = ("id", "slot", "cfg", "prompt_groups", "max_new", "min_new", "stop_ids", "count", "done", "gen",
                 "out", "text", "local")

    def __init__(self, rid, cfg, prompt_groups, max_new, out, text, local):
        self.id, self.cfg, self.prompt_groups, self.max_new = rid, cfg, prompt_groups, max_new
        self.min_new, self.stop_ids = cfg.min_new_tokens, frozenset(cfg.stop_ids)
        self.slot: int | None = None
        self.count, self.done, self.gen = 0, False, None
        self.out, self.text, self.local = out, text, local

    @property
    def positions(self) -> int:
        """Cache entries the row holds (its next position)."""
        return self.prompt_groups + self.count


class _Pick:
    """The patch decoder's token choice at each step: the local sampler (bans after top-p) or the argmax of the
    banned logits. An object, not a closure, so a compiled decoder sees the same thing every group."""

    def __init__(self, sampler: Sampler, plan, uniforms: torch.Tensor | None, C: int):
        self.sampler, self.uniforms, self.C = sampler, uniforms, C
        self.bans = [ban for _, _, ban in plan]
        self.sample = sampler.any_sample and uniforms is not None

    def __call__(self, p: int, logits: torch.Tensor) -> torch.Tensor:
        ban = self.bans[p]
        if not self.sample:
            return (logits + ban).argmax(-1)
        n = logits.shape[1]
        return self.sampler(logits, ban, self.uniforms[:, 1 + p * self.C: 1 + p * self.C + n])


class GenerationStream:
    """Iterator over generated groups: each step yields ``list[LongTensor (9, G) | None]`` indexed by row (``None``
    for a row that has finished or made nothing this step). :meth:`add` admits a new prompt into the running
    batch (continuous batching); ``cancel(row)`` finishes a row at the next step; ``outputs()`` gives each row's
    generated columns so far ``(9, 4 * groups)``.

    ``capacity``: slots to allocate up front (rows beyond it grow the batch); ``compile``: see :func:`step_functions`.
    """

    BUCKET = 256  # attention reads the cache in blocks of this many positions

    def __init__(self, lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False,
                 capacity: int | None = None, compile: bool | None = None):
        self.lm = lm
        self.empty_id = lm.resolve_empty_id(empty_id)
        self.greedy = greedy
        prompts = _check_prompts(lm, prompts)
        cfgs = _configs(config, len(prompts))
        c = lm.config
        self.G, self.C, self.V = c.group_size, c.audio_channels, c.vocab_size
        self.cap = c.max_position_embeddings
        self.compiled = compile_enabled(compile)
        self._backbone_fn, self._decode_fn = step_functions(lm, self.compiled)
        self.dev = lm.device
        self.rows: list[_Row] = []
        self.slots: list[_Row | None] = []
        self._cancel: set[int] = set()
        self._dirty = True
        self._bsteps: dict[int, object] = {}
        with torch.inference_mode():
            self.empty_codes = torch.tensor(c.speech_zeroemb_idx, device=self.dev)
            rows = [self._new_row(p, cfg, i) for i, (p, cfg) in enumerate(zip(prompts, cfgs))]
            B = max(len(rows), capacity or 0)
            need = max(r.prompt_groups + r.max_new for r in rows)
            self._allocate(B, need)
            for slot, r in enumerate(rows):
                r.slot = slot
                self.slots[slot] = r
            self._prefill(rows, prompts)

    # -------------------------------------------------------------------------------- rows and slots
    def _new_row(self, prompt: torch.Tensor, cfg: GenerationConfig, i: int) -> _Row:
        n = prompt.shape[1] // self.G
        if n >= self.cap:
            raise PromptError(f"prompt {i} has {n} groups but the model's context is {self.cap} groups "
                              "(max_position_embeddings); shorten the prompt (less audio or history)")
        max_new = min(cfg.max_new_tokens, self.cap - n)
        with torch.inference_mode(False):  # handed to callers: an ordinary tensor
            out = torch.zeros(self.C + 1, self.G * max_new, dtype=torch.long, device=self.dev)
        text, local = (GREEDY, GREEDY) if self.greedy else (cfg.text, cfg.local)
        row = _Row(len(self.rows), cfg, n, max_new, out, text, local)
        if text.do_sample or local.do_sample:
            seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()))
            row.gen = torch.Generator(device=self.dev if self.dev.type != "cpu" else "cpu").manual_seed(seed)
        self.rows.append(row)
        return row

    def _allocate(self, batch: int, positions: int) -> None:
        """(Re)allocate every per-slot buffer for ``batch`` slots and ``positions`` cache entries, keeping state."""
        lm = self.lm
        positions = min(self.cap, -(-positions // self.BUCKET) * self.BUCKET)
        old = getattr(self, "cache", None)
        if old is None:
            self.cache = lm.new_cache(batch, positions)
            self.h = torch.zeros(batch, lm.config.hidden_size, dtype=lm.dtype, device=self.dev)
            self.lengths = torch.zeros(batch, 1, dtype=torch.long, device=self.dev)
        else:
            B = old.batch
            self.cache = old.resized(batch, positions)
            h, lengths = self.h, self.lengths
            self.h = torch.zeros(self.cache.batch, h.shape[1], dtype=h.dtype, device=self.dev)
            self.h[:B] = h
            self.lengths = torch.zeros(self.cache.batch, 1, dtype=torch.long, device=self.dev)
            self.lengths[:B] = lengths
        if self.compiled and self.dev.type == "cuda":  # CUDA graphs need the caches at fixed addresses
            for t in (self.cache.k, self.cache.v):
                torch._dynamo.mark_static_address(t)
        self.slots += [None] * (self.cache.batch - len(self.slots))
        self.dsteps = lm.decoder_steps(self.cache.batch)
        self._bsteps = {}
        self._dirty = True

    def _prefill(self, rows: list[_Row], prompts: list[torch.Tensor]) -> None:
        """Prefill ``rows`` (in consecutive slots) from their prompts, right-padded into one batch."""
        c = self.lm.config
        G = self.G
        N = max(r.prompt_groups for r in rows)
        pad = torch.tensor([0, *c.speech_zeroemb_idx], device=self.dev)
        grid = pad[None, :, None].repeat(len(rows), 1, N * G)
        for b, p in enumerate(prompts):
            grid[b, :, : p.shape[1]] = p
        lengths = torch.tensor([r.prompt_groups for r in rows], device=self.dev)
        s0 = rows[0].slot
        h = self.lm.prefill(grid, lengths, self.cache.rows(s0, s0 + len(rows)), self.empty_id)
        self.h[s0: s0 + len(rows)] = h
        self.lengths[s0: s0 + len(rows), 0] = lengths
        self._dirty = True

    def add(self, prompt: torch.Tensor, config=None) -> int:
        """Admit ``prompt`` ``(9, 4 * groups)`` into the running batch; it makes its first group at the next
        :meth:`step`. Returns its row index (results and :meth:`outputs` are indexed by it)."""
        (prompt,) = _check_prompts(self.lm, [prompt])
        (cfg,) = _configs(config, 1)
        with torch.inference_mode():
            row = self._new_row(prompt, cfg, len(self.rows))
            free = [i for i, r in enumerate(self.slots) if r is None]
            need = row.prompt_groups + row.max_new
            if not free or need > self.cache.capacity:
                self._allocate(self.cache.batch + (0 if free else 1), max(need, self.cache.capacity))
                free = [i for i, r in enumerate(self.slots) if r is None]
            row.slot = free[0]
            self.slots[row.slot] = row
            self._prefill([row], [prompt])
        return row.id

    def cancel(self, row: int) -> None:
        if not 0 <= row < len(self.rows):
            raise IndexError(f"row {row} is not in this stream of {len(self.rows)} rows")
        self._cancel.add(row)

    @property
    def B(self) -> int:
        """Rows in this stream (every row ever added)."""
        return len(self.rows)

    @property
    def finished(self) -> bool:
        return all(r.done for r in self.rows)

    def outputs(self) -> list[torch.Tensor]:
        return [r.out[:, : self.G * r.count] for r in self.rows]

    # -------------------------------------------------------------------------------- batch state
    def _rebuild(self) -> None:
        """Per-slot sampler parameters and bans, after rows joined or left."""
        B, V, dev = self.cache.batch, self.V, self.dev
        live = [r if r is not None and not r.done else None for r in self.slots]
        text_p = [r.text if r else GREEDY for r in live]
        local_p = [r.local if r else GREEDY for r in live]
        self.text_sampler, self.local_sampler = (
            Sampler(**params_tensors(ps, dev), kmax=max(p.top_k for p in ps) if all(p.top_k for p in ps) else None)
            for ps in (text_p, local_p))
        ban = torch.zeros(B, V, dtype=torch.float32, device=dev)
        ban_stop = torch.zeros(B, V, dtype=torch.float32, device=dev)
        for b, r in enumerate(live):
            if r is None:
                continue
            for ids, target in ((r.cfg.banned_ids, (ban, ban_stop)), (r.cfg.stop_ids, (ban_stop,))):
                idx = [i for i in ids if 0 <= i < V]
                for t in target:
                    t[b, idx] = float("-inf")
        self.ban, self.ban_stop = ban, ban_stop
        self.gate = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        self._gate_host = None
        sampling = any(r is not None and r.gen is not None for r in live)
        self.u = torch.zeros(B, 1 + self.lm.config.local_steps * self.C, device=dev) if sampling else None
        self.pick = _Pick(self.local_sampler, self.lm.delay_plan(dev), self.u, self.C)
        self.advance = torch.tensor([[r is not None] for r in live], dtype=torch.long, device=dev)
        self.live = live
        self._dirty = False

    def _text_ban(self) -> torch.Tensor:
        below = [r is not None and r.count < r.min_new for r in self.live]
        if not any(below):
            return self.ban
        if all(below):
            return self.ban_stop
        if below != self._gate_host:
            self.gate.copy_(torch.tensor(below, device=self.dev)[:, None])
            self._gate_host = below
        return torch.where(self.gate, self.ban_stop, self.ban)

    def _backbone_step_cache(self, live: list[_Row]):
        keys = max(r.positions for r in live)  # the entry written now is positions - 1
        bucket = min(self.cache.capacity, -(-keys // self.BUCKET) * self.BUCKET)
        st = self._bsteps.get(bucket)
        if st is None:
            st = self._bsteps[bucket] = self.cache.step(self.lengths, bucket)
        else:
            st.refresh()
        return st

    # -------------------------------------------------------------------------------- one group
    def step(self) -> list[torch.Tensor | None]:
        """Generate one group for every unfinished row."""
        for r in self._cancel:
            self._finish(self.rows[r])
        self._cancel.clear()
        live = [r for r in self.slots if r is not None and not r.done]
        if not live:
            raise StopIteration
        if self._dirty:
            self._rebuild()
        lm, e = self.lm, self.empty_id
        with torch.inference_mode():
            if self.u is not None:
                for r in live:
                    if r.gen is not None:
                        self.u[r.slot].uniform_(generator=r.gen)
            logits = lm.lm_head(self.h)  # the sampler works in float32 (and casts only when needed)
            tok = self.text_sampler(logits, self._text_ban(), None if self.u is None else self.u[:, 0])
            host = tok.tolist()  # the one host sync of this group
            speech = [t == e for t in host]
            codes = None
            if any(speech[r.slot] for r in live):
                codes = self._decode_fn(lm.hidden_downcast(self.h), self.pick, self.dsteps)
                if not all(speech):
                    codes = torch.where((tok == e)[:, None, None], codes, self.empty_codes)
        with torch.no_grad():  # the rows handed out are ordinary tensors (callers may modify them in place)
            group = torch.empty(len(self.slots), self.C + 1, self.G, dtype=torch.long, device=self.dev)
            group[:, 0] = tok[:, None]
            group[:, 1:] = self.empty_codes[:, None] if codes is None else codes.transpose(1, 2)
            groups = group.unbind(0)
            results: list[torch.Tensor | None] = [None] * len(self.rows)
            for r in live:
                n = r.count
                r.out[:, n * self.G: (n + 1) * self.G] = groups[r.slot]
                r.count = n + 1
                results[r.id] = groups[r.slot]
                t = host[r.slot]
                if (t in r.stop_ids and n + 1 >= r.min_new) or n + 1 >= r.max_new:
                    self._finish(r)
        if any(not r.done for r in live):
            with torch.inference_mode():
                if self._dirty:  # rows left: they stop advancing
                    self._rebuild()
                x = lm.embed_group(tok, codes, None if codes is None or all(speech) else tok == e)
                self.h = self._backbone_fn(x, self._backbone_step_cache(live))
                self.lengths.add_(self.advance)
        return results

    def _finish(self, row: _Row) -> None:
        if not row.done:
            row.done = True
            if row.slot is not None and self.slots[row.slot] is row:
                self.slots[row.slot] = None
            self._dirty = True

    def __iter__(self) -> Iterator[list[torch.Tensor | None]]:
        return self

    def __next__(self) -> list[torch.Tensor | None]:
        return self.step()


def stream_generate(lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False,
                    capacity: int | None = None, compile: bool | None = None) -> GenerationStream:
    """Streaming form of :func:`generate`: iterate to get each new group per row as it is made."""
    return GenerationStream(lm, prompts, config, empty_id=empty_id, greedy=greedy, capacity=capacity,
                            compile=compile)


def generate(lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False,
             compile: bool | None = None) -> list[torch.Tensor]:
    """Generate for a batch of prompt grids ``(9, 4 * groups)`` (different lengths allowed).

    ``config``: a :class:`GenerationConfig`, a preset name, or one per prompt. ``greedy`` forces argmax for both
    samplers; ``compile`` see :func:`step_functions`. Returns per prompt the generated columns ``(9, 4 * new_groups)``, stop group included; row 0
    repeats each group's text token in its 4 columns (SPEC §4.2).
    """
    stream = GenerationStream(lm, prompts, config, empty_id=empty_id, greedy=greedy, compile=compile)
    while not stream.finished:
        stream.step()
    return [o.clone() for o in stream.outputs()]


class _CallableModule(__import__("types").ModuleType):
    """``mimo_audio.generate`` is both this module and the function: importing the submodule rebinds the
    package attribute to the module, so the module itself forwards calls to :func:`generate`."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
