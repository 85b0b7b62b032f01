"""The hook specifications every polysteer plugin implements (pluggy, callback style)."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("polysteer")
hookimpl = pluggy.HookimplMarker("polysteer")


@hookspec
def register_direction_finders(register):
    """Register DirectionFinder subclasses, or bare ``(X_pos, X_neg) -> Tensor`` functions."""


@hookspec
def register_schedules(register):
    """Register Schedule subclasses."""


@hookspec
def register_operators(register):
    """Register Operator subclasses (add, rotate, clamp, ablate, ...)."""


@hookspec
def register_modalities(register):
    """Register Modality adapters (which models they accept, hook points, capture, generation)."""


@hookspec
def register_evaluators(register):
    """Register Evaluator subclasses, each declaring the modalities it supports."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``polysteer`` click group."""
