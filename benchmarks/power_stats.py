"""Statistics for the benchmark tables: bootstrap confidence intervals and a judge's agreement with keyword labels.

Pure functions on numbers (no model), so ``tests/test_power_stats.py`` checks them directly. The intervals are
percentile bootstraps from :func:`scipy.stats.bootstrap` with a fixed seed, resampling whole samples (one sample is
one generation: a (concept, instruction) pair), so a table rebuilt from the same rows prints the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import cohen_kappa_score

from polysteer import PolysteerError

RESAMPLES = 2000
SEED = 0


def bootstrap_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``values`` and its percentile-bootstrap confidence interval.

    Args:
        values: one number per sample (e.g. each generation's score).
        resamples: bootstrap resamples (at least 1000).
        seed: the resampling seed, fixed so that reruns print the same interval.
        confidence: the interval's coverage.

    Returns:
        ``(mean, low, high)``.
    """
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size < 2 or not np.isfinite(data).all():
        raise PolysteerError(f"a bootstrap needs >= 2 finite numbers in a flat list, got {data.size}; "
                             "pass one score per sample")
    if resamples < 1000:
        raise PolysteerError(f"resamples={resamples} is too few for a 95% percentile interval; use >= 1000")
    if np.ptp(data) == 0:  # every resample has the same mean
        return float(data[0]), float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(data.mean()), float(interval.low), float(interval.high)


def paired_bootstrap_ci(a: dict, b: dict, resamples: int = RESAMPLES, seed: int = SEED,
                        confidence: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` over the samples both share, with a paired bootstrap interval.

    Resampling the per-sample differences keeps each pair together, so a difference shared by both methods (a hard
    instruction, an easy concept) cancels instead of widening the interval.

    Args:
        a: sample key (e.g. ``(concept, instruction)``) -> score.
        b: the same keys -> the other method's score.

    Returns:
        ``(difference, low, high)``.
    """
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b), key=str)[:3]
        raise PolysteerError(f"paired samples must share keys; {len(set(a) ^ set(b))} differ, e.g. {missing}: "
                             "compare methods run on the same (concept, instruction) pairs")
    keys = sorted(a, key=str)
    return bootstrap_ci([a[k] - b[k] for k in keys], resamples, seed, confidence)


def judge_agreement(judge: Sequence[float], keyword: Sequence[bool]) -> dict:
    """How a 0-2 judge agrees with binary keyword labels.

    Args:
        judge: the judge's score per text (0, 1 or 2).
        keyword: whether each text mentions one of its concept's keywords.

    Returns:
        ``confusion`` (judge score -> ``{"yes": n, "no": n}`` keyword hits), ``accuracy`` of ``judge > 0`` against
        the keyword label, Cohen's ``kappa`` of the same binary call (nan when both sides use one label only), and
        ``n``.
    """
    scores, hits = [int(round(s)) for s in judge], [bool(k) for k in keyword]
    if len(scores) != len(hits) or not scores:
        raise PolysteerError(f"judge agreement needs one keyword label per judge score, got {len(scores)} scores "
                             f"and {len(hits)} labels")
    if set(scores) - {0, 1, 2}:
        raise PolysteerError(f"judge scores must be 0, 1 or 2, got {sorted(set(scores) - {0, 1, 2})}")
    confusion = {s: {"yes": 0, "no": 0} for s in (0, 1, 2)}
    for s, h in zip(scores, hits):
        confusion[s]["yes" if h else "no"] += 1
    called = [s > 0 for s in scores]
    accuracy = float(np.mean([c == h for c, h in zip(called, hits)]))
    one_label = len(set(called) | set(hits)) < 2
    kappa = float("nan") if one_label else float(cohen_kappa_score(called, hits, labels=[False, True]))
    return {"confusion": confusion, "accuracy": accuracy, "kappa": kappa, "n": len(scores)}


def with_ci(mean: float, low: float, high: float) -> str:
    """``0.285 [0.21, 0.36]``: a mean with its interval, for a markdown cell."""
    return f"{mean:.3f} [{low:.2f}, {high:.2f}]"


def signed_ci(mean: float, low: float, high: float) -> str:
    """``+0.041 [-0.03, +0.11]``: a difference with its interval."""
    return f"{mean:+.3f} [{low:+.2f}, {high:+.2f}]"
