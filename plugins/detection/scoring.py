"""Detection and monitoring: score passages with a direction, a fitted probe or an SAE feature; AUROC and F1.

A detector scores token activations; a passage's score pools its tokens' scores (``mean`` or ``max``).
Probes are fitted on mean-pooled passages, so with ``mean`` pooling a probe reads the passage's mean
activation: for linear probes that equals the mean of the token scores, and a kernel probe (RFM) sees
inputs like those it was fitted on. Modality-free: activations in, scores out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, make_finder
from polysteer.plugins.sae.model import SAE
from polysteer.plugins.sae.steer import feature_activation

POOLINGS = ("mean", "max")


@dataclass
class TokenActivations:
    """Token activations ``acts [N, d]`` of ``n_passages`` passages; ``owner [N]`` is each token's passage."""

    acts: torch.Tensor
    owner: torch.Tensor
    n_passages: int

    def pool(self, values: torch.Tensor | None = None, pooling: str = "mean") -> torch.Tensor:
        """Per-passage mean or max of ``values`` (``[N]`` or ``[N, k]``; default the activations)."""
        return pool_tokens(self.acts if values is None else values, self.owner, self.n_passages, pooling)

    def select(self, passages: Sequence[int] | torch.Tensor) -> "TokenActivations":
        """The tokens of the given passages, renumbered ``0..len(passages)-1`` in that order."""
        passages = torch.as_tensor(passages, dtype=torch.long)
        new_id = torch.full((self.n_passages,), -1, dtype=torch.long)
        new_id[passages] = torch.arange(len(passages))
        keep = new_id[self.owner] >= 0
        return TokenActivations(self.acts[keep], new_id[self.owner[keep]], len(passages))

    def without_outliers(self, max_norm: float | None) -> "TokenActivations":
        """Drop tokens above ``max_norm`` (attention sinks), keeping every token of a passage that has no other."""
        if not max_norm:
            return self
        keep = self.acts.norm(dim=1) <= max_norm
        kept_any = torch.zeros(self.n_passages, dtype=torch.bool).index_fill_(0, self.owner[keep], True)
        keep |= ~kept_any[self.owner]
        return TokenActivations(self.acts[keep], self.owner[keep], self.n_passages)


def pool_tokens(values: torch.Tensor, owner: torch.Tensor, n: int, pooling: str = "mean") -> torch.Tensor:
    """Mean or max of ``values`` rows grouped by ``owner``; every passage needs at least one token."""
    if pooling not in POOLINGS:
        raise PolysteerError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    values = values.float()
    counts = torch.bincount(owner, minlength=n)
    if len(counts) > n or (counts == 0).any():
        raise PolysteerError("every passage needs at least one token to score; is a text empty?")
    shape = (n, *values.shape[1:])
    index = owner.view(-1, *([1] * (values.ndim - 1))).expand_as(values)
    if pooling == "max":
        return torch.full(shape, -torch.inf).scatter_reduce(0, index, values, "amax", include_self=False)
    sums = torch.zeros(shape).scatter_add(0, index, values)
    return sums / counts.view(-1, *([1] * (values.ndim - 1)))


class Detector:
    """Scores token activations; :meth:`passage_scores` pools them per passage."""

    name: str = ""

    def token_scores(self, acts: torch.Tensor) -> torch.Tensor:
        """``[N]`` scores of ``[N, d]`` token activations."""
        raise NotImplementedError

    @torch.no_grad()
    def passage_scores(self, tokens: TokenActivations, pooling: str = "mean") -> torch.Tensor:
        """``[n_passages]`` pooled scores."""
        return tokens.pool(self.token_scores(tokens.acts.float()), pooling)


class DirectionDetector(Detector):
    """Projection on a unit direction (DiffMean's concept score, AxBench)."""

    name = "direction"

    def __init__(self, vector: torch.Tensor):
        vector = torch.as_tensor(vector).detach().float().flatten()
        if vector.norm() == 0 or not torch.isfinite(vector).all():
            raise PolysteerError("the detection direction is zero or contains NaN/inf")
        self.vector = vector / vector.norm()

    def token_scores(self, acts):
        if acts.shape[-1] != len(self.vector):
            raise PolysteerError(f"the direction has d_model {len(self.vector)} but the activations have "
                                 f"{acts.shape[-1]}; score at the hook point the direction was made for")
        return acts.float() @ self.vector


class FinderDetector(Detector):
    """A fitted direction finder used as a probe: its ``score`` (RFM: the kernel probe's output).

    Fitted on mean-pooled passages, it scores a passage by its pooled activation; fitted on token rows (a finder
    whose ``preferred_pooling`` is ``"tokens"``, such as ``sae_contrast``), by pooling its token scores.
    """

    name = "probe"

    def __init__(self, finder: DirectionFinder, fitted_on: str = "mean"):
        if not hasattr(finder, "direction_"):
            raise PolysteerError("the finder is not fitted; use FinderDetector.fit(finder, X, y)")
        self.finder, self.fitted_on = finder, fitted_on

    @classmethod
    def fit(cls, finder: Any, X: "torch.Tensor | TokenActivations", y: Sequence[int], **params: Any
            ) -> "FinderDetector":
        """Fit ``finder`` (a registered name, class, instance or function) on passages with 0/1 labels ``y``.

        ``X`` is ``[passages, d]`` pooled rows, or :class:`TokenActivations`: every token is then a row labelled
        with its passage's label (what a token-level finder needs; a pooled vector is out of its distribution).
        """
        y = torch.as_tensor(y).bool()
        proto = make_finder(finder)
        unknown = sorted(set(params) - set(proto.get_params()))
        if unknown:
            raise PolysteerError(f"finder {proto.name!r} has no parameter {', '.join(unknown)}; it takes "
                                 f"{', '.join(sorted(proto.get_params())) or 'none'}")
        fitted_on = "tokens" if isinstance(X, TokenActivations) else "mean"
        if fitted_on == "tokens":
            if len(y) != X.n_passages:
                raise PolysteerError(f"{len(y)} labels for {X.n_passages} passages; give one label per passage")
            X, y = X.acts.float(), y[X.owner]
        return cls(proto.set_params(**params).fit(X[y], X[~y]), fitted_on)

    def token_scores(self, acts):
        return torch.as_tensor(self.finder.score(acts.float())).float().flatten()

    @torch.no_grad()
    def passage_scores(self, tokens: TokenActivations, pooling: str = "mean") -> torch.Tensor:
        if pooling == "mean" and self.fitted_on == "mean":  # the probe was fitted on mean-pooled passages
            return self.token_scores(tokens.pool(pooling="mean"))
        return super().passage_scores(tokens, pooling)


