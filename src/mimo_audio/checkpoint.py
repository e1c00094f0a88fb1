"""Checkpoint access: a local folder or a hub id -> config + safetensors tensors -> modules.

Only safetensors are ever read (never pickle). A hub id is fetched with ``huggingface_hub`` (its cache and
``HF_HUB_OFFLINE`` are honoured); a local folder is used as it is. Loading is strict: a missing,
mis-shaped or unknown key is a :class:`CheckpointError` naming the key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

#: the released checkpoints on the Hugging Face hub
INSTRUCT_ID = "XiaomiMiMo/MiMo-Audio-7B-Instruct"
BASE_ID = "XiaomiMiMo/MiMo-Audio-7B-Base"
TOKENIZER_ID = "XiaomiMiMo/MiMo-Audio-Tokenizer"

#: the small model this project trains and ships inside the package (docs/mini.md): ``mini`` names its LM (with
#: its text tokenizer), ``mini-tokenizer`` its audio tokenizer; ``--model mini`` selects both
MINI_ID = "mini"
MINI_TOKENIZER_ID = "mini-tokenizer"
#: where the shipped mini weights live (``lm/`` and ``tokenizer/``, the released layout); tests point it elsewhere
MINI_DIR = Path(__file__).resolve().parent / "models" / "mini"
_MINI_PARTS = {MINI_ID: "lm", MINI_TOKENIZER_ID: "tokenizer"}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def resolve(path_or_id: str | os.PathLike, *, allow_patterns: list[str] | None = None,
            downloading: bool = False) -> Path:
    """Return a local folder for ``path_or_id``: the folder itself, or the hub snapshot (downloaded if needed).

    A string that names an existing folder always wins over a hub id of the same spelling. ``downloading``: the
    caller is ``mimo-audio download`` itself (its failure does not suggest running it).
    """
    p = Path(os.fspath(path_or_id)).expanduser()
    if p.is_dir():
        return p
    text = os.fspath(path_or_id)
    if text in _MINI_PARTS:
        return mini_folder(text)
    if p.exists():
        raise CheckpointError(f"{text} is a file; pass the folder that holds config.json and the .safetensors files")
    if not HUB_ID.match(text):
        raise CheckpointError(
            f"no checkpoint folder at {text!r}; pass an existing folder or a hub id: the LM (--model) is "
            f"'{INSTRUCT_ID}' (or '{BASE_ID}', or '{MINI_ID}': the small model shipped with the package), the audio "
            f"tokenizer (--tokenizer) '{TOKENIZER_ID}' (or '{MINI_TOKENIZER_ID}')"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text, allow_patterns=allow_patterns or WEIGHT_PATTERNS)
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, network, auth)
        advice = ("Check the id and your network (or HF_HUB_OFFLINE / HF_ENDPOINT), or copy the checkpoint "
                  "folder here and pass its path." if downloading else
                  "Check the id and your network, run `mimo-audio download` beforehand, or pass a local folder.")
        raise CheckpointError(
            f"cannot fetch {text!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). {advice}"
        ) from None
    return Path(local)


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(folder: Path) -> bool:
    """A LoRA adapter folder (a LoRA run's ``OUTPUT/final/``: peft's ``adapter_config.json`` + adapter weights)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> Path:
    """The local folder of the base model an adapter folder names (``base_model_name_or_path`` of its
    ``adapter_config.json``: a folder, tried as given and then relative to the adapter folder, or a hub id)."""
    file = Path(folder) / ADAPTER_CONFIG
    try:
        base = json.loads(file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from None
    fix = ("set base_model_name_or_path in adapter_config.json to the base model's folder or hub id, or merge the "
           "adapter once with `mimo-audio train merge RUN -o FOLDER --base BASE` and load FOLDER")
    if not base:
        raise CheckpointError(f"{file} names no base model; {fix}")
    for candidate in (Path(base).expanduser(), Path(folder) / base):
        if candidate.is_dir():
            return candidate
    try:
        return resolve(base)
    except CheckpointError as exc:
        raise CheckpointError(f"the base model {base!r} named by {file} cannot be found ({exc}); {fix}") from None


def mini_folder(name: str = MINI_ID) -> Path:
    """The shipped folder of ``name`` (``mini``: the LM, ``mini-tokenizer``: the audio tokenizer), checked complete.

    A build without the trained weights raises a :class:`CheckpointError` saying so and how to train them.
    """
    part = _MINI_PARTS[name]
    folder = Path(MINI_DIR) / part
    has_weights = folder.is_dir() and (any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file())
    if not (folder / "config.json").is_file() or not has_weights:
        raise CheckpointError(
            f"the mini model is not shipped in this build ({name!r}: no config.json and .safetensors weights in "
            f"{folder}). Train it with the recipe in docs/mini.md (scripts/mini/: corpus, tokenizers, "
            f"`mimo-audio train-codec`, `mimo-audio data prepare`, `mimo-audio train`) and put its {part}/ folder "
            f"there, pass a trained folder's path instead, or use the released model ('{INSTRUCT_ID}' with "
            f"'{TOKENIZER_ID}')"
        )
    return folder


def default_tokenizer(model: str | os.PathLike, tokenizer: str | os.PathLike) -> str | os.PathLike:
    """The audio tokenizer to load with ``model``: the mini model's when ``model`` is ``mini`` and ``tokenizer`` is
    the released default (so ``--model mini`` alone selects both); otherwise ``tokenizer`` unchanged."""
    if os.fspath(model) == MINI_ID and os.fspath(tokenizer) == TOKENIZER_ID and not Path(MINI_ID).is_dir():
        return MINI_TOKENIZER_ID
    return tokenizer


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: ``model.safetensors.index.json``'s shards, else ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read {index}: {exc}") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that are not in {folder}: {', '.join(missing)}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise CheckpointError(f"{folder} holds only pickle weights (.bin/.pt); convert them to safetensors")
        raise CheckpointError(f"no .safetensors weights in {folder}")
    return files


def read_tensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the given safetensors files, on the CPU (memory-mapped by safetensors)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if key in out:
                        raise CheckpointError(f"weight {key!r} appears in more than one file ({f.name})")
                    out[key] = handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {f}: {exc}") from None
    return out


def check_weights(
    tensors: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    *,
    rename: Callable[[str], str | None] = lambda k: k,
    optional: Callable[[str], bool] = lambda k: False,
    source: str = "checkpoint",
) -> dict[str, str]:
    """Check checkpoint ``tensors`` against the model's ``shapes`` (name -> shape); return name -> checkpoint key.

    ``rename`` maps a checkpoint key to the model's name (``None``: no such name). Every name must be filled exactly
    once with its shape; a key that maps to no name is an error unless ``optional(key)``. Each error names the key.
    """
    filled: dict[str, str] = {}
    for key, value in tensors.items():
        name = rename(key)
        if name is None or name not in shapes:
            if optional(key):
                continue
            raise CheckpointError(f"unexpected weight {key!r} in {source}: this model has no such parameter "
                                  "(is this the checkpoint that matches its config.json?)")
        if name in filled:
            raise CheckpointError(f"weights {filled[name]!r} and {key!r} in {source} both map to {name!r}")
        if tuple(value.shape) != tuple(shapes[name]):
            raise CheckpointError(f"weight {key!r} in {source} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(shapes[name])} (config.json and weights disagree)")
        filled[name] = key
    missing = [n for n in shapes if n not in filled]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{source} lacks {len(missing)} weight(s) the model needs: {shown}")
    return filled


def load_into(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    rename: Callable[[str], str | None] = lambda k: k,
    optional: Callable[[str], bool] = lambda k: False,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    keep_dtype: Callable[[str], bool] = lambda k: False,
    source: str = "checkpoint",
) -> None:
    """Strictly load checkpoint ``tensors`` into ``module`` (which may live on the meta device).

    ``rename`` and ``optional`` are those of :func:`check_weights`, which checks that every module parameter and
    persistent buffer is filled exactly once with the right shape.
    """
    targets = dict(module.named_parameters())
    targets.update({n: b for n, b in module.named_buffers() if _is_persistent(module, n)})
    shapes = {n: tuple(t.shape) for n, t in targets.items()}
    filled = check_weights(tensors, shapes, rename=rename, optional=optional, source=source)
    for name, key in filled.items():
        value = tensors[key]
        want_dtype = value.dtype if keep_dtype(name) or not value.is_floating_point() else (dtype or value.dtype)
        value = value.to(device=device or "cpu", dtype=want_dtype)
        _assign(module, name, value)


def _is_persistent(module: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    return leaf not in mod._non_persistent_buffers_set


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=mod._parameters[leaf].requires_grad)
    else:
        mod._buffers[leaf] = value


DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower().replace("torch.", "")]
    except KeyError:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev
