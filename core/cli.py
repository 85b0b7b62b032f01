"""The ``polysteer`` command. Modalities and third-party plugins add subcommands via ``register_commands``."""

from __future__ import annotations

import sys

import click

from polysteer import manager
from polysteer.errors import PolysteerError
from polysteer.manager import load_plugins, plugin_summary, pm


@click.group()
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
        click.echo(f"  {name}: shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} norm {t.float().norm():.4f}")


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
    get_cli()
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
