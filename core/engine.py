"""The steering engine: ``with steer(model, plan): model.generate(...)``.

A steered module gets one hook, shared by every steering block that uses it; what it applies is the plan of
the thread or task that runs the forward pass (:mod:`polysteer.hooks`). A pre-hook on the modality's root
module tracks each block's generation step and token positions.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.hooks import SteeringContext, activate
from polysteer.hooks import attach as _attach
from polysteer.modality import Modality, StepTracker, modality_for
from polysteer.operator import Operator
from polysteer.schedule import Schedule, parse_schedule


@dataclass
class Intervention:
    """One direction injected at one hook point.

    Attributes:
        direction: ``[d_model]`` vector (used as given; operators normalise where they need to).
        hook_point: canonical name, e.g. ``text.blocks.12.resid_post``.
        coefficient: a number, or one number per batch row (a batched sweep in one generate).
        operator: registered name or Operator instance.
        schedule: spec string (``'ramp:0-20'``) or Schedule instance.
        rows: batch rows to steer (None: all).
        span: a modality-specific position span, e.g. ``'image'`` for VLMs (None: all positions).
        branch: classifier-free-guidance branch: ``'both'``, ``'cond'`` or ``'uncond'``.
    """

    direction: torch.Tensor
    hook_point: str
    coefficient: float | Sequence[float] | torch.Tensor = 1.0
    operator: str | Operator = "add"
    schedule: str | Schedule = "constant"
    rows: Sequence[int] | None = None
    span: str | None = None
    branch: str = "both"


@dataclass
class Plan:
    """An ordered list of interventions; ``plan_a + plan_b`` composes them."""

    interventions: list[Intervention] = field(default_factory=list)

    def __add__(self, other: "Plan") -> "Plan":
        return Plan(self.interventions + as_plan(other).interventions)

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.interventions)

    def __len__(self) -> int:
        return len(self.interventions)


def as_plan(plan: "Plan | Intervention | Sequence[Intervention]") -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Intervention):
        return Plan([plan])
    if hasattr(plan, "to_plan"):
        return plan.to_plan()
    return Plan(list(plan))


def stack_plans(row_plans: Sequence["Plan | Intervention | Sequence[Intervention] | None"]) -> Plan:
    """One plan for a batch whose row ``i`` is steered by ``row_plans[i]`` (None: unsteered).

    Interventions that share a direction tensor, hook point, operator, schedule, span and branch become one
    intervention with a per-row coefficient, so a sweep over coefficients or over directions runs as one
    batched generate at little more than the cost of one.
    """
    merged: dict[tuple, tuple[Intervention, list[float]]] = {}
    for row, plan in enumerate(row_plans):
        for iv in as_plan(plan) if plan is not None else ():
            coef = torch.as_tensor(iv.coefficient)
            if coef.ndim != 0 or iv.rows is not None:
                raise PolysteerError("stack_plans takes one plan per row: give scalar coefficients and no rows=")
            key = (id(iv.direction), iv.hook_point, _identity(iv.operator), _identity(iv.schedule), iv.span, iv.branch)
            first, coefs = merged.setdefault(key, (iv, [0.0] * len(row_plans)))
            coefs[row] += float(coef)
    return Plan([Intervention(iv.direction, iv.hook_point, torch.tensor(coefs), iv.operator, iv.schedule,
                              span=iv.span, branch=iv.branch) for iv, coefs in merged.values()])


def _identity(value: Any) -> Any:
    return value if isinstance(value, str) else id(value)


class _Compiled:
    """An intervention with its operator, schedule and tensors resolved for one model."""

    def __init__(self, iv: Intervention, modality: Modality, d_model: int, device, dtype):
        from polysteer.manager import registry

        vector = _checked_vector(iv, d_model)
        self.vector = vector.to(device=device, dtype=dtype)
        self.operator = iv.operator if isinstance(iv.operator, Operator) else registry("operators")[iv.operator]()
        if self.operator.needs_direction and not vector.any():
            raise PolysteerError(f"direction for {iv.hook_point} is all zeros, so steering would do nothing; "
                                 "re-fit it or drop it from the plan")
        self.schedule = parse_schedule(iv.schedule, modality.steps_per_second)
        self.layer, self.hook_point = HookPoint.parse(iv.hook_point).layer, iv.hook_point
        coef = torch.as_tensor(iv.coefficient, dtype=torch.float32)
        if not torch.isfinite(coef).all():
            raise PolysteerError(f"coefficient for {iv.hook_point} is {iv.coefficient!r}; give finite numbers")
        self.scalar = float(coef) if coef.ndim == 0 else None
        self.row_coef = None if coef.ndim == 0 else coef.to(device)
        self.rows = None if iv.rows is None else torch.as_tensor(list(iv.rows), dtype=torch.long)
        self.checked_norm = not isinstance(self.operator, _add_class())
        self.span, self.branch, self.modality = iv.span, iv.branch, modality

    def vector_for(self, h: torch.Tensor) -> torch.Tensor:
        """The vector on ``h``'s device and in its dtype: cast here when the module's parameters did not say
        (offloaded weights, a block without parameters, a model moved after the plan was compiled)."""
        if self.vector.device != h.device or self.vector.dtype != h.dtype:
            self.vector = self.vector.to(device=h.device, dtype=h.dtype)
        return self.vector

    def is_zero(self) -> bool:
        return self.scalar == 0.0 or (self.row_coef is not None and not self.row_coef.any())

    def coefficient(self, state, h: torch.Tensor):
        """A float or a [batch, seq, 1] tensor (zero where nothing should change); None if all zero."""
        mult = self.schedule(state.step, state.positions, self.layer, state.prompt_length)
        per_position = torch.is_tensor(mult)
        if not per_position and mult == 0:
            return None
        if self.scalar is not None and not per_position and self._plain():
            return self.scalar * mult
        rows = self._row_values(h.shape[0], h.device).unsqueeze(1)
        coef = rows * mult if per_position else (rows * mult).expand(h.shape[:2])
        if self.span is not None:
            coef = coef * self.modality.span_mask(self.span, state, h)
        return coef.unsqueeze(-1).to(h.dtype) if coef.any() else None

    def keep_rows(self, index: torch.Tensor) -> None:
        """Narrow the per-row coefficients to the batch rows in ``index`` (see :class:`BatchSteering`)."""
        if self.rows is not None:
            raise PolysteerError("rows of a plan with rows= cannot be dropped; stack one plan per row instead")
        if self.row_coef is not None:
            self.row_coef = self.row_coef[index.to(self.row_coef.device)]

    def _plain(self) -> bool:
        return self.rows is None and self.span is None and self.branch == "both"

    def _row_values(self, batch: int, device) -> torch.Tensor:
        values = self.row_coef if self.row_coef is not None else torch.full((1,), self.scalar, device=device)
        if self.rows is not None:
            chosen = torch.zeros(self.modality.input_rows(batch), device=device)
            chosen[self.rows.to(device)] = 1.0
            values = values * chosen
        values = values.expand(batch) if len(values) == 1 else self.modality.expand_rows(values, batch)
        branch = self.modality.branch_rows(self.branch, batch)
        return values if branch is None else values * branch.to(device)


def _checked_vector(iv: Intervention, d_model: int) -> torch.Tensor:
    vector = torch.as_tensor(iv.direction).detach()
    if vector.ndim != 1 or vector.shape[0] != d_model:
        raise PolysteerError(
            f"direction for {iv.hook_point} has shape {tuple(vector.shape)} but the model's d_model "
            f"there is {d_model}; it was made for another model or layer"
        )
    if not vector.is_floating_point():
        raise PolysteerError(f"direction for {iv.hook_point} has dtype {vector.dtype}; steering vectors are floats")
    if not torch.isfinite(vector).all():
        raise PolysteerError(f"direction for {iv.hook_point} contains NaN or inf; re-fit it")
    return vector


def _add_class() -> type:
    from polysteer.manager import registry

    return registry("operators")["add"]


NORM_WARNING_FACTOR = 10.0


def _warn_if_far(c: _Compiled, coef, h: torch.Tensor) -> None:
    """Warn once per block when an added vector is far larger than the activations it is added to."""
    c.checked_norm = True
    applied = float(coef.abs().max() if torch.is_tensor(coef) else abs(coef)) * float(c.vector.float().norm())
    typical = float(h.detach().float().norm(dim=-1).median())
    if typical > 0 and applied > NORM_WARNING_FACTOR * typical:
        warnings.warn(f"steering at {c.hook_point} adds a vector of norm {applied:.4g}, {applied / typical:.0f}x "
                      f"the typical activation norm there ({typical:.4g}); expect broken text, or lower the "
                      "coefficient", stacklevel=2)


def _apply(compiled: list[_Compiled], tracker: StepTracker, h: torch.Tensor) -> torch.Tensor | None:
    state = tracker.state_for(h)
    out = None
    for c in compiled:
        coef = c.coefficient(state, h)
        if coef is None:
            continue
        if not c.checked_norm:
            _warn_if_far(c, coef, h)
        current = h if out is None else out
        new = c.operator(current, c.vector_for(current), coef)
        masked = torch.is_tensor(coef) and not c.operator.zero_is_identity
        out = torch.where(coef != 0, new, current) if masked else new
    return out


@contextmanager
def steer(model: Any, plan: "Plan | Intervention | Sequence[Intervention]", modality: str | Modality | None = None):
    """Apply ``plan`` to ``model`` inside the block, for forward passes of this thread or asyncio task only.

    Concurrent blocks on one shared model (threads, tasks) each see only their own plan, and a forward pass outside
    every block sees none (see :mod:`polysteer.hooks`). Hooks are removed once no block uses them, even on error.

    Args:
        model: any model a registered modality accepts.
        plan: a Plan, an Intervention, a list of them, or a Direction (its default plan).
        modality: a modality name or instance; by default the first modality that accepts the model.

    Yields:
        The block's step tracker.
    """
    mod = modality if isinstance(modality, Modality) else modality_for(model, modality)
    tracker = mod.tracker(model)
    with activate(SteeringContext(tracker, _apply, _compile(model, as_plan(plan), mod))):
        yield tracker


class BatchSteering:
    """A :func:`steer_rows` block: ``keep(index)`` drops the batch rows not in ``index`` between decoding steps."""

    def __init__(self, ctx: SteeringContext | None) -> None:
        self._ctx = ctx

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (in that order), as the caller does to its inputs and KV cache."""
        if self._ctx is None:
            return
        for compiled in self._ctx.groups.values():
            for c in compiled:
                c.keep_rows(index)
        self._ctx.tracker.keep_rows(index)


