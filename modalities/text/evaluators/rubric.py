"""AxBench-style 0-2 judges, local and calibrated: concept, instruction relevance, fluency, and their harmonic mean.

AxBench scores each generation 0, 1 or 2 on three criteria with an LLM judge and combines them by the
harmonic mean (0 when any part is 0). Here the judges are local, so each maps a measurement to 0/1/2 with two
thresholds fitted on reference texts (see :func:`calibrate`):

* **concept**: MiniLM cosine of the output to the concept description. Calibrated on held-out texts that
  express the concept (positives) and texts that do not (negatives): ``low`` is the cut with the best balanced
  accuracy between them (Youden's J, placed midway to the next lower text), ``high`` the positives' median.
* **instruction**: MiniLM cosine of the output to its instruction. Calibrated on the unsteered model's answers:
  positives are each answer against its own instruction, negatives against other instructions.
* **fluency**: perplexity of the output on its own under the unsteered model, calibrated on unsteered answers:
  2 up to their 90th percentile, 1 up to three times that, else 0; minus a repetition penalty of 1 when
  fewer than 80% of the word 3-grams are distinct and 2 when fewer than 50%, or of 1 under 50% and 2 under 30% of
  distinct character 8-grams (a loop without spaces); loops read fluent to perplexity.
  The prompt is left out as AxBench's fluency judge leaves it out ("disregarding its completeness, relevance,
  coherence with any broader context"): given the prompt, an answer that turns to the concept reads as surprising,
  and relevance is the instruction judge's part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from sklearn.metrics import roc_curve

from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.modalities.text.evaluators.judges import Perplexity, distinct_char_ratio, distinct_ratio, embed

FLUENCY_QUANTILE = 0.9
FLUENCY_SLACK = 3.0
REPETITION_STEPS = ((0.5, 2), (0.8, 1))
# character 8-grams: the unsteered SmolLM2 answers' lowest ratio is 0.56, digit loops score 0.14-0.29
CHAR_REPETITION_STEPS = ((0.3, 2), (0.5, 1))


@dataclass(frozen=True)
class Thresholds:
    """A measurement ``m`` scores 0 below ``low``, 1 from ``low``, 2 from ``high`` (reversed if ``lower_is_better``)."""

    low: float
    high: float
    lower_is_better: bool = False

    def score(self, m: float) -> int:
        if self.lower_is_better:
            return 0 if not m <= self.low else (2 if m <= self.high else 1)
        return 0 if not m >= self.low else (2 if m >= self.high else 1)


def calibrate(positives: Sequence[float], negatives: Sequence[float]) -> Thresholds:
    """Thresholds from reference measurements: ``low`` maximises Youden's J, ``high`` is the positives' median."""
    if len(positives) < 2 or len(negatives) < 2:
        raise PolysteerError("calibration needs at least two positive and two negative reference texts")
    values = list(positives) + list(negatives)
    fpr, tpr, cuts = roc_curve([1] * len(positives) + [0] * len(negatives), values)
    cut = float(cuts[int((tpr - fpr)[1:].argmax()) + 1])  # index 0 is the +inf cut
    below = [v for v in values if v < cut]
    low = (cut + max(below)) / 2 if below else cut  # midway to the next lower text, not on a positive
    high = float(torch.tensor(list(positives)).median())
    return Thresholds(min(low, high), high)


def harmonic_mean(*scores: float) -> float:
    """AxBench's per-generation score: the harmonic mean of the parts, 0 if any part is 0."""
    return 0.0 if min(scores) <= 0 else len(scores) / sum(1.0 / s for s in scores)


def cosines(texts: Sequence[str], references: Sequence[str]) -> list[float]:
    """MiniLM cosine of each text to its reference (one reference per text, or one for all)."""
    refs = list(references) * (len(texts) if len(references) == 1 else 1)
    if len(refs) != len(texts):
        raise PolysteerError(f"{len(texts)} texts but {len(references)} references; give one or one per text")
    vectors = embed([*texts, *refs])
    return (vectors[: len(texts)] * vectors[len(texts) :]).sum(-1).tolist()


class ConceptScore(Evaluator):
    """0-2 concept score: MiniLM similarity to ``concept`` mapped through calibrated thresholds."""

    name = "axbench-concept"
    modalities = ("text",)

    def __init__(self, concept: str = "", thresholds: Thresholds | None = None):
        if not concept or thresholds is None:
            raise PolysteerError("axbench-concept needs a concept description and thresholds: "
                                 "use ConceptScore.calibrated(concept, positives, negatives)")
        self.concept, self.thresholds = concept, thresholds

    @classmethod
    def calibrated(cls, concept: str, positives: Sequence[str], negatives: Sequence[str]) -> "ConceptScore":
        """Fit the thresholds on held-out texts that do (positives) and do not (negatives) express the concept."""
        sims = cosines([*positives, *negatives], [concept])
        return cls(concept, calibrate(sims[: len(positives)], sims[len(positives) :]))

    def evaluate(self, outputs, **context):
        return [float(self.thresholds.score(s)) if o.strip() else 0.0
                for o, s in zip(outputs, cosines(outputs, [self.concept]))]


