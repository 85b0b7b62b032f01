"""The Direction manifest's schema: every field's type and range checked before a Direction is built from a file.

A direction file is untrusted input, so a wrong type, a NaN coefficient or an unknown field is one clear error
naming the field, never a traceback or a silently broken plan.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint

MAX_D_MODEL = 2**20


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _number(value: Any) -> str | None:
    return None if _is_number(value) else "a finite number"


def _d_model(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_D_MODEL
    return None if ok else f"an integer in 1..{MAX_D_MODEL}"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) and all(isinstance(k, str) for k in value) else "a JSON object"


def _strings(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return None if ok else "an object of strings"


def _numbers(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
    return None if ok else "an object of finite numbers"


def _hook_points(value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return "a non-empty list of hook-point names"
    for name in value:
        HookPoint.parse(name)
    return None


def _finder(value: Any) -> str | None:
    if _object(value) is not None or ("name" in value and not isinstance(value["name"], str)):
        return 'an object like {"name": "diffmean", "params": {...}}'
    return _object(value.get("params", {}))


UNITS = ("activation-norm", "separation", "raw")

FIELDS: dict[str, tuple[bool, Callable[[Any], str | None]]] = {  # name -> (required, check)
    "format_version": (True, lambda v: None if v == 1 else "1"),
    "hook_points": (True, _hook_points),
    "modality": (True, _str),
    "model": (True, _strings),
    "d_model": (True, _d_model),
    "operator": (False, _str),
    "schedule": (False, _str),
    "coefficient": (False, _number),
    "scales": (False, _numbers),
    "unit": (False, lambda v: None if v in UNITS else " or ".join(repr(u) for u in UNITS)),
    "separations": (False, _numbers),
    "weights": (False, _numbers),
    "finder": (False, _finder),
    "provenance": (False, _object),
    "created": (False, _str),
    "polysteer_version": (False, _str),
}


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Return ``manifest`` after checking it against :data:`FIELDS`; the error names the field and its type."""
    if not isinstance(manifest, dict):
        raise PolysteerError(f"{where}: the manifest must be a JSON object, got {type(manifest).__name__}")
    unknown = sorted(set(manifest) - set(FIELDS))
    if unknown:
        raise PolysteerError(f"{where}: unknown manifest fields {unknown}; the file was written by another "
                             "polysteer version or edited by hand")
    for name, (required, check) in FIELDS.items():
        if name not in manifest:
            if required:
                raise PolysteerError(f"{where}: the manifest lacks {name!r}; re-save the direction")
            continue
        expected = check(manifest[name])
        if expected is not None:
            raise PolysteerError(f"{where}: manifest field {name!r} must be {expected}, got {manifest[name]!r:.80}")
    return manifest
