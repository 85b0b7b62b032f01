"""Atomic file writes: readers never see half a file, and a failed write leaves nothing behind."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it into place.

    The new file gets the mode an ordinary ``open`` would give it (``0o666`` less the umask), or the mode of the
    file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the kernel applies the umask
    try:
        write(str(tmp))
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def _fsync(path: Path) -> None:
    """Flush a file (or, where the platform allows, a directory entry) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON (UTF-8) atomically; values JSON cannot hold are written as their ``str``."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))


def portable(value: Any) -> Any:
    """``value`` with every absolute path in it (nested in dicts and lists too) made portable.

    A path below the working directory becomes relative to it, any other keeps its file or folder name only, so
    a manifest never records a home directory; ``POLYSTEER_FULL_PROVENANCE=1`` keeps paths whole.
    """
    if os.environ.get("POLYSTEER_FULL_PROVENANCE") == "1":
        return value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path, cwd = Path(value), Path.cwd()
        return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else path.name
    return value
