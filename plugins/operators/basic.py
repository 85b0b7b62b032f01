"""Built-in injection operators: add, rotate (VTI's norm-preserving form), clamp, ablate."""

from __future__ import annotations

import torch

from polysteer.operator import Operator


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


class Add(Operator):
    """``h + c v``: activation addition (ActAdd, CAA)."""

    name = "add"
    needs_direction = True
    zero_is_identity = True  # h + 0 * v == h, bit for bit

    def __call__(self, h, v, coef):
        return h + coef * v


class Rotate(Operator):
    """``||h|| * normalize(normalize(h) + gain * c * normalize(v))``: keeps every position's norm (VTI)."""

    name = "rotate"
    needs_direction = True

    def __init__(self, gain: float = 0.1):
        self.gain = gain

    def __call__(self, h, v, coef):
        # in float32: float16 rounds the 1e-12 floor to 0 (a zero padding row gives 0/0 = NaN) and overflows norms
        x = h.float()
        norm = x.norm(dim=-1, keepdim=True)
        mixed = x / norm.clamp_min(1e-12) + (self.gain * coef) * _unit(v.float())
        return (norm * mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(h.dtype)


class Clamp(Operator):
    """Sets the projection on ``v`` to ``c``: ``h + (c - h.v) v`` with ``v`` unit."""

    name = "clamp"
    needs_direction = True

    def __call__(self, h, v, coef):
        u = _unit(v)
        return h + (coef - (h @ u).unsqueeze(-1)) * u


class Ablate(Operator):
    """Removes the fraction ``c`` of the projection on ``v`` (``c = 1``: directional ablation)."""

    name = "ablate"
    needs_direction = True

    def __call__(self, h, v, coef):
        u = _unit(v)
        return h - coef * (h @ u).unsqueeze(-1) * u
