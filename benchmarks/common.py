"""Helpers shared by the benchmark scripts: interleaved timing and markdown tables."""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(variants: dict[str, Callable[[], object]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Run each variant once per round, in a fresh seeded order each round; every variant's seconds per round.

    Shuffling keeps a slot effect (e.g. the run after the slowest one) from always landing on the same variant.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    order, rng = list(variants), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(variants[name]))
    return times


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int, seed: int = 0) -> dict[str, float]:
    """Each variant's median seconds over :func:`interleaved_times` rounds."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(variants, repeats, seed).items()}


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
