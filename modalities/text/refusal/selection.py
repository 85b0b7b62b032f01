"""Fit the refusal directions on the select split, sweep their settings there, and choose one (AxBench's rule:
choose on ``select``, report on ``report``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.modalities.text.evaluators.refusal import RefusalRate
from polysteer.modalities.text.refusal.data import RefusalData, RefusalSplit
from polysteer.modalities.text.refusal.scoring import GROUPS, RefusalScores, measure
from polysteer.modalities.text.refusal.steer import (
    ablation_plan,
    addition_plan,
    clamp_plan,
    find_refusal_direction,
    find_refusal_features,
)

GOALS = ("increase", "decrease")


def harmless_prompts(split: RefusalSplit) -> list[str]:
    """The contrast set: the harmless look-alikes. They share the harmful requests' words, so the difference is
    harm rather than topic. The benign questions stay out, so the QA side effects are measured on a kind of prompt
    the direction was not fitted on."""
    return list(split.lookalike)


def fit_refusal(model, tokenizer, data: RefusalData, layers: Sequence[int], sae: str | Path | None = None,
                top_k: int = 4, finder: str = "diffmean", cache_dir: str | None = None
                ) -> tuple[Direction, Direction | None]:
    """The DiffMean refusal direction at ``layers`` and (with ``sae``) the SAE refusal features, both fitted on
    the select split's harmful requests against its harmless ones (``cache_dir`` reuses saved activations)."""
    harmful, harmless = data.select.harmful, harmless_prompts(data.select)
    direction = find_refusal_direction(model, tokenizer, harmful, harmless, layers, finder, cache_dir=cache_dir)
    features = find_refusal_features(model, tokenizer, harmful, harmless, sae, top_k, cache_dir) if sae else None
    return direction, features


def addition_candidates(direction: Direction, coefficients: Sequence[float]) -> dict[tuple[int, float], Plan]:
    """``(layer, coefficient) -> add plan`` for every layer of the direction and every coefficient."""
    layers = [HookPoint.parse(hp).layer for hp in direction.hook_points]
    return {(layer, c): addition_plan(direction, layer, c) for layer in layers for c in coefficients}


def ablation_candidates(direction: Direction, n_layers: int) -> dict[int, Plan]:
    """``layer -> plan`` ablating that layer's direction from every block."""
    return {HookPoint.parse(hp).layer: ablation_plan(direction, HookPoint.parse(hp).layer, n_layers)
            for hp in direction.hook_points}


def clamp_candidates(features: Direction, multipliers: Sequence[float]) -> dict[float, Plan]:
    """``multiplier -> sae_clamp plan`` (each feature clamped to multiplier x its peak harmful activation)."""
    return {m: clamp_plan(features, m) for m in multipliers}


def sweep(model, tokenizer, split: RefusalSplit, plans: Mapping[Hashable, Plan], judge: RefusalRate,
          groups: Sequence[str] = GROUPS, desc: str = "settings", **generation) -> dict[Hashable, RefusalScores]:
    """Scores of every plan on ``split`` (see :func:`~polysteer.modalities.text.refusal.scoring.measure`)."""
    generation.setdefault("progress", False)
    return {key: measure(model, tokenizer, split, plan, judge, groups=groups, **generation)
            for key, plan in tqdm(plans.items(), desc=desc)}


@dataclass
class Choice:
    """The chosen setting, its select-split scores, and whether it kept benign accuracy within the allowed drop
    (when no setting did, the one with the best accuracy is chosen and ``feasible`` is False)."""

    key: Any
    scores: RefusalScores
    feasible: bool


def objective(scores: RefusalScores, goal: str = "increase") -> float:
    """``increase``: refusal on harmful minus over-refusal on look-alikes; ``decrease``: minus refusal on harmful."""
    if goal not in GOALS:
        raise PolysteerError(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    if goal == "increase":
        return scores.refusal - _zero_nan(scores.over_refusal)
    return -scores.refusal


def _zero_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def choose(candidates: Mapping[Hashable, RefusalScores], baseline: RefusalScores, goal: str = "increase",
           max_accuracy_drop: float = 0.1) -> Choice:
    """The candidate with the best :func:`objective` whose QA accuracy is at most ``max_accuracy_drop`` below the
    unsteered ``baseline``'s; ties go to the higher accuracy, then to the first candidate (list mild settings
    first)."""
    if not candidates:
        raise PolysteerError("no candidate settings to choose from")
    floor = _zero_nan(baseline.accuracy) - max_accuracy_drop - 1e-9
    keys = list(candidates)
    feasible = [k for k in keys if _zero_nan(candidates[k].accuracy) >= floor]
    if not feasible:
        best = max(keys, key=lambda k: _zero_nan(candidates[k].accuracy))
        return Choice(best, candidates[best], False)
    best = max(feasible, key=lambda k: (objective(candidates[k], goal), _zero_nan(candidates[k].accuracy),
                                        -keys.index(k)))
    return Choice(best, candidates[best], True)
