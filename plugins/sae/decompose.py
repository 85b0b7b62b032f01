"""Decomposing a steering vector into SAE features without encoding the vector (Mayne et al.).

An SAE encoder expects activations: a steering vector has another norm, lacks the mean activation the
biases were fitted around, and its meaningful negative projections are cut by the ReLU/TopK. So two
decompositions that never run the encoder on the vector:

- *decoder cosine*: the signed cosine of the vector with every decoder row; rows on either sign contribute.
- *contrast*: encode the positive and negative activations the vector came from, separately, and subtract
  the mean codes; ``delta_z @ W_dec`` is then the SAE's reconstruction of the mean difference.

Norm rule: a vector is called far outside the SAE's input distribution when its norm (at the coefficient
it is applied with) is more than :data:`NORM_FACTOR` times larger or smaller than the typical (median)
activation norm at the hook point. The upper bound is the SAE trainer's own outlier cut-off
(``max_norm`` = 10 x the median token norm, where attention sinks start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polysteer.errors import PolysteerError
from polysteer.plugins.sae.model import SAE

NORM_FACTOR = 10.0


@dataclass(frozen=True)
class Contribution:
    """One SAE feature's share of a vector: its index and signed score."""

    feature: int
    score: float


@dataclass
class Decomposition:
    """A signed score per SAE feature (``[d_sae]``) and the method that produced it."""

    method: str
    scores: torch.Tensor

    def positive(self, n: int = 10) -> list[Contribution]:
        """The ``n`` highest-scoring features with a score above zero, best first."""
        top = self.scores.topk(min(n, len(self.scores)))
        return [Contribution(int(i), float(s)) for s, i in zip(top.values, top.indices) if s > 0]

    def negative(self, n: int = 10) -> list[Contribution]:
        """The ``n`` lowest-scoring features with a score below zero, most negative first."""
        low = (-self.scores).topk(min(n, len(self.scores)))
        return [Contribution(int(i), -float(s)) for s, i in zip(low.values, low.indices) if s > 0]


def _check_vector(sae: SAE, vector: torch.Tensor) -> torch.Tensor:
    vector = torch.as_tensor(vector).detach().float().flatten()
    sae.check_width(vector.shape[0], "the steering vector")
    if not torch.isfinite(vector).all() or vector.norm() == 0:
        raise PolysteerError("the steering vector is zero or contains NaN/inf; nothing to decompose")
    return vector


@torch.no_grad()
def decoder_cosine(sae: SAE, vector: torch.Tensor) -> Decomposition:
    """Signed cosine of ``vector`` with every decoder row ``W_dec[j]``.

    Args:
        sae: the SAE of the vector's hook point.
        vector: ``[d_in]`` steering vector (any norm: the cosine ignores it).

    Returns:
        A ``decoder-cosine`` decomposition; positive rows push along the vector, negative rows against it.
    """
    unit = torch.nn.functional.normalize(_check_vector(sae, vector), dim=0)
    rows = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    return Decomposition("decoder-cosine", rows @ unit)


def _inliers(sae: SAE, X: torch.Tensor, skip_outliers: bool) -> torch.Tensor:
    """Rows the SAE was trained on: those above its ``max_norm`` (attention sinks) are left out."""
    X = torch.as_tensor(X).detach().float()
    if X.ndim != 2 or len(X) == 0:
        raise PolysteerError(f"contrast decomposition needs [n, d_model] activations, got {tuple(X.shape)}")
    sae.check_width(X.shape[1])
    max_norm = sae.metadata.get("max_norm") if skip_outliers else None
    kept = X[X.norm(dim=1) <= max_norm] if max_norm else X
    return kept if len(kept) else X


@torch.no_grad()
def contrast_decomposition(sae: SAE, X_pos: torch.Tensor, X_neg: torch.Tensor, skip_outliers: bool = True,
                           batch_size: int = 4096) -> Decomposition:
    """Mean SAE code of the positive activations minus that of the negative ones.

    Args:
        sae: the SAE of the hook point the activations come from.
        X_pos, X_neg: ``[n, d_in]`` activations (tokens, or pooled passages) of each class.
        skip_outliers: leave out rows whose norm exceeds the SAE's ``max_norm``.
        batch_size: rows encoded at a time.

    Returns:
        A ``contrast`` decomposition: features more active on positives score above zero.
    """
    def mean_code(X: torch.Tensor) -> torch.Tensor:
        X = _inliers(sae, X, skip_outliers)
        return sum(sae.encode(X[i : i + batch_size]).float().sum(0) for i in range(0, len(X), batch_size)) / len(X)

    return Decomposition("contrast", mean_code(X_pos) - mean_code(X_neg))


@torch.no_grad()
def reconstruction_cosine(sae: SAE, decomposition: Decomposition, vector: torch.Tensor) -> float:
    """Cosine of ``scores @ W_dec`` with the vector: how much of it the decomposition accounts for."""
    rebuilt = decomposition.scores.float() @ sae.W_dec.detach().float()
    return float(torch.nn.functional.cosine_similarity(rebuilt, _check_vector(sae, vector), dim=0))


def typical_norm(sae: SAE) -> float | None:
    """The median token norm at the SAE's hook point, from its training metadata, or None if unknown.

    The trainer stores ``max_norm = max_norm_ratio x median norm``, so the median is their quotient.
    """
    max_norm = sae.metadata.get("max_norm")
    ratio = (sae.metadata.get("training") or {}).get("max_norm_ratio")
    if not max_norm or not ratio or max_norm == float("inf"):
        return None
    return float(max_norm) / float(ratio)


def measure_typical_norm(acts: torch.Tensor) -> float:
    """Median row norm of token activations (robust to the few attention sinks)."""
    acts = torch.as_tensor(acts).float()
    if acts.ndim != 2 or len(acts) == 0:
        raise PolysteerError("measuring the typical norm needs at least one token activation")
    return float(acts.norm(dim=1).median())


def norm_warning(norm: float, typical: float, factor: float = NORM_FACTOR) -> str | None:
    """A one-line warning when ``norm`` is more than ``factor`` x above or below ``typical``, else None."""
    if typical <= 0 or factor <= 1:
        raise PolysteerError(f"norm check needs a positive typical norm and factor > 1, got {typical}, {factor}")
    ratio = norm / typical
    if 1 / factor <= ratio <= factor:
        return None
    side = "larger" if ratio > 1 else "smaller"
    times = ratio if ratio > 1 else 1 / max(ratio, 1e-12)
    return (f"the vector's norm {norm:.4g} is {times:.3g}x {side} than the typical activation norm {typical:.4g} "
            f"at this hook point (outside [1/{factor:g}, {factor:g}]x): the SAE never saw inputs like it, so do "
            "not encode it; trust the decoder-cosine and contrast decompositions instead")
