"""Injection operator base class: how a direction changes a hidden state."""

from __future__ import annotations

import torch


class Operator:
    """``operator(h, v, coef)`` returns the new hidden states.

    ``h`` is ``[batch, positions, d_model]``, ``v`` a ``[d_model]`` direction, ``coef`` a float or a
    ``[batch, positions, 1]`` tensor. The engine only calls an operator where ``coef`` is non-zero and
    keeps the other positions bit-identical, so operators need not handle zeros.
    """

    name: str = ""
    needs_direction: bool = False  # True where a zero ``v`` would make the operator a no-op or undefined
    zero_is_identity: bool = False  # True where coef 0 returns ``h`` exactly: the engine then skips its masking

    def __call__(self, h: torch.Tensor, v: torch.Tensor, coef) -> torch.Tensor:
        raise NotImplementedError
