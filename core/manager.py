"""Plugin manager: built-ins and third-party plugins load the same way, through the ``polysteer`` entry points.

``POLYSTEER_LOAD_PLUGINS`` (comma-separated entry-point names, empty for none) restricts which third-party
plugins load and ``POLYSTEER_EXCLUDE_PLUGINS`` names third-party plugins to skip; the built-ins (entry points of
the ``polysteer`` distribution itself) always load. A plugin that fails to import (even with ``SystemExit``), whose
hook raises, or that registers a name another plugin already took is recorded in :data:`broken_plugins` with its
name, and the rest of polysteer carries on.
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
builtin_plugins: set[str] = set()
_loaded = False


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    return None if value is None else {n.strip() for n in value.split(",") if n.strip()}


def _allowed(name: str) -> bool:
    """Whether a third-party plugin may load under POLYSTEER_LOAD_PLUGINS and POLYSTEER_EXCLUDE_PLUGINS."""
    only, excluded = _names("POLYSTEER_LOAD_PLUGINS"), _names("POLYSTEER_EXCLUDE_PLUGINS") or set()
    return (only is None or name in only) and name not in excluded


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION


def load_plugins() -> None:
    """Import and register every ``polysteer`` entry point once: the built-ins first, then third-party plugins."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points_to_load():
        if _is_builtin(ep):
            builtin_plugins.add(ep.name)
        _register_module(ep.name, ep.load)


def entry_points_to_load() -> list[importlib.metadata.EntryPoint]:
    """The ``polysteer`` entry points :func:`load_plugins` imports, in its order (read without importing any)."""
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                    key=lambda ep: (not _is_builtin(ep), ep.name))
    return [ep for ep in points if _is_builtin(ep) or _allowed(ep.name)]


def _register_module(name: str, load: Callable[[], Any]) -> None:
    try:
        module = load()
    except (Exception, SystemExit) as exc:  # a broken third-party plugin must never take polysteer down
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
    """Collect what every plugin registers for ``kind`` (one of :data:`KINDS`), in registration order.

    A hook that raises, or a name registered twice, is reported in :data:`broken_plugins` under the plugin's name;
    the first registration of a name wins, so a later plugin never shadows a built-in.
    """
    if kind not in KINDS:
        raise PolysteerError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")
    load_plugins()
    reg = Registry(kind)
    for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
        owner = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            impl.function(register=lambda obj, name=None, _o=owner: _add(reg, obj, name, _o))
        except (Exception, SystemExit) as exc:  # one plugin's failing hook must not hide the others
            broken_plugins[owner] = f"register_{kind} failed: {type(exc).__name__}: {exc}"
    return reg


def _add(reg: Registry, obj: Any, name: str | None, owner: str) -> None:
    name = name or getattr(obj, "name", None)
    if not name:
        fix = (f"register({obj.__name__}, name='...')" if callable(obj) and hasattr(obj, "__name__")
               else "give it a `name` attribute")
        raise PolysteerError(f"registered a {reg.kind[:-1]} without a name; {fix}")
    if name in reg.items:
        broken_plugins[owner] = (f"duplicate {reg.kind[:-1]} name {name!r}: already registered by "
                                 f"{reg.owners[name]}, so {owner}'s was skipped; rename it or exclude one of them "
                                 "with POLYSTEER_EXCLUDE_PLUGINS")
        return
    reg.items[name] = obj
    reg.owners[name] = owner


def plugin_summary() -> list[dict[str, Any]]:
    """One entry per loaded plugin (its name, what it registered, any problem), plus plugins that failed to load."""
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
    for name, problem in broken_plugins.items():
        if name in rows:  # loaded, but part of what it registers was refused
            rows[name]["problem"] = problem
    out = sorted(rows.values(), key=lambda r: r["name"])
    out += [{"name": n, "error": e} for n, e in sorted(broken_plugins.items()) if n not in rows]
    return out
