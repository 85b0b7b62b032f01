"""Built-in schedules. Each is a pure function of (step, position, layer, prompt_length)."""

from __future__ import annotations

import hashlib

import torch

from polysteer.errors import PolysteerError
from polysteer.schedule import Schedule, parse_number, parse_time


def _clip01(x):
    return x.clamp(0.0, 1.0) if torch.is_tensor(x) else min(1.0, max(0.0, x))


class Constant(Schedule):
    """Always 1."""

    name = "constant"

    def __call__(self, step, position, layer, prompt_length):
        return 1.0


class PromptOnly(Schedule):
    """1 on prompt positions, 0 on generated ones."""

    name = "prompt-only"

    def __call__(self, step, position, layer, prompt_length):
        return position < prompt_length


class GeneratedOnly(Schedule):
    """1 on generated positions (index >= prompt length), 0 on the prompt."""

    name = "generated-only"

    def __call__(self, step, position, layer, prompt_length):
        return position >= prompt_length


class _TimeSpan(Schedule):
    """A schedule over steps [start, end); specs accept seconds (``window:0.5s-1s``)."""

    def __init__(self, start: int = 0, end: int = 1):
        if end <= start:
            raise PolysteerError(f"{self.name} needs start < end, got {start} and {end}")
        self.start, self.end = int(start), int(end)

    @classmethod
    def from_spec(cls, args, steps_per_second):
        if len(args) != 2:
            raise PolysteerError(f"{cls.name} takes START-END, e.g. '{cls.name}:10-40' or '{cls.name}:5s-15s'")
        return cls(parse_time(args[0], steps_per_second), parse_time(args[1], steps_per_second))


class Window(_TimeSpan):
    """1 for steps in [start, end), else 0."""

    name = "window"

    def __call__(self, step, position, layer, prompt_length):
        return float(self.start <= step < self.end)


class LinearRamp(_TimeSpan):
    """0 before start, rising linearly to 1 at end, 1 after (fade in)."""

    name = "ramp"

    def __call__(self, step, position, layer, prompt_length):
        return _clip01((step - self.start) / (self.end - self.start))


class LinearDecay(_TimeSpan):
    """1 before start, falling linearly to 0 at end, 0 after (fade out; with ramp, a crossfade)."""

    name = "decay"

    def __call__(self, step, position, layer, prompt_length):
        return 1.0 - _clip01((step - self.start) / (self.end - self.start))


class ExponentialDecay(Schedule):
    """``rate ** step`` (MusicRFM: 0.998 per frame at 50 frames/s)."""

    name = "exp-decay"

    def __init__(self, rate: float = 0.998):
        if not 0 < rate <= 1:
            raise PolysteerError(f"exp-decay rate must be in (0, 1], got {rate}")
        self.rate = rate

    def __call__(self, step, position, layer, prompt_length):
        return self.rate**step


class InjectChance(Schedule):
    """Bernoulli(p) per (layer, step), reproducible from the seed alone."""

    name = "inject-chance"

    def __init__(self, p: float = 0.3, seed: int = 0):
        if not 0 <= p <= 1:
            raise PolysteerError(f"inject-chance probability must be in [0, 1], got {p}")
        self.p, self.seed = p, int(seed)

    def __call__(self, step, position, layer, prompt_length):
        digest = hashlib.blake2b(f"{self.seed}:{layer}:{step}".encode(), digest_size=8).digest()
        return float(int.from_bytes(digest, "big") / 2**64 < self.p)


class LayerWeights(Schedule):
    """A fixed weight per layer (0 for layers not listed); spec ``layer-weights:12=1,13=0.5``."""

    name = "layer-weights"

    def __init__(self, weights: dict[int, float] | None = None):
        self.weights = {int(k): float(v) for k, v in (weights or {}).items()}

    @classmethod
    def from_spec(cls, args, steps_per_second):
        pairs = [p.split("=") for p in args[0].split(",") if p]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise PolysteerError("layer-weights takes LAYER=WEIGHT pairs, e.g. 'layer-weights:12=1,13=0.5'")
        bad = [k for k, _ in pairs if not k.strip().lstrip("-").isdigit()]
        if bad:
            raise PolysteerError(f"layer-weights layers must be integers, got {bad}")
        return cls({int(k): parse_number(v) for k, v in pairs})

    def __call__(self, step, position, layer, prompt_length):
        return self.weights.get(layer, 0.0)


BUILTIN_SCHEDULES = (
    Constant, PromptOnly, GeneratedOnly, Window, LinearRamp, LinearDecay, ExponentialDecay, InjectChance,
    LayerWeights,
)
