"""Input files: JSON, JSONL rows and plain-text lines, read with one-line errors naming the file, line and fix.

Contrastive data is JSONL of ``{"positive", "negative"}`` pairs or ``{"text", "label"}`` rows. Every reader
raises :class:`~polysteer.errors.PolysteerError` for a missing, unreadable or non-UTF-8 file and for content of
the wrong shape, and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from polysteer.errors import PolysteerError

_LABELS = {"positive": True, "negative": False}


@dataclass(frozen=True)
class Example:
    """A text to read: ``prompt`` (chat-formatted, not pooled) followed by ``text`` (pooled).

    With an empty ``text`` the last prompt token is pooled (repeng's recipe).
    """

    text: str
    prompt: str | None = None
    system: str | None = None


def read_text(path: str | Path, kind: str = "data") -> str:
    """A file's text, decoded as UTF-8 (a leading byte-order mark is dropped).

    Args:
        path: the file.
        kind: what the file holds, for the messages (``data``, ``prompts``, ...).
    """
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise PolysteerError(f"{kind} file {path} {state}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolysteerError(f"cannot read {kind} file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolysteerError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); "
                             "save the file as UTF-8") from None


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, which JSON strings may hold raw.
    return [line.rstrip("\r") for line in text.split("\n")]


def _loads(text: str, where: str, fix: str) -> Any:
    """``json.loads`` whose every failure is a PolysteerError naming ``where`` and the ``fix``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f"line {exc.lineno} " if "\n" in text else ""
        problem = f"{exc.msg} at {line}column {exc.colno}"
    except RecursionError:
        problem = "nested too deeply"
    except ValueError:  # an integer longer than Python converts
        problem = "a number too long to read"
    raise PolysteerError(f"{where}: not valid JSON ({problem}); {fix}")


def read_json(path: str | Path, kind: str, example: str) -> Any:
    """A JSON file's content; errors name the file ``kind`` and an ``example`` file with the expected layout."""
    return _loads(read_text(path, kind), str(path), f"see {example}")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for each non-empty line of a JSONL file; every row must be a JSON object."""
    for number, line in enumerate(_lines(read_text(path)), 1):
        if not line.strip():
            continue
        row = _loads(line, f"{path}:{number}", "write one JSON object per line")
        if not isinstance(row, dict):
            raise PolysteerError(f"{path}:{number}: expected a JSON object {{...}}, got {type(row).__name__}; "
                                 "write one object per line")
        yield number, row


def _text(row: dict, key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise PolysteerError(f"{where}: {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _prompt(row: dict, where: str) -> str | None:
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise PolysteerError(f"{where}: 'prompt' must be a string, got {prompt!r:.60}")
    return prompt


def _label(row: dict, where: str) -> bool:
    label = row["label"]
    if isinstance(label, str) and label in _LABELS:
        return _LABELS[label]
    if isinstance(label, (bool, int)) and label in (0, 1):
        return bool(label)
    raise PolysteerError(f"{where}: label must be 1/0 or 'positive'/'negative', got {label!r:.60}")


def read_contrastive(path: str | Path) -> tuple[list[Example], list[Example]]:
    """Read positives and negatives as :class:`Example` lists (``prompt`` None where a row has none).

    Accepted lines: ``{"positive": .., "negative": .., "prompt"?: ..}`` (a pair sharing the prompt) or
    ``{"text": .., "label": 1|0|"positive"|"negative", "prompt"?: ..}``; texts are non-empty strings.
    """
    positives, negatives = [], []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        prompt = _prompt(row, where)
        if "positive" in row and "negative" in row:
            positives.append(Example(_text(row, "positive", where), prompt))
            negatives.append(Example(_text(row, "negative", where), prompt))
        elif "text" in row and "label" in row:
            target = positives if _label(row, where) else negatives
            target.append(Example(_text(row, "text", where), prompt))
        else:
            raise PolysteerError(f"{where}: expected keys positive+negative or text+label, got {sorted(row)}")
    if not positives or not negatives:
        raise PolysteerError(f"{path} needs at least one positive and one negative example")
    return positives, negatives


def read_lines(path: str | Path, kind: str = "text") -> list[str]:
    """The stripped non-empty lines of a text file (prompts, questions); a file without any is an error."""
    lines = [line.strip() for line in _lines(read_text(path, kind)) if line.strip()]
    if not lines:
        raise PolysteerError(f"{kind} file {path} is empty; write one entry per line")
    return lines
