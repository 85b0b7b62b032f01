"""Contrastive data files: JSONL of ``{"positive", "negative"}`` pairs or ``{"text", "label"}`` rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from polysteer.errors import PolysteerError


def read_json(path: str | Path, kind: str, example: str) -> Any:
    """A JSON file's content; errors name the file ``kind`` and an ``example`` file with the expected layout."""
    path = Path(path)
    if not path.is_file():
        raise PolysteerError(f"{kind} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolysteerError(f"{path} is not valid JSON ({exc}); see {example}") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for each non-empty line of a JSONL file, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise PolysteerError(f"data file {path} does not exist")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PolysteerError(f"{path}:{number}: not valid JSON ({exc.msg})") from None


def read_contrastive(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Read positives and negatives as ``{"text": .., "prompt": ..}`` dicts (prompt may be None).

    Accepted lines: ``{"positive": .., "negative": .., "prompt"?: ..}`` (a pair sharing the prompt) or
    ``{"text": .., "label": 1|0|"positive"|"negative", "prompt"?: ..}``.
    """
    positives, negatives = [], []
    for number, row in read_jsonl(path):
        prompt = row.get("prompt")
        if "positive" in row and "negative" in row:
            positives.append({"text": row["positive"], "prompt": prompt})
            negatives.append({"text": row["negative"], "prompt": prompt})
        elif "text" in row and "label" in row:
            label = row["label"]
            if label not in (0, 1, "positive", "negative", True, False):
                raise PolysteerError(f"{path}:{number}: label must be 1/0 or 'positive'/'negative', got {label!r}")
            target = positives if label in (1, "positive", True) else negatives
            target.append({"text": row["text"], "prompt": prompt})
        else:
            raise PolysteerError(f"{path}:{number}: expected keys positive+negative or text+label, got {sorted(row)}")
    if not positives or not negatives:
        raise PolysteerError(f"{path} needs at least one positive and one negative example")
    return positives, negatives


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file (prompts, questions)."""
    path = Path(path)
    if not path.is_file():
        raise PolysteerError(f"file {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
