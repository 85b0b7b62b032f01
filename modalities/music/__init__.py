"""The music modality plugin: MusicGen (transformers and audiocraft), audio evaluators and ``polysteer music``."""

from polysteer.hookspecs import hookimpl
from polysteer.modalities.music.modality import MusicModality


@hookimpl
def register_modalities(register):
    register(MusicModality)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.music.evaluators import EVALUATORS

    for evaluator in EVALUATORS:
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.music.cli import music

    cli.add_command(music)
