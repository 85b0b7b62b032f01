"""The vision-language plugin: VLM and open_clip hook points, VTI, hallucination metrics, ``polysteer vlm``."""

from polysteer.hookspecs import hookimpl
from polysteer.modalities.vision_language.modality import VisionLanguageModality


@hookimpl
def register_modalities(register):
    from polysteer.modalities.vision_language.openclip import OpenCLIPModality

    register(VisionLanguageModality)
    register(OpenCLIPModality)


@hookimpl
def register_direction_finders(register):
    from polysteer.modalities.vision_language.vti import VTI

    register(VTI)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.vision_language.hallucination import Chair, Pope
    from polysteer.modalities.vision_language.openclip import CLIPScore

    for evaluator in (Chair, Pope, CLIPScore):
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.vision_language.cli import vlm

    cli.add_command(vlm)
