"""Schedules: the coefficient multiplier as a pure function of (step, position, layer).

``step`` counts forward passes of one generation (0 for the prompt pass, k for the k-th decode step);
``position`` is a token's index in its row ignoring padding; ``prompt_length`` the row's prompt size.
Position arguments may be ints or broadcastable tensors, so a schedule is testable on plain numbers.
Times in specs accept seconds (``5s``) where the modality has a frame rate (MusicGen: 50 steps/s).
"""

from __future__ import annotations

import math
import re
from typing import Any

from polysteer.errors import PolysteerError


class Schedule:
    """Base class: ``schedule(step, position, layer, prompt_length)`` returns a multiplier."""

    name: str = ""

    def __call__(self, step: int, position, layer: int, prompt_length) -> Any:
        raise NotImplementedError

    def __mul__(self, other: "Schedule") -> "Schedule":
        return Product(self, other)

    @classmethod
    def from_spec(cls, args: list[str], steps_per_second: float | None) -> "Schedule":
        """Build from the ``name:a,b`` spec's arguments; default: each one a finite number."""
        return cls(*[parse_number(a) for a in args])


def parse_number(text: str) -> float:
    """A finite float from a spec argument, or a PolysteerError naming it."""
    try:
        value = float(text)
    except ValueError:
        raise PolysteerError(f"bad number {text!r} in a schedule spec") from None
    if not math.isfinite(value):
        raise PolysteerError(f"schedule arguments must be finite numbers, got {text!r}")
    return value


class Product(Schedule):
    """Multiplies schedules, e.g. generated-only * ramp."""

    name = "product"

    def __init__(self, *parts: Schedule):
        self.parts = parts

    def __call__(self, step, position, layer, prompt_length):
        out = 1.0
        for part in self.parts:
            out = out * part(step, position, layer, prompt_length)
        return out


def parse_time(text: str, steps_per_second: float | None) -> int:
    """Parse ``12`` (steps) or ``0.5s`` (seconds, needs the modality's frame rate) into steps."""
    text = text.strip()
    if text.endswith("s"):
        if not steps_per_second:
            raise PolysteerError(f"time {text!r} is in seconds but this modality has no frame rate; give steps")
        return round(parse_number(text[:-1]) * steps_per_second)
    try:
        return int(text)
    except ValueError:
        raise PolysteerError(f"bad time {text!r}: give an integer step count or seconds like '2.5s'") from None


def split_arguments(text: str) -> list[str]:
    """Spec arguments separated by ``,`` or a range ``-``; a ``-`` that follows no number is a minus sign.

    >>> split_arguments("-5-3"), split_arguments("0.5,-7"), split_arguments("5s-15s"), split_arguments("1e-3")
    (['-5', '3'], ['0.5', '-7'], ['5s', '15s'], ['1e-3'])
    """
    return [a.strip() for part in text.split(",") for a in re.split(r"(?<=[0-9s.])-", part) if a.strip()]


def parse_schedule(spec: "str | Schedule", steps_per_second: float | None = None) -> Schedule:
    """Parse ``'ramp:5s-15s'``, ``'exp-decay:0.998'`` or ``'generated-only*window:0-20'``."""
    if not isinstance(spec, str):
        return spec  # a Schedule, or any callable with the same signature
    from polysteer.manager import registry

    schedules = registry("schedules")
    parts = []
    for piece in spec.split("*"):
        name, _, arg = piece.strip().partition(":")
        args = split_arguments(arg) if name != "layer-weights" else [arg]
        try:
            parts.append(schedules[name].from_spec(args, steps_per_second))
        except (TypeError, ValueError, OverflowError) as exc:
            raise PolysteerError(f"bad schedule spec {piece!r}: {exc}") from None
    return parts[0] if len(parts) == 1 else Product(*parts)
