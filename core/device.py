"""Where and in what precision a model runs.

``auto`` picks CUDA, then MPS, else CPU; bfloat16 on a GPU, float32 on CPU. ``map`` spreads a model too large for
one GPU over every GPU (then CPU memory) with accelerate's ``device_map="auto"``.
"""

from __future__ import annotations

import torch

from polysteer.errors import PolysteerError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


SPREAD = "map"


def device_map(device: str | torch.device | None) -> str | None:
    """accelerate's ``device_map`` for ``--device map`` (``"auto"``: layers spread over the GPUs, then CPU), else None:
    the loader moves the whole model to :func:`resolve_device`'s device itself."""
    return "auto" if str(device) == SPREAD else None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA if available, then MPS, else CPU; ``map``: where its first layers go (CUDA if
    available, else CPU); any other name is checked to exist."""
    if device is None or str(device) in ("auto", SPREAD):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PolysteerError(f"unknown device {device!r} ({exc}); use auto, map, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PolysteerError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise PolysteerError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` (or None): bfloat16 on a GPU, float32 on CPU; else one of :data:`DTYPES` or a torch float dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise PolysteerError(f"dtype {dtype} is not a floating-point type; use float32, bfloat16 or float16")
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise PolysteerError(f"unknown dtype {dtype!r}; use auto, {', '.join(sorted(set(DTYPES) - {'half'}))}")
    return DTYPES[dtype]
