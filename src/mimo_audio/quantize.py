"""Weight quantization of :class:`~mimo_audio.lm.MimoAudioLM` (int8, int4) with torchao.

What is quantized (weight-only; activations stay in the compute dtype): every ``nn.Linear`` of the backbone,
the patch encoder and the patch decoder, the eight patch-decoder heads (``local_heads``), the two
down-projections (``group_downcast``, ``hidden_downcast``) and ``speech_to_local`` where the config has it.
The embeddings, the norms, the biases and the text head (``lm_head``) stay in the compute dtype.

Schemes (torchao's ``quantize_`` configs; no kernels of our own):

==========  ======================================================================================
``int8``    ``Int8WeightOnlyConfig()``: symmetric per-row int8 (``Int8Tensor``); CPU and CUDA.
``int4``    groupwise asymmetric 4-bit, group 128 (64 or 32 where ``in_features`` is not a multiple
            of 128). CUDA (compute capability >= 8.0, bfloat16): ``Int4WeightOnlyConfig`` with the
            ``tile_packed_to_4d`` (tinygemm) packing. CPU: ``PrototypeInt4WeightOnlyConfig``
            (``Int4OpaqueTensor``, torch's ``_weight_int4pack_mm_for_cpu``), which needs an output
            count divisible by 16: the patch-decoder heads (1025 and 129 outputs) are int8 there.
==========  ======================================================================================

A scheme the device cannot run is a :class:`~mimo_audio.errors.QuantizationError` naming the schemes that work
there; after quantizing, every target layer is checked to hold the expected torchao tensor (a library that skips
a layer without a word is caught and refused).

Loading (:func:`load_lm`) quantizes while it reads: the model is built on the meta device and each weight is
read from the safetensors files in row chunks (a few MB of the compute dtype at a time), quantized and placed,
so the peak memory of loading stays close to the quantized size.

A quantized model can be saved (:func:`save_quantized`) as safetensors: plain tensors under our parameter names,
and for each quantized weight its torchao inner tensors (``name:qdata``, ``name:scale``, ...) with the class
and attributes in the file's metadata; ``config.json`` records the scheme under ``"quantization"``, and
:meth:`MimoAudioLM.from_pretrained` loads such a folder without re-quantizing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .errors import CheckpointError, QuantizationError

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (128, 64, 32)
#: bytes of the compute dtype read (and quantized) at once while loading: bounds the transient memory of a layer
CHUNK_BYTES = 4 * 2**20
INSTALL_HINT = "pip install 'mimo-audio[quantize]' (or: pip install torchao)"
SAVED_FORMAT = "mimo-audio-quantized-v1"
SAVED_WEIGHTS = "model.safetensors"

# Inner-tensor row dimension of the torchao classes whose rows we have checked to be independent (quantizing
# rows a..b alone gives exactly rows a..b of quantizing the whole matrix; tests/test_quantize.py pins it).
# Chunked loading is used only for these; other classes are quantized whole.
_ROW_DIMS = {
    "Int8Tensor": {"qdata": 0, "scale": 0, "zero_point": 0},
    "Int4OpaqueTensor": {"qdata": 0, "scale_and_zero": 1},
}
# Classes a saved checkpoint may name (nothing else is ever constructed from a file).
_CLASSES = {
    "Int8Tensor": "torchao.quantization.Int8Tensor",
    "Int4OpaqueTensor": "torchao.prototype.quantization.int4.Int4OpaqueTensor",
    "Int4TilePackedTo4dTensor": "torchao.quantization.Int4TilePackedTo4dTensor",
}


# ============================================================================================ torchao access
def torchao():
    """Import torchao (quietly: it logs a warning per optional CUDA library a CPU build lacks), or say how to
    install it."""
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        import torchao as ao
        import torchao.quantization  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(f"weight quantization needs torchao, which is not installed ({exc}); "
                                f"install it with {INSTALL_HINT}") from None
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    return ao


def _cuda_int4_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def _cpu_int4_ok() -> bool:
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return False
    try:
        torchao()
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig  # noqa: F401
    except (QuantizationError, ImportError):
        return False
    return True


def available_schemes(device: str | torch.device) -> tuple[str, ...]:
    """The schemes this build can run on ``device`` (empty when torchao is missing)."""
    dev = torch.device(device)
    try:
        torchao()
    except QuantizationError:
        return ()
    if dev.type == "cpu":
        return ("int8", "int4") if _cpu_int4_ok() else ("int8",)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return ()
        return ("int8", "int4") if _cuda_int4_ok(dev) else ("int8",)
    return ()


def parse_scheme(scheme) -> str | None:
    """``None``/``"none"`` -> None; ``"int8"``/``"int4"`` (any case); anything else is a QuantizationError."""
    if scheme is None:
        return None
    s = str(scheme).strip().lower()
    if s in ("", "none", "no", "off"):
        return None
    if s not in SCHEMES:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)} (or none)")
    return s


def check_scheme(scheme, device: str | torch.device, dtype: torch.dtype | None) -> str | None:
    """Validate ``scheme`` for ``device`` and compute ``dtype`` before anything is loaded; returns the scheme."""
    s = parse_scheme(scheme)
    if s is None:
        return None
    torchao()  # missing library: the install hint
    dev = torch.device(device)
    works = available_schemes(dev)
    if s not in works:
        why = {
            ("int4", "cuda"): "int4 needs torchao's tinygemm kernel, which needs compute capability 8.0 or newer",
            ("int4", "cpu"): "int4 on the CPU needs torch's _weight_int4pack_mm_for_cpu and torchao's "
                             "PrototypeInt4WeightOnlyConfig, which this build lacks",
        }.get((s, dev.type), f"torchao has no {s} weight-only kernel for {dev.type}")
        there = ", ".join(works) if works else "none"
        raise QuantizationError(f"--quantize {s} cannot run on {dev}: {why}; schemes that work here: {there}")
    if s == "int4" and dev.type == "cuda" and dtype not in (None, torch.bfloat16):
        raise QuantizationError(f"--quantize int4 on CUDA needs the bfloat16 compute dtype (tinygemm), not "
                                f"{str(dtype).replace('torch.', '')}; pass --dtype bfloat16")
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise QuantizationError(f"cannot quantize with compute dtype {dtype}; use float32, bfloat16 or float16")
    return s


# ============================================================================================ what is quantized
def target_names(lm: nn.Module, *, lm_head: bool = False) -> list[str]:
    """Module names of the ``nn.Linear`` layers a scheme quantizes (see the module docstring)."""
    names = []
    for stack in ("backbone", "patch_encoder", "patch_decoder"):
        names += [f"{stack}.{n}" for n, m in lm.get_submodule(stack).named_modules() if isinstance(m, nn.Linear)]
    names += [f"local_heads.{i}" for i in range(len(lm.local_heads))]
    names += ["group_downcast", "hidden_downcast"]
    if getattr(lm, "speech_to_local", None) is not None:
        names.append("speech_to_local")
    if lm_head:
        names.append("lm_head")
    return names


def _int4_group(in_features: int) -> int | None:
    return next((g for g in INT4_GROUP_SIZES if in_features % g == 0), None)


def _layer_kind(scheme: str, device: torch.device, out_features: int) -> str:
    """The format a layer gets: ``int8``, ``int4`` (CUDA tinygemm) or ``int4cpu``."""
    if scheme == "int8":
        return "int8"
    if device.type == "cuda":
        return "int4"
    return "int4cpu" if out_features % 16 == 0 else "int8"


def _config(kind: str, in_features: int, name: str):
    torchao()
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if kind == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    group = _int4_group(in_features)
    if group is None:
        raise QuantizationError(f"{name}: in_features {in_features} is not a multiple of any int4 group size "
                                f"{INT4_GROUP_SIZES}; use --quantize int8")
    if kind == "int4":
        return Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                    set_inductor_config=False)
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)


_EXPECTED = {"int8": "Int8Tensor", "int4": "Int4TilePackedTo4dTensor", "int4cpu": "Int4OpaqueTensor"}


def _quantize_weight(weight: torch.Tensor, kind: str, name: str) -> torch.Tensor:
    """Quantize one ``(out, in)`` weight with torchao's ``quantize_`` on a throwaway ``nn.Linear``."""
    ao = torchao()
    out_f, in_f = weight.shape
    with torch.device("meta"):
        tmp = nn.Linear(in_f, out_f, bias=False)
    tmp.weight = nn.Parameter(weight, requires_grad=False)
    ao.quantization.quantize_(tmp, _config(kind, in_f, name))
    q = tmp.weight
    if type(q).__name__ != _EXPECTED[kind]:
        raise QuantizationError(f"{name}: torchao left this layer as {type(q).__name__}, not {_EXPECTED[kind]} "
                                f"(weight {tuple(weight.shape)} {weight.dtype} on {weight.device}); refusing a silent "
                                "fallback")
    return q


