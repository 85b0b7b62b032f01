"""Built-in direction finders: DiffMean, PCA (paired differences, centred), logistic-regression probe."""

from __future__ import annotations

import torch
from sklearn.linear_model import LogisticRegression

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, finish_direction


class DiffMean(DirectionFinder):
    """``mean(X_pos) - mean(X_neg)``, unit-normalised (CAA, AxBench); ``scale_`` keeps the raw norm."""

    name = "diffmean"

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        self.direction_, self.scale_ = finish_direction(X_pos.mean(0) - X_neg.mean(0), X_pos, X_neg)
        return self


def _pc1(X: torch.Tensor) -> torch.Tensor:
    """First principal axis of the rows of X (already centred as the caller wants)."""
    _, _, vh = torch.linalg.svd(X.double(), full_matrices=False)
    v = vh[0].float()
    return v * torch.sign(v[v.abs().argmax()])  # deterministic sign before orientation


class PCADiff(DirectionFinder):
    """PC1 of the paired differences ``x_pos_i - x_neg_i`` (repeng's pca_diff); pairs must align.

    Args:
        center: subtract the mean difference first, as repeng does (its sklearn PCA centres), so PC1 is the axis
            along which the pairs' differences vary most; ``False`` keeps the mean difference in (uncentred SVD).
    """

    name = "pca_diff"

    def __init__(self, center: bool = True):
        self.center = center

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if len(X_pos) != len(X_neg):
            raise PolysteerError(
                f"pca_diff needs paired examples, got {len(X_pos)} positives and {len(X_neg)} negatives; "
                "use pca_center or diffmean for unpaired data"
            )
        diffs = X_pos - X_neg
        if self.center:
            diffs = diffs - diffs.mean(0)
            if len(diffs) < 2 or not diffs.abs().max() > 0:
                raise PolysteerError("centred pca_diff needs at least 2 pairs whose differences vary; give more "
                                     "pairs, or use --finder-param center=false or the diffmean finder")
        self.direction_, self.scale_ = finish_direction(_pc1(diffs), X_pos, X_neg)
        return self


class PCACenter(DirectionFinder):
    """PC1 of all activations after subtracting each pair's mean (repeng's pca_center)."""

    name = "pca_center"

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if len(X_pos) == len(X_neg):
            center = (X_pos + X_neg) / 2
            X = torch.cat([X_pos - center, X_neg - center])
        else:  # unpaired: centre each point on the midpoint of the class means
            X = torch.cat([X_pos, X_neg]) - (X_pos.mean(0) + X_neg.mean(0)) / 2
        self.direction_, self.scale_ = finish_direction(_pc1(X), X_pos, X_neg)
        return self


class LogisticProbe(DirectionFinder):
    """Logistic regression (scikit-learn); the direction is the normalised weight vector."""

    name = "probe"

    def __init__(self, C: float = 1.0, max_iter: int = 1000, standardize: bool = False):
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        X = torch.cat([X_pos, X_neg]).double().numpy()
        y = [1] * len(X_pos) + [0] * len(X_neg)
        scale = X.std(0) + 1e-8 if self.standardize else 1.0
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(X / scale, y)
        coef = torch.as_tensor(self.model_.coef_[0] / scale, dtype=torch.float32)
        self.direction_, self.scale_ = finish_direction(coef, X_pos, X_neg)
        return self
