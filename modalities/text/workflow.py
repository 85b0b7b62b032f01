"""Text workflows shared by the CLI and the Python API: find a direction, measure concept expression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from polysteer.direction import Direction
from polysteer.finder import fit_layers, make_finder
from polysteer.hookpoints import hook_point, parse_layers
from polysteer.modalities.text.evaluators.judges import KeywordJudge
from polysteer.modalities.text.generation import Example, generate, persona_answers
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.presets import EVAL_PROMPTS, TRAIN_QUESTIONS, PersonaPair


def default_layer(n_layers: int) -> int:
    """A middle layer (40% of the depth): where concept directions steer best on small chat models."""
    return round(0.4 * n_layers)


def choose_layers(spec: str | None, n_layers: int) -> list[int]:
    """Layers from a spec (see :func:`polysteer.hookpoints.parse_layers`); None gives :func:`default_layer`."""
    return parse_layers(spec, n_layers) if spec else [default_layer(n_layers)]


def find_direction(
    model,
    tokenizer,
    positives: Sequence[Example],
    negatives: Sequence[Example],
    layers: Sequence[int],
    finder="diffmean",
    site: str = "resid_post",
    pooling: str = "mean",
    cache_dir: str | None = None,
    provenance: dict | None = None,
    **finder_params,
) -> Direction:
    """Capture every layer in one pass, fit the finder per layer and package a Direction."""
    modality = TextModality()
    points = [hook_point(layer, site) for layer in layers]
    X_pos = modality.capture(model, tokenizer, positives, points, pooling=pooling, cache_dir=cache_dir)
    X_neg = modality.capture(model, tokenizer, negatives, points, pooling=pooling, cache_dir=cache_dir)
    proto = make_finder(finder, **finder_params)
    return Direction.from_fitted(
        fit_layers(proto, X_pos, X_neg), model=model, modality=modality, finder=proto,
        d_model=modality.d_model(model, points[0]),
        provenance={"n_positive": len(positives), "n_negative": len(negatives), "pooling": pooling,
                    **(provenance or {})},
    )


def persona_data(model, tokenizer, pair: PersonaPair, questions: Sequence[str] = TRAIN_QUESTIONS,
                 max_new_tokens: int = 48) -> tuple[list[Example], list[Example]]:
    """Answers written in each persona, to read back without it (the CAA recipe)."""
    pos = persona_answers(model, tokenizer, questions, pair.positive, max_new_tokens)
    neg = persona_answers(model, tokenizer, questions, pair.negative, max_new_tokens)
    return pos, neg


@dataclass
class ConceptRate:
    """How often generations express a concept, unsteered vs steered, with the texts."""

    unsteered: float
    steered: float
    prompts: list[str]
    unsteered_texts: list[str]
    steered_texts: list[str]


def concept_rate(model, tokenizer, plan, keywords: Sequence[str], prompts: Sequence[str] = EVAL_PROMPTS,
                 max_new_tokens: int = 48) -> ConceptRate:
    """Fraction of prompts whose (greedy) output mentions a concept keyword, without and with ``plan``."""
    judge = KeywordJudge(keywords)
    base = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    steered = generate(model, tokenizer, prompts, plan, max_new_tokens=max_new_tokens)
    rate = lambda texts: sum(judge.evaluate(texts)) / len(texts)  # noqa: E731
    return ConceptRate(rate(base), rate(steered), list(prompts), base, steered)
