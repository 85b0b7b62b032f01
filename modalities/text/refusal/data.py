"""The refusal data: harmful requests, harmless look-alikes, benign QA and refusal templates, split in two.

The ``select`` split chooses layers, coefficients and the judge's threshold; the ``report`` split is held out for
the numbers (AxBench's rule). The shipped file is hand-written and free of operational detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polysteer.data import read_json
from polysteer.errors import PolysteerError

REFUSAL_DATA = Path(__file__).parents[1] / "data" / "refusal" / "refusal.json"
SPLITS = ("select", "report")


@dataclass
class RefusalSplit:
    """One split: harmful requests, their harmless look-alikes, and benign questions with accepted answers."""

    harmful: list[str] = field(default_factory=list)
    lookalike: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)

    def head(self, n: int | None) -> "RefusalSplit":
        """The first ``n`` items of every list (all with None): a quick run."""
        return RefusalSplit(self.harmful[:n], self.lookalike[:n], self.questions[:n], self.answers[:n])


@dataclass
class RefusalData:
    """The refusal templates and the ``select`` and ``report`` splits."""

    templates: list[str]
    select: RefusalSplit
    report: RefusalSplit
    source: str = ""

    def split(self, name: str) -> RefusalSplit:
        if name not in SPLITS:
            raise PolysteerError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)


def refusal_data(path: str | Path | None = None) -> RefusalData:
    """Read a refusal data file (default: the shipped one, ``REFUSAL_DATA``).

    The file is a JSON object with ``refusal_templates`` (strings), ``harmful`` and ``lookalike`` (``{"text",
    "split"}`` items) and ``benign_qa`` (``{"question", "answers", "split"}`` items); ``split`` is ``select`` or
    ``report``.
    """
    path = Path(path) if path is not None else REFUSAL_DATA
    raw = read_json(path, "refusal data", REFUSAL_DATA)
    if not isinstance(raw, dict):
        raise PolysteerError(f"{path}: expected a JSON object with harmful, lookalike, benign_qa and "
                             f"refusal_templates; see {REFUSAL_DATA}")
    splits = {name: RefusalSplit() for name in SPLITS}
    for i, item in enumerate(_items(raw, "harmful", path)):
        splits[_split(item, "harmful", i, path)].harmful.append(_string(item, "text", "harmful", i, path))
    for i, item in enumerate(_items(raw, "lookalike", path)):
        splits[_split(item, "lookalike", i, path)].lookalike.append(_string(item, "text", "lookalike", i, path))
    for i, item in enumerate(_items(raw, "benign_qa", path)):
        split = splits[_split(item, "benign_qa", i, path)]
        split.questions.append(_string(item, "question", "benign_qa", i, path))
        split.answers.append(_answers(item, i, path))
    templates = raw.get("refusal_templates")
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) and t for t in templates):
        raise PolysteerError(f"{path}: refusal_templates must be a non-empty list of strings")
    return RefusalData(list(templates), splits["select"], splits["report"], str(path))


def _items(raw: dict, key: str, path: Path) -> list[dict]:
    items = raw.get(key)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise PolysteerError(f"{path}: {key!r} must be a list of JSON objects; see {REFUSAL_DATA}")
    return items


def _split(item: dict, key: str, index: int, path: Path) -> str:
    if item.get("split") not in SPLITS:
        raise PolysteerError(f"{path}: {key}[{index}] has split {item.get('split')!r}; use one of {', '.join(SPLITS)}")
    return item["split"]


def _string(item: dict, name: str, key: str, index: int, path: Path) -> str:
    value: Any = item.get(name)
    if not isinstance(value, str) or not value.strip():
        raise PolysteerError(f"{path}: {key}[{index}] needs a non-empty string {name!r}")
    return value


def _answers(item: dict, index: int, path: Path) -> list[str]:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise PolysteerError(f"{path}: benign_qa[{index}] needs 'answers', a non-empty list of strings")
    return answers
