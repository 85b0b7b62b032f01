"""Automatic choice of layer, strength and schedule for a direction, by AxBench's rule (``polysteer tune``).

Every candidate (one hook point, or all of the file's hook points at once, x coefficient x schedule) steers
answers to a *selection* half of the instructions; the 0-2 judges score them (concept, instruction, fluency and
their harmonic mean, :mod:`polysteer.modalities.text.evaluators.rubric`) and the best mean score wins. The winner
and the file's own defaults are then scored on the other, *report* half, which the choice never saw.

The concept judge is calibrated on the model's own answers to the selection instructions: with "mention
{concept}" appended (texts that express it) against unsteered (texts that do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.engine import stack_plans
from polysteer.errors import PolysteerError
from polysteer.modalities.text.evaluators.rubric import AxBenchScore, ConceptScore, FluencyScore, InstructionScore
from polysteer.modalities.text.generation import generate

ALL = "all"
PARTS = ("concept", "instruction", "fluency", "score")


@dataclass(frozen=True)
class Candidate:
    """Where (one hook point, or ``"all"`` of the file's), how strongly and when to steer."""

    hook_points: str
    coefficient: float
    schedule: str

    def plan(self, direction: Direction):
        points = direction.hook_points if self.hook_points == ALL else [self.hook_points]
        return direction.to_plan(self.coefficient, schedule=self.schedule, hook_points=points)


@dataclass
class TuneResult:
    """Selection-half means per candidate, the chosen one, and report-half means for it, the defaults and none."""

    selection: dict[Candidate, dict[str, float]]
    chosen: Candidate
    report: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)


def split_instructions(instructions: Sequence[str]) -> tuple[list[str], list[str]]:
    """Alternate instructions into selection and report halves (AxBench chooses on one, reports on the other)."""
    if len(instructions) < 4:
        raise PolysteerError(f"tune needs at least 4 instructions (2 to choose on, 2 to report on), got "
                             f"{len(instructions)}; give more prompts")
    return list(instructions[0::2]), list(instructions[1::2])


def candidates(direction: Direction, coefs: Sequence[float], schedules: Sequence[str]) -> list[Candidate]:
    """Every hook point alone, plus all of them together when the file has several, x coefficients x schedules."""
    where = [*direction.hook_points, *([ALL] if len(direction.hook_points) > 1 else [])]
    return [Candidate(hp, float(c), s) for hp in where for s in schedules for c in coefs if c != 0]


class Judges:
    """AxBench's three 0-2 judges, calibrated on the selection instructions (see the module docstring)."""

    def __init__(self, model, tokenizer, concept: str, instructions: Sequence[str], max_new_tokens: int):
        plain = generate(model, tokenizer, instructions, max_new_tokens=max_new_tokens, progress=False)
        prompted = generate(model, tokenizer, [f"{p} Mention {concept} in your answer." for p in instructions],
                            max_new_tokens=max_new_tokens, progress=False)
        self.judge = AxBenchScore(ConceptScore.calibrated(concept, prompted, plain),
                                  InstructionScore.calibrated(instructions, plain),
                                  FluencyScore.calibrated(model, tokenizer, plain))

    def means(self, texts: Sequence[str], prompts: Sequence[str]) -> dict[str, float]:
        rows = self.judge.breakdown(texts, prompts)
        return {k: sum(r[k] for r in rows) / len(rows) for k in PARTS}


def steered_texts(model, tokenizer, direction: Direction, cands: Sequence[Candidate | None], prompts: Sequence[str],
                  max_new_tokens: int, rows_per_batch: int = 32, desc: str = "tune") -> list[list[str]]:
    """Answers to ``prompts`` under each candidate (None: unsteered), many candidates per batched generate."""
    rows = [(i, p) for i in range(len(cands)) for p in prompts]
    texts: list[str] = []
    for start in tqdm(range(0, len(rows), rows_per_batch), desc=desc, unit="batch"):
        chunk = rows[start:start + rows_per_batch]
        plans = [cands[i].plan(direction) if cands[i] is not None else None for i, _ in chunk]
        plan = stack_plans(plans) if any(plans) else None
        texts += generate(model, tokenizer, [p for _, p in chunk], plan, max_new_tokens=max_new_tokens,
                          batch_size=len(chunk), progress=False)
    return [texts[i * len(prompts):(i + 1) * len(prompts)] for i in range(len(cands))]


def tune_direction(model, tokenizer, direction: Direction, concept: str, instructions: Sequence[str],
                   coefs: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
                   schedules: Sequence[str] = ("constant", "generated-only"), max_new_tokens: int = 32) -> TuneResult:
    """Choose hook point(s), coefficient and schedule on the selection half; report on the other half.

    Returns:
        A :class:`TuneResult`; :func:`tuned` writes its choice into the direction.
    """
    if not concept.strip():
        raise PolysteerError("tune needs a concept description to judge the steered answers by; give --concept")
    select, report = split_instructions(instructions)
    cands = candidates(direction, coefs, schedules)
    if not cands:
        raise PolysteerError("no candidates: give at least one non-zero coefficient")
    judges = Judges(model, tokenizer, concept, select, max_new_tokens)
    texts = steered_texts(model, tokenizer, direction, cands, select, max_new_tokens, desc="tune: selection")
    selection = {c: judges.means(t, select) for c, t in zip(cands, texts)}
    chosen = max(cands, key=lambda c: (selection[c]["score"], -abs(c.coefficient)))
    defaults = Candidate(ALL if len(direction.hook_points) > 1 else direction.hook_points[0],
                         direction.coefficient, direction.schedule)
    finals = {"chosen": chosen, "file defaults": defaults, "unsteered": None}
    report_texts = steered_texts(model, tokenizer, direction, list(finals.values()), report, max_new_tokens,
                                 desc="tune: report")
    return TuneResult(selection, chosen, {k: judges.means(t, report) for k, t in zip(finals, report_texts)},
                      dict(zip(finals, report_texts)))


def tuned(direction: Direction, result: TuneResult) -> Direction:
    """The direction with the chosen hook point(s) only, the chosen coefficient and schedule as its defaults, and
    the choice recorded in its provenance."""
    c = result.chosen
    keep = direction.hook_points if c.hook_points == ALL else [c.hook_points]
    record = {"coefficient": c.coefficient, "schedule": c.schedule, "hook_points": keep,
              "report": result.report, "selection_candidates": len(result.selection)}
    return direction.only(keep, coefficient=c.coefficient, schedule=c.schedule,
                          provenance={**direction.provenance, "tune": record})
