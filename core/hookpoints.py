"""Canonical hook-point names (``{tower}.blocks.{i}.{site}``) and a pure layer-prefix guesser."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from polysteer.errors import PolysteerError

TOWERS = ("text", "vision", "decoder")
SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
_PATTERN = re.compile(r"^(?P<tower>[a-z_]+)\.blocks\.(?P<layer>-?\d+)\.(?P<site>[a-z_]+)$")


@dataclass(frozen=True, order=True)
class HookPoint:
    """A parsed hook point such as ``text.blocks.12.resid_post``."""

    tower: str
    layer: int
    site: str

    def __str__(self) -> str:
        return f"{self.tower}.blocks.{self.layer}.{self.site}"

    @classmethod
    def parse(cls, name: "str | HookPoint") -> "HookPoint":
        """Parse a canonical name; raises PolysteerError naming the expected form."""
        if isinstance(name, HookPoint):
            return name
        match = _PATTERN.match(str(name))
        if not match or match["tower"] not in TOWERS or match["site"] not in SITES:
            raise PolysteerError(
                f"bad hook point {name!r}: expected '{{tower}}.blocks.{{i}}.{{site}}' with tower in "
                f"{TOWERS} and site in {SITES}, e.g. 'text.blocks.12.resid_post'"
            )
        return cls(match["tower"], int(match["layer"]), match["site"])


def hook_point(layer: int, site: str = "resid_post", tower: str = "text") -> str:
    """Build a canonical hook-point name."""
    return str(HookPoint.parse(f"{tower}.blocks.{layer}.{site}"))


def guess_layer_prefix(module_names: Iterable[str]) -> str | None:
    """Guess the path of the transformer blocks from ``named_modules()`` names.

    Returns the most frequent prefix ``p`` such that ``p.<digits>`` is a module name, with ties broken
    by the longer prefix (deeper is more specific), or None when no numbered children exist.

    >>> guess_layer_prefix(["h", "h.0", "h.1", "h.0.attn", "ln_f"])
    'h'
    """
    counts: Counter[str] = Counter()
    for name in module_names:
        prefix, _, last = name.rpartition(".")
        if last.isdigit() and prefix:
            counts[prefix] += 1
    if not counts:
        return None
    return max(counts, key=lambda p: (counts[p], len(p)))


LAYER_SPEC_HELP = "'12', '8,12,16', '8-12' or 'all'"


def parse_layer_spec(spec: str) -> list[int] | None:
    """The blocks a layer spec names, or None for ``'all'``; checks the syntax only (no model needed).

    >>> parse_layer_spec("8-10,14")
    [8, 9, 10, 14]
    """
    text = str(spec).strip()
    if text == "all":
        return None
    layers: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise PolysteerError(f"bad layer spec {spec!r}: use {LAYER_SPEC_HELP}") from None
        if last < first:
            raise PolysteerError(f"bad layer spec {spec!r}: range {part.strip()} runs backwards; write {last}-{first}")
        layers += range(first, last + 1)
    return list(dict.fromkeys(layers))


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Block indices from ``'12'``, ``'8,12,16'``, ``'8-12'`` or ``'all'``, checked against ``n_layers``."""
    layers = parse_layer_spec(spec)
    if layers is None:
        return list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise PolysteerError(f"layers {bad} out of range: there are {n_layers} blocks (0-{n_layers - 1})")
    return layers