class FeatureDetector(Detector):
    """One SAE latent's activation (tokens above the SAE's ``max_norm`` should be dropped first)."""

    name = "sae-feature"

    def __init__(self, sae: SAE, feature: int):
        if not 0 <= feature < sae.d_sae:
            raise PolysteerError(f"feature {feature} out of range: the SAE has {sae.d_sae} latents")
        self.sae, self.feature = sae, int(feature)

    def token_scores(self, acts):
        self.sae.check_width(acts.shape[-1])
        return feature_activation(self.sae, acts, self.feature).float()


@torch.no_grad()
def feature_codes(sae: SAE, tokens: TokenActivations, pooling: str = "mean", batch_size: int = 4096) -> torch.Tensor:
    """``[n_passages, d_sae]``: every latent pooled per passage, encoding ``batch_size`` tokens at a time."""
    sae.check_width(tokens.acts.shape[1])
    pooled = torch.full((tokens.n_passages, sae.d_sae), -torch.inf if pooling == "max" else 0.0)
    for lo in range(0, len(tokens.acts), batch_size):
        z = sae.encode(tokens.acts[lo : lo + batch_size].float()).float()
        owner = tokens.owner[lo : lo + batch_size]
        if pooling == "max":
            pooled = pooled.scatter_reduce(0, owner[:, None].expand_as(z), z, "amax")
        else:
            pooled.index_add_(0, owner, z)
    if pooling == "max":
        return pooled
    return pooled / torch.bincount(tokens.owner, minlength=tokens.n_passages).clamp_min(1)[:, None]


@dataclass
class DetectionMetrics:
    """AUROC, and precision/recall/F1/accuracy at ``threshold`` (score >= threshold is called positive).

    ``threshold_source`` says where the threshold came from: ``given``, ``train`` (best F1 on other labelled
    texts), ``cross-validated`` (each fold's texts called at the best-F1 threshold of the other folds; ``threshold``
    is then the best one on all texts, to apply to new ones) or ``oracle`` (best F1 on these very texts: an upper
    bound, used only when a class has a single text). ``oracle_f1`` is always that upper bound.
    """

    auroc: float
    f1: float
    precision: float
    recall: float
    accuracy: float
    threshold: float
    n_positive: int
    n_negative: int
    threshold_source: str = "given"
    oracle_f1: float = float("nan")


def _labels_and_scores(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = torch.as_tensor(scores).detach().float().numpy().ravel()
    y = np.asarray(labels).astype(int).ravel()
    if len(s) != len(y):
        raise PolysteerError(f"got {len(s)} scores for {len(y)} labels")
    if set(np.unique(y)) != {0, 1}:
        raise PolysteerError("AUROC and F1 need labels 0 and 1, both present; add examples of the missing class")
    if not np.isfinite(s).all():
        raise PolysteerError("some detection scores are NaN or inf; check the activations' dtype")
    return s, y


def best_f1_threshold(scores, labels) -> float:
    """The score threshold with the highest F1 on these data (predict positive when score >= threshold)."""
    s, y = _labels_and_scores(scores, labels)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def detection_metrics(scores, labels, threshold: float | None = None, source: str = "given",
                      folds: int = 5, seed: int = 0) -> DetectionMetrics:
    """AUROC of the scores, and F1 at ``threshold`` (``source`` says where it came from), or without one, F1 with
    thresholds chosen by stratified ``folds``-fold cross-validation on these texts, never on the texts they call."""
    s, y = _labels_and_scores(scores, labels)
    oracle = best_f1_threshold(s, y)
    if threshold is not None:
        pred, cut = (s >= float(threshold)).astype(int), float(threshold)
    elif min(int(y.sum()), int((1 - y).sum())) >= 2:
        pred, cut, source = _cross_validated_calls(s, y, folds, seed), oracle, "cross-validated"
    else:
        pred, cut, source = (s >= oracle).astype(int), oracle, "oracle"
    tp = int(((pred == 1) & (y == 1)).sum())
    return DetectionMetrics(
        auroc=float(roc_auc_score(y, s)), f1=float(f1_score(y, pred, zero_division=0)),
        precision=tp / max(int(pred.sum()), 1), recall=tp / int(y.sum()), accuracy=float((pred == y).mean()),
        threshold=cut, n_positive=int(y.sum()), n_negative=int((1 - y).sum()), threshold_source=source,
        oracle_f1=float(f1_score(y, (s >= oracle).astype(int), zero_division=0)),
    )


def _cross_validated_calls(s: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    n_folds = max(2, min(folds, int(y.sum()), int((1 - y).sum())))
    pred = np.zeros_like(y)
    for train, test in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(s, y):
        pred[test] = (s[test] >= best_f1_threshold(s[train], y[train])).astype(int)
    return pred
