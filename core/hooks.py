"""Steering contexts isolated per thread and per asyncio task.

A steered module gets one dispatching hook, installed when the first steering context needs it and removed when the
last one leaves. The plans themselves live in a :class:`contextvars.ContextVar`: a forward pass applies the contexts
active in the thread or task that runs it, and only those. Threads start with no active context (a thread spawned
inside a ``with steer(...)`` block is unsteered unless it runs in ``contextvars.copy_context()``); an asyncio task
inherits the contexts active where it was created, as with any context variable.

An attached context (:func:`attach`, for notebooks) lives outside the context variable, which some Jupyter kernels
reset between cells: it applies to the forward passes of the thread that attached it until it is detached.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from polysteer.modality import StepTracker

ApplyFn = Callable[[list, StepTracker, torch.Tensor], "torch.Tensor | None"]


@dataclass
class SteeringContext:
    """One ``steer()`` block: its step tracker and what it applies at each (module, edit)."""

    tracker: StepTracker
    apply: ApplyFn
    groups: dict[tuple[nn.Module, str], list] = field(default_factory=dict)


_ACTIVE: ContextVar[tuple[SteeringContext, ...]] = ContextVar("polysteer_steering", default=())
_LOCK = threading.Lock()
_INSTALLED: dict[tuple[nn.Module, str], list] = {}  # (module, kind) -> [handle, users]
_ATTACHED: dict[int, tuple[SteeringContext, ...]] = {}  # thread ident -> contexts attached there


def active_contexts() -> tuple[SteeringContext, ...]:
    """The steering contexts that apply to forward passes run from here (this thread or task)."""
    return _ATTACHED.get(threading.get_ident(), ()) + _ACTIVE.get()


def _track(module, args, kwargs):
    for ctx in active_contexts():
        if ctx.tracker.root is module:
            ctx.tracker.update(args, kwargs)


def _edit(module: nn.Module, kind: str, h: torch.Tensor) -> torch.Tensor | None:
    out = None
    for ctx in active_contexts():
        compiled = ctx.groups.get((module, kind))
        if compiled:
            new = ctx.apply(compiled, ctx.tracker, h if out is None else out)
            out = new if new is not None else out
    return out


def _edit_output(module, args, output):
    h = output[0] if isinstance(output, tuple) else output
    new = _edit(module, "output", h)
    if new is None:
        return None
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _edit_input(module, args, kwargs):
    in_kwargs = not args
    new = _edit(module, "input", kwargs["hidden_states"] if in_kwargs else args[0])
    if new is None:
        return None
    if in_kwargs:
        return args, {**kwargs, "hidden_states": new}
    return (new, *args[1:]), kwargs


def _register(module: nn.Module, kind: str) -> Any:
    if kind == "output":
        return module.register_forward_hook(_edit_output)
    hook = _track if kind == "track" else _edit_input
    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _acquire(keys: list[tuple[nn.Module, str]]) -> None:
    with _LOCK:
        for key in keys:
            entry = _INSTALLED.get(key)
            if entry is None:
                _INSTALLED[key] = [_register(*key), 1]
            else:
                entry[1] += 1


def _release(keys: list[tuple[nn.Module, str]]) -> None:
    with _LOCK:
        for key in keys:
            entry = _INSTALLED[key]
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].remove()
                del _INSTALLED[key]


@contextmanager
def activate(ctx: SteeringContext) -> Iterator[SteeringContext]:
    """Make ``ctx`` apply to forward passes of this thread or task inside the block; hooks go when unused."""
    keys = [(ctx.tracker.root, "track"), *ctx.groups]
    _acquire(keys)
    token = _ACTIVE.set(_ACTIVE.get() + (ctx,))
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)
        _release(keys)


def attach(ctx: SteeringContext) -> Callable[[], None]:
    """Make ``ctx`` apply to this thread's forward passes until the returned ``detach()`` is called (idempotent)."""
    keys = [(ctx.tracker.root, "track"), *ctx.groups]
    thread = threading.get_ident()
    _acquire(keys)
    with _LOCK:
        _ATTACHED[thread] = _ATTACHED.get(thread, ()) + (ctx,)
    attached = [True]

    def detach() -> None:
        with _LOCK:
            if not attached[0]:
                return
            attached[0] = False
            rest = tuple(c for c in _ATTACHED.get(thread, ()) if c is not ctx)
            _ATTACHED.pop(thread, None) if not rest else _ATTACHED.__setitem__(thread, rest)
        _release(keys)

    return detach
