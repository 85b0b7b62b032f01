"""One-vs-rest multiclass RFM probes with balanced classes."""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from sklearn.base import clone

from polysteer.errors import PolysteerError
from polysteer.plugins.rfm.finder import RFM


def fit_multiclass(X, y: Sequence[Hashable], finder: RFM | None = None, **params) -> dict[Hashable, RFM]:
    """One-vs-rest RFMs with balanced classes.

    For each class the negatives are drawn round-robin from the other classes (each represented evenly)
    and the larger side is subsampled, so every probe sees as many positives as negatives.

    Args:
        X: ``[n, d]`` activations.
        y: ``n`` class labels (any sortable hashable values).
        finder: Prototype RFM whose parameters are used; defaults to ``RFM()``.
        **params: Parameters set on the prototype.

    Returns:
        ``{class: fitted RFM}`` in sorted class order.
    """
    X = torch.as_tensor(X).float()
    labels = y.tolist() if torch.is_tensor(y) else list(y)
    classes = sorted(set(labels))
    if len(labels) != len(X) or len(classes) < 2:
        raise PolysteerError(
            f"fit_multiclass needs one label per row and at least 2 classes, got {len(labels)} labels for "
            f"{len(X)} rows and {len(classes)} classes"
        )
    proto = clone(finder if finder is not None else RFM()).set_params(**params)
    generator = torch.Generator().manual_seed(proto.seed)
    members = {c: torch.tensor([i for i, label in enumerate(labels) if label == c]) for c in classes}
    shuffled = {c: idx[torch.randperm(len(idx), generator=generator)] for c, idx in members.items()}
    fitted = {}
    for c in classes:
        rest = _round_robin([shuffled[other] for other in classes if other != c])
        n = min(len(shuffled[c]), len(rest))
        fitted[c] = clone(proto).fit(X[shuffled[c][:n]], X[rest[:n]])
    return fitted


def _round_robin(groups: list[torch.Tensor]) -> torch.Tensor:
    """Interleave index groups: the first of each group, then the second of each, and so on."""
    grid = torch.full((len(groups), max(len(g) for g in groups)), -1, dtype=torch.long)
    for row, group in enumerate(groups):
        grid[row, : len(group)] = group
    flat = grid.T.reshape(-1)
    return flat[flat >= 0]
