"""Vision-language workflows shared by the CLI, the benchmark and the Python API.

``caption_direction`` fits any registered finder (DiffMean, RFM, VTI's textual PCA ...) on clean versus
hallucinated captions of the same images; ``find_vti`` adds VTI's visual directions to it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.finder import fit_layers, make_finder
from polysteer.hookpoints import HookPoint

from polysteer.modalities.vision_language.dataset import Sample, demo_pairs
from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT, collect
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.modalities.vision_language.vti import visual_directions, vti_plan

TINY_PREFIX = "tiny-"


def load_vlm(name_or_path: str, dtype: torch.dtype = torch.float32):
    """``(model, processor)`` in eval mode: ``tiny-llava`` / ``tiny-idefics3`` (random, offline) or an HF path."""
    if name_or_path.startswith(TINY_PREFIX):
        from polysteer.modalities.vision_language.tiny import tiny_vlm

        return tiny_vlm(name_or_path[len(TINY_PREFIX):])
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype)
    except OSError as exc:
        raise PolysteerError(f"cannot load vision-language model {name_or_path!r}: {exc}") from None
    model.config._name_or_path = model.config._name_or_path or str(name_or_path)
    return model.eval(), processor


def _layers(model, tower: str, layers: Sequence[int] | None) -> list[int]:
    n = VisionLanguageModality().n_layers(model, tower)
    layers = list(range(n)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise PolysteerError(f"{tower} layers {bad} out of range: the {tower} tower has {n} blocks (0-{n - 1})")
    return layers


def caption_direction(
    model,
    processor,
    demos: Sequence[Sample],
    finder: Any = "diffmean",
    layers: Sequence[int] | None = None,
    read_site: str = "resid_post",
    apply_site: str | None = None,
    prompt: str = DESCRIBE_PROMPT,
    pooling: str = "last",
    batch_size: int = 8,
    **finder_params,
) -> Direction:
    """Fit ``finder`` per text layer on image + prompt + clean caption (positive) vs hallucinated (negative).

    Activations are read at ``read_site`` and the vectors filed under ``apply_site`` (default: the same),
    so VTI can read layer outputs and steer MLP outputs.
    """
    demos = demo_pairs(demos)
    modality = VisionLanguageModality()
    read = [str(HookPoint("text", i, read_site)) for i in _layers(model, "text", layers)]
    images = [d.load_image() for d in demos]
    prompts = [prompt] * len(demos)
    X_pos = collect(model, processor, images, prompts, [d.caption for d in demos], read, pooling, batch_size)
    X_neg = collect(model, processor, images, prompts, [d.hallucinated_caption for d in demos], read, pooling,
                    batch_size)
    proto = make_finder(finder, **finder_params)
    fitted = fit_layers(proto, X_pos, X_neg)
    filed = {hp: str(HookPoint("text", HookPoint.parse(hp).layer, apply_site or read_site)) for hp in read}
    return Direction(
        vectors={filed[hp]: f.direction_ for hp, f in fitted.items()},
        modality=modality.name,
        model=modality.identity(model),
        d_model=modality.d_model(model, read[0]),
        scales={filed[hp]: float(f.scale_) for hp, f in fitted.items()},
        finder={"name": proto.name, "params": {k: v for k, v in proto.get_params().items() if _jsonable(v)}},
        provenance={"n_demos": len(demos), "prompt": prompt, "pooling": pooling, "read_site": read_site},
    )


def find_vti(
    model,
    processor,
    demos: Sequence[Sample],
    vision_layers: Sequence[int] | None = None,
    text_layers: Sequence[int] | None = None,
    trials: int = 50,
    mask_ratio: float = 0.99,
    alpha_vision: float = 0.9,
    alpha_text: float = 0.9,
    prompt: str = DESCRIBE_PROMPT,
    batch_size: int = 8,
    seed: int = 0,
) -> Direction:
    """VTI's textual and visual directions in one file, to apply with :func:`vti.vti_plan`.

    Text vectors are the file's vectors (``text.blocks.{i}.mlp_out``); the per-token visual tables
    ``[tokens, d_vision]`` are its extras (``vision.blocks.{i}.mlp_out``), since the towers' widths differ.
    """
    demos = demo_pairs(demos)
    direction = caption_direction(model, processor, demos, "vti", text_layers, apply_site="mlp_out", prompt=prompt,
                                  batch_size=batch_size)
    images = [d.load_image() for d in demos]
    visual = visual_directions(model, processor, images, _layers(model, "vision", vision_layers), trials, mask_ratio,
                               batch_size, seed)
    direction.extras = {str(HookPoint("vision", HookPoint.parse(hp).layer, "mlp_out")): table
                        for hp, table in visual.items()}
    direction.operator, direction.coefficient, direction.scales = "rotate", alpha_text, {}
    direction.provenance.update(alpha_vision=alpha_vision, trials=trials, mask_ratio=mask_ratio, seed=seed,
                                vision_read_site="resid_post")
    return direction


def direction_plan(model, path, alpha_vision: float | None = None, alpha_text: float | None = None,
                   force: bool = False) -> Plan:
    """Load a direction file, check it was made for ``model``, and build its plan (see :func:`vti.vti_plan`)."""
    direction = Direction.load(path)
    modality = VisionLanguageModality()
    if direction.modality != modality.name:
        raise PolysteerError(f"{path} is a {direction.modality!r} direction; vision-language commands need one "
                             "made by `polysteer vlm find-vti` or `polysteer vlm find`")
    direction.check_model(modality.identity(model), modality.d_model(model, HookPoint("text", 0, "mlp_out")), force)
    return vti_plan(direction, alpha_vision, alpha_text)


def _jsonable(value) -> bool:
    return isinstance(value, (str, int, float, bool, type(None)))
