"""Training settings: the stages of SPEC §8.2, a :class:`TrainConfig`, TOML / YAML config files and their checks."""

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
class LoopConfig:
    """The settings of the generic loop (:func:`~mimo_audio.train.trainer.fit`), shared by every objective's
    configuration (the LM's :class:`TrainConfig`, the tokenizer's ``CodecTrainConfig``)."""

    max_steps: int = 1000
    device: str | None = None
    output: str = "runs/mimo-audio"
    resume: bool = False
    save_every: int = 500
    keep: int = 2
    val_every: int = 0
    log_every: int = 1
    seed: int = 0
    progress: bool = True
    stop_after: int | None = None  # leave the loop after this step without finishing (a planned interruption)
    tracker: str | None = None  # "tensorboard": also write the per-step scalars to OUTPUT/tensorboard

    def check_loop(self) -> None:
        """Raise :class:`TrainConfigError` for a loop setting that cannot work."""
        for name in ("max_steps", "save_every", "keep", "log_every"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise TrainConfigError(f"stop-after must be at least 1, got {self.stop_after}")
        if self.val_every < 0:
            raise TrainConfigError(f"val-every must not be negative, got {self.val_every}")
        if self.tracker is not None:
            check_tracker(self.tracker)


@dataclass
class TrainConfig(LoopConfig):
    """Every setting of an LM run (the loop's, :class:`LoopConfig`, then the LM's); ``mimo-audio train`` flags and
    config-file keys have the same names (dashes in flags, underscores in files)."""

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
    batch_size: int = 1  # per rank
    grad_accum: int = 1
    lr: float | None = None  # the LLM's rate; None = the stage's
    schedule: str | None = None  # None = the stage's
    warmup_ratio: float = 0.01
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    activation_checkpointing: bool = False
    bf16: bool = True  # bf16 on CUDA, fp32 master weights: FSDP2 MixedPrecisionPolicy under torchrun, autocast in
    # one process; ignored on CPU
    text_loss_chunk: int | None = 1024  # positions per chunk of the text loss (LM head per chunk, checkpointed);
    # None or 0: the full logits at once
    empty_id: int | None = None  # the <|empty|> text id when the model folder has no tokenizer.json
    max_groups: int | None = None  # shard data: cut longer examples here (default: the model's positions, else 8192)
    window: int = 128  # shard data: batches per length-sorting window of the loader (docs/data.md)

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

    def loss_weights(self):
        """The stage's loss weights (SPEC §8.2): pt1 text only (1-0-…-0), pt2 and sft 100-12-8-6-4-2-2-1-1."""
        from ..lm import LossWeights

        return LossWeights.stage1() if self.stage_info.text_only else LossWeights()

    @property
    def schedule_name(self) -> str:
        return self.schedule or self.stage_info.schedule

    def validate(self) -> None:
        """Raise :class:`TrainConfigError` naming the first setting that cannot work."""
        if self.stage not in STAGES:
            raise TrainConfigError(f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise TrainConfigError(f"unknown schedule {self.schedule!r}; use constant or cosine")
        if self.text_loss_chunk is not None and int(self.text_loss_chunk) < 0:
            raise TrainConfigError(f"text-loss-chunk must be a number of positions (0: off), got {self.text_loss_chunk}")
        self.check_loop()
        for name in ("batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lora < 0:
            raise TrainConfigError(f"lora must not be negative, got {self.lora}")
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
        if self.max_groups is not None and self.max_groups < 1:
            raise TrainConfigError(f"max-groups must be at least 1, got {self.max_groups}")
        if self.window < 1:
            raise TrainConfigError(f"window must be at least 1, got {self.window}")
        if self.tasks:
            check_tasks(self.tasks)


def known_tasks() -> list[str]:
    """The task names the prepared-shard loader can build examples for (``mimo_audio.data.examples``)."""
    from ..data import examples  # noqa: F401  (fills TASK_INPUTS)
    from ..data.loader import TASK_INPUTS

    return sorted(TASK_INPUTS)


def check_tasks(tasks: dict[str, float]) -> None:
    """A ``--tasks`` mixture: known names (those the shard loader maps records to), weights >= 0, one positive."""
    known = known_tasks()
    for name, w in tasks.items():
        if name not in known:
            raise TrainConfigError(f"unknown task {name!r} in --tasks; the shard loader knows: {', '.join(known)}")
        if not (w >= 0 and w < float("inf")):
            raise TrainConfigError(f"task {name!r} has weight {w}; weights must be finite and >= 0")
    if not any(w > 0 for w in tasks.values()):
        raise TrainConfigError("every task in --tasks has weight 0; give at least one a positive weight")


TRACKERS = ("tensorboard",)


def check_tracker(name: str) -> None:
    """The tracker exists and its package is installed (checked before step 1)."""
    if name not in TRACKERS:
        raise TrainConfigError(f"unknown tracker {name!r}; use tensorboard (or leave it out: metrics.jsonl only)")
    try:
        import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise TrainConfigError("--tensorboard needs the tensorboard package: pip install 'mimo-audio[train]' "
                               "(or pip install tensorboard), or leave --tensorboard / tracker out") from None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_tasks(text: str | dict) -> dict[str, float]:
    """``"asr:1,tts:2"`` (or a TOML / YAML table) -> ``{"asr": 1.0, "tts": 2.0}``; a bare name weighs 1."""
    if isinstance(text, dict):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            name, sep, w = part.partition(":")
            items.append((name.strip(), w.strip() if sep else 1.0))
    out: dict[str, float] = {}
    for name, w in items:
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise TrainConfigError(f"tasks: {name}:{w} is not NAME:WEIGHT (e.g. asr:1,tts:2)") from None
        if not name:
            raise TrainConfigError(f"tasks: an entry has no task name ({name}:{w}); write NAME:WEIGHT")
        if name in out:
            raise TrainConfigError(f"tasks: {name!r} appears twice; give each task once")
        out[name] = weight
    return out


def read_settings(path: str | Path, fields, *, unknown_hint: str = "") -> dict:
    """Settings from a TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) file: one mapping whose keys (dashes or
    underscores) are among ``fields`` (``resume`` is a flag only). Shared by ``mimo-audio train`` and
    ``mimo-audio train-codec``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TrainConfigError(f"config file {path}: {exc}") from None
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the train extra installs tomli
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TrainConfigError(f"config file {path}: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TrainConfigError(f"config file {path}: YAML files need PyYAML: pip install 'mimo-audio[train]' "
                                   "(or pip install pyyaml), or write the settings as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"config file {path}: {' '.join(str(exc).split())}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TrainConfigError(f"config file {path}: the top level must be a mapping of settings "
                                   f"(key: value lines), not a {type(data).__name__}")
    else:
        raise TrainConfigError(f"config file {path}: name it .toml, .yaml or .yml (TOML and YAML are read)")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields or name == "resume":
            raise TrainConfigError(f"config file {path}: unknown setting {key!r}; known: "
                                   f"{', '.join(sorted(n for n in fields if n != 'resume'))}{unknown_hint}")
        out[name] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """Settings from a TOML or YAML file whose keys are the :class:`TrainConfig` fields."""
    return read_settings(path, _FIELDS)


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
    for name, value in list(settings.items()):  # numbers written as strings (YAML reads 1e-5 as one)
        kind = str(_FIELDS[name].type) if name in _FIELDS else ""
        if isinstance(value, str) and (kind.startswith(("float", "int"))):
            try:
                settings[name] = int(value) if kind.startswith("int") else float(value)
            except ValueError:
                raise TrainConfigError(f"{name.replace('_', '-')}: {value!r} is not a number") from None
    try:
        cfg = TrainConfig(**settings)
    except TypeError as exc:
        raise TrainConfigError(f"bad training settings: {exc}") from None
    cfg.validate()
    return cfg
