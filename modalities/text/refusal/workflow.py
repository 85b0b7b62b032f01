"""The refusal workflows behind ``polysteer refusal``: choose settings on the select split, and evaluate a direction
file (unsteered vs steered) on a split."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint, parse_layers
from polysteer.modalities.text.evaluators.refusal import RefusalRate
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.refusal.data import RefusalData
from polysteer.modalities.text.refusal.scoring import RefusalScores, calibrated_judge, measure
from polysteer.modalities.text.refusal.selection import addition_candidates, choose, clamp_candidates, sweep
from polysteer.modalities.text.refusal.steer import FEATURES_KEY, ablation_plan, addition_plan, clamp_plan

DEFAULT_CLAMP = 2.0


def keep_layer(direction: Direction, layer: int, coefficient: float, **provenance: Any) -> Direction:
    """The direction at one of its layers only, with ``coefficient`` as its default and ``provenance`` added."""
    hp = next(h for h in direction.hook_points if HookPoint.parse(h).layer == layer)
    return direction.only([hp], coefficient=coefficient, provenance={**direction.provenance, **provenance})


def choose_settings(model, tokenizer, data: RefusalData, direction: Direction, features: Direction | None,
                    coefficients: Sequence[float], max_accuracy_drop: float = 0.1,
                    echo: Callable[[str], None] = print, **generation) -> tuple[Direction, Direction | None]:
    """Pick the ``add`` layer and coefficient, and the SAE clamp multiplier, that raise refusal most on the select
    split (minus over-refusal) within the accuracy drop; return the direction at that layer with that default
    coefficient and the features with ``clamp_multiplier`` recorded."""
    judge, base = calibrated_judge(model, tokenizer, data, **generation)
    echo(f"select split, unsteered: refusal {base.refusal:.3f}, over-refusal {base.over_refusal:.3f}, "
         f"accuracy {base.accuracy:.3f} (judge threshold {judge.threshold:.3f})")
    scores = sweep(model, tokenizer, data.select, addition_candidates(direction, coefficients), judge,
                   desc="add settings", **generation)
    pick = choose(scores, base, "increase", max_accuracy_drop)
    (layer, coef) = pick.key
    echo(f"chose add at layer {layer} x{coef:g}: refusal {pick.scores.refusal:.3f}, over-refusal "
         f"{pick.scores.over_refusal:.3f}, accuracy {pick.scores.accuracy:.3f}" + _warning(pick.feasible))
    record = {"refusal_choice": {"layer": layer, "coefficient": coef, "select": pick.scores.row(),
                                 "unsteered": base.row(), "judge_threshold": judge.threshold,
                                 "within_accuracy_drop": pick.feasible}}
    direction = keep_layer(direction, layer, coef, **record)
    if features is not None:
        scores = sweep(model, tokenizer, data.select, clamp_candidates(features, coefficients), judge,
                       desc="clamp settings", **generation)
        pick = choose(scores, base, "increase", max_accuracy_drop)
        echo(f"chose SAE clamp x{pick.key:g}: refusal {pick.scores.refusal:.3f}, over-refusal "
             f"{pick.scores.over_refusal:.3f}, accuracy {pick.scores.accuracy:.3f}" + _warning(pick.feasible))
        features = dataclasses.replace(features, provenance={**features.provenance, "clamp_multiplier": pick.key,
                                                             "clamp_select": pick.scores.row()})
    return direction, features


def _warning(feasible: bool) -> str:
    return "" if feasible else " (no setting kept the accuracy within the allowed drop: the most accurate one)"


def steering_plan(model, direction: Direction, mode: str | None = None, coefficient: float | None = None,
                  layers: str | None = None, ablate_blocks: str | None = None, sae=None) -> tuple[str, Plan]:
    """A label and the plan for ``mode`` (``add``, ``ablate`` or ``clamp``; default: clamp for a file of SAE
    features, else add). Layer specs are checked against the model's depth; ``sae`` overrides the recorded SAE."""
    n_layers = TextModality().n_layers(model)
    chosen = parse_layers(layers, n_layers) if layers else None
    mode = mode or ("clamp" if FEATURES_KEY in direction.extras else "add")
    if mode == "clamp":
        multiplier = coefficient if coefficient is not None else direction.provenance.get("clamp_multiplier",
                                                                                          DEFAULT_CLAMP)
        return f"sae clamp x{multiplier:g}", clamp_plan(direction, multiplier, sae)
    if mode == "add":
        plan = addition_plan(direction, None, coefficient) if chosen is None else sum(
            (addition_plan(direction, layer, coefficient) for layer in chosen), Plan())
        coef = direction.coefficient if coefficient is None else coefficient
        where = ",".join(str(HookPoint.parse(iv.hook_point).layer) for iv in plan)
        return f"add@{where} x{coef:g}", plan
    if mode == "ablate":
        layer = chosen[0] if chosen else HookPoint.parse(direction.hook_points[0]).layer
        blocks = parse_layers(ablate_blocks, n_layers) if ablate_blocks else None
        fraction = 1.0 if coefficient is None else coefficient
        return f"ablate@{layer}" + (f" x{fraction:g}" if fraction != 1 else ""), ablation_plan(
            direction, layer, n_layers, blocks, fraction)
    raise PolysteerError(f"unknown mode {mode!r}: use add, ablate or clamp")


def evaluate_direction(model, tokenizer, data: RefusalData, direction: Direction, mode: str | None = None,
                       coefficient: float | None = None, layers: str | None = None, ablate_blocks: str | None = None,
                       split: str = "report", threshold: float | None = None, force: bool = False, sae=None,
                       **generation) -> dict[str, RefusalScores]:
    """Unsteered and steered scores on ``split``, perplexity included (see :func:`steering_plan` for the rest).

    Args:
        threshold: the judge's similarity threshold; None calibrates it on the select split's unsteered answers.
        force: use a direction made for another model configuration.
        sae: the SAE folder for ``clamp`` (default: the one the file records).
    """
    modality = TextModality()
    direction.check_model(modality.identity(model), modality.d_model(model, direction.hook_points[0]), force=force)
    label, plan = steering_plan(model, direction, mode, coefficient, layers, ablate_blocks, sae)
    if threshold is None:
        judge, _ = calibrated_judge(model, tokenizer, data, **generation)
    else:
        judge = RefusalRate(data.templates, threshold)
    part = data.split(split)
    return {"unsteered": measure(model, tokenizer, part, None, judge, fluency=True, **generation),
            label: measure(model, tokenizer, part, plan, judge, fluency=True, **generation)}
