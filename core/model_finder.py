"""Finders that learn on the model itself (prompts and completions) instead of pooled activations.

A trained steering vector is optimised through the frozen model, so it cannot be fitted from
``(X_pos, X_neg)``. Such finders subclass :class:`ModelFinder`: they declare ``needs_model = True`` (the
activation-based common checks skip them; they have their own), refuse ``fit(X_pos, X_neg)`` with a
message naming the command that trains them, and learn with ``fit_model(model, tokenizer, data)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from polysteer.direction import Direction, operator_param_key
from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder
from polysteer.modality import Modality


class ModelFinder(DirectionFinder):
    """Learns one vector per hook point by running the model (gradient descent, RL, ...).

    After ``fit_model``: ``vectors_`` maps hook points to the learned (unnormalised) vectors,
    ``operator_params_`` maps hook points to extra operator tensors (e.g. a gate), ``history_`` lists
    the monitored losses, and ``direction_`` / ``scale_`` are the first hook point's unit vector and norm.
    """

    needs_model = True
    operator_name = "add"
    command = "polysteer train-vector"

    def fit(self, X_pos: torch.Tensor, X_neg: torch.Tensor) -> "ModelFinder":
        raise PolysteerError(
            f"the {self.name!r} finder learns through the model from prompts and completions, not from pooled "
            f"activations; use `{self.command}` or finder.fit_model(model, tokenizer, data)"
        )

    def fit_model(self, model: Any, tokenizer: Any, data: Sequence[Any]) -> "ModelFinder":
        raise NotImplementedError

    def _set_first(self) -> None:
        """``direction_`` and ``scale_`` of the first hook point, for the DirectionFinder interface."""
        first = next(iter(self.vectors_.values()))
        norm = float(first.norm())
        self.direction_ = first / norm if norm > 0 else first
        self.scale_ = norm

    def to_direction(self, model: Any, modality: Modality, provenance: dict | None = None) -> Direction:
        """Package the learned vectors: unit vectors with their norm as the scale, so coefficient 1 is as trained."""
        zero = [hp for hp, v in self.vectors_.items() if float(v.norm()) == 0]
        if zero:
            raise PolysteerError(f"the learned vector at {zero[0]} is zero: training made no progress; "
                                 "raise lr or steps")
        extras = {operator_param_key(hp, key): tensor.detach().float().cpu().clone()
                  for hp in self.vectors_ for key, tensor in self.operator_params_.get(hp, {}).items()}
        history = self.history_[-1:] if self.history_ else []
        return Direction.from_fitted(
            self.vectors_, model=model, modality=modality, finder=self, extras=extras,
            operator=self.operator_name if extras else "add", provenance={"history": history, **(provenance or {})},
        )
