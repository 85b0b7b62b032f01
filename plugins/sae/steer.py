"""Steering with SAE features: the ``sae_clamp`` operator and feature directions (contrast selection lives in
:mod:`polysteer.plugins.sae.contrast`, feature flow in :mod:`polysteer.plugins.sae.flow`).

Plain feature steering adds ``c * W_dec[j]`` with the ``add`` operator. ``sae_clamp`` encodes, sets latent
``j`` to ``c``, decodes and adds back the error term; since only latent ``j`` changes, that equals
``h + (c - z_j(h)) W_dec[j]`` exactly, which is what it computes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from polysteer.direction import Direction, operator_param_key
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.operator import Operator
from polysteer.plugins.sae.contrast import SAEContrast as SAEContrast  # re-exported: its old home
from polysteer.plugins.sae.contrast import filter_features as filter_features
from polysteer.plugins.sae.model import SAE, load_sae
from polysteer.plugins.sae.rows import sae_from_rows, sae_rows

FEATURE_KEY = "sae_feature"


def feature_activation(sae: SAE, h: torch.Tensor, feature: int) -> torch.Tensor:
    """``z_feature`` for every position of ``h`` (TopK needs the full encoding; the others one column)."""
    if sae.architecture == "topk":
        return sae.encode(h)[..., feature]
    x = h.to(sae.W_enc.dtype) - (sae.b_dec if sae.apply_b_dec_to_input else 0)
    pre = x @ sae.W_enc[:, feature] + sae.b_enc[feature]
    floor = sae.threshold[feature] if sae.architecture == "jumprelu" else 0.0
    return pre * (pre > floor)


def _on_device_of(sae: SAE, h: torch.Tensor) -> SAE:
    """Move the SAE next to the activations once (a CPU-loaded SAE steering a GPU model)."""
    return sae if sae.W_dec.device == h.device else sae.to(h.device)


class SAEClamp(Operator):
    """Set SAE latent ``feature`` to the coefficient, keeping the SAE's error term (``sae_clamp``).

    Build it with the SAE (or its directory) and the feature index, e.g.
    ``Intervention(sae.W_dec[j], hp, 8.0, operator=SAEClamp(sae, j))``, or let :func:`feature_plan`
    do it from a feature Direction.
    """

    name = "sae_clamp"

    def __init__(self, sae: "SAE | str | os.PathLike | None" = None, feature: int | None = None):
        self.sae = load_sae(sae) if sae is not None else None
        self.feature = feature

    @classmethod
    def from_stored(cls, direction: Direction, hook_point: str, feature: torch.Tensor,
                    **rows: torch.Tensor) -> "SAEClamp":
        """Rebuilt by ``Direction.to_plan()`` from the SAE tensors stored in the file (older files: the SAE path)."""
        if rows:
            sae, local = sae_from_rows(rows, feature)
            return cls(sae, int(local[0]))
        if not direction.provenance.get("sae"):
            raise PolysteerError("the direction records no SAE; pass the SAE: feature_plan(direction, sae)")
        return cls(direction.provenance["sae"], int(feature[0]))

    @classmethod
    def from_direction(cls, direction: Direction, sae: "SAE | str | os.PathLike | None" = None) -> "SAEClamp":
        """The operator for a feature Direction: its ``sae_feature`` index, with ``sae`` replacing the stored SAE."""
        if FEATURE_KEY not in direction.extras:
            raise PolysteerError("this direction has no sae_feature index; make it with feature_direction()")
        feature = direction.extras[FEATURE_KEY]
        if sae is None:
            return cls.from_stored(direction, direction.hook_points[0], feature,
                                   **{k: v for k, v in direction.operator_params(direction.hook_points[0]).items()
                                      if k != "feature"})
        return cls(sae, int(feature[0]))

    def __call__(self, h, v, coef):
        if self.sae is None or self.feature is None:
            raise PolysteerError(
                "sae_clamp needs an SAE and a feature index: use operator=SAEClamp(sae, feature) or "
                "polysteer.plugins.sae.steer.feature_plan(direction, sae)"
            )
        self.sae = _on_device_of(self.sae, h)
        with torch.no_grad():
            current = feature_activation(self.sae, h, self.feature).unsqueeze(-1).to(h.dtype)
            row = self.sae.W_dec[self.feature].to(h.dtype)
        return h + (coef - current) * row


class SAEReconstruct(Operator):
    """``h + c (decode(encode(h)) - h)``: with ``c = 1`` the SAE output replaces the activation (splicing).

    Positions whose norm exceeds ``max_norm`` (attention sinks the SAE was not trained on) are kept.
    """

    name = "sae_reconstruct"

    def __init__(self, sae: "SAE | str | os.PathLike", max_norm: float | None = None):
        self.sae = load_sae(sae)
        self.max_norm = max_norm

    def __call__(self, h, v, coef):
        self.sae = _on_device_of(self.sae, h)
        with torch.no_grad():
            new = h + coef * (self.sae(h).to(h.dtype) - h)
        if self.max_norm is None:
            return new
        return torch.where(h.norm(dim=-1, keepdim=True) > self.max_norm, h, new)


def feature_direction(sae: SAE, feature: int, hook_point: str, operator: str = "add",
                      coefficient: float = 1.0, sae_path: str | None = None, modality: str = "text") -> Direction:
    """A Direction for one feature: its unit decoder row, with the index (and SAE path) recorded.

    ``scales`` holds the decoder row's norm, so the ``add`` plan with coefficient ``c`` adds ``c * W_dec[j]``
    (for ``sae_clamp``, ``c`` is the latent value; :func:`feature_plan` applies it without the scale).
    """
    if not 0 <= feature < sae.d_sae:
        raise PolysteerError(f"feature {feature} out of range: the SAE has {sae.d_sae} latents (0-{sae.d_sae - 1})")
    clamp = operator == "sae_clamp"
    extras = {FEATURE_KEY: torch.tensor([feature])}
    if clamp:  # the SAE tensors the clamp needs travel in the file, so to_plan() rebuilds it from the file alone
        params = {"feature": torch.tensor([feature]), **sae_rows(sae, torch.tensor([feature]))}
        extras.update({operator_param_key(hook_point, k): v for k, v in params.items()})
    return Direction.from_fitted(
        {hook_point: sae.W_dec[feature]}, model=dict(sae.metadata.get("model", {})), modality=modality,
        d_model=sae.d_in, scaled=not clamp,  # a clamp's coefficient is the latent value
        finder={"name": "sae_feature", "params": {"feature": feature}}, operator=operator, coefficient=coefficient,
        provenance={"sae": str(sae_path or ""), "sae_hook_name": sae.metadata.get("hook_name")}, extras=extras,
    )


def feature_plan(direction: Direction, sae: "SAE | str | os.PathLike | None" = None,
                 coefficient: float | None = None, **intervention_kwargs: Any) -> Plan:
    """The plan of a feature Direction; ``sae_clamp`` directions get their SAE operator built here.

    Args:
        direction: made by :func:`feature_direction` or a finder that records ``sae_feature``.
        sae: the SAE (or directory); by default the path recorded in the direction's provenance.
        coefficient: latent value (``sae_clamp``) or step along the feature (``add``).
    """
    if direction.operator != "sae_clamp":
        return direction.to_plan(coefficient, **intervention_kwargs)
    return direction.to_plan(coefficient, operator=SAEClamp.from_direction(direction, sae), **intervention_kwargs)

