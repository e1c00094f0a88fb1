"""Writing trained models: the released layout (SPEC §3.4 key names, sharded safetensors + index,
``config.json``, tokenizer files) that :meth:`MimoAudioLM.from_pretrained` loads, and LoRA adapter folders."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import LMConfig
from ..lm import MimoAudioLM, released_state_dict

SHARD_BYTES = 5 * 2**30
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "generation_config.json")


def config_dict(config: LMConfig) -> dict:
    """``config.json`` content of ``config`` (lists as the released file spells them: ``"0-1-2"``)."""
    d = dataclasses.asdict(config)
    for k in ("speech_vocab_size", "speech_zeroemb_idx", "delay_pattern"):
        d[k] = "-".join(str(v) for v in d[k])
    d.update({"architectures": ["MiMoAudioModel"], "model_type": "qwen2"})
    return d


def _write_folder(dest: Path, write) -> None:
    """Build ``dest`` under a temporary sibling and swap it in when complete."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def export_released(config: LMConfig, state: dict[str, torch.Tensor], dest: str | os.PathLike, *,
                    base_folder: Path | None = None, empty_id: int | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write our-name ``state`` (``MimoAudioLM.state_dict()`` keys) to ``dest`` in the released layout."""
    with torch.device("meta"):
        m = MimoAudioLM(config, empty_id=empty_id)
    m.load_state_dict(state, assign=True, strict=True)
    tensors = released_state_dict(m)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}

    def write(folder: Path) -> None:
        shards, size, cur = [], 0, {}
        for key in sorted(tensors):
            t = tensors[key]
            if cur and size + t.numel() * t.element_size() > SHARD_BYTES:
                shards.append(cur)
                cur, size = {}, 0
            cur[key] = t
            size += t.numel() * t.element_size()
        shards.append(cur)
        index = {}
        for i, shard in enumerate(shards):
            name = (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors")
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            index.update(dict.fromkeys(shard, name))
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            (folder / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2))
        cfg_file = base_folder / "config.json" if base_folder is not None else None
        if cfg_file is not None and cfg_file.is_file():
            shutil.copyfile(cfg_file, folder / "config.json")
        else:
            (folder / "config.json").write_text(json.dumps(config_dict(config), indent=2))
        if base_folder is not None:
            for name in TOKENIZER_FILES:
                if (base_folder / name).is_file():
                    shutil.copyfile(base_folder / name, folder / name)

    _write_folder(Path(dest), write)
    return Path(dest)


def export_adapter(peft_model, state: dict[str, torch.Tensor], dest: str | os.PathLike, *, base: str | None) -> Path:
    """Write a peft adapter folder (``adapter_config.json`` naming ``base``, ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(peft_model, state_dict=state)
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = None if base is None else str(base)

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(folder / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(str(folder))

    _write_folder(Path(dest), write)
    return Path(dest)


def export_checkpoint(run: str | os.PathLike, dest: str | os.PathLike, *, step: int | None = None) -> Path:
    """A full-fine-tuning run's checkpoint (the newest, or ``step``) -> the released layout at ``dest``.
    One process; the checkpoint may have been written by any number of ranks."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from .. import checkpoint
    from .config import TrainConfigError
    from .trainer import _checkpoints

    run = Path(run).expanduser()
    found = _checkpoints(run) if run.is_dir() else []
    if step is not None:
        found = [p for p in found if int(p.name[5:]) == step]
    if not found:
        raise TrainConfigError(f"{run} holds no complete checkpoint" + (f" of step {step}" if step else ""))
    ckpt = found[-1]
    settings = json.loads((run / "train_config.json").read_text())
    if settings.get("lora"):
        raise TrainConfigError(f"{run} is a LoRA run: its final/ adapter is merged with `mimo-audio train merge`")
    if not settings.get("model"):
        raise TrainConfigError(f"{run}/train_config.json names no base model (the run got its model in Python)")
    base = checkpoint.resolve(settings["model"])
    config = LMConfig.from_file(base / "config.json")
    lm = MimoAudioLM(config)
    state = {"model": lm.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(ckpt))
    return export_released(config, state["model"], dest, base_folder=base)