def quantize_linear(module: nn.Linear, scheme: str, *, name: str = "linear") -> nn.Linear:
    """Quantize one loaded ``nn.Linear`` in place (the weight becomes a torchao tensor; the bias stays)."""
    kind = _layer_kind(scheme, module.weight.device, module.out_features)
    q = _quantize_weight(module.weight.detach(), kind, name)
    module.weight = nn.Parameter(q, requires_grad=False)
    return module


def quantize_model(lm: nn.Module, scheme, *, lm_head: bool = False) -> nn.Module:
    """Quantize an already-loaded model in place (the loader's :func:`load_lm` avoids holding both copies)."""
    s = check_scheme(scheme, lm.device, lm.dtype)
    if s is None:
        return lm
    for name in target_names(lm, lm_head=lm_head):
        quantize_linear(lm.get_submodule(name), s, name=name)
    lm.quantization = s
    lm.quantized_lm_head = lm_head
    verify(lm, s, lm_head=lm_head)
    return lm


def is_quantized_tensor(t) -> bool:
    return hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter)


def verify(lm: nn.Module, scheme: str, *, lm_head: bool = False) -> None:
    """Every target layer holds the torchao tensor its scheme and device call for, and nothing else is quantized."""
    targets = set(target_names(lm, lm_head=lm_head))
    for name, mod in lm.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = mod.weight
        if name in targets:
            want = _EXPECTED[_layer_kind(scheme, w.device, mod.out_features)]
            if type(w).__name__ != want:
                raise QuantizationError(f"{name} should hold {want} for {scheme} but holds {type(w).__name__}")
        elif is_quantized_tensor(w):
            raise QuantizationError(f"{name} is quantized ({type(w).__name__}) but should stay in the compute dtype")


