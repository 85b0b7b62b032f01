"""Vision-language workflows shared by the CLI, the benchmark and the Python API.

``caption_direction`` fits any registered finder (DiffMean, RFM, VTI's textual PCA ...) on clean versus
hallucinated captions of the same images; ``find_vti`` adds VTI's visual directions to it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from polysteer.device import device_map, resolve_device, resolve_dtype
from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.finder import fit_layers, make_finder
from polysteer.hookpoints import HookPoint
from polysteer.hub import first_line, resolve_model_source
from polysteer.modalities.vision_language.dataset import Sample, demo_pairs
from polysteer.modalities.vision_language.generation import DESCRIBE_PROMPT
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.modalities.vision_language.vti import VTI, visual_directions, vti_plan

TINY_PREFIX = "tiny-"


def load_vlm(name_or_path: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """``(model, processor)`` in eval mode on ``device`` in ``dtype``.

    Args:
        name_or_path: ``tiny-llava`` / ``tiny-idefics3`` (random, offline) or an HF folder or hub id.
        device: ``auto`` (CUDA, then MPS, else CPU), a torch device name, or ``map`` (spread over the GPUs).
        dtype: ``auto`` (bfloat16 on a GPU, float32 on CPU), a name such as ``bfloat16``, or a torch dtype.
    """
    place = resolve_device(device)
    precision = resolve_dtype(dtype, place)
    if name_or_path.startswith(TINY_PREFIX):
        from polysteer.modalities.vision_language.tiny import tiny_vlm

        model, processor = tiny_vlm(name_or_path[len(TINY_PREFIX):])
        return model.to(device=place, dtype=precision), processor
    source = resolve_model_source(name_or_path)  # before importing transformers: offline failures come at once
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=precision, device_map=device_map(device))
    except OSError as exc:
        raise PolysteerError(f"cannot load vision-language model {name_or_path!r}: {first_line(exc)}") from None
    model.config._name_or_path = str(name_or_path)  # the hub id as given, even when read from the cache
    return (model if device_map(device) else model.to(place)).eval(), processor


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
    images, prompts = [d.load_image() for d in demos], [prompt] * len(demos)
    clean = list(zip(images, prompts, [d.caption for d in demos]))
    hallucinated = list(zip(images, prompts, [d.hallucinated_caption for d in demos]))
    X_pos = modality.capture(model, processor, clean, read, pooling=pooling, batch_size=batch_size)
    X_neg = modality.capture(model, processor, hallucinated, read, pooling=pooling, batch_size=batch_size)
    proto = make_finder(finder, **finder_params)
    fitted = proto.fit_layers(X_pos, X_neg) if isinstance(proto, VTI) else fit_layers(proto, X_pos, X_neg)
    filed = {str(HookPoint("text", HookPoint.parse(hp).layer, apply_site or read_site)): f for hp, f in fitted.items()}
    return Direction.from_fitted(
        filed, model=model, modality=modality, finder=proto, d_model=modality.d_model(model, read[0]),
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
    pca: str = "joint",
) -> Direction:
    """VTI's textual and visual directions in one file, to apply with :func:`vti.vti_plan`.

    Text vectors are the file's vectors (``text.blocks.{i}.mlp_out``); the per-token visual tables
    ``[tokens, d_vision]`` are its extras (``vision.blocks.{i}.mlp_out``), since the towers' widths differ.
    ``pca``: ``joint`` (one PCA across the chosen layers, as the reference code) or ``per-token`` (see :mod:`vti`).
    """
    demos = demo_pairs(demos)
    direction = caption_direction(model, processor, demos, VTI(pca), text_layers, apply_site="mlp_out",
                                  prompt=prompt, batch_size=batch_size)
    images = [d.load_image() for d in demos]
    visual = visual_directions(model, processor, images, _layers(model, "vision", vision_layers), trials, mask_ratio,
                               batch_size, seed, pca)
    direction.extras = {str(HookPoint("vision", HookPoint.parse(hp).layer, "mlp_out")): table
                        for hp, table in visual.items()}
    direction.operator, direction.coefficient, direction.scales = "rotate", alpha_text, {}
    direction.provenance.update(alpha_vision=alpha_vision, trials=trials, mask_ratio=mask_ratio, seed=seed,
                                vision_read_site="resid_post", pca=pca)
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
