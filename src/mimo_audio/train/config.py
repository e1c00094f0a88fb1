"""Training settings: the stages of SPEC §8.2, a :class:`TrainConfig`, TOML config files and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MimoAudioError


class TrainConfigError(MimoAudioError):
    """A training setting that cannot work; raised before step 1."""


@dataclass(frozen=True)
class Stage:
    """One training stage (SPEC §8.2 table): per-group learning rates (None = the group is frozen), schedule and
    whether the audio losses count."""

    name: str
    lr_encoder: float
    lr_llm: float
    lr_decoder: float | None
    schedule: str
    text_only: bool
    lora_ok: bool


STAGES = {
    "pt1": Stage("pt1", 2e-4, 3e-5, None, "constant", text_only=True, lora_ok=False),
    "pt2": Stage("pt2", 2e-4, 3e-5, 2e-4, "cosine", text_only=False, lora_ok=True),
    "sft": Stage("sft", 5e-5, 1e-5, 5e-5, "cosine", text_only=False, lora_ok=True),
}
SCHEDULES = ("constant", "cosine")
DEFAULT_LORA_TARGETS = (r"(backbone|patch_decoder)\.layers\.\d+\.attn\.(qkv|o_proj)",)


@dataclass
class TrainConfig:
    """Every setting of a run; ``mimo-audio train`` flags and config-file keys have the same names
    (dashes in flags, underscores in files)."""

    model: str | None = None
    tokenizer: str | None = None
    data: str | None = None
    val_data: str | None = None
    stage: str = "sft"
    tasks: dict[str, float] = field(default_factory=dict)
    lora: int = 0  # rank; 0 = full fine-tuning
    lora_alpha: float | None = None  # default 2 x rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    max_steps: int = 1000
    batch_size: int = 1  # per rank
    grad_accum: int = 1
    lr: float | None = None  # the LLM's rate; None = the stage's
    schedule: str | None = None  # None = the stage's
    warmup_ratio: float = 0.01
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    device: str | None = None
    output: str = "runs/mimo-audio"
    resume: bool = False
    save_every: int = 500
    keep: int = 2
    val_every: int = 0
    log_every: int = 1
    seed: int = 0
    activation_checkpointing: bool = False
    bf16: bool = True  # autocast to bf16 on CUDA (fp32 master weights); ignored on CPU
    progress: bool = True
    empty_id: int | None = None  # the <|empty|> text id when the model folder has no tokenizer.json
    stop_after: int | None = None  # leave the loop after this step without finishing (a planned interruption)

    @property
    def stage_info(self) -> Stage:
        return STAGES[self.stage]

    def lrs(self) -> dict[str, float | None]:
        """Learning rate per module group: ``--lr`` sets the LLM's, the others keep the stage's ratio to it."""
        s = self.stage_info
        llm = s.lr_llm if self.lr is None else self.lr
        scale = llm / s.lr_llm
        return {"encoder": s.lr_encoder * scale, "llm": llm,
                "decoder": None if s.lr_decoder is None else s.lr_decoder * scale}

    @property
    def schedule_name(self) -> str:
        return self.schedule or self.stage_info.schedule

    def validate(self) -> None:
        """Raise :class:`TrainConfigError` naming the first setting that cannot work."""
        if self.stage not in STAGES:
            raise TrainConfigError(f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise TrainConfigError(f"unknown schedule {self.schedule!r}; use constant or cosine")
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "keep", "log_every"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise TrainConfigError(f"stop-after must be at least 1, got {self.stop_after}")
        if self.val_every < 0 or self.lora < 0:
            raise TrainConfigError("val-every and lora must not be negative")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainConfigError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr is not None and not self.lr > 0:
            raise TrainConfigError(f"lr must be positive, got {self.lr}")
        if self.lora and not self.stage_info.lora_ok:
            raise TrainConfigError(f"--lora cannot be used with stage {self.stage}: it trains the whole patch encoder "
                                   "and LLM with the patch decoder frozen; use --stage sft or pt2 for LoRA")
        if self.lora and not self.lora_targets:
            raise TrainConfigError("lora-targets is empty; name the Linear modules to adapt")
        if self.val_every and not self.val_data:
            raise TrainConfigError("val-every is set but there is no --val-data")
        for task, w in self.tasks.items():
            if not w > 0:
                raise TrainConfigError(f"task {task!r} has weight {w}; weights must be positive")
        if self.tasks:
            check_tasks(self.tasks)


def check_tasks(tasks: dict[str, float]) -> None:
    """Every name in ``tasks`` must be in the task table (:mod:`mimo_audio.tasks`, from the training-data work)."""
    try:
        from .. import tasks as table
    except ImportError:
        raise TrainConfigError("--tasks needs the task table (mimo_audio.tasks) and the prepared-shard loader, which "
                               "this installation does not have; train on example files without --tasks") from None
    for name in tasks:
        try:
            table.get_task(name)
        except Exception as exc:  # the table's own error names the known tasks
            raise TrainConfigError(f"unknown task {name!r} in --tasks: {exc}") from None
    # known names, but the trainer reads example files (train.data) and not yet the prepared shards whose records the
    # mixture would draw from: refuse rather than silently train on something else
    raise TrainConfigError("--tasks picks a mixture from prepared shards (mimo-audio data prepare), which the trainer "
                           "does not read yet; train on example files (mimo_audio.train.data.save_examples) without "
                           "--tasks")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_tasks(text: str | dict) -> dict[str, float]:
    """``"asr:1,tts:2"`` (or a TOML table) -> ``{"asr": 1.0, "tts": 2.0}``."""
    if isinstance(text, dict):
        return {str(k): float(v) for k, v in text.items()}
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, _, w = part.partition(":")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise TrainConfigError(f"tasks: {part!r} is not NAME:WEIGHT (e.g. asr:1,tts:2)") from None
    return out


def read_config_file(path: str | Path) -> dict:
    """Settings from a TOML file (keys as in :class:`TrainConfig`; dashes or underscores)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    if path.suffix.lower() != ".toml":
        raise TrainConfigError(f"config file {path}: only TOML (.toml) is read")
    try:
        import tomllib
    except ImportError:  # Python 3.10: the train extra installs tomli
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"config file {path}: {exc}") from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS or name in ("resume",):
            raise TrainConfigError(f"config file {path}: unknown setting {key!r}; known: "
                                   f"{', '.join(sorted(n for n in _FIELDS if n != 'resume'))}")
        out[name] = value
    return out


def make_config(file_settings: dict | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from config-file settings with ``overrides`` (flags; None = not given) on top."""
    settings = dict(file_settings or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "tasks" in settings:
        settings["tasks"] = parse_tasks(settings["tasks"])
    for name in ("lora_targets", "betas"):
        if name in settings and isinstance(settings[name], (list, str)):
            v = settings[name]
            settings[name] = tuple(v.split(",")) if isinstance(v, str) else tuple(v)
    try:
        cfg = TrainConfig(**settings)
    except TypeError as exc:
        raise TrainConfigError(f"bad training settings: {exc}") from None
    cfg.validate()
    return cfg
