"""SAE files read defensively: SAELens folders (``cfg.json`` checked against a schema, the weights' shapes read from
the safetensors header, both before anything is allocated) and Gemma Scope's ``params.npz`` (JumpReLU, no pickle).

SAELens names hook points as TransformerLens does (``blocks.3.hook_resid_post``); polysteer as
``text.blocks.3.resid_post``. Loading accepts either (and ``model.layers.3`` / ``layers.3.mlp`` module paths);
saving writes the TransformerLens name that SAELens expects, with polysteer's own provenance under ``polysteer``.
SAELens 6 configs (hook name under ``metadata``) and older ones (``hook_point``, ``activation_fn_str``, boolean
``normalize_activations``) both parse; ``normalize_activations``, ``rescale_acts_by_decoder_norm`` and ``dtype``
are validated here and applied by :mod:`polysteer.plugins.sae.normalize` and the SAE model.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.plugins.sae.normalize import parse_normalization

ARCHITECTURES = ("standard", "topk", "jumprelu")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
NPZ_FILE = "params.npz"
MAX_WIDTH = 2**24  # latents or input width; larger is a corrupt or hostile cfg
_TL_SITES = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out",
             "hook_attn_out": "attn_out"}
_MODULE_SITES = {"": "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SAEFields:
    """What a validated ``cfg.json`` says."""

    d_in: int
    d_sae: int
    architecture: str
    k: int | None
    apply_b_dec_to_input: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    normalize: str = "none"
    dtype: str | None = None
    rescale_by_decoder_norm: bool = False


def to_hook_point(name: str, tower: str = "text") -> str:
    """A canonical hook point from a polysteer, TransformerLens or HF module-path hook name.

    >>> to_hook_point("blocks.3.hook_resid_post"), to_hook_point("model.layers.3.mlp")
    ('text.blocks.3.resid_post', 'text.blocks.3.mlp_out')
    """
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", name)
    if match and match.group(2) in _TL_SITES:
        return f"{tower}.blocks.{match.group(1)}.{_TL_SITES[match.group(2)]}"
    match = re.fullmatch(r"(?:model\.)?layers\.(\d+)(?:\.(\w+))?", name)
    if match and (match.group(2) or "") in _MODULE_SITES:
        return f"{tower}.blocks.{match.group(1)}.{_MODULE_SITES[match.group(2) or '']}"
    try:
        return str(HookPoint.parse(name))
    except PolysteerError:
        raise PolysteerError(f"SAE hook_name {name!r} is not a hook point polysteer can steer; expected e.g. "
                             "'blocks.12.hook_resid_post' or 'text.blocks.12.resid_post'") from None


def to_saelens_hook_name(hook_point: str) -> str:
    """The TransformerLens name SAELens uses for a text hook point (other towers keep polysteer's name)."""
    hp = HookPoint.parse(hook_point)
    return f"blocks.{hp.layer}.hook_{hp.site}" if hp.tower == "text" else str(hp)


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path/cfg.json``, with a one-line error for a missing, unreadable or non-object file."""
    file = path / CFG_FILE
    if not file.is_file():
        raise PolysteerError(f"{path} is not an SAE directory: it needs {CFG_FILE} and {WEIGHTS_FILE} (SAELens format)")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolysteerError(f"{file} is not valid UTF-8 JSON ({exc}); re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise PolysteerError(f"{file} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def parse_config(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> SAEFields:
    """Validate ``cfg`` (types, ranges) against the weight shapes of the safetensors header."""
    d_in, d_sae = _dims(cfg, shapes, where)
    architecture, k = _architecture(cfg, shapes, d_sae, where)
    normalize = parse_normalization(cfg.get("normalize_activations"), where)
    apply_b_dec, rescale = (_bool(cfg, key, default, where) for key, default in
                            (("apply_b_dec_to_input", True), ("rescale_acts_by_decoder_norm", False)))
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", None):
        raise PolysteerError(f"{where}: reshape_activations={reshape!r} (per-head attention SAEs) is not supported; "
                             "polysteer steers resid_pre/resid_post/mlp_out/attn_out")
    dtype = cfg.get("dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype.removeprefix("torch.") not in DTYPES):
        raise PolysteerError(f"{where}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return SAEFields(d_in, d_sae, architecture, k, apply_b_dec, _metadata(cfg, where), normalize,
                     dtype and dtype.removeprefix("torch."), rescale and architecture == "topk")


def _bool(cfg: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise PolysteerError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the weights file's header, without reading the tensors."""
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise PolysteerError(f"{path} has {CFG_FILE} but no {WEIGHTS_FILE}; copy the weights file next to it")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolysteerError(f"cannot read {file}: truncated or not a safetensors file ({exc})") from None


def read_weights(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors as float32, refusing NaN or inf, and a legacy ``scaling_factor`` that is not all ones."""
    tensors = {}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
        for key in [*keys, *(["scaling_factor"] if "scaling_factor" in handle.keys() else [])]:
            tensor = handle.get_tensor(key)
            if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                raise PolysteerError(f"{path / WEIGHTS_FILE}: {key} holds NaN, inf or non-float values")
            tensors[key] = tensor.float()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):  # SAELens 6 refuses it too
        raise PolysteerError(f"{path / WEIGHTS_FILE} has a finetuning scaling_factor that is not all ones; fold it "
                             "into W_dec (W_dec *= scaling_factor[:, None]) and delete it")
    return tensors


def expected_shapes(fields: SAEFields) -> dict[str, tuple[int, ...]]:
    shapes = {"W_enc": (fields.d_in, fields.d_sae), "W_dec": (fields.d_sae, fields.d_in), "b_enc": (fields.d_sae,),
              "b_dec": (fields.d_in,)}
    if fields.architecture == "jumprelu":
        shapes["threshold"] = (fields.d_sae,)
    return shapes


def check_shapes(fields: SAEFields, shapes: dict[str, tuple[int, ...]], where: str) -> list[str]:
    """The tensor names to read, after checking every expected one is there with its shape."""
    expected = expected_shapes(fields)
    missing = [key for key in expected if key not in shapes]
    if missing:
        raise PolysteerError(f"{where} lacks {missing}; an SAELens {fields.architecture} SAE has {sorted(expected)}")
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise PolysteerError(f"{where}: {key} has shape {shapes[key]}, expected {shape} for d_in {fields.d_in}, "
                                 f"d_sae {fields.d_sae}")
    return list(expected)


def _int(cfg: dict[str, Any], key: str, where: str, high: int = MAX_WIDTH) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= high:
        raise PolysteerError(f"{where}: {key} must be an integer in 1..{high}, got {value!r}")
    return value


def _dims(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> tuple[int, int]:
    d_in, d_sae = _int(cfg, "d_in", where), _int(cfg, "d_sae", where)
    enc = shapes.get("W_enc")
    if enc is None or len(enc) != 2:
        raise PolysteerError(f"{where} lacks a 2-D W_enc; an SAELens SAE stores W_enc [d_in, d_sae]")
    if not all(0 < n <= MAX_WIDTH for n in enc):
        raise PolysteerError(f"{where}: W_enc has shape {list(enc)}; both sizes must be in 1..{MAX_WIDTH}")
    if (d_in, d_sae) != (None, None) and (d_in, d_sae) != enc:
        raise PolysteerError(f"{where}: cfg.json says d_in {d_in}, d_sae {d_sae} but W_enc is {list(enc)}; the "
                             "config and weights come from different SAEs")
    return enc


def _architecture(cfg, shapes, d_sae: int, where: str) -> tuple[str, int | None]:
    """The architecture and k from SAELens' current or legacy keys, inferred from the weights when absent."""
    kwargs = cfg.get("activation_fn_kwargs") or {}
    legacy = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    for key, value in (("activation_fn_str", legacy), ("architecture", cfg.get("architecture"))):
        if value is not None and not isinstance(value, str):
            raise PolysteerError(f"{where}: {key} must be a string, got {value!r}")
    k = _int(cfg, "k", where, d_sae) or (_int(kwargs, "k", where, d_sae) if isinstance(kwargs, dict) else None)
    architecture = cfg.get("architecture") or {"topk": "topk", "jumprelu": "jumprelu"}.get(legacy)
    if architecture is None:
        architecture = "jumprelu" if "threshold" in shapes else "topk" if k else "standard"
    if architecture == "standard" and legacy == "topk":
        architecture = "topk"
    if architecture not in ARCHITECTURES:
        raise PolysteerError(f"{where}: architecture {architecture!r} is not supported; polysteer loads "
                             f"{ARCHITECTURES}")
    if architecture == "topk" and k is None:
        raise PolysteerError(f"{where}: a topk SAE needs 'k' (or activation_fn_kwargs.k)")
    return architecture, k if architecture == "topk" else None


def _metadata(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """polysteer's provenance (``polysteer``, or the older ``metadata``), with the hook name made canonical."""
    meta = cfg.get("polysteer", cfg.get("metadata")) or {}
    if not isinstance(meta, dict):
        raise PolysteerError(f"{where}: 'polysteer' must be a JSON object, got {type(meta).__name__}")
    meta = dict(meta)
    for key in ("hook_name", "model_name"):
        value = cfg.get(key, meta.get(key, cfg.get("hook_point") if key == "hook_name" else None))  # pre-6 name
        if value is not None and not isinstance(value, str):
            raise PolysteerError(f"{where}: {key} must be a string, got {value!r}")
        if value:
            meta[key] = value
    if meta.get("hook_name"):
        meta["hook_name"] = to_hook_point(meta["hook_name"])
    max_norm = meta.get("max_norm")
    if max_norm is not None and (not isinstance(max_norm, (int, float)) or not math.isfinite(max_norm)):
        raise PolysteerError(f"{where}: max_norm must be a finite number, got {max_norm!r}")
    return meta


def is_gemma_scope(path: Path) -> bool:
    """A Gemma Scope ``params.npz``, or a folder holding one and no SAELens ``cfg.json``."""
    return path.suffix == ".npz" or ((path / NPZ_FILE).is_file() and not (path / CFG_FILE).is_file())


def read_gemma_scope(path: Path, hook_point: str | None = None) -> tuple[SAEFields, dict[str, torch.Tensor]]:
    """A Gemma Scope JumpReLU SAE from ``params.npz`` (read with ``allow_pickle=False``).

    Its hook point is ``hook_point``, else the ``layer_N`` folder of its path, at the site its release names
    (``...-res`` resid_post, ``-mlp`` mlp_out, ``-att`` attn_out).
    """
    file = path if path.suffix == ".npz" else path / NPZ_FILE
    shapes = _npz_shapes(file)
    fields = SAEFields(*_dims({}, shapes, str(file)), "jumprelu", None, False,
                       {"hook_name": to_hook_point(hook_point) if hook_point else _gemma_scope_hook(file),
                        "format": "gemma-scope"})
    fields.metadata = {k: v for k, v in fields.metadata.items() if v}
    keys = check_shapes(fields, shapes, str(file))
    with np.load(file, allow_pickle=False) as arrays:
        names = {_npz_key(name): name for name in arrays.files}
        tensors = {key: torch.from_numpy(np.asarray(arrays[names[key]], dtype=np.float32)) for key in keys}
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise PolysteerError(f"{file}: {key} holds NaN or inf")
    return fields, tensors


def _npz_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes from the ``.npy`` headers inside an ``.npz``, without loading the arrays."""
    try:
        with zipfile.ZipFile(file) as archive:
            shapes = {}
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                if dtype.hasobject:
                    raise PolysteerError(f"{file}: {name} holds Python objects; polysteer reads numeric arrays only")
                shapes[_npz_key(name.removesuffix(".npy"))] = tuple(shape)
            return shapes
    except PolysteerError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PolysteerError(f"cannot read {file}: not a numpy .npz archive ({exc})") from None


def _npz_key(name: str) -> str:
    """SAELens' renaming of Gemma Scope arrays: ``w_enc`` -> ``W_enc``."""
    return "W_" + name[2:] if name.startswith("w_") else name


def _gemma_scope_hook(file: Path) -> str | None:
    """The hook point SAELens' ``gemma_2`` loader gives: ``-res`` resid_post, ``-mlp`` mlp_out."""
    layer = next((m.group(1) for part in file.parts if (m := re.fullmatch(r"layer_(\d+)", part))), None)
    if layer is None:
        return None
    release = " ".join(file.parts)
    if re.search(r"-att\b", release):
        raise PolysteerError(f"{file}: Gemma Scope attention SAEs read attn.hook_z (the heads' outputs before the "
                             "output projection), which polysteer cannot steer; use a -res or -mlp SAE")
    site = "mlp_out" if re.search(r"-mlp\b", release) else "resid_post"
    return f"text.blocks.{layer}.{site}"
