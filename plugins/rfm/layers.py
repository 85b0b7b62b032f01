"""MusicRFM's layer ranking: validation AUC of each layer's probe, turned into per-layer steering weights."""

from __future__ import annotations

import math
from typing import Mapping

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder

MUSICRFM_POWER = 1 / 0.95


def rank_layers(fitted: Mapping[str, DirectionFinder]) -> dict[str, float]:
    """Validation AUC of each hook point's probe, best first (MusicRFM's layer ranking)."""
    aucs = {hp: float(finder.val_auc_) for hp, finder in fitted.items()}
    if any(math.isnan(auc) for auc in aucs.values()):
        raise PolysteerError("ranking layers needs validation AUCs; fit the probes with val_fraction > 0")
    return dict(sorted(aucs.items(), key=lambda item: -item[1]))


def layer_weights(aucs: Mapping[str, float], power: float = MUSICRFM_POWER,
                  top_k: int | None = None) -> dict[str, float]:
    """MusicRFM layer weights ``w_l = ((auc_l - min) / (max - min)) ** power``, with power 1/0.95.

    The best layer gets 1 and the worst 0; when every AUC is equal, every layer gets 1. With ``top_k``
    only the k best layers keep their weight (MusicRFM's top-k).
    """
    if not aucs:
        raise PolysteerError("layer_weights needs at least one layer's AUC")
    low, high = min(aucs.values()), max(aucs.values())
    weights = {hp: 1.0 if high == low else ((auc - low) / (high - low)) ** power for hp, auc in aucs.items()}
    if top_k is not None:
        keep = set(sorted(aucs, key=lambda hp: -aucs[hp])[:top_k])
        weights = {hp: w if hp in keep else 0.0 for hp, w in weights.items()}
    return weights
