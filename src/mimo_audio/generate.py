"""The generation engine (SPEC §5): batched, streaming, per-row configs; no task knowledge.

    prefill -> [backbone step -> text sample -> (patch decoder) -> append -> stop checks] per group

Prompts of different lengths are left-padded (attention masks, per-row RoPE positions), so every row writes
the same cache column each step. Rows finish independently: a finished row keeps running masked and its
outputs are ignored. One host sync per group (the sampled text tokens), which decides whether the patch
decoder runs at all and which rows stop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .errors import PromptError
from .sampling import GREEDY, Sampler, SamplingParams, params_tensors
from .stepper import Stepper

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


def _argmax(step: int, logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


class GenerationStream:
    """Iterator over generated groups: each step yields ``list[LongTensor (9, G) | None]`` (``None`` once a row
    has finished). ``cancel(row)`` finishes a row at the next step. ``outputs()`` gives each row's generated
    columns so far ``(9, 4 * groups)``."""

    CHUNK = 16  # groups of uniforms drawn per row generator call

    def __init__(self, lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False):
        self.lm = lm
        self.empty_id = e = lm.resolve_empty_id(empty_id)
        prompts = _check_prompts(lm, prompts)
        cfgs = _configs(config, len(prompts))
        c = lm.config
        G, C = c.group_size, c.audio_channels
        self.G, self.C, self.B = G, C, len(prompts)
        lengths = [p.shape[1] // G for p in prompts]
        cap = c.max_position_embeddings
        self.max_new = []
        for i, (n, cfg) in enumerate(zip(lengths, cfgs)):
            if n >= cap:
                raise PromptError(f"prompt {i} has {n} groups but the model's context is {cap} groups "
                                  "(max_position_embeddings); shorten the prompt (less audio or history)")
            self.max_new.append(min(cfg.max_new_tokens, cap - n))
        self.min_new = [cfg.min_new_tokens for cfg in cfgs]
        self.stop_ids = [frozenset(cfg.stop_ids) for cfg in cfgs]
        N = max(lengths)
        dev = lm.device
        B = self.B
        # left-padded batch grid and validity mask
        empty_col = torch.tensor([0, *c.speech_zeroemb_idx], device=dev)
        grid = empty_col[None, :, None].repeat(B, 1, N * G)
        valid = torch.zeros(B, N, dtype=torch.bool, device=dev)
        for b, p in enumerate(prompts):
            grid[b, :, (N - lengths[b]) * G:] = p
            valid[b, N - lengths[b]:] = True
        self.st = Stepper(lm, B, N + max(self.max_new), e)
        self.out = torch.zeros(B, C + 1, G * max(self.max_new), dtype=torch.long, device=dev)
        self.count = [0] * B
        self.steps = 0
        self.done = [False] * B
        self._cancel: set[int] = set()
        # samplers
        V = c.vocab_size
        text_p = [GREEDY if greedy else cfg.text for cfg in cfgs]
        local_p = [GREEDY if greedy else cfg.local for cfg in cfgs]
        # top-k candidates only (torch.topk) when every row sets top_k; a sampler whose rows all take the argmax
        # skips its filters (they keep the top of the ranking)
        self.text_sampler, self.local_sampler = (
            Sampler(**params_tensors(ps, dev), kmax=max(p.top_k for p in ps) if all(p.top_k for p in ps) else None)
            for ps in (text_p, local_p))
        ban = torch.zeros(B, V, dtype=torch.float32, device=dev)
        ban_stop = torch.zeros(B, V, dtype=torch.float32, device=dev)
        for b, cfg in enumerate(cfgs):
            for ids, target in ((cfg.banned_ids, (ban, ban_stop)), (cfg.stop_ids, (ban_stop,))):
                idx = [i for i in ids if 0 <= i < V]
                for t in target:
                    t[b, idx] = float("-inf")
        self.ban, self.ban_stop = ban, ban_stop
        self.gate = torch.zeros(B, 1, dtype=torch.bool, device=dev)  # True: still below min_new (stop ids banned)
        self._gate_host: list[bool] | None = None
        self.gens = None
        if self.text_sampler.any_sample or self.local_sampler.any_sample:
            seeds = [cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ())) for cfg in cfgs]
            gdev = dev if dev.type != "cpu" else "cpu"
            self.gens = [torch.Generator(device=gdev).manual_seed(s) for s in seeds]
            # uniforms for CHUNK groups per row are drawn at once from the row's own generator
            self.u_all = torch.zeros(B, self.CHUNK, 1 + self.st.S * C, device=dev)
            self.u_rows = [self.u_all[b] for b in range(B)]
            self.u = self.u_all[:, 0]
        self.st.prefill(grid, valid)

    # -------------------------------------------------------------------------------- controls
    def cancel(self, row: int) -> None:
        if not 0 <= row < self.B:
            raise IndexError(f"row {row} is not in this batch of {self.B}")
        self._cancel.add(row)

    @property
    def finished(self) -> bool:
        return all(self.done)

    def outputs(self) -> list[torch.Tensor]:
        return [self.out[b, :, : self.G * self.count[b]] for b in range(self.B)]

    # -------------------------------------------------------------------------------- one group
    def _text_ban(self) -> torch.Tensor:
        below = [not self.done[b] and self.count[b] < self.min_new[b] for b in range(self.B)]
        if not any(below):
            return self.ban
        if all(below):
            return self.ban_stop
        if below != self._gate_host:
            self.gate.copy_(torch.tensor(below, device=self.gate.device)[:, None])
            self._gate_host = below
        return torch.where(self.gate, self.ban_stop, self.ban)

    def _local_pick(self, p, logits):
        u = None if self.gens is None else self.u[:, 1 + p * self.C: 1 + p * self.C + logits.shape[1]]
        return self.local_sampler(logits, self.st.fw.local_ban[p], u)

    def step(self) -> list[torch.Tensor | None]:
        """Generate one group for every unfinished row."""
        for r in self._cancel:
            self.done[r] = True
        self._cancel.clear()
        if self.finished:
            raise StopIteration
        st = self.st
        if self.gens is not None:
            i = self.steps % self.CHUNK
            if i == 0:
                for g, row in zip(self.gens, self.u_rows):
                    row.uniform_(generator=g)
            self.u = self.u_all[:, i]
        with torch.inference_mode():
            logits = st.text_logits()
            ban = self._text_ban()
            tok = self.text_sampler(logits, ban, None if self.gens is None else self.u[:, 0])
            host = tok.tolist()  # the one host sync of this group
            speech = [t == self.empty_id for t in host]
            codes = None
            if any(s and not d for s, d in zip(speech, self.done)):
                # argmax decoding keeps the empty-id ban in the heads' bias; samplers ban after top-p
                codes = (st.decode(self._local_pick, ban_in_bias=False) if self.local_sampler.any_sample
                         else st.decode(_argmax))
                if not all(speech):
                    codes = torch.where((tok == self.empty_id)[:, None, None], codes, st.empty_codes)
        with torch.no_grad():  # the rows handed out are ordinary tensors (callers may modify them in place)
            group = torch.empty(self.B, self.C + 1, self.G, dtype=torch.long, device=self.out.device)
            group[:, 0] = tok[:, None]
            group[:, 1:] = st.empty_codes[:, None] if codes is None else codes.transpose(1, 2)
            n = self.steps  # every unfinished row has made exactly this many groups
            self.out[:, :, n * self.G: (n + 1) * self.G] = group
            self.steps = n + 1
            rows = group.unbind(0)
            results: list[torch.Tensor | None] = []
            for b in range(self.B):
                if self.done[b]:
                    results.append(None)
                    continue
                self.count[b] = n + 1
                results.append(rows[b])
                if (host[b] in self.stop_ids[b] and n + 1 >= self.min_new[b]) or n + 1 >= self.max_new[b]:
                    self.done[b] = True
            if not self.finished:
                st.advance(tok, speech if codes is not None else [False] * self.B)
        return results

    def __iter__(self) -> Iterator[list[torch.Tensor | None]]:
        return self

    def __next__(self) -> list[torch.Tensor | None]:
        return self.step()


def stream_generate(lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False) -> GenerationStream:
    """Streaming form of :func:`generate`: iterate to get each new group per row as it is made."""
    return GenerationStream(lm, prompts, config, empty_id=empty_id, greedy=greedy)


def generate(lm, prompts, config=None, *, empty_id: int | None = None, greedy: bool = False) -> list[torch.Tensor]:
    """Generate for a batch of prompt grids ``(9, 4 * groups)`` (different lengths allowed).

    ``config``: a :class:`GenerationConfig`, a preset name, or one per prompt. ``greedy`` forces argmax for both
    samplers. Returns per prompt the generated columns ``(9, 4 * new_groups)``, stop group included; row 0
    repeats each group's text token in its 4 columns (SPEC §4.2).
    """
    stream = GenerationStream(lm, prompts, config, empty_id=empty_id, greedy=greedy)
    while not stream.finished:
        stream.step()
    return [o.clone() for o in stream.outputs()]


class _CallableModule(__import__("types").ModuleType):
    """``mimo_audio.generate`` is both this module and the function: importing the submodule rebinds the
    package attribute to the module, so the module itself forwards calls to :func:`generate`."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
