"""The text commands: find, generate, sweep, demo, convert, train-vector, attribute, detect, explain, sae."""

import click


def register(cli: click.Group) -> None:
    """Add every text command to the ``polysteer`` group."""
    from polysteer.modalities.text.cli.attribution import attribute
    from polysteer.modalities.text.cli.demo import demo
    from polysteer.modalities.text.cli.detect import detect
    from polysteer.modalities.text.cli.main import convert, find, generate_cmd
    from polysteer.modalities.text.cli.sae import explain, sae
    from polysteer.modalities.text.cli.sae_guided import lf, saif
    from polysteer.modalities.text.cli.trained import train_vector
    from polysteer.modalities.text.cli.sweep import sweep

    sae.add_command(lf)
    sae.add_command(saif)
    for command in (find, generate_cmd, sweep, demo, convert, train_vector, attribute, detect, explain, sae):
        cli.add_command(command)
