"""Schedules: the coefficient multiplier as a pure function of (step, position, layer).

``step`` counts forward passes of one generation (0 for the prompt pass, k for the k-th decode step);
``position`` is a token's index in its row ignoring padding; ``prompt_length`` the row's prompt size.
Position arguments may be ints or broadcastable tensors, so a schedule is testable on plain numbers.
Times in specs accept seconds (``5s``) where the modality has a frame rate (MusicGen: 50 steps/s).
"""

from __future__ import annotations

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
        """Build from the ``name:a,b`` spec's arguments; default: each one a number."""
        return cls(*[float(a) for a in args])


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
        return round(float(text[:-1]) * steps_per_second)
    try:
        return int(text)
    except ValueError:
        raise PolysteerError(f"bad time {text!r}: give an integer step count or seconds like '2.5s'") from None


def parse_schedule(spec: "str | Schedule", steps_per_second: float | None = None) -> Schedule:
    """Parse ``'ramp:5s-15s'``, ``'exp-decay:0.998'`` or ``'generated-only*window:0-20'``."""
    if not isinstance(spec, str):
        return spec  # a Schedule, or any callable with the same signature
    from polysteer.manager import registry

    schedules = registry("schedules")
    parts = []
    for piece in spec.split("*"):
        name, _, arg = piece.strip().partition(":")
        args = [a for a in arg.replace("-", ",").split(",") if a] if name != "layer-weights" else [arg]
        try:
            parts.append(schedules[name].from_spec(args, steps_per_second))
        except (TypeError, ValueError) as exc:
            raise PolysteerError(f"bad schedule spec {piece!r}: {exc}") from None
    return parts[0] if len(parts) == 1 else Product(*parts)
