"""The vision-language modality: VLM and open_clip hook points, VTI, hallucination metrics, ``polysteer vlm``.

``from polysteer.modalities import vision_language as vl``, then ``model, processor = vl.load_model("tiny-llava")``,
``vl.find_vti(model, processor, vl.scene_samples(8))``, ``vl.describe(model, processor, images, plan=...)``.
Names load on first use.
"""

from polysteer.hookspecs import hookimpl
from polysteer.lazy import lazy_exports
from polysteer.modalities.vision_language.modality import VisionLanguageModality

_EXPORTS = {
    "load_model": ".workflow:load_vlm",
    **dict.fromkeys(("caption_direction", "direction_plan", "find_vti"), ".workflow"),
    **dict.fromkeys(("CLIPProcessor", "CLIPScore", "OpenCLIPModality", "load_openclip", "tiny_openclip"), ".openclip"),
    **dict.fromkeys(("DESCRIBE_PROMPT", "collect", "describe", "encode", "format_prompt", "generate",
                     "vision_states"), ".generation"),
    **dict.fromkeys(("Sample", "demo_pairs", "load_samples", "read_samples", "scene_samples"), ".dataset"),
    **dict.fromkeys(("chair_synonyms", "chair_vocabulary", "read_coco"), ".coco"),
    **dict.fromkeys(("run_chair", "run_pope", "vocabulary_for"), ".evaluation"),
    **dict.fromkeys(("POPE_TEMPLATE", "Chair", "Pope", "chair", "pope_metrics"), ".hallucination"),
    **dict.fromkeys(("OBJECTS", "make_scenes"), ".scenes"),
    **dict.fromkeys(("VTI", "visual_directions", "vti_plan"), ".vti"),
    "tiny_vlm": ".tiny",
}
__all__ = sorted([*_EXPORTS, "VisionLanguageModality"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


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
