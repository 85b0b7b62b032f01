"""Directions a server knows by name: loaded at start-up or uploaded, each checked against the served model.

A request's ``steer`` list becomes a plan here, and every check the engine would make later (model, d_model,
layer range, hook site, operator, schedule spec, finite coefficient) is made now, so a bad request is refused
alone instead of failing the batch it would have joined.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from polysteer.direction import Direction
from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.manager import registry as plugin_registry
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.serve.schemas import NAME_PATTERN, DirectionInfo, SteerSpec
from polysteer.schedule import parse_schedule


def read_direction_dir(folder: str | Path) -> dict[str, Direction]:
    """Every ``*.safetensors`` in ``folder`` by file stem (read and checked as files; the model check comes later)."""
    found = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        check_name(path.stem)
        found[path.stem] = Direction.load(path)
    return found


def check_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise PolysteerError(f"bad direction name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return name


class DirectionRegistry:
    """Named directions for one served model; safe to use from the event loop and the batch worker at once."""

    def __init__(self, model: Any, max_upload_bytes: int):
        self.model, self.max_upload_bytes = model, max_upload_bytes
        self.modality = TextModality()
        self.identity = self.modality.identity(model)
        self.n_layers = self.modality.n_layers(model)
        self.d_model = self.modality.d_model(model, HookPoint.parse("text.blocks.0.resid_post"))
        self._lock = threading.Lock()
        self._directions: dict[str, Direction] = {}

    def add(self, name: str, direction: Direction, force: bool = False) -> DirectionInfo:
        """Register ``direction`` as ``name`` after the checks ``Direction.load`` users make against a model."""
        check_name(name)
        if direction.modality != "text":
            raise PolysteerError(f"direction {name!r} is for the {direction.modality!r} modality; this serves text")
        direction.check_model(self.identity, self.d_model, force=force)
        for hp, vector in direction.vectors.items():
            self.modality.resolve(self.model, HookPoint.parse(hp))
            if not vector.any():
                raise PolysteerError(f"direction {name!r} has an all-zero vector at {hp}: nothing to steer with")
        with self._lock:
            self._directions[name] = direction
        return describe(name, direction)

    def add_bytes(self, name: str, data: bytes, force: bool = False) -> DirectionInfo:
        """Register an uploaded safetensors file (read by ``Direction.load``; errors name the upload, not a path)."""
        check_name(name)
        if len(data) > self.max_upload_bytes:
            raise PolysteerError(f"direction file is {len(data)} bytes; the limit is {self.max_upload_bytes}")
        with tempfile.TemporaryDirectory(prefix="polysteer-upload-") as tmp:
            path = Path(tmp) / f"{name}.safetensors"
            path.write_bytes(data)
            try:
                direction = Direction.load(path)
            except PolysteerError as exc:
                raise PolysteerError(str(exc).replace(str(path), f"uploaded file {name!r}")) from None
        return self.add(name, direction, force)

    def remove(self, name: str) -> None:
        with self._lock:
            if self._directions.pop(name, None) is None:
                raise KeyError(name)

    def infos(self) -> list[DirectionInfo]:
        with self._lock:
            items = sorted(self._directions.items())
        return [describe(name, direction) for name, direction in items]

    def get(self, name: str) -> Direction:
        with self._lock:
            direction = self._directions.get(name)
            known = sorted(self._directions)
        if direction is None:
            listed = ", ".join(known) or "none"
            raise PolysteerError(f"unknown direction {name!r}; loaded: {listed} (upload one with POST /v1/directions)")
        return direction

    def plan_for(self, specs: Sequence[SteerSpec] | None) -> Plan | None:
        """The checked plan of one request (None: plain generation)."""
        if not specs:
            return None
        plan = Plan()
        for spec in specs:
            plan = plan + self._spec_plan(spec)
        for iv in plan:
            self._check(iv)
        return plan

    def _spec_plan(self, spec: SteerSpec) -> Plan:
        direction = self.get(spec.direction)
        if spec.operator is not None and spec.operator not in plugin_registry("operators").names():
            names = ", ".join(plugin_registry("operators").names())
            raise PolysteerError(f"unknown operator {spec.operator!r} in steer; registered: {names}")
        schedule = spec.schedule or direction.schedule
        parse_schedule(schedule, self.modality.steps_per_second)
        if not spec.layers:
            return direction.to_plan(spec.coefficient, spec.operator, schedule)
        own = {HookPoint.parse(hp).layer: hp for hp in direction.hook_points}
        if all(layer in own for layer in spec.layers):
            return direction.to_plan(spec.coefficient, spec.operator, schedule, [own[x] for x in spec.layers])
        if len(own) != 1:
            raise PolysteerError(f"direction {spec.direction!r} has vectors at layers {sorted(own)} only; "
                                 f"pick layers from those (asked {spec.layers})")
        (iv,) = direction.to_plan(spec.coefficient, spec.operator, schedule)
        site = HookPoint.parse(iv.hook_point).site
        return Plan([Intervention(iv.direction, f"text.blocks.{layer}.{site}", iv.coefficient, iv.operator,
                                  iv.schedule) for layer in spec.layers])

    def _check(self, iv: Intervention) -> None:
        hp = HookPoint.parse(iv.hook_point)
        if not 0 <= hp.layer < self.n_layers:
            raise PolysteerError(f"layer {hp.layer} is out of range: the served model has layers 0-{self.n_layers - 1}")
        self.modality.resolve(self.model, hp)
        if iv.direction.shape != (self.d_model,):
            raise PolysteerError(f"direction at {iv.hook_point} has shape {tuple(iv.direction.shape)}; the served "
                                 f"model's d_model is {self.d_model}")
        coef = float(torch.as_tensor(iv.coefficient))
        if not math.isfinite(coef):
            raise PolysteerError(f"coefficient at {iv.hook_point} overflows to {coef} once scaled; give a smaller one")


def describe(name: str, direction: Direction) -> DirectionInfo:
    return DirectionInfo(name=name, hook_points=direction.hook_points, d_model=direction.d_model,
                         layers=[HookPoint.parse(hp).layer for hp in direction.hook_points],
                         operator=direction.operator, schedule=direction.schedule,
                         coefficient=direction.coefficient, unit=direction.unit, finder=direction.finder.get("name"))
