"""Text workflows for LF-Steering (consistency across paraphrases) and SAIF (instruction following).

Both read one activation per prompt at the SAE's hook point: the last prompt token (``position='last'``, the chat
template applied) or the mean over the prompt read as plain text (``position='mean'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.modalities.text.evaluators.consistency import Consistency, ParaphraseGroup, is_correct
from polysteer.modalities.text.generation import Example, collect, generate
from polysteer.modalities.text.modality import TextModality
from polysteer.plugins.sae.lf_steering import LFSteering, lf_direction
from polysteer.plugins.sae.model import SAE

ANSWER_SUFFIX = "Answer in a few words."
POSITIONS = ("last", "mean")


def prompt_examples(prompts: Sequence[str], position: str = "last") -> list[Example]:
    """Inputs that pool the last prompt token (chat-formatted) or the mean over the plain prompt."""
    if position not in POSITIONS:
        raise PolysteerError(f"position must be one of {POSITIONS}, got {position!r}")
    return [Example("", prompt=p) if position == "last" else Example(p) for p in prompts]


def _sae_activations(model, tokenizer, sae: SAE, prompts: Sequence[str], position: str) -> tuple[str, torch.Tensor]:
    hp = sae.hook_point
    sae.check_width(TextModality().d_model(model, hp), "this model's activations")
    return hp, collect(model, tokenizer, prompt_examples(prompts, position), [hp])[hp]


def paraphrase_prompts(groups: Sequence[ParaphraseGroup], suffix: str = ANSWER_SUFFIX) -> tuple[list[str], list[int]]:
    """Every paraphrase (with ``suffix`` appended) and the index of its group."""
    pairs = [(f"{p} {suffix}".strip(), g) for g, group in enumerate(groups) for p in group.paraphrases]
    return [p for p, _ in pairs], [g for _, g in pairs]


@dataclass
class ConsistencyResult:
    """Answers to every paraphrase, each group's mean pairwise agreement and accuracy against the answer."""

    answers: list[str]
    group_ids: list[int]
    agreement: dict[int, float]
    correct: list[bool]

    @property
    def consistency(self) -> float:
        return sum(self.agreement.values()) / len(self.agreement)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)


def measure_consistency(model, tokenizer, groups: Sequence[ParaphraseGroup], plan: Plan | None = None,
                        judge: Consistency | None = None, suffix: str = ANSWER_SUFFIX, max_new_tokens: int = 16,
                        batch_size: int = 8) -> ConsistencyResult:
    """Answer every paraphrase (greedy), steered by ``plan``, and score agreement and accuracy."""
    prompts, ids = paraphrase_prompts(groups, suffix)
    answers = generate(model, tokenizer, prompts, plan, max_new_tokens=max_new_tokens, batch_size=batch_size)
    agreement = (judge or Consistency()).group_agreement(answers, ids)
    return ConsistencyResult(answers, ids, agreement, [is_correct(a, groups[g]) for a, g in zip(answers, ids)])


def agreeing_groups(agreement: dict[int, float], threshold: float | None = 1.0) -> set[int]:
    """Groups whose agreement reaches ``threshold``; with None, those above the median (or at it, if none is above)."""
    if threshold is not None:
        return {g for g, a in agreement.items() if a >= threshold}
    values = sorted(agreement.values())
    median = values[len(values) // 2]
    return {g for g, a in agreement.items() if a > median} or {g for g, a in agreement.items() if a >= median}


def fit_lf_steering(model, tokenizer, groups: Sequence[ParaphraseGroup], sae_path: str | Path, top_k: int = 8,
                    mode: str = "pull", baseline: ConsistencyResult | None = None,
                    agree_threshold: float | None = 1.0,
                    position: str = "last", coefficient: float = 1.0, **measure: Any
                    ) -> tuple[Direction, LFSteering, ConsistencyResult]:
    """Answer the fitting groups, split them into agreeing and disagreeing ones, and fit LF-Steering on the
    paraphrases' activations.

    Args:
        baseline: the groups' unsteered answers if already measured (:func:`measure_consistency`).
        agree_threshold: a group agrees when its mean pairwise agreement reaches this; None splits at the median
            (groups above it agree), which always gives both kinds unless every group scores the same.
        measure: passed to :func:`measure_consistency` (judge, suffix, max_new_tokens, batch_size).
    """
    baseline = baseline or measure_consistency(model, tokenizer, groups, **measure)
    sae = SAE.load(sae_path)
    prompts, ids = paraphrase_prompts(groups, measure.get("suffix", ANSWER_SUFFIX))
    hp, X = _sae_activations(model, tokenizer, sae, prompts, position)
    agreeing = agreeing_groups(baseline.agreement, agree_threshold)
    finder = LFSteering(sae, top_k=top_k, mode=mode).fit(X, ids, [g in agreeing for g in ids])
    direction = lf_direction(finder, hp, sae_path, coefficient, TextModality().identity(model),
                             {"n_groups": len(groups), "n_agreeing": len(agreeing), "agree_threshold": agree_threshold,
                              "position": position})
    return direction, finder, baseline


def saif_prompts(contents: Sequence[str], wordings: Sequence[str]) -> tuple[list[str], list[str]]:
    """Paired prompts: [content + wording] and [content], one pair per content and wording."""
    with_instruction = [f"{c} {w}" for c in contents for w in wordings]
    alone = [c for c in contents for _ in wordings]
    return with_instruction, alone


def fit_saif(model, tokenizer, contents: Sequence[str], wordings: Sequence[str], sae_path: str | Path,
             top_k: int = 10, min_fraction: float = 0.9, position: str = "last",
             provenance: dict[str, Any] | None = None) -> tuple[Direction, Any]:
    """Fit SAIF at the SAE's hook point; the Direction's ``add`` plan at coefficient 1 adds the SAIF vector."""
    sae = SAE.load(sae_path)
    pos, neg = saif_prompts(contents, wordings)
    hp, X_pos = _sae_activations(model, tokenizer, sae, pos, position)
    _, X_neg = _sae_activations(model, tokenizer, sae, neg, position)
    finder = make_finder("saif", sae=sae, top_k=top_k, min_fraction=min_fraction).fit(X_pos, X_neg)
    direction = Direction.from_fitted(
        {hp: finder}, model=model, modality=TextModality(), d_model=sae.d_in,
        provenance={"sae": str(sae_path), "n_contents": len(contents), "n_wordings": len(wordings),
                    "position": position, **(provenance or {})},
        extras={"saif.latents": finder.latents_.clone(), "saif.activations": finder.activations_.clone()},
    )
    return direction, finder


def follow_rate(model, tokenizer, prompts: Sequence[str], check, plan: Plan | None = None, max_new_tokens: int = 64,
                batch_size: int = 8) -> tuple[float, list[str]]:
    """Fraction of (greedy) outputs that pass ``check``, and the outputs."""
    outputs = generate(model, tokenizer, prompts, plan, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return sum(map(check, outputs)) / len(outputs), outputs
