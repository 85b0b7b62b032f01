"""The ``polysteer`` command. Modalities and third-party plugins add subcommands via ``register_commands``.

Plugins (and with them torch) load only when a command needs them: ``polysteer --help`` lists the plugin commands
from an index that an earlier full load saved in the polysteer cache, keyed by the entry points to load, their
versions and the size and modification time of their source files; any change rebuilds it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import click

from polysteer import manager
from polysteer.errors import PolysteerError
from polysteer.manager import load_plugins, plugin_summary, pm


class PolysteerGroup(click.Group):
    """The top-level group: plugin commands are added on first need, and the top-level help comes from the
    command index when it is current, so listing the commands imports no plugin."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            get_cli()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        get_cli()
        return super().list_commands(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if _commands_registered:
            super().format_commands(ctx, formatter)
            return
        key = command_index_key()
        stubs = _read_index(key)
        if stubs is None:
            get_cli()
            super().format_commands(ctx, formatter)
            _write_index(key, self)
            return
        view = click.Group(self.name, commands={**stubs, **self.commands})
        click.Group.format_commands(view, ctx, formatter)


@click.group(cls=PolysteerGroup)
@click.version_option(package_name="polysteer")
def cli():
    """Steer generative models at inference time.

    Every group spells the shared options one way: a command that loads a model takes --model, --device and
    --dtype; a direction is -d FILE[@COEF]; layers are --layers 12, 8,12, 8-12 or all; a coefficient is --coef X
    and a list of them --coefs 0,1,2,4.
    """


@cli.command()
def plugins():
    """List every plugin, what it registered, and plugins that failed to load."""
    get_cli()  # a plugin whose commands fail to register is reported too
    for row in plugin_summary():
        if "error" in row:
            click.echo(f"{row['name']}  [failed to load] {row['error']}")
            continue
        click.echo(row["name"])
        for kind, names in sorted(row["registered"].items()):
            click.echo(f"  {kind}: {', '.join(sorted(names))}")
        if "problem" in row:
            click.echo(f"  problem: {row['problem']}")


@cli.command()
@click.argument("path", type=click.Path())
def inspect(path):
    """Print a direction file's manifest and every tensor it stores (vectors, operator extras, VTI towers)."""
    import json

    from polysteer.direction import Direction

    direction = Direction.load(path)
    click.echo(json.dumps(direction.manifest(), indent=2))
    tensors = {**{f"vector {hp}": v for hp, v in direction.vectors.items()},
               **{f"extra {name}": t for name, t in sorted(direction.extras.items())}}
    click.echo(f"{len(tensors)} tensors:")
    for name, t in tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        click.echo(f"  {name}: shape {tuple(t.shape)} {dtype} norm {t.float().norm():.4f}")


_CORE_COMMANDS = frozenset(cli.commands)
_commands_registered = False


def get_cli() -> click.Group:
    """The command group with every plugin's commands added (once)."""
    global _commands_registered
    if not _commands_registered:
        _commands_registered = True
        add_plugin_commands(cli)
    return cli


def add_plugin_commands(group: click.Group) -> None:
    """Let every plugin add its commands, the built-ins first; a third-party plugin cannot replace a built-in
    command, and one whose hook fails is reported by ``polysteer plugins`` without taking the CLI down."""
    load_plugins()
    impls = pm.hook.register_commands.get_hookimpls()
    builtin = [i for i in impls if pm.get_name(i.plugin) in manager.builtin_plugins]
    for impl in builtin + [i for i in impls if i not in builtin]:
        name = pm.get_name(impl.plugin)
        before = dict(group.commands)
        try:
            impl.function(cli=group)
        except (Exception, SystemExit) as exc:  # a plugin's broken command must not take the CLI down
            manager.broken_plugins[name] = f"register_commands failed: {type(exc).__name__}: {exc}"
        if name not in manager.builtin_plugins:
            _keep_builtins(group, before, name)


def _keep_builtins(group: click.Group, before: dict[str, click.Command], plugin: str) -> None:
    replaced = sorted(n for n, cmd in before.items() if group.commands.get(n) is not cmd)
    if replaced:
        group.commands.update({n: before[n] for n in replaced})
        manager.broken_plugins[plugin] = (f"tried to replace the built-in command(s) {replaced}; the built-ins "
                                          "were kept: give the plugin's commands other names")


def main(argv=None):
    """Entry point: bad input prints one ``Error:`` line and exits 1, never a traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except PolysteerError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.UsageError as exc:  # a missing or unknown option: one line that names the --help to read
        command = exc.ctx.command_path if exc.ctx is not None else "polysteer"
        click.echo(f"Error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


def command_index_key() -> str:
    """The key of the command index: each entry point to load, its distribution and a stamp of its sources."""
    from polysteer.cache import make_key

    points = [[ep.name, ep.value, ep.dist.name if ep.dist else None, ep.dist.version if ep.dist else None,
               _source_stamp(ep.module)] for ep in manager.entry_points_to_load()]
    return make_key(kind="commands", entry_points=points)


def _source_stamp(module: str) -> list[int] | None:
    """``[files, newest mtime_ns, total size]`` of a plugin module's Python sources, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
        roots = [Path(r) for r in (spec.submodule_search_locations or [])] or [Path(spec.origin)]
        files = [f for r in roots for f in (r.rglob("*.py") if r.is_dir() else [r])]
        stats = [f.stat() for f in files]
    except Exception:  # an unfindable or odd module: no stamp, so its entry never matches a saved one
        return None
    return [len(stats), max((st.st_mtime_ns for st in stats), default=0), sum(st.st_size for st in stats)]


def _index_path() -> Path:
    from polysteer.cache import cache_root

    return cache_root() / "cli-commands.json"


def _read_index(key: str) -> dict[str, click.Command] | None:
    """Help-only stand-ins for the plugin commands saved under ``key``; None when missing, stale or unreadable."""
    from polysteer.cache import cache_enabled

    if not cache_enabled():
        return None
    try:
        entry = json.loads(_index_path().read_text(encoding="utf-8"))
        if entry.get("key") != key:
            return None
        return {row["name"]: click.Command(row["name"], help=row["help"], short_help=row["short_help"],
                                           hidden=bool(row["hidden"]), deprecated=row["deprecated"])
                for row in entry["commands"]}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # rebuilt below: never fatal
        return None


def _write_index(key: str, group: click.Group) -> None:
    """Save the plugin commands' names and help, unless a plugin failed (its commands would be missing)."""
    from polysteer.cache import cache_enabled
    from polysteer.io import write_json_atomic

    if not cache_enabled() or manager.broken_plugins:
        return
    rows = [_describe(name, command) for name, command in sorted(group.commands.items())
            if name not in _CORE_COMMANDS]
    try:
        write_json_atomic(_index_path(), {"key": key, "commands": rows}, indent=None)
    except OSError:  # a read-only cache: the next help loads the plugins again, nothing worse
        pass


def _describe(name: str, command: click.Command) -> dict[str, Any]:
    deprecated = command.deprecated if isinstance(command.deprecated, (bool, str)) else bool(command.deprecated)
    return {"name": name, "help": command.help, "short_help": command.short_help, "hidden": command.hidden,
            "deprecated": deprecated}
