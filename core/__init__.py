"""polysteer: steer generative models at inference time with pluggable directions, operators and schedules.

The public API for users and plugin authors; the modalities' workflows live in ``polysteer.modalities.<name>``.
"""

__version__ = "0.1.0"

from polysteer.lazy import lazy_exports

# Names load on first use (PEP 562): `import polysteer` and `polysteer --help` must not pay for torch.
_MODULES = {
    ".capture": ("cache_key", "write_safetensors_atomic"),
    ".data": ("Example", "read_contrastive", "read_json", "read_jsonl", "read_lines"),
    ".device": ("resolve_device", "resolve_dtype"),
    ".direction": ("Direction", "operator_param_key"),
    ".engine": ("Attachment", "BatchSteering", "Intervention", "Plan", "as_plan", "attach", "stack_plans", "steer",
                "steer_rows"),
    ".errors": ("PolysteerError",),
    ".evaluator": ("Evaluator",),
    ".finder": ("DirectionFinder", "check_inputs", "finish_direction", "fit_layers", "make_finder"),
    ".hookpoints": ("SITES", "TOWERS", "HookPoint", "guess_layer_prefix", "hook_point", "parse_layers"),
    ".hookspecs": ("hookimpl",),
    ".io": ("atomic_write", "write_json_atomic", "write_text_atomic"),
    ".manager": ("registry",),
    ".modality": ("Modality", "StepState", "StepTracker", "Target", "block_target", "modality_for"),
    ".model_finder": ("ModelFinder",),
    ".operator": ("Operator",),
    ".schedule": ("Schedule", "parse_schedule"),
}
__getattr__, __dir__ = lazy_exports(__name__, {name: module for module, names in _MODULES.items() for name in names})

__all__ = [
    "Attachment", "BatchSteering", "Direction", "DirectionFinder", "Evaluator", "Example", "HookPoint",
    "Intervention", "Modality", "ModelFinder", "Operator", "Plan", "PolysteerError", "SITES", "Schedule", "StepState",
    "StepTracker", "TOWERS", "Target", "as_plan", "atomic_write", "attach", "block_target", "cache_key",
    "check_inputs", "finish_direction", "fit_layers", "guess_layer_prefix", "hook_point", "hookimpl", "lazy_exports",
    "make_finder", "modality_for", "operator_param_key", "parse_layers", "parse_schedule", "read_contrastive",
    "read_json", "read_jsonl", "read_lines", "registry", "resolve_device", "resolve_dtype", "stack_plans", "steer",
    "steer_rows", "write_json_atomic", "write_safetensors_atomic", "write_text_atomic",
]
