"""Lazy public names: a package lists its API in ``__all__`` without importing the modules that define it.

The modality packages load with every ``polysteer`` command (they register the modalities), so their workflow
names, which pull in transformers, open_clip or audiocraft, are imported on first use instead (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, resolving each name of ``table`` on first access.

    Args:
        package: the package's ``__name__``.
        table: public name -> ``".module"`` (the same name there) or ``".module:attribute"``, relative to the package.
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = table[name].partition(":")
        value = getattr(importlib.import_module(module, package), attribute or name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
