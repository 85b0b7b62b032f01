"""Injection operators: add, rotate (VTI's norm-preserving form), clamp, ablate, and the learned gate."""

from polysteer.hookspecs import hookimpl
from polysteer.plugins.operators.basic import Ablate, Add, Clamp, Rotate
from polysteer.plugins.operators.gated import GatedAdd

__all__ = ["Ablate", "Add", "Clamp", "GatedAdd", "Rotate"]


@hookimpl
def register_operators(register):
    for op in (Add, Rotate, Clamp, Ablate, GatedAdd):
        register(op)