def layer_formats(lm: nn.Module) -> dict[str, str]:
    """``{module name: weight class}`` of every ``nn.Linear`` (for reports and tests)."""
    return {n: type(m.weight).__name__ for n, m in lm.named_modules() if isinstance(m, nn.Linear)}


# ============================================================================================ audio tokenizer
def codec_target_names(codec: nn.Module) -> list[str]:
    """The ``nn.Linear`` layers of the audio tokenizer's transformer layers (encoder, decoder, vocoder): 99 % of
    its weights. Convolutions, norms, the RVQ codebooks, the vocoder's input embedding and its ISTFT head stay."""
    return [n for n, m in codec.named_modules() if isinstance(m, nn.Linear)
            and n.split(".")[0] in ("encoder", "decoder", "vocoder") and ".layers." in n]


#: what docs/benchmarks.md "Audio tokenizer quantization, measured" supports (int4 was not measured for the codec)
CODEC_SCHEMES = ("int8",)


def check_codec_scheme(scheme, device=None, dtype=None) -> str | None:
    """Validate ``AudioTokenizer.from_pretrained(quantize=...)`` before anything is loaded: ``int8`` (measured:
    3.8 x fewer weight bytes than float32, output closer to float32 than a bfloat16 copy's); ``int4`` is refused
    (not measured for the audio tokenizer); the device and dtype checks of :func:`check_scheme` apply."""
    s = parse_scheme(scheme)
    if s is None:
        return None
    if s not in CODEC_SCHEMES:
        raise QuantizationError(f"the audio tokenizer supports quantize='int8' only: {s} was not measured for it "
                                "(docs/benchmarks.md, 'Audio tokenizer quantization, measured'); use int8 or none")
    return check_scheme(s, checkpoint.parse_device(device), checkpoint.parse_dtype(dtype))


