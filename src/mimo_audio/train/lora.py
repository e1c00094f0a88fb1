"""LoRA through peft: adapters on the fused ``qkv`` and ``o_proj`` Linears of the backbone and the patch
decoder by default (q, k and v are one fused ``qkv`` Linear in this model, so one adapter covers all three),
merging a run's adapter into its base model (:func:`merge`, written to a folder) and applying an adapter folder
to a loaded base for serving (:func:`apply_adapter`, used by ``MimoAudio.from_pretrained``)."""

from __future__ import annotations

from pathlib import Path

from ..lm import MimoAudioLM
from .config import TrainConfig, TrainConfigError


def _peft():
    try:
        import peft
    except ImportError:
        raise TrainConfigError("LoRA needs peft: pip install 'mimo-audio[train]'") from None
    return peft


def lora_config(cfg: TrainConfig):
    peft = _peft()
    targets = cfg.lora_targets
    # one pattern: peft matches a string with re.fullmatch; several: join them
    target = targets[0] if len(targets) == 1 else "|".join(f"(?:{t})" for t in targets)
    return peft.LoraConfig(r=cfg.lora, lora_alpha=cfg.lora_alpha or 2 * cfg.lora, lora_dropout=cfg.lora_dropout,
                           target_modules=target, bias="none")


def add_lora(lm: MimoAudioLM, cfg: TrainConfig):
    """Wrap ``lm`` in a peft model whose only trainable parameters are the adapters."""
    peft = _peft()
    try:
        model = peft.get_peft_model(lm, lora_config(cfg))
    except ValueError as exc:
        raise TrainConfigError(f"lora-targets {list(cfg.lora_targets)} match no Linear of the model: {exc}") from None
    return model


def merge(run: str | Path, dest: str | Path, *, base: str | None = None) -> Path:
    """``RUN/final`` (an adapter) + its base model -> a merged model in the released layout at ``dest``."""
    import json

    from .. import checkpoint
    from .export import export_released

    peft = _peft()
    final = Path(run).expanduser() / "final"
    cfg_file = final / "adapter_config.json"
    if not cfg_file.is_file():
        raise TrainConfigError(f"{final} holds no adapter_config.json: is {run} the folder of a LoRA run that finished?")
    base = base or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise TrainConfigError(f"{cfg_file} names no base model; pass --base FOLDER")
    folder = checkpoint.resolve(base)
    lm = MimoAudioLM.from_pretrained(folder, dtype="float32")
    merged = peft.PeftModel.from_pretrained(lm, str(final)).merge_and_unload()
    return export_released(merged.config, merged.state_dict(), dest, base_folder=folder, empty_id=merged.empty_id)


def apply_adapter(lm: MimoAudioLM, folder: str | Path) -> MimoAudioLM:
    """``lm`` (the base, already loaded on its device and dtype) with the adapter of ``folder`` merged into its
    weights (peft ``merge_and_unload``): a plain :class:`MimoAudioLM` again, as fast to generate with as a merged
    folder. The merge runs in ``lm``'s dtype."""
    from ..errors import CheckpointError

    try:
        import peft
    except ImportError:
        raise CheckpointError(f"{folder} is a LoRA adapter folder; loading it needs peft: pip install "
                              "'mimo-audio[train]' (or pip install peft), or merge it once where peft is installed "
                              "(`mimo-audio train merge RUN -o FOLDER`) and load FOLDER") from None
    was_training = lm.training
    try:
        model = peft.PeftModel.from_pretrained(lm, str(folder), is_trainable=False)
    except Exception as exc:  # peft raises ValueError / KeyError / OSError for adapters that do not fit
        raise CheckpointError(f"cannot apply the adapter in {folder} to its base model ({type(exc).__name__}: "
                              f"{exc}); is this the base it was trained on?") from None
    merged = model.merge_and_unload()
    merged.train(was_training)
    return merged
