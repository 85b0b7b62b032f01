"""polysteer: steer generative models at inference time with pluggable directions, operators and schedules.

The public API for users and plugin authors; the modalities' workflows live in ``polysteer.modalities.<name>``.
"""

__version__ = "0.1.0"

from polysteer.capture import cache_key, write_safetensors_atomic
from polysteer.data import read_contrastive, read_json, read_jsonl, read_lines
from polysteer.device import resolve_device, resolve_dtype
from polysteer.direction import Direction, operator_param_key
from polysteer.engine import Intervention, Plan, as_plan, stack_plans, steer
from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.finder import DirectionFinder, check_inputs, finish_direction, fit_layers, make_finder
from polysteer.hookpoints import SITES, TOWERS, HookPoint, guess_layer_prefix, hook_point, parse_layers
from polysteer.hookspecs import hookimpl
from polysteer.io import atomic_write, write_json_atomic, write_text_atomic
from polysteer.lazy import lazy_exports
from polysteer.manager import registry
from polysteer.modality import Modality, StepState, StepTracker, Target, block_target, modality_for
from polysteer.model_finder import ModelFinder
from polysteer.operator import Operator
from polysteer.schedule import Schedule, parse_schedule

__all__ = [
    "Direction", "DirectionFinder", "Evaluator", "HookPoint", "Intervention", "Modality", "ModelFinder", "Operator",
    "Plan", "PolysteerError", "SITES", "Schedule", "StepState", "StepTracker", "TOWERS", "Target", "as_plan",
    "atomic_write", "block_target", "cache_key", "check_inputs", "finish_direction", "fit_layers",
    "guess_layer_prefix", "hook_point", "hookimpl", "lazy_exports", "make_finder", "modality_for",
    "operator_param_key", "parse_layers", "parse_schedule", "read_contrastive", "read_json", "read_jsonl",
    "read_lines", "registry", "resolve_device", "resolve_dtype", "stack_plans", "steer", "write_json_atomic",
    "write_safetensors_atomic", "write_text_atomic",
]