def quantize_codec(codec: nn.Module, scheme) -> nn.Module:
    """Weight-only quantization of an already-loaded :class:`~mimo_audio.codec.AudioTokenizer` in place: every
    layer of :func:`codec_target_names` becomes a torchao tensor (checked; a silent fallback is refused)."""
    s = check_codec_scheme(scheme, codec.device, codec.dtype)
    if s is None:
        return codec
    for name in codec_target_names(codec):
        quantize_linear(codec.get_submodule(name), s, name=name)
    codec.quantization = s
    return codec


# ============================================================================================ real bytes
def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: for a torchao tensor the sum of its inner tensors (data, scales, zero points),
    not the logical float size it reports."""
    if is_quantized_tensor(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters()) + sum(tensor_bytes(b) for b in module.buffers())


# ============================================================================================ loading
def _storage_dtype(code: str) -> torch.dtype | None:
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}.get(code)


def _index(files: list[Path]) -> tuple[dict[str, Path], dict[str, torch.Tensor], torch.dtype | None]:
    """Key -> file, key -> meta tensor of its shape and dtype, and the first float storage dtype; reads headers only."""
    from safetensors import SafetensorError, safe_open

    where, stubs, first_float = {}, {}, None
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as h:
                for key in h.keys():  # noqa: SIM118
                    if key in where:
                        raise CheckpointError(f"weight {key!r} appears in more than one file ({f.name})")
                    sl = h.get_slice(key)
                    dt = _storage_dtype(sl.get_dtype())
                    if dt is not None and first_float is None:
                        first_float = dt
                    where[key] = f
                    stubs[key] = torch.empty(sl.get_shape(), dtype=dt or torch.int64, device="meta")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {f}: {exc}") from None
    return where, stubs, first_float


def _read_rows(path: Path, key: str, a: int | None = None, b: int | None = None) -> torch.Tensor:
    """Rows ``a:b`` of one stored tensor (all when None). The file is opened for this read only, so the pages it
    maps leave the process's resident memory when it returns."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as h:
        if a is None:
            return h.get_tensor(key).clone()
        return h.get_slice(key)[a:b]


