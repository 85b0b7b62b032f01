"""SAIF (He, Zhao et al. 2025): SAE latents that an instruction switches on, summed into a steering vector.

Data are pairs: ``X_pos[i]`` is the activation for [content + instruction] (one wording of the instruction) and
``X_neg[i]`` the activation for the same [content] alone, so the rows must be paired by index (repeat each content
once per wording). Both are SAE-encoded and differenced per pair. A latent is *consistent* when its activation rises
in at least ``min_fraction`` of the pairs, i.e. across contents and wordings; among consistent latents the ``top_k``
with the largest mean rise are kept. The steering vector is ``sum_j a_j W_dec[j]`` over the kept latents, with ``a_j``
the latent's mean activation with the instruction present; ``scale_`` is its norm, so the ``add`` plan at coefficient
1 adds exactly that vector. SAIF injects it at a late layer: pass an SAE trained there (``polysteer sae train
--layer L``).
"""

from __future__ import annotations

from typing import Any

import torch

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs
from polysteer.plugins.sae.model import load_sae


class SAIF(DirectionFinder):
    """SAIF instruction latents from paired [content + instruction] / [content] activations.

    Args:
        sae: SAE (or directory) trained on the hook point the activations come from.
        top_k: latents summed at most.
        min_fraction: a latent must rise in at least this fraction of pairs to count as consistent.
    """

    name = "saif"

    def __init__(self, sae: Any = None, top_k: int = 10, min_fraction: float = 0.9):
        self.sae = sae
        self.top_k = top_k
        self.min_fraction = min_fraction

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        """The axis dictionary the common checks use for SAE finders (one latent per +-axis)."""
        from polysteer.plugins.sae.steer import SAEContrast

        return SAEContrast.check_params(d_model)

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if self.sae is None:
            raise PolysteerError("saif needs an SAE: make_finder('saif', sae='path/to/sae'), or use "
                                 "`polysteer sae saif --sae DIR`")
        if len(X_pos) != len(X_neg):
            raise PolysteerError(f"saif needs paired rows ([content + instruction] i with [content] i), got "
                                 f"{len(X_pos)} and {len(X_neg)}; repeat each content once per wording")
        self.sae_ = sae = load_sae(self.sae)
        sae.check_width(X_pos.shape[1])
        with torch.no_grad():
            z_pos = sae.encode(X_pos).float()
            rise = z_pos - sae.encode(X_neg).float()
            self.differences_ = rise.mean(0)
            self.fractions_ = (rise > 0).float().mean(0)
            self._select(z_pos, sae)
        return self

    def _select(self, z_pos: torch.Tensor, sae) -> None:
        consistent = (self.fractions_ >= self.min_fraction) & (self.differences_ > 0)
        if not consistent.any():
            best = float(self.fractions_.max())
            raise PolysteerError(f"no SAE latent rises in {self.min_fraction:.0%} of the pairs (best: {best:.0%}); "
                                 "lower min_fraction, add wordings, or use an SAE at another layer")
        ranked = torch.where(consistent, self.differences_, torch.full_like(self.differences_, -float("inf")))
        top = ranked.topk(min(self.top_k, int(consistent.sum())))
        self.latents_ = top.indices
        self.activations_ = z_pos[:, self.latents_].mean(0)
        self.vector_ = self.activations_ @ sae.W_dec[self.latents_].float()
        norm = self.vector_.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise PolysteerError("the SAIF vector is zero: the selected latents' decoder rows cancel out")
        self.direction_ = self.vector_ / norm
        self.scale_ = float(norm)

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Instruction score: the selected latents' activations weighted by their mean activation."""
        with torch.no_grad():
            return self.sae_.encode(torch.as_tensor(X).float())[:, self.latents_] @ self.activations_
