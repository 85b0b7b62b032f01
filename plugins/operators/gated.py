"""Token-wise adaptive steering: ``h + c * sigmoid(w . h + b) * v`` (trained vectors with a learned gate).

``gated_add`` applies a gate whose parameters ``w [d_model]`` and ``b [1]`` were learned with the vector
("Small Vectors, Big Effects": adaptive token-wise scaling). A Direction stores them as operator tensors,
so ``Direction.to_plan`` rebuilds the operator from the file. ``LearnedAdd`` is the training-time form: it
owns the trainable vector (and gate) so gradients reach them through the engine's hooks.
"""

from __future__ import annotations

import torch

from polysteer.errors import PolysteerError
from polysteer.operator import Operator


def gate(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``alpha_t = sigmoid(w . h_t + b)`` as ``[batch, positions, 1]`` in ``h``'s dtype."""
    w, b = w.to(device=h.device, dtype=h.dtype), b.to(device=h.device, dtype=h.dtype)
    return torch.sigmoid(h @ w + b).unsqueeze(-1)


class GatedAdd(Operator):
    """``h + c * sigmoid(w . h + b) * v``: the vector scaled per position by a learned gate.

    Args:
        w: gate weights ``[d_model]``.
        b: gate bias, one value.
    """

    name = "gated_add"
    needs_direction = True

    def __init__(self, w: torch.Tensor | None = None, b: torch.Tensor | None = None):
        self.w = None if w is None else torch.as_tensor(w).detach().flatten()
        self.b = None if b is None else torch.as_tensor(b).detach().flatten()

    def __call__(self, h, v, coef):
        if self.w is None or self.b is None:
            raise PolysteerError("gated_add needs its gate (w, b): load a trained Direction that holds one "
                                 "(polysteer train-vector --gate) and use direction.to_plan()")
        if self.w.shape[0] != h.shape[-1] or self.b.numel() != 1:
            raise PolysteerError(f"gated_add gate has w {tuple(self.w.shape)} and b {tuple(self.b.shape)} but the "
                                 f"hidden states have d_model {h.shape[-1]}; the gate was trained on another model")
        return h + coef * gate(h, self.w, self.b[0]) * v.to(h.dtype)


class LearnedAdd(Operator):
    """Training-time operator: adds its own trainable ``vector``, gated per position when ``w``/``b`` are given.

    The engine passes a detached copy of the intervention's direction; this operator ignores it and uses
    the live parameters, so the loss backpropagates into them.
    """

    name = "learned_add"

    def __init__(self, vector: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None):
        self.vector, self.w, self.b = vector, w, b

    def __call__(self, h, v, coef):
        step = self.vector.to(device=h.device, dtype=h.dtype)
        if self.w is not None:
            return h + coef * gate(h, self.w, self.b) * step
        return h + coef * step
