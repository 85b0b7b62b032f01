"""polysteer: steer generative models at inference time with pluggable directions, operators and schedules."""

__version__ = "0.1.0"

from polysteer.errors import PolysteerError
from polysteer.hookspecs import hookimpl
from polysteer.hookpoints import HookPoint, hook_point
from polysteer.finder import DirectionFinder, make_finder, fit_layers
from polysteer.schedule import Schedule, parse_schedule
from polysteer.operator import Operator
from polysteer.evaluator import Evaluator
from polysteer.modality import Modality, Target, modality_for
from polysteer.engine import Intervention, Plan, stack_plans, steer
from polysteer.direction import Direction
from polysteer.manager import registry

__all__ = [
    "Direction", "DirectionFinder", "Evaluator", "HookPoint", "Intervention", "Modality", "Operator", "Plan",
    "PolysteerError", "Schedule", "Target", "fit_layers", "hook_point", "hookimpl", "make_finder", "modality_for",
    "parse_schedule", "registry", "stack_plans", "steer",
]