@contextmanager
def steer_rows(model: Any, row_plans: Sequence["Plan | Intervention | Sequence[Intervention] | None"],
               modality: str | Modality | None = None) -> Iterator[BatchSteering]:
    """:func:`steer` a batch whose row ``i`` follows ``row_plans[i]`` (None: unsteered), for a decoding loop
    that drops finished rows: after ``handle.keep(index)`` the coefficients and step state follow the kept rows.

    Yields:
        A :class:`BatchSteering` handle.
    """
    if all(plan is None for plan in row_plans):
        yield BatchSteering(None)
        return
    mod = modality if isinstance(modality, Modality) else modality_for(model, modality)
    tracker = mod.tracker(model)
    with activate(SteeringContext(tracker, _apply, _compile(model, stack_plans(row_plans), mod))) as ctx:
        yield BatchSteering(ctx)


class Attachment:
    """A plan attached by :func:`attach`; ``remove()`` (idempotent) detaches it and drops unused hooks."""

    def __init__(self, tracker: StepTracker, detach) -> None:
        self.tracker = tracker
        self._detach = detach

    def remove(self) -> None:
        self._detach()

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach(model: Any, plan: "Plan | Intervention | Sequence[Intervention]",
           modality: str | Modality | None = None) -> Attachment:
    """Steer ``model`` with ``plan`` until ``handle.remove()``: the notebook form of :func:`steer`.

    The plan applies to forward passes run in the calling thread (as a ``steer`` block's does), across notebook
    cells, and composes with ``steer`` blocks; other threads and tasks in them are unaffected. Everything is checked
    before any hook is attached, and the hooks go once nothing uses them.

    Returns:
        An :class:`Attachment`; it is also a context manager that removes itself on exit.
    """
    mod = modality if isinstance(modality, Modality) else modality_for(model, modality)
    tracker = mod.tracker(model)
    return Attachment(tracker, _attach(SteeringContext(tracker, _apply, _compile(model, as_plan(plan), mod))))


def _compile(model, plan: Plan, modality: Modality) -> dict[tuple, list[_Compiled]]:
    grouped: dict[tuple, list[_Compiled]] = defaultdict(list)
    for iv in plan:
        hp = HookPoint.parse(iv.hook_point)
        target = modality.resolve(model, hp)
        # the steered module's own parameters fix device and dtype (the model may not be an nn.Module)
        param = next(iter(target.module.parameters()), None)
        device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
        compiled = _Compiled(iv, modality, modality.d_model(model, hp), device, dtype)
        if not compiled.is_zero():
            grouped[(target.module, target.edit)].append(compiled)
    return grouped
