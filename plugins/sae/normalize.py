"""SAELens' ``normalize_activations``, done as SAELens 6 does it.

``constant_norm_rescale`` (each activation scaled to norm ``sqrt(d_in)``) and ``layer_norm`` (centred, divided by
its standard deviation) depend on the activation, so they run at encode time and are undone at decode time with the
same activation's statistics. ``expected_average_only_in`` (one scaling factor for every activation) and
``covariance_whitening`` (an affine whitening) are folded into the weights when their statistics are known: from the
release's ``norm_scaling_factor``, or the ``activation_scaler.json`` / ``activation_whitening.safetensors`` SAELens
writes next to a training checkpoint. Without them SAELens runs the SAE unnormalised, and so does polysteer.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from polysteer.errors import PolysteerError

NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
RUNTIME = ("constant_norm_rescale", "layer_norm")
SCALER_FILE = "activation_scaler.json"
WHITENING_FILE = "activation_whitening.safetensors"
LN_EPS = 1e-5  # SAELens' run_time_activation_ln_in default

Stats = tuple[torch.Tensor, ...]


def parse_normalization(value, where: str) -> str:
    """The normalisation a cfg names; SAELens' legacy booleans mean ``none`` / ``expected_average_only_in``."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "expected_average_only_in"
    if value not in NORMALIZATIONS:
        raise PolysteerError(f"{where}: normalize_activations={value!r} is not one of {NORMALIZATIONS}")
    return value


def normalize_in(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """``x`` as the SAE sees it, and the statistics :func:`normalize_out` needs to undo it."""
    if kind == "constant_norm_rescale":
        coeff = x.shape[-1] ** 0.5 / x.norm(dim=-1, keepdim=True)
        return x * coeff, (coeff,)
    if kind == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + LN_EPS), (mu, std)
    return x, ()


def normalize_out(kind: str, y: torch.Tensor, stats: Stats) -> torch.Tensor:
    """A reconstruction back in the activations' own scale (SAELens multiplies by ``std``, not ``std + eps``)."""
    if kind == "constant_norm_rescale":
        return y / stats[0]
    if kind == "layer_norm":
        return y * stats[1] + stats[0]
    return y


def fold(tensors: dict[str, torch.Tensor], normalize: str, rescale: bool, apply_b_dec: bool, folder: Path | None,
         scaling_factor: float | None = None) -> str:
    """Fold the known normalisation (then TopK's decoder norms) into ``tensors`` in place, in SAELens' order.

    Returns the normalisation left to run at encode time.
    """
    if normalize == "expected_average_only_in":
        factor = scaling_factor if scaling_factor is not None else _scaler_factor(folder)
        if factor is None:
            warnings.warn("the SAE says normalize_activations='expected_average_only_in' but no scaling factor is "
                          f"known (no {SCALER_FILE} beside it); it runs unnormalised, as SAELens runs it",
                          stacklevel=3)
        else:
            _fold_scaling(tensors, factor)
        normalize = "none"
    whitening = _whitening(folder) if normalize == "covariance_whitening" else None
    if rescale:
        _fold_decoder_norm(tensors)
    if normalize == "covariance_whitening":
        if whitening is None:
            warnings.warn(f"the SAE says normalize_activations='covariance_whitening' but no {WHITENING_FILE} is "
                          "beside it; it runs unwhitened, as SAELens runs it", stacklevel=3)
        else:
            _fold_whitening(tensors, *whitening, apply_b_dec)
        normalize = "none"
    return normalize


def _fold_scaling(tensors: dict[str, torch.Tensor], factor: float) -> None:
    """SAELens' ``fold_activation_norm_scaling_factor``: the SAE then reads unscaled activations."""
    tensors["W_enc"] = tensors["W_enc"] * factor
    tensors["W_dec"] = tensors["W_dec"] / factor
    tensors["b_dec"] = tensors["b_dec"] / factor


def _fold_decoder_norm(tensors: dict[str, torch.Tensor]) -> None:
    """SAELens' ``fold_W_dec_norm`` (TopK ``rescale_acts_by_decoder_norm``): unit decoder rows, same latents."""
    norms = tensors["W_dec"].norm(dim=-1).clamp(min=1e-8)
    tensors["W_dec"] = tensors["W_dec"] / norms.unsqueeze(1)
    tensors["W_enc"] = tensors["W_enc"] * norms
    tensors["b_enc"] = tensors["b_enc"] * norms
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"] * norms


def _fold_whitening(tensors, mean, matrix, inverse, apply_b_dec: bool) -> None:
    """SAELens' ``fold_activation_whitening``, computed in float64 like its whitening statistics."""
    dtype = torch.float64
    mean, matrix, inverse = mean.to(dtype), matrix.to(dtype), inverse.to(dtype)
    w_enc = matrix @ tensors["W_enc"].to(dtype)
    if not apply_b_dec:
        tensors["b_enc"] = (tensors["b_enc"].to(dtype) - mean @ w_enc).float()
    tensors["W_enc"] = w_enc.float()
    tensors["W_dec"] = (tensors["W_dec"].to(dtype) @ inverse).float()
    tensors["b_dec"] = (tensors["b_dec"].to(dtype) @ inverse + mean).float()


def _scaler_factor(folder: Path | None) -> float | None:
    """``scaling_factor`` from the ``activation_scaler.json`` beside the weights, if there is one."""
    file = folder / SCALER_FILE if folder else None
    if file is None or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolysteerError(f"{file} is not valid UTF-8 JSON ({exc}); re-save the SAE") from None
    factor = data.get("scaling_factor") if isinstance(data, dict) else "missing"
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise PolysteerError(f"{file}: scaling_factor must be a positive finite number, got {factor!r}")
    return float(factor)


def _whitening(folder: Path | None) -> tuple[torch.Tensor, ...] | None:
    """``(mean, matrix, inverse_matrix)`` from ``activation_whitening.safetensors``, if there is one."""
    file = folder / WHITENING_FILE if folder else None
    if file is None or not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as handle:
            tensors = [handle.get_tensor(key) for key in ("mean", "matrix", "inverse_matrix")]
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolysteerError(f"cannot read {file}: it needs mean, matrix and inverse_matrix ({exc})") from None
    if not all(torch.isfinite(t).all() for t in tensors):
        raise PolysteerError(f"{file} holds NaN or inf")
    return tuple(tensors)
