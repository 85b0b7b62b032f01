"""Click parameter types for the shared options; every bad value is a one-line PolysteerError.

Click's own types raise usage errors, which print the usage block; these raise
:class:`~polysteer.errors.PolysteerError`, so ``polysteer`` prints one ``Error:`` line naming the option, the
value and what is allowed, while the command line is parsed and so before any model loads.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Callable

import click

from polysteer.errors import PolysteerError

OUTPUT_KINDS = ("file", "dir", "file-or-dir")


def option_name(param: click.Parameter | None) -> str:
    """The flag a message names: the longest spelling (``--batch-size``), or the argument's name."""
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "value").upper()


class Parsed(click.ParamType):
    """A click type whose parser ``parse(text, option)`` raises PolysteerError instead of a usage error."""

    def __init__(self, name: str, parse: Callable[[str, str], Any], metavar: str | None = None):
        self.name = name
        self._parse = parse
        self._metavar = metavar

    def get_metavar(self, param, ctx=None):
        return self._metavar

    def convert(self, value, param, ctx):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):  # a default that is already parsed
            return value
        return self._parse(value, option_name(param))


class _CheckedRange:
    """The shared part of :class:`CheckedInt` and :class:`CheckedFloat`: range text and the check itself."""

    noun = "number"

    def describe(self) -> str:
        """The allowed values in words, e.g. ``an integer >= 1`` or ``a number in (0, 1]``."""
        low, high = _format(self.min), _format(self.max)
        if low and high:
            return f"{self.noun} in {'(' if self.min_open else '['}{low}, {high}{')' if self.max_open else ']'}"
        if low:
            return f"{self.noun} {'>' if self.min_open else '>='} {low}"
        if high:
            return f"{self.noun} {'<' if self.max_open else '<='} {high}"
        return f"finite {self.noun}" if self.noun == "number" else self.noun

    def _describe_range(self) -> str:
        """What ``--help`` shows beside the option (click's own would print ``x<=None`` for an open range)."""
        return self.describe()

    def convert(self, value, param, ctx):
        option = option_name(param)
        number = self._number(value)
        if number is None or not self._in_range(number):
            raise PolysteerError(f"{option} must be {_article(self.describe())}, got {str(value)!r}")
        return number

    def _in_range(self, number) -> bool:
        low_ok = self.min is None or (number > self.min if self.min_open else number >= self.min)
        return low_ok and (self.max is None or (number < self.max if self.max_open else number <= self.max))


class CheckedInt(_CheckedRange, click.IntRange):
    """An integer in ``[min, max]``; help shows the range as click's ``IntRange`` does."""

    noun = "integer"

    def _number(self, value) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            return None


class CheckedFloat(_CheckedRange, click.FloatRange):
    """A finite float in a range (ends open or closed); ``nan`` and ``inf`` are refused."""

    noun = "number"

    def _number(self, value) -> float | None:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None


def _format(bound: float | None) -> str:
    return "" if bound is None else str(bound) if isinstance(bound, int) else f"{bound:g}"


def _article(text: str) -> str:
    return ("an " if text[0] in "aeiou" else "a ") + text


#: Counts and sizes: steps, batch sizes, token counts, top-k, trials.
POSITIVE_INT = CheckedInt(min=1)
#: Indices: blocks, SAE features.
NONNEGATIVE_INT = CheckedInt(min=0)
#: Seeds, as numpy and torch both take them.
SEED = CheckedInt(min=0, max=2**32 - 1)
FINITE_FLOAT = CheckedFloat()
#: Learning rates, lengths in seconds, norms.
POSITIVE_FLOAT = CheckedFloat(min=0, min_open=True)
#: Weights and penalties.
NONNEGATIVE_FLOAT = CheckedFloat(min=0)
PROBABILITY = CheckedFloat(min=0, max=1)


