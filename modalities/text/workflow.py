"""Text workflows shared by the CLI and the Python API: find a direction, measure concept expression."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from polysteer.cache import cached_json, cached_tensors, make_key, model_fingerprint
from polysteer.direction import Direction
from polysteer.errors import PolysteerError
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
    pooling: str | None = None,
    cache_dir: str | None = None,
    provenance: dict | None = None,
    cache: bool = False,
    **finder_params,
) -> Direction:
    """Capture every layer in one pass, fit the finder per layer and package a Direction.

    ``cache_dir`` reuses activations saved in that folder; else ``cache=True`` keeps them in the polysteer cache
    (see :mod:`polysteer.cache`), keyed by the model, both classes' examples, the hook points and the pooling.
    ``pooling=None`` takes the finder's ``preferred_pooling`` (``tokens`` for ``sae_contrast``), else ``mean``.
    """
    modality = TextModality()
    points = [hook_point(layer, site) for layer in layers]
    proto = make_finder(finder, **finder_params)
    pooling = pooling or getattr(proto, "preferred_pooling", "mean")
    X_pos, X_neg, norms = _capture_classes(model, tokenizer, positives, negatives, points, pooling, cache_dir, cache)
    fitted = fit_layers(proto, X_pos, X_neg)
    provenance = {"n_positive": len(positives), "n_negative": len(negatives), "pooling": pooling, **(provenance or {})}
    spanning = [f for f in fitted.values() if hasattr(f, "to_direction")]
    if spanning:  # e.g. Feature Flow: one fit yields vectors at other hook points too
        if len(fitted) > 1:
            raise PolysteerError(f"the {proto.name!r} finder writes a direction over several hook points itself; "
                                 "give it one layer (--layers N)")
        return spanning[0].to_direction(model, provenance=provenance)
    return Direction.from_fitted(fitted, model=model, modality=modality, finder=proto, norms=norms,
                                 d_model=modality.d_model(model, points[0]), provenance=provenance)


NORM_EXAMPLES = 16  # per class: the median token norm is stable long before that


def _capture_classes(model, tokenizer, positives, negatives, points, pooling, cache_dir, cache):
    """``(X_pos, X_neg, norms)``, both classes in one cache entry when ``cache`` (and no ``cache_dir``).

    ``norms[hp]`` is the median norm of one token's activation at ``hp`` over (up to ``NORM_EXAMPLES`` of) each
    class's examples: the unit of the direction's coefficient.
    """
    modality = TextModality()

    def run() -> dict[str, torch.Tensor]:
        acts = {f"{side}/{hp}": acts for side, examples in (("pos", positives), ("neg", negatives))
                for hp, acts in modality.capture(model, tokenizer, examples, points, pooling=pooling,
                                                 cache_dir=cache_dir).items()}
        few = [*positives[:NORM_EXAMPLES], *negatives[:NORM_EXAMPLES]]
        tokens = modality.capture(model, tokenizer, few, points, pooling="tokens")
        return {**acts, **{f"norm/{hp}": rows.float().norm(dim=-1).median() for hp, rows in tokens.items()}}

    if cache and cache_dir is None:
        rows = lambda examples: [asdict(e) if isinstance(e, Example) else e for e in examples]  # noqa: E731
        key = make_key(kind="activations", model=model_fingerprint(model), tokenizer=_tokenizer_fingerprint(tokenizer),
                       positives=rows(positives), negatives=rows(negatives), hook_points=list(points),
                       pooling=pooling, chat=True, batch_size=8, norms=NORM_EXAMPLES, libraries=_libraries())
        acts = cached_tensors("activations", key, run, "activations")
    else:
        acts = run()
    return ({hp: acts[f"pos/{hp}"] for hp in points}, {hp: acts[f"neg/{hp}"] for hp in points},
            {hp: float(acts[f"norm/{hp}"]) for hp in points})


def persona_data(model, tokenizer, pair: PersonaPair, questions: Sequence[str] = TRAIN_QUESTIONS,
                 max_new_tokens: int = 48, cache: bool = True) -> tuple[list[Example], list[Example]]:
    """Answers written in each persona, to read back without it (the CAA recipe).

    The answers are kept in the polysteer cache (see :mod:`polysteer.cache`), keyed by the model, the tokenizer,
    both personas, the questions and the generation settings: asking again reuses them. ``cache=False`` (or
    ``POLYSTEER_NO_CACHE=1``) generates them anew.
    """
    questions = list(questions)

    def answer() -> list[list[dict[str, Any]]]:
        return [[asdict(e) for e in persona_answers(model, tokenizer, questions, persona, max_new_tokens)]
                for persona in (pair.positive, pair.negative)]

    key = make_key(kind="persona-answers", model=model_fingerprint(model), tokenizer=_tokenizer_fingerprint(tokenizer),
                   personas=[pair.positive, pair.negative], questions=questions, libraries=_libraries(),
                   generation={"max_new_tokens": max_new_tokens, "batch_size": 8, "greedy": True, "chat": True})
    pos, neg = cached_json("persona-answers", key, answer, "persona answers", cache)
    return [Example(**row) for row in pos], [Example(**row) for row in neg]


def _tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """What fixes how a tokenizer reads and formats text: its class, source, vocabulary and chat template."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"class": type(tokenizer).__name__, "name": str(getattr(tokenizer, "name_or_path", "")),
            "size": len(tokenizer), "pad": getattr(tokenizer, "pad_token", None),
            "chat_template": hashlib.sha256(str(template).encode()).hexdigest()}


def _libraries() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


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
