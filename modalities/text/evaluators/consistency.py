"""Semantic consistency across paraphrases: the data file, the ``consistency`` evaluator and the LF-Steering workflow.

Agreement between two answers:

- ``exact``: equal after :func:`normalize_answer` (first line, lower case, no punctuation or articles).
- ``contains``: equal, or one normalised answer appears as whole words in the other, so a bare "Paris" agrees with
  "The capital of France is Paris." (small models restate the question in some answers and not in others).
- ``similarity``: MiniLM cosine (all-MiniLM-L6-v2) at least ``threshold`` [0.9]. Measured here: the same answer worded
  differently scores 0.93-0.99 ("The capital of France is Paris." / "Paris is the capital of France." 0.989), a
  one-entity change 0.75-0.86 (Paris/Lyon 0.753, Jupiter/Saturn 0.857), but a changed number can stay above 0.95
  (100 vs 90 degrees 0.954): use ``exact`` for numeric answers.

A group's consistency is the mean agreement over all pairs of its answers (1 when all agree).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from polysteer.data import read_json
from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator

AGREEMENT_MODES = ("exact", "contains", "similarity")
SIMILARITY_THRESHOLD = 0.9
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class ParaphraseGroup:
    """One question worded several ways, with its correct short answer (and accepted aliases)."""

    answer: str
    paraphrases: tuple[str, ...]
    aliases: tuple[str, ...] = ()


def read_paraphrase_groups(path: str | Path) -> list[ParaphraseGroup]:
    """Read ``[{"answer": str, "paraphrases": [str, ...], "aliases"?: [str]}, ...]`` (or ``{"groups": [...]}``)."""
    data = read_json(path, "paraphrase", "benchmarks/data/paraphrase_groups.json")
    rows = data.get("groups") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise PolysteerError(f"{path} must hold a non-empty list of groups (or {{\"groups\": [...]}})")
    return [_group(path, i, row) for i, row in enumerate(rows)]


def _strings(value, least: int) -> bool:
    return isinstance(value, list) and len(value) >= least and all(isinstance(s, str) and s.strip() for s in value)


def _group(path: Path, index: int, row) -> ParaphraseGroup:
    if not isinstance(row, dict) or not isinstance(row.get("answer"), str) or not row["answer"].strip():
        raise PolysteerError(f"{path}: group {index} needs a non-empty string 'answer'")
    if not _strings(row.get("paraphrases"), 2):
        raise PolysteerError(f"{path}: group {index} needs 'paraphrases', a list of at least 2 non-empty strings")
    if "aliases" in row and not _strings(row["aliases"], 0):
        raise PolysteerError(f"{path}: group {index} has 'aliases' that is not a list of non-empty strings")
    return ParaphraseGroup(row["answer"].strip(), tuple(p.strip() for p in row["paraphrases"]),
                           tuple(a.strip() for a in row.get("aliases", [])))


def normalize_answer(text: str) -> str:
    """First non-empty line, NFKC, lower case, without punctuation, articles or extra spaces."""
    lines = [line for line in unicodedata.normalize("NFKC", text).splitlines() if line.strip()]
    first = lines[0].lower() if lines else ""
    return " ".join(_ARTICLES.sub(" ", _NON_WORD.sub(" ", first)).split())


def is_correct(output: str, group: ParaphraseGroup) -> bool:
    """The normalised answer (or an alias) appears as whole words in the normalised output."""
    text = f" {normalize_answer(output)} "
    return any(f" {normalize_answer(a)} " in text for a in (group.answer, *group.aliases) if normalize_answer(a))


def _contains(a: str, b: str) -> bool:
    """Equal, or one (non-empty) inside the other as whole words."""
    return a == b or bool(a and b) and (f" {a} " in f" {b} " or f" {b} " in f" {a} ")


def _group_ids(groups: Sequence[int], n: int) -> list[int]:
    if groups is None or len(groups) != n:
        raise PolysteerError(f"the consistency evaluator needs groups=[group id per output] for all {n} outputs")
    return list(groups)


class Consistency(Evaluator):
    """Answer agreement within paraphrase groups; each output scores its mean agreement with its group mates.

    The mean of a group's scores is the group's mean pairwise agreement (:meth:`group_agreement`).

    Args:
        mode: ``exact`` (normalised string equality), ``contains`` (one inside the other) or ``similarity``
            (MiniLM cosine >= ``threshold``).
        threshold: similarity threshold (see the module docs for how 0.9 was chosen).
    """

    name = "consistency"
    modalities = ("text",)

    def __init__(self, mode: str = "exact", threshold: float = SIMILARITY_THRESHOLD):
        if mode not in AGREEMENT_MODES:
            raise PolysteerError(f"consistency mode must be one of {AGREEMENT_MODES}, got {mode!r}")
        self.mode, self.threshold = mode, threshold

    def agreement(self, outputs: Sequence[str]) -> torch.Tensor:
        """``[n, n]`` matrix of 1.0 (agree) / 0.0 between all outputs."""
        if self.mode != "similarity":
            keys = [normalize_answer(o) for o in outputs]
            same = _contains if self.mode == "contains" else str.__eq__
            return torch.tensor([[float(same(a, b)) for b in keys] for a in keys])
        from polysteer.modalities.text.evaluators.judges import embed

        vectors = embed([o.strip() or "." for o in outputs])
        return (vectors @ vectors.T >= self.threshold).float()

    def evaluate(self, outputs, groups: Sequence[int] | None = None, **context) -> list[float]:
        ids = _group_ids(groups, len(outputs))
        agree = self.agreement(outputs)
        scores = []
        for i, gid in enumerate(ids):
            mates = [j for j, other in enumerate(ids) if other == gid and j != i]
            scores.append(float(agree[i, mates].mean()) if mates else 1.0)
        return scores

    def group_agreement(self, outputs: Sequence[str], groups: Sequence[int]) -> dict[int, float]:
        """Mean pairwise agreement of each group's outputs, keyed by group id in first-seen order."""
        ids = _group_ids(groups, len(outputs))
        agree = self.agreement(outputs)
        result = {}
        for gid in dict.fromkeys(ids):
            rows = [i for i, other in enumerate(ids) if other == gid]
            pairs = list(itertools.combinations(rows, 2))
            result[gid] = sum(float(agree[i, j]) for i, j in pairs) / len(pairs) if pairs else 1.0
        return result
