"""A request's ``steer`` field: parsed, checked against the served model, resolved to vectors, and salted.

This module imports no vLLM, so the checks run wherever a request arrives (the frontend, before the engine sees it)
and again in the worker, which resolves each request once and caches the result by request id.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.manager import registry
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.serve.registry import check_name
from polysteer.modalities.text.serve.schemas import SteerSpec
from polysteer.operator import Operator
from polysteer.schedule import Schedule, parse_schedule

ENV_DIRECTIONS = "POLYSTEER_DIRECTIONS"
STEER_KEY = "steer"
MAX_SPECS = 16


@dataclass(frozen=True)
class Geometry:
    """What a plan is checked against: the served model's identity, width and depth."""

    identity: dict
    d_model: int
    n_layers: int

    @classmethod
    def from_hf_config(cls, config: Any) -> "Geometry":
        """From the HF config vLLM loaded; the identity is the one the text modality records in direction files."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        arch = (getattr(config, "architectures", None) or ["unknown"])[0]
        stand_in = type(arch, (), {"config": config})()  # Modality.identity reads type(model).__name__ and .config
        return cls(TextModality().identity(stand_in), int(text.hidden_size), int(text.num_hidden_layers))


@dataclass(frozen=True)
class Step:
    """One intervention of a request at one block: ``operator(h, vector, coefficient * schedule(...))``."""

    layer: int
    site: str
    vector: torch.Tensor
    coefficient: float
    operator: Operator
    schedule: Schedule


@dataclass(frozen=True)
class RequestPlan:
    """A request's resolved steering and the cache salt that keeps its KV blocks apart from other plans'."""

    steps: tuple[Step, ...]
    salt: str

    def layers(self) -> set[int]:
        return {s.layer for s in self.steps}


def parse_steer(value: Any) -> list[SteerSpec]:
    """The ``steer`` value: a list of specs, or that list as a JSON string (``vllm_xargs`` carries only strings)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PolysteerError(f"steer is not valid JSON ({exc}); send a list like "
                                 '[{"direction": "NAME", "coefficient": 4}]') from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_SPECS:
        raise PolysteerError(f"steer must be a list of 1-{MAX_SPECS} specs like "
                             '[{"direction": "NAME", "coefficient": 4}]')
    try:
        return [SteerSpec.model_validate(item) for item in value]
    except Exception as exc:  # pydantic's ValidationError: keep its first line, the field at fault
        field, _, problem = "\n".join(str(exc).splitlines()[1:3]).partition("\n")
        raise PolysteerError(f"bad steer spec: {field.strip()}: {problem.split(' [type=')[0].strip()}") from None


class DirectionStore:
    """Direction files in ``$POLYSTEER_DIRECTIONS`` by name, each read once per change of the file."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = folder
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], Direction, str]] = {}

    def root(self) -> Path:
        folder = self.folder or os.environ.get(ENV_DIRECTIONS)
        if not folder:
            raise PolysteerError(f"steering needs a directions folder: set {ENV_DIRECTIONS}=DIR (direction files "
                                 "DIR/NAME.safetensors written by polysteer) before starting vLLM")
        if not Path(folder).is_dir():
            raise PolysteerError(f"{ENV_DIRECTIONS}={folder} is not a directory")
        return Path(folder)

    def get(self, name: str) -> tuple[Direction, str]:
        """``(direction, sha256 of its file)``; a clear error for unknown names."""
        check_name(name)
        path = self.root() / f"{name}.safetensors"
        if not path.is_file():
            known = sorted(p.stem for p in self.root().glob("*.safetensors"))
            raise PolysteerError(f"unknown direction {name!r} in {self.root()}; there: {', '.join(known) or 'none'}")
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
        direction, digest = Direction.load(path), hashlib.sha256(path.read_bytes()).hexdigest()
        with self._lock:
            self._cache[path] = (stamp, direction, digest)
        return direction, digest


def resolve(value: Any, geometry: Geometry, store: DirectionStore) -> RequestPlan:
    """Check and resolve a request's ``steer`` value; raises PolysteerError naming the bad part."""
    steps, parts = [], []
    for spec in parse_steer(value):
        direction, digest = store.get(spec.direction)
        _check_direction(spec.direction, direction, geometry)
        for step in _spec_steps(spec, direction, geometry):
            steps.append(step)
            parts.append([digest, step.layer, step.site, repr(step.coefficient), spec.operator or direction.operator,
                          spec.schedule or direction.schedule])
    salt = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return RequestPlan(tuple(steps), f"polysteer-{salt}")


def _check_direction(name: str, direction: Direction, geometry: Geometry) -> None:
    if direction.modality != "text":
        raise PolysteerError(f"direction {name!r} is for the {direction.modality!r} modality; vLLM serves text")
    direction.check_model(geometry.identity, geometry.d_model)


def _spec_steps(spec: SteerSpec, direction: Direction, geometry: Geometry) -> list[Step]:
    """The spec as steps, with the serve registry's layer rule: the direction's own layers, or its one vector
    moved to the layers asked."""
    if spec.operator is not None and spec.operator not in registry("operators"):
        raise PolysteerError(f"unknown operator {spec.operator!r} in steer; registered: "
                             f"{', '.join(registry('operators').names())}")
    schedule = parse_schedule(spec.schedule or direction.schedule)
    own = {HookPoint.parse(hp).layer: hp for hp in direction.hook_points}
    layers = spec.layers or sorted(own)
    if not all(layer in own for layer in layers) and len(own) != 1:
        raise PolysteerError(f"direction {spec.direction!r} has vectors at layers {sorted(own)} only; "
                             f"pick layers from those (asked {spec.layers})")
    steps = []
    for layer in layers:
        hp = own.get(layer) or next(iter(own.values()))
        (iv,) = direction.to_plan(spec.coefficient, spec.operator, None, [hp])
        steps.append(_step(iv, layer, schedule, geometry))
    return steps


def _step(iv: Any, layer: int, schedule: Schedule, geometry: Geometry) -> Step:
    site = HookPoint.parse(iv.hook_point).site
    if not 0 <= layer < geometry.n_layers:
        raise PolysteerError(f"layer {layer} is out of range: the served model has layers 0-{geometry.n_layers - 1}")
    if site not in SUPPORTED_SITES:
        raise PolysteerError(f"site {site!r} is not steerable under vLLM; use one of {', '.join(SUPPORTED_SITES)}")
    coef = float(torch.as_tensor(iv.coefficient))
    if coef != coef or abs(coef) == float("inf"):
        raise PolysteerError(f"coefficient at layer {layer} overflows to {coef} once scaled; give a smaller one")
    operator = iv.operator if isinstance(iv.operator, Operator) else registry("operators")[iv.operator]()
    vector = torch.as_tensor(iv.direction).detach().float()
    if operator.needs_direction and not vector.any():
        raise PolysteerError(f"direction at layer {layer} is all zeros: nothing to steer with")
    return Step(layer, site, vector, coef, operator, schedule)


SUPPORTED_SITES = ("resid_post", "resid_pre")
