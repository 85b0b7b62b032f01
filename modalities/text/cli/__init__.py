"""The text commands: find, generate, sweep, demo, convert, train-vector, attribute, detect, explain, sae, serve,
refusal, tune."""

from __future__ import annotations

import importlib

import click

from polysteer.options import model_options

MODEL_HELP = "HF model path or id; 'smollm2' is the embedded default."
#: ``--model`` (default ``smollm2``), ``--device`` and ``--dtype``, as every text command spells them.
text_model_options = model_options(default="smollm2", help=MODEL_HELP)

_COMMANDS = {  # module -> its commands, in the order `polysteer --help` lists them
    "main": ("find", "generate_cmd", "convert"),
    "sweep": ("sweep",),
    "demo": ("demo",),
    "trained": ("train_vector",),
    "attribution": ("attribute",),
    "detect": ("detect",),
    "sae": ("explain", "sae"),
    "serve": ("serve",),
    "refusal": ("refusal",),
    "tune": ("tune",),
}


def register(cli: click.Group) -> None:
    """Add every text command to the ``polysteer`` group.

    Each module loads on its own, so one that fails to import takes only its own commands away; the
    failures are raised together at the end, and ``polysteer plugins`` reports them.
    """
    failed = []
    for module_name, names in _COMMANDS.items():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except Exception as exc:  # a missing optional dependency must not hide the other commands
            failed.append(f"{module_name}: {type(exc).__name__}: {exc}")
            continue
        for name in names:
            cli.add_command(getattr(module, name))
    try:
        from polysteer.modalities.text.cli.sae_guided import lf, saif

        cli.commands["sae"].add_command(lf)
        cli.commands["sae"].add_command(saif)
        cli.commands["sae"].add_command(importlib.import_module(f"{__name__}.sae_ts").ts)
        cli.commands["sae"].add_command(importlib.import_module(f"{__name__}.sae_flow").flow)
    except Exception as exc:
        failed.append(f"sae_guided: {type(exc).__name__}: {exc}")
    if failed:
        raise ImportError("some text commands failed to load: " + "; ".join(failed))