def chunk_rows(row_bytes: int, budget: int | None = None) -> int:
    """Rows per chunk: a multiple of 64 (int4 CPU packing works in blocks of rows) within ``budget`` bytes."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(64, budget // max(1, row_bytes) // 64 * 64)


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps freed chunk-sized blocks in its arenas, which would
    otherwise grow the resident size of a loading process by several chunks per layer)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _chunked_quantize(rows: Callable[[int, int], torch.Tensor], shape: tuple[int, int], kind: str, name: str,
                      chunk: int) -> torch.Tensor:
    """Quantize a weight given as a row reader ``rows(a, b)`` chunk by chunk into preallocated inner tensors.

    Quantizing rows alone is exact for the classes in ``_ROW_DIMS`` (per-row scales, groups along in_features);
    a probe through the assembled weight is compared with the chunks' own outputs to catch a layout change.
    """
    n, k = shape
    if n <= chunk or _EXPECTED[kind] not in _ROW_DIMS:
        return _quantize_weight(rows(0, n), kind, name)
    dims = _ROW_DIMS[_EXPECTED[kind]]
    inner, attrs, cls, probe_out = {}, None, None, []
    probe = None
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        w = rows(a, b)
        if probe is None:
            probe = torch.randn(1, k, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
        q = _quantize_weight(w, kind, name)
        del w
        _trim_heap()
        names, attrs = q.__tensor_flatten__()
        cls = type(q)
        for field in names:
            part, d = getattr(q, field), dims.get(field)
            if d is None or part.shape[d] != b - a:
                raise QuantizationError(f"{name}: unexpected layout of {cls.__name__}.{field} {tuple(part.shape)}; "
                                        "torchao changed its tensor format, update mimo_audio.quantize._ROW_DIMS")
            if field not in inner:
                full = list(part.shape)
                full[d] = n
                inner[field] = torch.empty(full, dtype=part.dtype, device=part.device)
            inner[field].narrow(d, a, b - a).copy_(part)
        probe_out.append(F.linear(probe, q))
        del q
    attrs = {key: ([n, k] if isinstance(v, (list, tuple, torch.Size)) and list(v) == [b - a, k] else v)
             for key, v in attrs.items()}
    if "shape" in attrs:
        attrs["shape"] = torch.Size([n, k])
    full_q = cls.__tensor_unflatten__(inner, attrs, torch.Size([n, k]), None)
    want, got = torch.cat(probe_out, -1).float(), F.linear(probe, full_q).float()
    if not torch.allclose(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()) + 1e-6):
        raise QuantizationError(f"{name}: the chunk-assembled {cls.__name__} does not reproduce its chunks; "
                                "torchao changed its tensor format, update mimo_audio.quantize._ROW_DIMS")
    return full_q


def load_lm(cls, folder: Path, config, *, device, dtype, empty_id, scheme: str, lm_head: bool = False):
    """Build ``cls(config)`` on the meta device and fill it from ``folder``'s safetensors, quantizing the target
    layers with ``scheme`` as they are read (one row chunk in the compute dtype at a time)."""
    from .lm import key_table

    dev = checkpoint.parse_device(device)
    files = checkpoint.safetensors_files(folder)
    where, stubs, stored = _index(files)
    dt = checkpoint.parse_dtype(dtype) or stored or torch.float32
    s = check_scheme(scheme, dev, dt)
    with torch.device("meta"):
        model = cls(config, empty_id=empty_id)
    table = key_table(config)
    params = dict(model.named_parameters())
    shapes = {key: tuple((params[n] if sl is None else params[n][sl]).shape) for key, (n, sl) in table.items()}
    checkpoint.check_weights(stubs, shapes, source=str(folder))
    parts: dict[str, list[tuple[str, slice | None]]] = {}
    for key, (n, sl) in table.items():
        parts.setdefault(n, []).append((key, sl))
    targets = set(target_names(model, lm_head=lm_head))

    def reader(pname: str, pdtype: torch.dtype):
        """rows(a, b) of our parameter ``pname`` assembled from its released tensors (fused rows)."""
        def rows(a: int, b: int) -> torch.Tensor:
            shape = list(params[pname].shape)
            shape[0] = b - a
            out = torch.empty(shape, dtype=pdtype, device=dev)
            for key, sl in parts[pname]:
                lo = 0 if sl is None else sl.start
                hi = params[pname].shape[0] if sl is None else sl.stop
                x, y = max(a, lo), min(b, hi)
                if x < y:
                    out[x - a: y - a].copy_(_read_rows(where[key], key, x - lo, y - lo))
            return out
        return rows

    with torch.no_grad():
        for pname, p in params.items():
            owner, _, leaf = pname.rpartition(".")
            mod = model.get_submodule(owner)
            pdtype = dt if p.is_floating_point() else p.dtype
            rows = reader(pname, pdtype)
            n = p.shape[0]
            chunk = chunk_rows(p[0].numel() * torch.empty((), dtype=pdtype).element_size())
            if owner in targets and leaf == "weight":
                kind = _layer_kind(s, dev, n)
                value = _chunked_quantize(rows, tuple(p.shape), kind, owner, chunk)
                mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            else:
                value = torch.empty(p.shape, dtype=pdtype, device=dev)
                for a in range(0, n, chunk):
                    value[a: a + chunk].copy_(rows(a, min(n, a + chunk)))
                mod._parameters[leaf] = nn.Parameter(value, requires_grad=p.requires_grad)
            _trim_heap()
    _finish(model, dev, s, lm_head)
    return model


def _finish(model, dev: torch.device, scheme: str, lm_head: bool) -> None:
    for stack in (model.backbone, model.patch_encoder, model.patch_decoder):
        stack.init_buffers(dev)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"loading left {len(left)} tensor(s) unfilled: {', '.join(left[:5])}")
    model.quantization = scheme
    model.quantized_lm_head = lm_head
    verify(model, scheme, lm_head=lm_head)
    model.eval()


# ============================================================================================ save / reload
def _attr_to_json(v):
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).replace("torch.", "")}
    if isinstance(v, (torch.Size, tuple, list)):
        return [_attr_to_json(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise QuantizationError(f"cannot save a torchao tensor attribute of type {type(v).__name__} ({v!r})")


def _attr_from_json(v):
    if isinstance(v, dict) and set(v) == {"dtype"}:
        return checkpoint.parse_dtype(v["dtype"])
    if isinstance(v, list):
        return [_attr_from_json(x) for x in v]
    return v


def _class(name: str):
    path = _CLASSES.get(name)
    if path is None:
        raise CheckpointError(f"quantized checkpoint names tensor class {name!r}, which this version cannot load "
                              f"(known: {', '.join(_CLASSES)})")
    torchao()
    import importlib

    mod, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def saved_quantization(folder: Path) -> dict | None:
    """The ``"quantization"`` entry of ``folder/config.json`` (a checkpoint written by :func:`save_quantized`)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization") if isinstance(cfg, dict) else None
    return q if isinstance(q, dict) else None


