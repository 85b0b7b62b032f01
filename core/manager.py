"""Plugin manager: built-ins and third-party plugins load the same way, through the ``polysteer`` entry points.

``POLYSTEER_LOAD_PLUGINS`` (comma-separated entry-point names, empty for none) restricts which third-party
plugins load; the built-ins (entry points of the ``polysteer`` distribution itself) always load.
A plugin that fails to import is recorded in :data:`broken_plugins` and reported by ``polysteer plugins``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from polysteer import hookspecs
from polysteer.errors import PolysteerError

ENTRY_POINT_GROUP = "polysteer"
BUILTIN_DISTRIBUTION = "polysteer"
KINDS = ("direction_finders", "schedules", "operators", "modalities", "evaluators")

pm = pluggy.PluginManager("polysteer")
pm.add_hookspecs(hookspecs)
broken_plugins: dict[str, str] = {}
_loaded = False


def _allowed(name: str) -> bool:
    restrict = os.environ.get("POLYSTEER_LOAD_PLUGINS")
    if restrict is None:
        return True
    return name in {n.strip() for n in restrict.split(",") if n.strip()}


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION


def load_plugins() -> None:
    """Import and register every ``polysteer`` entry point once: the built-ins first, then third-party plugins."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (not _is_builtin(ep), ep.name))
    for ep in points:
        if _is_builtin(ep) or _allowed(ep.name):
            _register_module(ep.name, ep.load)


def _register_module(name: str, load: Callable[[], Any]) -> None:
    try:
        module = load()
    except Exception as exc:  # a broken third-party plugin must never crash polysteer
        broken_plugins[name] = f"{type(exc).__name__}: {exc}"
        return
    if pm.get_plugin(name) is None and not pm.is_registered(module):
        pm.register(module, name=name)


@dataclass
class Registry:
    """Everything the plugins registered for one kind, with the plugin that registered each name."""

    kind: str
    items: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in self.items:
            known = ", ".join(sorted(self.items)) or "none"
            raise PolysteerError(
                f"unknown {self.kind[:-1].replace('_', '-')} {name!r}; registered: {known}. "
                "Install the plugin that provides it or check `polysteer plugins`."
            )
        return self.items[name]

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def names(self) -> list[str]:
        return sorted(self.items)


def registry(kind: str) -> Registry:
    """Collect what every plugin registers for ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise PolysteerError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")
    load_plugins()
    reg = Registry(kind)
    for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
        owner = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            impl.function(register=lambda obj, name=None, _o=owner: _add(reg, obj, name, _o))
        except PolysteerError:
            raise
        except Exception as exc:  # a plugin whose hook fails is reported, the others still load
            broken_plugins[owner] = f"{type(exc).__name__}: {exc}"
    return reg


def _add(reg: Registry, obj: Any, name: str | None, owner: str) -> None:
    name = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
    if not name:
        raise PolysteerError(f"plugin {owner} registered a {reg.kind[:-1]} without a name")
    if name in reg.items:
        raise PolysteerError(
            f"duplicate {reg.kind[:-1]} name {name!r}: registered by both "
            f"{reg.owners[name]} and {owner}; rename one of them or restrict loading "
            "with POLYSTEER_LOAD_PLUGINS"
        )
    reg.items[name] = obj
    reg.owners[name] = owner


def plugin_summary() -> list[dict[str, Any]]:
    """One entry per loaded plugin: its name and what it registered, plus broken ones."""
    load_plugins()
    rows: dict[str, dict[str, Any]] = {}
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = [h.name for h in pm.get_hookcallers(plugin) or []]
        rows[name] = {"name": name, "hooks": sorted(hooks), "registered": {}}
    for kind in KINDS:
        reg = registry(kind)
        for item, owner in reg.owners.items():
            rows[owner]["registered"].setdefault(kind, []).append(item)
    out = sorted(rows.values(), key=lambda r: r["name"])
    out += [{"name": n, "error": e} for n, e in sorted(broken_plugins.items())]
    return out