class InstructionScore(Evaluator):
    """0-2 instruction relevance: MiniLM similarity of each output to its instruction (``prompts=``)."""

    name = "axbench-instruction"
    modalities = ("text",)

    def __init__(self, thresholds: Thresholds | None = None):
        if thresholds is None:
            raise PolysteerError("axbench-instruction needs thresholds: use InstructionScore.calibrated(...)")
        self.thresholds = thresholds

    @classmethod
    def calibrated(cls, instructions: Sequence[str], answers: Sequence[str]) -> "InstructionScore":
        """Fit on unsteered answers: each against its own instruction vs against the next instruction."""
        shifted = list(instructions[1:]) + list(instructions[:1])
        return cls(calibrate(cosines(answers, instructions), cosines(answers, shifted)))

    def evaluate(self, outputs, prompts: Sequence[str] | None = None, **context):
        if prompts is None:
            raise PolysteerError("axbench-instruction scores outputs against their instructions: pass prompts=")
        return [float(self.thresholds.score(s)) if o.strip() else 0.0
                for o, s in zip(outputs, cosines(outputs, prompts))]


class FluencyScore(Evaluator):
    """0-2 fluency: perplexity of the output alone under the unsteered model, calibrated on its own answers,
    minus repetition."""

    name = "axbench-fluency"
    modalities = ("text",)

    def __init__(self, model=None, tokenizer=None, thresholds: Thresholds | None = None):
        if model is None or thresholds is None:
            raise PolysteerError("axbench-fluency needs the model and thresholds: use FluencyScore.calibrated(...)")
        self.perplexity, self.thresholds = Perplexity(model, tokenizer), thresholds

    @classmethod
    def calibrated(cls, model, tokenizer, answers: Sequence[str]) -> "FluencyScore":
        """2 up to the unsteered answers' 90th-percentile perplexity, 1 up to three times that."""
        ppl = Perplexity(model, tokenizer).evaluate(answers)
        finite = torch.tensor([math.log(p) for p in ppl if math.isfinite(p)])
        if len(finite) < 2:
            raise PolysteerError("fluency calibration needs at least two non-empty unsteered answers")
        high = math.exp(float(finite.quantile(FLUENCY_QUANTILE)))
        return cls(model, tokenizer, Thresholds(FLUENCY_SLACK * high, high, lower_is_better=True))

    def evaluate(self, outputs, **context):
        """Scores of ``outputs``; a ``prompts=`` in ``context`` is accepted and, by design, not read."""
        ppl = self.perplexity.evaluate(outputs)
        return [float(max(0, self.thresholds.score(p) - repetition_penalty(o))) for o, p in zip(outputs, ppl)]


def repetition_penalty(text: str) -> int:
    """1 when under 80% of the word 3-grams are distinct, 2 under 50%; the same for character 8-grams at 50% and
    30%, so a loop without spaces (which perplexity rates as fluent) is caught too; the larger penalty counts."""
    steps = ((distinct_ratio(text), REPETITION_STEPS), (distinct_char_ratio(text), CHAR_REPETITION_STEPS))
    return max(next((penalty for cut, penalty in cuts if ratio < cut), 0) for ratio, cuts in steps)


class AxBenchScore(Evaluator):
    """Per-generation AxBench score: harmonic mean of concept, instruction and fluency (0 if any is 0)."""

    name = "axbench"
    modalities = ("text",)

    def __init__(self, concept: ConceptScore | None = None, instruction: InstructionScore | None = None,
                 fluency: FluencyScore | None = None):
        if concept is None or instruction is None or fluency is None:
            raise PolysteerError("axbench needs calibrated concept, instruction and fluency judges")
        self.parts = {"concept": concept, "instruction": instruction, "fluency": fluency}

    def breakdown(self, outputs: Sequence[str], prompts: Sequence[str]) -> list[dict[str, float]]:
        """Each part's score and the combined ``score`` per output."""
        parts = {k: judge.evaluate(outputs, prompts=prompts) for k, judge in self.parts.items()}
        rows = [dict(zip(parts, values)) for values in zip(*parts.values())]
        return [{**r, "score": harmonic_mean(*r.values())} for r in rows]

    def evaluate(self, outputs, prompts: Sequence[str] | None = None, **context):
        if prompts is None:
            raise PolysteerError("axbench scores outputs against their instructions: pass prompts=")
        return [r["score"] for r in self.breakdown(outputs, prompts)]