def check_output_path(text: str, kind: str = "file", option: str = "-o") -> str:
    """``text`` if a command can write a ``kind`` there, else a PolysteerError; creates nothing.

    Refused: an existing folder where a file is expected (or a file where a folder is), a device or other
    non-regular file, and a path whose nearest existing ancestor is a file or not writable.

    Args:
        text: the path as typed.
        kind: ``file``, ``dir`` or ``file-or-dir`` (see :data:`OUTPUT_KINDS`).
        option: the flag named in the message.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    if not text:
        raise PolysteerError(f"empty {option}: give a path to write")
    path = Path(text)
    if path.is_dir() and kind == "file":
        raise PolysteerError(f"{option} {text} is a folder; give a file path inside it, e.g. {path / 'out'}")
    if path.exists() and not path.is_dir() and kind == "dir":
        raise PolysteerError(f"{option} {text} is a file, but a folder is written there; give a folder path")
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise PolysteerError(f"{option} {text} exists and is not a regular file; give a file path")
    base = path if path.is_dir() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise PolysteerError(f"cannot write {option} {text}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PolysteerError(f"cannot write {option} {text}: no write permission in {base}")
    return text


def check_input_path(text: str, kind: str = "file", option: str = "--data") -> str:
    """``text`` if it names something readable of ``kind`` (``file``, ``dir`` or ``any``), else a PolysteerError."""
    path = Path(text)
    what = {"dir": "folder", "any": "file or folder"}.get(kind, "file")
    if not text or not path.exists():
        raise PolysteerError(f"{option} {text!r} does not exist; give an existing {what}")
    if kind == "file" and not path.is_file():
        raise PolysteerError(f"{option} {text} is {'a folder' if path.is_dir() else 'not a regular file'}; give a file")
    if kind == "dir" and not path.is_dir():
        raise PolysteerError(f"{option} {text} is a file; give a folder")
    if not os.access(path, os.R_OK):
        raise PolysteerError(f"{option} {text} is not readable (permission denied)")
    return text


def output_type(kind: str = "file") -> Parsed:
    """A path a command writes (see :func:`check_output_path`)."""
    if kind not in OUTPUT_KINDS:  # fail where the option is declared, not when it is used
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    return Parsed(f"output {kind}", lambda text, option: check_output_path(text, kind, option),
                  "FOLDER" if kind == "dir" else "PATH")


def input_type(kind: str = "file") -> Parsed:
    """A file, folder (``dir``) or either (``any``) that a command reads (see :func:`check_input_path`)."""
    return Parsed(f"input {kind}", lambda text, option: check_input_path(text, kind, option),
                  {"dir": "FOLDER", "any": "PATH"}.get(kind, "FILE"))


def check_registered(kind: str, name: str, option: str) -> str:
    """``name`` if a plugin registered it as a ``kind`` (``direction_finders``, ``operators``, ...)."""
    from polysteer.manager import registry

    names = registry(kind).names()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise PolysteerError(f"unknown {option} {name!r}: {hint}registered: {', '.join(names) or 'none'} "
                         "(see `polysteer plugins`)")


def registered_type(kind: str) -> Parsed:
    """A name checked against the plugin registry of ``kind`` while the command line is parsed."""
    return Parsed(kind, lambda text, option: check_registered(kind, text, option))


def check_schedule(text: str, option: str = "--schedule", steps_per_second: float | None = None) -> str:
    """``text`` if it parses as a schedule spec (kept as typed: the engine parses it again with the model's
    frame rate)."""
    from polysteer.schedule import parse_schedule

    try:
        parse_schedule(text, steps_per_second)
    except PolysteerError as exc:
        raise PolysteerError(f"{option}: {exc}") from None
    return text


class CheckedChoice(click.Choice):
    """One of ``choices``, refused in one line (click's Choice prints the usage block); help lists them."""

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        raise PolysteerError(f"unknown {option_name(param)} {value!r}: use one of {', '.join(map(str, self.choices))}")


def parse_words(text: str, option: str = "--keywords") -> list[str]:
    """The non-empty, stripped items of a comma-separated list; none at all is a PolysteerError."""
    words = [w.strip() for w in str(text).split(",") if w.strip()]
    if not words:
        raise PolysteerError(f"{option} {text!r} names nothing; give comma-separated words, e.g. {option} ocean,sea")
    return words


#: ``--keywords a,b,c`` as a list of words.
words_type = Parsed("words", parse_words)
