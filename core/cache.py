"""An on-disk cache for work worth keeping between runs: persona answers, captured activations, the command list.

Entries live under :func:`cache_root`, one file per key in a folder per kind: JSON for data, safetensors for
tensors. A key (:func:`make_key`) is the SHA-256 of a canonical JSON of everything that determines the result,
polysteer's version included. Writes are atomic (a temporary file renamed into place), so processes racing on one
key each leave a whole file; an entry that cannot be read is reported with a :class:`CacheWarning` and computed
again, and a cache that cannot be written only costs the reuse. ``POLYSTEER_NO_CACHE=1`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from polysteer.io import atomic_write, write_json_atomic

#: Bumped when the layout of cache entries changes, so old entries are never misread.
FORMAT = 1
_OFF = {"1", "true", "yes", "on"}


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the work is done again."""


def cache_root() -> Path:
    """``$POLYSTEER_CACHE``, else ``$XDG_CACHE_HOME/polysteer``, else ``~/.cache/polysteer``."""
    root = os.environ.get("POLYSTEER_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polysteer"


def cache_enabled(requested: bool = True) -> bool:
    """Whether to use the cache: ``requested`` and ``POLYSTEER_NO_CACHE`` unset (or 0)."""
    return requested and os.environ.get("POLYSTEER_NO_CACHE", "").strip().lower() not in _OFF


def make_key(**parts: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``parts`` with polysteer's version and the cache format."""
    from polysteer import __version__

    payload = {"polysteer": __version__, "format": FORMAT, **parts}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(kind: str, key: str, suffix: str) -> Path:
    """Where the entry ``key`` of ``kind`` lives."""
    return cache_root() / kind / f"{key}{suffix}"


def note(message: str) -> None:
    """One line on stderr, beside the progress bars."""
    print(f"polysteer: {message}", file=sys.stderr, flush=True)


def load_json(path: Path, key: str) -> tuple[bool, Any]:
    """``(True, value)`` from a JSON entry written by :func:`store_json` for ``key``, else ``(False, None)``."""
    if not path.exists():
        return False, None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict) or entry.get("key") != key or "value" not in entry:
            raise ValueError("not an entry for this key")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _unreadable(path, exc)
        return False, None
    return True, entry["value"]


def store_json(path: Path, key: str, value: Any) -> None:
    """Write ``value`` under ``key`` atomically; a failed write is a warning, never an error."""
    _store(path, lambda: write_json_atomic(path, {"key": key, "value": value}, indent=None))


def load_tensors(path: Path, key: str):
    """The tensors of a safetensors entry written by :func:`store_tensors` for ``key``, else None."""
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                raise ValueError("not an entry for this key")
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        _unreadable(path, exc)
        return None


def store_tensors(path: Path, key: str, tensors: dict) -> None:
    """Write ``tensors`` under ``key`` atomically; a failed write is a warning, never an error."""
    from safetensors.torch import save_file

    data = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    _store(path, lambda: atomic_write(path, lambda tmp: save_file(data, tmp, metadata={"key": key})))


def cached_json(kind: str, key: str, compute: Callable[[], Any], label: str, enabled: bool = True) -> Any:
    """``compute()``, or the JSON value stored for ``key`` by an earlier call (``label`` names it in the log)."""
    if not cache_enabled(enabled):
        return compute()
    path = entry_path(kind, key, ".json")
    found, value = load_json(path, key)
    if found:
        note(f"using cached {label} (key {key[:12]})")
        return value
    value = compute()
    store_json(path, key, value)
    return value


def cached_tensors(kind: str, key: str, compute: Callable[[], dict], label: str, enabled: bool = True) -> dict:
    """``compute()`` (a dict of tensors), or the tensors stored for ``key`` by an earlier call."""
    if not cache_enabled(enabled):
        return compute()
    path = entry_path(kind, key, ".safetensors")
    found = load_tensors(path, key)
    if found is not None:
        note(f"using cached {label} (key {key[:12]})")
        return found
    tensors = compute()
    store_tensors(path, key, tensors)
    return tensors


def _unreadable(path: Path, exc: BaseException) -> None:
    warnings.warn(f"ignoring the unreadable cache entry {path} ({type(exc).__name__}: {exc}); computing it again",
                  CacheWarning, stacklevel=3)


def _store(path: Path, write: Callable[[], object]) -> None:
    try:
        write()
    except OSError as exc:  # a read-only or full disk: the result is still good, only the reuse is lost
        warnings.warn(f"cannot write the cache entry {path} ({exc}); set POLYSTEER_CACHE to a writable folder",
                      CacheWarning, stacklevel=3)


def model_fingerprint(model: Any) -> dict[str, Any]:
    """What fixes a model's outputs: class, full config, weights (files on disk and a sample of every tensor),
    dtype and device type. Cheap whatever the model's size: each tensor gives at most 256 values."""
    config = getattr(model, "config", None)
    fields = config.to_dict() if hasattr(config, "to_dict") else {}
    name = str(getattr(config, "_name_or_path", "") or "")
    params = list(model.named_parameters()) if hasattr(model, "named_parameters") else []
    first = params[0][1] if params else None
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name": name,
        "config": hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest(),
        "commit": getattr(config, "_commit_hash", None),
        "files": _file_stats(name),
        "dtype": str(first.dtype) if first is not None else None,
        "device": first.device.type if first is not None else None,
        "weights": _weight_sample(params),
    }


def _file_stats(folder: str) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` of each file in a local model folder (none for a hub id or in-memory model)."""
    if not folder or not os.path.isdir(folder):
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _weight_sample(params: list) -> str:
    """A hash of each tensor's name, shape and 256 evenly spaced values: tells two same-shaped models apart."""
    digest = hashlib.sha256()
    for name, param in params:
        flat = param.detach().reshape(-1)
        digest.update(f"{name}{tuple(param.shape)}{param.dtype}".encode())
        try:
            digest.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
        except (NotImplementedError, RuntimeError):  # meta or offloaded tensors hold no values to read
            digest.update(b"no-values")
    return digest.hexdigest()
