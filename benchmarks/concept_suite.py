"""The benchmark concept suite in ``benchmarks/concepts/`` (see its README): loading and validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from polysteer import PolysteerError

CONCEPTS = Path(__file__).parent / "concepts"


@dataclass(frozen=True)
class Concept:
    """One concept: a description for the judge, an instruction for persona data, keywords and held-out texts."""

    name: str
    description: str
    instruction: str
    keywords: tuple[str, ...]
    heldout: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """Concepts, neutral training questions, selection/report instructions and neutral passages."""

    concepts: tuple[Concept, ...]
    questions: tuple[str, ...]
    selection: tuple[str, ...]
    report: tuple[str, ...]
    neutral: tuple[str, ...]

    def negatives(self, concept: Concept, per_other: int = 2) -> list[str]:
        """Held-out texts that do not express ``concept``: the neutral passages and a few of every other concept's."""
        others = [t for c in self.concepts if c.name != concept.name for t in c.heldout[:per_other]]
        return list(self.neutral) + others

    def subset(self, names: list[str] | None = None, limit: int | None = None) -> "Suite":
        """The suite restricted to the named concepts (or the first ``limit``)."""
        chosen = [c for c in self.concepts if names is None or c.name in names][:limit]
        missing = set(names or ()) - {c.name for c in chosen}
        if missing:
            raise PolysteerError(f"unknown concepts {sorted(missing)}; the suite has {[c.name for c in self.concepts]}")
        return Suite(tuple(chosen), self.questions, self.selection, self.report, self.neutral)


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PolysteerError(f"cannot read the concept suite file {path}: {err}") from err


def load_suite(folder: str | Path = CONCEPTS) -> Suite:
    """Read and validate the suite (24 concepts x 16 held-out texts, 64 questions, 24 + 24 instructions)."""
    folder = Path(folder)
    concepts = tuple(Concept(c["name"], c["description"], c["instruction"], tuple(c["keywords"]), tuple(c["heldout"]))
                     for c in _read(folder, "concepts.json")["concepts"])
    instructions = _read(folder, "instructions.json")
    suite = Suite(concepts, tuple(_read(folder, "questions.json")["questions"]), tuple(instructions["selection"]),
                  tuple(instructions["report"]), tuple(_read(folder, "neutral.json")["passages"]))
    if len({c.name for c in concepts}) != len(concepts) or set(suite.selection) & set(suite.report):
        raise PolysteerError(f"{folder}: concept names must be unique and the instruction halves disjoint")
    return suite
