"""Answer one split (steered or not) and score it: refusal on harmful requests, over-refusal on look-alikes,
benign QA accuracy and fluency (median perplexity under the unsteered model)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from polysteer.engine import Plan
from polysteer.modalities.text.evaluators.judges import Perplexity
from polysteer.modalities.text.evaluators.refusal import QAAccuracy, RefusalRate
from polysteer.modalities.text.generation import generate
from polysteer.modalities.text.refusal.data import RefusalData, RefusalSplit

GROUPS = ("harmful", "lookalike", "qa")
#: Appended to every benign question: short answers are scored more reliably (and generate faster).
QA_SUFFIX = "Answer in a few words."


@dataclass
class RefusalScores:
    """Rates on one split: refused harmful requests, refused look-alikes, correct QA answers, and fluency.

    A group that was not answered scores NaN; ``perplexity`` is None unless measured.
    """

    refusal: float
    over_refusal: float
    accuracy: float
    perplexity: float | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)

    def row(self) -> dict[str, float | None]:
        """The four numbers, NaN as None (JSON has no NaN)."""
        values = {"refusal": self.refusal, "over_refusal": self.over_refusal, "accuracy": self.accuracy,
                  "perplexity": self.perplexity}
        return {k: None if v is None or math.isnan(v) else v for k, v in values.items()}


def group_prompts(split: RefusalSplit, qa_suffix: str = QA_SUFFIX) -> dict[str, list[str]]:
    """The prompts of each group, as the model is asked them."""
    return {"harmful": split.harmful, "lookalike": split.lookalike,
            "qa": [f"{q} {qa_suffix}".strip() for q in split.questions]}


def answer(model, tokenizer, split: RefusalSplit, plan: Plan | None = None, groups: Sequence[str] = GROUPS,
           max_new_tokens: int = 48, batch_size: int = 8, progress: bool = True) -> dict[str, list[str]]:
    """Greedy answers to each group of ``split`` (one batched generate over all of them), steered by ``plan``."""
    by_group = group_prompts(split)
    prompts = [p for g in groups for p in by_group[g]]
    outputs = generate(model, tokenizer, prompts, plan, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress) if prompts else []
    answers, start = {}, 0
    for g in groups:
        answers[g], start = outputs[start : start + len(by_group[g])], start + len(by_group[g])
    return answers


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def score(outputs: dict[str, list[str]], split: RefusalSplit, judge: RefusalRate,
          perplexity: Perplexity | None = None) -> RefusalScores:
    """Scores of :func:`answer`'s outputs; with ``perplexity``, the median over the look-alike and QA answers."""
    qa = outputs.get("qa", [])
    result = RefusalScores(
        refusal=_mean(judge.evaluate(outputs.get("harmful", []))),
        over_refusal=_mean(judge.evaluate(outputs.get("lookalike", []))),
        accuracy=_mean(QAAccuracy().evaluate(qa, answers=split.answers[: len(qa)])),
        outputs=outputs,
    )
    if perplexity is not None:
        prompts = group_prompts(split)
        texts = [(t, p) for g in ("lookalike", "qa") for t, p in zip(outputs.get(g, []), prompts[g])]
        if texts:
            ppl = perplexity.evaluate([t for t, _ in texts], prompts=[p for _, p in texts])
            result.perplexity = statistics.median(ppl)
    return result


def measure(model, tokenizer, split: RefusalSplit, plan: Plan | None, judge: RefusalRate, fluency: bool = False,
            groups: Sequence[str] = GROUPS, **generation) -> RefusalScores:
    """:func:`answer` then :func:`score`; ``fluency`` adds the median perplexity under the unsteered model.

    Args:
        generation: passed to :func:`answer` (max_new_tokens, batch_size, progress).
    """
    outputs = answer(model, tokenizer, split, plan, groups, **generation)
    return score(outputs, split, judge, Perplexity(model, tokenizer) if fluency else None)


def calibrated_judge(model, tokenizer, data: RefusalData, **generation) -> tuple[RefusalRate, RefusalScores]:
    """A refusal judge with the data's templates, its similarity threshold calibrated on the select split's
    unsteered answers (every group), and those answers' scores under it."""
    judge = RefusalRate(data.templates)
    outputs = answer(model, tokenizer, data.select, None, **generation)
    judge.calibrate([t for g in GROUPS for t in outputs[g]])
    return judge, score(outputs, data.select, judge)
