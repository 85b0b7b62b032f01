"""Checkable instructions for SAIF: programmatic checks, the ``instruction-following`` evaluator and the data file.

The checks, each a pure function of the output text:

- ``french``: at least 15% of the words are French function words ("le", "est", "des", ...) and more of them are
  French than English function words; at least 3 words.
- ``capitals``: at least 3 cased letters and at least 95% of them upper case.
- ``short``: 1 to 19 words, i.e. under 20: whitespace-separated words holding a letter or digit, each also split at
  lower-to-upper case changes so run-together degenerate output ("YouYouMakeAYou...") counts every word it holds.
- ``question``: the text ends with "?" (ignoring closing quotes, brackets, emphasis marks and spaces). An answer cut
  off by ``max_new_tokens`` fails, so give generations room to finish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from polysteer.data import read_json
from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator

FRENCH_WORDS = frozenset(
    "le la les un une des du de et est à au aux en dans pour par sur avec ce cet cette ces qui que quoi dont où "
    "il elle ils elles nous vous je tu se sa son ses leur leurs mais ou donc ni car pas ne plus très être avoir sont "
    "était sont ont fait comme tout tous toute aussi peut c l d j qu n mon ma mes ton ta tes notre votre vos y été "
    "oui non bien faire entre sans sous chez cela ça".split()
)
ENGLISH_WORDS = frozenset(
    "the a an and is are was were of to in on for with that this these those it its as be by at from or but not no "
    "you your i we they he she him her them our have has had do does did can will would there their what which who "
    "how when where very also so if then than into about".split()
)
_WORD = re.compile(r"[^\W\d_]+")
_CAMEL = re.compile(r"[a-z][A-Z]")
_TRAILING = " \t\n\"'”’»)]*_`"


def is_french(text: str, min_fraction: float = 0.15) -> bool:
    """Mostly French function words: at least ``min_fraction`` of the words, and more than English ones."""
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return False
    french = sum(w in FRENCH_WORDS for w in words) / len(words)
    english = sum(w in ENGLISH_WORDS for w in words) / len(words)
    return french >= min_fraction and french > english


def is_all_capitals(text: str, min_fraction: float = 0.95) -> bool:
    """At least 3 cased letters, and ``min_fraction`` of them upper case."""
    cased = [c for c in text if c.lower() != c.upper()]
    return len(cased) >= 3 and sum(c.isupper() for c in cased) / len(cased) >= min_fraction


def is_short(text: str, max_words: int = 20) -> bool:
    """Fewer than ``max_words`` words, and at least one."""
    return 0 < word_count(text) < max_words


def word_count(text: str) -> int:
    """Whitespace words with a letter or digit, plus one per lower-to-upper case change inside a word."""
    return sum(1 + len(_CAMEL.findall(word)) for word in text.split() if any(c.isalnum() for c in word))


def ends_with_question(text: str) -> bool:
    """The last character, past closing quotes, brackets and spaces, is a question mark."""
    return text.rstrip(_TRAILING).endswith("?")


CHECKS: dict[str, Callable[[str], bool]] = {
    "french": is_french, "capitals": is_all_capitals, "short": is_short, "question": ends_with_question,
}


def check(name: str) -> Callable[[str], bool]:
    """The check function called ``name``, with a clear error for unknown names."""
    if name not in CHECKS:
        raise PolysteerError(f"unknown instruction check {name!r}; available: {', '.join(CHECKS)}")
    return CHECKS[name]


class InstructionFollowing(Evaluator):
    """1.0 when an output passes the instruction's programmatic check, else 0.0.

    Args:
        instruction: one of ``french``, ``capitals``, ``short``, ``question``.
    """

    name = "instruction-following"
    modalities = ("text",)

    def __init__(self, instruction: str = ""):
        self.instruction = instruction
        self._check = check(instruction)

    def evaluate(self, outputs, **context) -> list[float]:
        return [float(self._check(text)) for text in outputs]


@dataclass(frozen=True)
class Instruction:
    """A checkable instruction and the different wordings of it."""

    name: str
    check: str
    wordings: tuple[str, ...]


@dataclass(frozen=True)
class InstructionData:
    """Neutral content prompts and the instructions to add to them."""

    contents: tuple[str, ...]
    instructions: dict[str, Instruction]


def _strings(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(s, str) and s.strip() for s in value)


def read_instructions(path: str | Path) -> InstructionData:
    """Read ``{"contents": [str], "instructions": {name: {"check": str, "wordings": [str]}}}``."""
    data = read_json(path, "instruction", "benchmarks/data/saif_instructions.json")
    if not isinstance(data, dict) or not _strings(data.get("contents")):
        raise PolysteerError(f"{path} needs 'contents': a non-empty list of prompt strings")
    if not isinstance(data.get("instructions"), dict) or not data["instructions"]:
        raise PolysteerError(f"{path} needs 'instructions': {{name: {{\"check\": ..., \"wordings\": [...]}}}}")
    instructions = {}
    for name, spec in data["instructions"].items():
        if not isinstance(spec, dict) or not _strings(spec.get("wordings")):
            raise PolysteerError(f"{path}: instruction {name!r} needs 'wordings', a non-empty list of strings")
        kind = spec.get("check", name)
        if not isinstance(kind, str) or kind not in CHECKS:  # a list would be unhashable
            raise PolysteerError(f"{path}: instruction {name!r} has check {kind!r}; available: {', '.join(CHECKS)}")
        instructions[name] = Instruction(name, kind, tuple(w.strip() for w in spec["wordings"]))
    return InstructionData(tuple(c.strip() for c in data["contents"]), instructions)
