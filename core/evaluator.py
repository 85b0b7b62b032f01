"""Evaluator base class: scores generations (concept, fluency, audio, hallucination ...)."""

from __future__ import annotations

from typing import Any, Sequence


class Evaluator:
    """``evaluate(outputs, **context)`` returns one score per output.

    ``modalities`` names the modalities whose outputs the evaluator understands.
    """

    name: str = ""
    modalities: tuple[str, ...] = ()

    def evaluate(self, outputs: Sequence[Any], **context: Any) -> list[float]:
        raise NotImplementedError