def save_quantized(lm: nn.Module, source: Path, out: str | os.PathLike) -> Path:
    """Write the quantized ``lm`` (loaded from ``source``) to the folder ``out``: ``config.json`` with a
    ``"quantization"`` entry, ``model.safetensors``, and the text tokenizer files of ``source``.

    The folder is written next to ``out`` and renamed into place when complete (an existing ``out`` is refused).
    """
    from safetensors.torch import save_file

    scheme = getattr(lm, "quantization", None)
    if scheme is None:
        raise QuantizationError("this model is not quantized; load it with quantize='int8' or 'int4' first")
    out = Path(os.fspath(out)).expanduser()
    if out.exists():
        raise QuantizationError(f"{out} already exists; pass a new folder to write the quantized checkpoint into")
    if not out.parent.is_dir():
        raise QuantizationError(f"{out}: the folder {out.parent} does not exist")
    tensors, meta = {}, {}
    for name, p in lm.named_parameters():
        if is_quantized_tensor(p):
            names, attrs = p.__tensor_flatten__()
            for field in names:
                tensors[f"{name}:{field}"] = getattr(p, field).detach().cpu().contiguous()
            meta[name] = {"class": type(p).__name__, "fields": names, "shape": list(p.shape),
                          "attrs": {k: _attr_to_json(v) for k, v in attrs.items()}}
        else:
            tensors[name] = p.detach().cpu().contiguous()
    ao = torchao()
    cfg = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    cfg["quantization"] = {
        "scheme": scheme, "library": "torchao", "torchao_version": ao.__version__, "format": SAVED_FORMAT,
        "dtype": str(lm.dtype).replace("torch.", ""), "device_type": lm.device.type,
        "lm_head": bool(getattr(lm, "quantized_lm_head", False)),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        save_file(tensors, str(tmp / SAVED_WEIGHTS), metadata={"format": SAVED_FORMAT, "quantized": json.dumps(meta)})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for f in Path(source).iterdir():
            skip = f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json")
            if f.is_file() and not skip:
                shutil.copy2(f, tmp / f.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_saved(cls, folder: Path, config, info: dict, *, device, dtype, empty_id, scheme=None):
    """Load a folder written by :func:`save_quantized` (no re-quantization)."""
    from safetensors import SafetensorError, safe_open

    saved = info.get("scheme")
    want = parse_scheme(scheme)
    if info.get("format") != SAVED_FORMAT or saved not in SCHEMES:
        raise CheckpointError(f"{folder}/config.json has a 'quantization' entry this version cannot read: {info}")
    if want is not None and want != saved:
        raise QuantizationError(f"{folder} is already quantized with {saved}; load it without --quantize, or "
                                f"quantize the unquantized checkpoint with {want}")
    dev = checkpoint.parse_device(device)
    stored_dt = checkpoint.parse_dtype(info.get("dtype"))
    dt = checkpoint.parse_dtype(dtype)
    if dt is not None and dt != stored_dt:
        raise QuantizationError(f"{folder} was quantized for compute dtype {info.get('dtype')}; load it with that "
                                "dtype (or none), or re-quantize the unquantized checkpoint")
    check_scheme(saved, dev, stored_dt)
    kinds = {info.get("device_type"), dev.type}
    if saved == "int4" and len(kinds) > 1:
        raise QuantizationError(f"{folder} holds int4 weights packed for {info.get('device_type')}; int4 packing is "
                                f"device-specific, so re-quantize the unquantized checkpoint on {dev.type}")
    path = folder / SAVED_WEIGHTS
    try:
        with safe_open(str(path), framework="pt", device="cpu") as h:
            header = h.metadata() or {}
            keys = set(h.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if header.get("format") != SAVED_FORMAT:
        raise CheckpointError(f"{path} is not a quantized checkpoint written by `mimo-audio quantize`")
    meta = json.loads(header.get("quantized", "{}"))
    with torch.device("meta"):
        model = cls(config, empty_id=empty_id)
    used = set()
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            mod = model.get_submodule(owner)
            if name in meta:
                m = meta[name]
                fields = {}
                for field in m["fields"]:
                    key = f"{name}:{field}"
                    if key not in keys:
                        raise CheckpointError(f"{path} lacks {key!r}")
                    fields[field] = _read_rows(path, key).to(dev)
                    used.add(key)
                attrs = {k: _attr_from_json(v) for k, v in m["attrs"].items()}
                if "shape" in attrs:
                    attrs["shape"] = torch.Size(attrs["shape"])
                value = _class(m["class"]).__tensor_unflatten__(fields, attrs, torch.Size(m["shape"]), None)
                if tuple(value.shape) != tuple(p.shape):
                    raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(p.shape)}")
                mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            else:
                if name not in keys:
                    raise CheckpointError(f"{path} lacks {name!r}")
                value = _read_rows(path, name)
                if tuple(value.shape) != tuple(p.shape):
                    raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(p.shape)}")
                used.add(name)
                pdt = stored_dt if value.is_floating_point() else value.dtype
                mod._parameters[leaf] = nn.Parameter(value.to(dev, pdt), requires_grad=p.requires_grad)
    extra = sorted(keys - used)
    if extra:
        raise CheckpointError(f"unexpected weight {extra[0]!r} in {path} ({len(extra)} unused)")
    _finish(model, dev, saved, bool(info.get("lm_head", False)))
    return model
