"""SAE-feature finders for ``polysteer find``: Feature Flow (``flow``) and CorrSteer's selection (``corrsteer``).

Both fit pooled (or token) activation rows of one hook point, like every activation finder. ``flow`` picks a start
feature there and builds its flow graph over the other SAEs it is given (data-free); ``corrsteer`` ranks latents by
Pearson correlation with the class label, the reward of a contrastive data set.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs
from polysteer.plugins.sae.flow import MATCHES, FlowGraph, flow_graph, saes_by_hook_point
from polysteer.plugins.sae.model import SAE, load_sae

VARIANTS = ("S", "A", "P")


def axis_dictionary(d_model: int, hook_point: str = "text.blocks.1.resid_post") -> SAE:
    """A dictionary of +-each axis (ReLU latents), so SAE finders can find the common checks' planted axis."""
    sae = SAE(d_model, 2 * d_model, architecture="standard", metadata={"hook_name": hook_point})
    eye = torch.eye(d_model)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


@torch.no_grad()
def latent_sums(sae: SAE, X: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent sum and sum of squares of the SAE's activations over the rows of ``X`` (float64)."""
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    squares = torch.zeros(sae.d_sae, dtype=torch.float64)
    for lo in range(0, len(X), chunk):
        z = sae.encode(X[lo : lo + chunk]).double()
        total += z.sum(0)
        squares += (z * z).sum(0)
    return total, squares


def label_correlation(sae: SAE, X_pos: torch.Tensor, X_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Pearson r of each latent with the label 1/0, mean activation on the positives)`` from running sums."""
    pos, pos_sq = latent_sums(sae, X_pos)
    neg, neg_sq = latent_sums(sae, X_neg)
    n_pos, n = len(X_pos), len(X_pos) + len(X_neg)
    mean = (pos + neg) / n
    var_x = (pos_sq + neg_sq) / n - mean**2
    p = n_pos / n
    cov = pos / n - mean * p  # E[x y] - E[x] E[y] with y in {0, 1}
    denom = (var_x.clamp_min(0) * p * (1 - p)).sqrt()
    r = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov))
    return r.float(), (pos / n_pos).float()


class FeatureFlow(DirectionFinder):
    """Feature Flow (``flow``): a start SAE feature and its flow graph across the other SAEs' layers and modules.

    Args:
        sae: the start SAE (a ``resid_post`` SAE of the hook point being fitted).
        saes: other SAEs (directories or instances) keyed by their recorded hook points: residual SAEs of other
            blocks, and ``mlp_out`` / ``attn_out`` SAEs.
        feature: the start latent; None: the ``sae_contrast`` finder's top latent on the two classes.
        threshold, module_threshold, match, forward, depth: see :func:`polysteer.plugins.sae.flow.flow_graph`.
        normalize: divide the node weights by their sum (the whole graph adds what one layer would).

    ``direction_`` is the start feature's decoder row with its norm as ``scale_``; ``graph_`` holds the graph and
    :meth:`to_direction` writes every node with its per-layer weight (coefficient in latent units); ``polysteer
    find --finder flow --layers N`` and ``polysteer sae flow`` both write that whole graph.
    """

    name = "flow"
    preferred_pooling = "tokens"  # the start latent is picked from real token activations, never a mean

    def __init__(self, sae: Any = None, saes: Sequence[Any] | None = None, feature: int | None = None,
                 threshold: float = 0.5, module_threshold: float | None = None, match: str = "decoder",
                 forward: bool = True, depth: int | None = None, normalize: bool = True):
        self.sae, self.saes, self.feature = sae, saes, feature
        self.threshold, self.module_threshold, self.match = threshold, module_threshold, match
        self.forward, self.depth, self.normalize = forward, depth, normalize

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        return {"sae": axis_dictionary(d_model)}

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if self.sae is None:
            raise PolysteerError("flow needs its start SAE: --finder-param sae=DIR (and saes=[DIR, ...] for the "
                                 "other layers and modules)")
        if self.match not in MATCHES:
            raise PolysteerError(f"match must be one of {', '.join(MATCHES)}, got {self.match!r}")
        start = load_sae(self.sae)
        start.check_width(X_pos.shape[1])
        self.saes_ = saes_by_hook_point([start, *(self.saes or [])])
        feature = self._start_feature(start, X_pos, X_neg)
        self.graph_: FlowGraph = flow_graph(self.saes_, start.hook_point, feature, self.threshold,
                                            self.module_threshold, self.match, self.forward, self.depth)
        row = start.W_dec[feature].detach().float()
        gap = float((X_pos.mean(0) - X_neg.mean(0)) @ row)
        self.direction_ = row / row.norm() * (1.0 if gap >= 0 else -1.0)
        self.scale_ = float(row.norm())
        self.feature_ = feature
        return self

    def _start_feature(self, sae: SAE, X_pos: torch.Tensor, X_neg: torch.Tensor) -> int:
        if self.feature is not None:
            if not 0 <= int(self.feature) < sae.d_sae:
                raise PolysteerError(f"feature {self.feature} out of range: the SAE has {sae.d_sae} latents")
            return int(self.feature)
        from polysteer.finder import make_finder

        return int(make_finder("sae_contrast", sae=sae).fit(X_pos, X_neg).features_[0])

    def to_direction(self, model: Any, coefficient: float = 1.0, provenance: dict | None = None) -> Direction:
        """Every node of the fitted graph, each with its per-layer weight (``Direction.weights``)."""
        return self.graph_.direction(self.saes_, model, self.normalize, coefficient, provenance)


class CorrSteerFinder(DirectionFinder):
    """CorrSteer's selection (``corrsteer``) on labelled rows: the label is the reward, 1 positive, 0 negative.

    Each latent's Pearson correlation with the label is computed from running sums (as CorrSteer streams it); a
    feature's coefficient is its mean activation over the rewarded (positive) rows; the direction is
    ``sum_f coefficient_f * W_dec[f]``, its norm ``scale_`` (in the separation unit, coefficient 1 adds CorrSteer's
    vector; ``polysteer find`` files use their own unit, a fraction of the typical activation norm).

    Args:
        sae: SAE of the hook point being fitted.
        variant: ``'S'`` the top feature; ``'A'`` the top ``n_features``; ``'P'`` those of ``A`` whose correlation
            stays at least ``min_correlation`` on held-out rows (``val_fraction`` of each class, seeded). On rows
            this is the finder's stand-in for CorrSteer-P's pruning by steering; the generation-time selection, with
            a reward and pruning by intervention, is :func:`polysteer.modalities.text.sae.corrsteer`.
        n_features, min_correlation, val_fraction, seed: see ``variant``.
    """

    name = "corrsteer"

    def __init__(self, sae: Any = None, variant: str = "S", n_features: int = 4, min_correlation: float = 0.1,
                 val_fraction: float = 0.25, seed: int = 0):
        self.sae, self.variant, self.n_features = sae, variant, n_features
        self.min_correlation, self.val_fraction, self.seed = min_correlation, val_fraction, seed

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        return {"sae": axis_dictionary(d_model)}

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        self._check()
        self.sae_ = sae = load_sae(self.sae)
        sae.check_width(X_pos.shape[1])
        (train_pos, train_neg), held_out = self._split(X_pos, X_neg)
        r, positive_mean = label_correlation(sae, train_pos, train_neg)
        count = 1 if self.variant == "S" else self.n_features
        features = r.argsort(descending=True)[:count]
        if self.variant == "P":
            held = label_correlation(sae, *held_out)[0]
            features = features[held[features] >= self.min_correlation]
            if len(features) == 0:
                raise PolysteerError(f"CorrSteer-P kept no feature: none reaches min_correlation="
                                     f"{self.min_correlation} on the held-out rows; lower it or give more data")
        self.correlations_, self.features_ = r[features], features
        self.coefficients_ = positive_mean[features].clamp_min(1e-6)
        v = (self.coefficients_.unsqueeze(1) * sae.W_dec[features].detach().float()).sum(0)
        self.scale_ = float(v.norm())
        if self.scale_ == 0 or not torch.isfinite(v).all():
            raise PolysteerError("CorrSteer found no usable feature: are the two classes identical?")
        self.direction_ = v / self.scale_
        return self

    def _check(self) -> None:
        if self.sae is None:
            raise PolysteerError("corrsteer needs an SAE: --finder-param sae=DIR")
        if self.variant not in VARIANTS:
            raise PolysteerError(f"CorrSteer variant must be 'S' (one feature), 'A' (top n_features) or 'P' (A, "
                                 f"pruned on held-out rows), got {self.variant!r}")
        if self.n_features < 1 or not 0 < self.val_fraction < 1:
            raise PolysteerError("corrsteer needs n_features >= 1 and 0 < val_fraction < 1")

    def _split(self, X_pos: torch.Tensor, X_neg: torch.Tensor):
        """All rows for S and A; for P, a seeded held-out part of each class (at least one row each side)."""
        if self.variant != "P":
            return (X_pos, X_neg), None
        generator = torch.Generator().manual_seed(self.seed)
        parts = []
        for X in (X_pos, X_neg):
            if len(X) < 2:
                raise PolysteerError("CorrSteer-P holds rows out: give at least 2 rows of each class")
            order = torch.randperm(len(X), generator=generator)
            n_val = min(len(X) - 1, max(1, round(len(X) * self.val_fraction)))
            parts.append((X[order[n_val:]], X[order[:n_val]]))
        return (parts[0][0], parts[1][0]), (parts[0][1], parts[1][1])
