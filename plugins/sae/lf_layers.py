"""LF-Steering's layer localisation (Yang et al. 2025): the layer whose states best tell consistent pairs apart.

For every pair ``(m, n)`` of paraphrases of one question, a probe reads ``[h_m; h_n]`` (the two pooled states,
concatenated) at one layer and predicts whether the model's answers to ``m`` and ``n`` agree. The paper trains
such a classifier per transformer layer and takes the most accurate layer as the one that decides consistency;
its SAE is the one to select latents with (:class:`~polysteer.plugins.sae.lf_steering.LFSteering`).

Here the probe is a standardised L2 logistic regression scored on held-out questions (group k-fold over questions,
so two wordings of one question are never split between fitting and scoring). Layers are ranked by balanced accuracy:
it equals accuracy when agreeing and disagreeing pairs are equally many, and it keeps a probe that always answers the
majority class at 0.5 when they are not (small models mostly disagree); plain accuracy is reported too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from polysteer.errors import PolysteerError


def paraphrase_pairs(groups: Sequence[int]) -> list[tuple[int, int]]:
    """Every ``(i, j)``, ``i < j``, of rows that share a group (two wordings of one question)."""
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(int(g), []).append(i)
    return [pair for members in rows.values() for pair in itertools.combinations(members, 2)]


@dataclass
class LayerLocalization:
    """Held-out balanced accuracy (the ranking) and plain accuracy per hook point, the majority-class rate."""

    accuracy: dict[str, float]
    plain_accuracy: dict[str, float]
    chance: float
    n_pairs: int

    @property
    def best(self) -> str:
        """The hook point with the highest accuracy (the first one on a tie)."""
        return max(self.accuracy, key=lambda hp: (self.accuracy[hp], -list(self.accuracy).index(hp)))


def _check(X: Mapping[str, torch.Tensor], groups, pairs, agree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not X:
        raise PolysteerError("layer localisation needs activations at one hook point at least")
    n = {len(x) for x in X.values()}
    if len(n) != 1 or len(groups) not in n:
        raise PolysteerError(f"layer localisation needs one row per paraphrase at every hook point and one group id "
                             f"per row; got {sorted(n)} rows and {len(groups)} group ids")
    pairs_arr = np.asarray(pairs, dtype=int).reshape(-1, 2)
    labels = np.asarray(agree, dtype=bool)
    if len(pairs_arr) != len(labels):
        raise PolysteerError(f"need one agreement flag per pair, got {len(labels)} for {len(pairs_arr)} pairs")
    if labels.all() or not labels.any():
        raise PolysteerError(f"all {len(labels)} pairs {'agree' if labels.all() else 'disagree'}; localisation "
                             "contrasts agreeing with disagreeing pairs, so add questions of the other kind")
    return pairs_arr, labels, np.asarray(groups)[pairs_arr[:, 0]]


def localize_layers(X: Mapping[str, torch.Tensor], groups: Sequence[int], pairs: Sequence[tuple[int, int]],
                    agree: Sequence[bool], folds: int = 5, C: float = 1.0) -> LayerLocalization:
    """Rank hook points by how well ``[h_m; h_n]`` predicts whether the answers to ``m`` and ``n`` agree (held out).

    Args:
        X: hook point -> ``[n, d]`` pooled activations, one row per paraphrase.
        groups: ``[n]`` question id of each row; folds never split a question.
        pairs: row pairs to classify (usually :func:`paraphrase_pairs`).
        agree: whether the two answers of each pair agree.
        folds: group k-fold splits (at most the number of questions).
        C: inverse L2 strength of the logistic regression.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pairs_arr, labels, pair_groups = _check(X, groups, pairs, agree)
    splits = GroupKFold(n_splits=min(folds, len(set(pair_groups.tolist()))))
    balanced, plain = {}, {}
    for hp, states in X.items():
        h = states.float().cpu().numpy()
        features = np.concatenate([h[pairs_arr[:, 0]], h[pairs_arr[:, 1]]], axis=1)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        scores = cross_validate(probe, features, labels, groups=pair_groups, cv=splits,
                                scoring=("balanced_accuracy", "accuracy"))
        balanced[hp], plain[hp] = float(scores["test_balanced_accuracy"].mean()), float(scores["test_accuracy"].mean())
    return LayerLocalization(balanced, plain, float(max(labels.mean(), 1 - labels.mean())), len(labels))
