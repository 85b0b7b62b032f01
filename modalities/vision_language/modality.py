"""The vision-language modality: Hugging Face VLMs with a vision tower and a text tower.

Hook points are ``vision.blocks.{i}.{site}`` (the image encoder) and ``text.blocks.{i}.{site}`` (the
language model). Position spans select image tokens, text tokens or generated tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from polysteer.errors import PolysteerError
from polysteer.hookpoints import SITES, HookPoint, guess_layer_prefix
from polysteer.modality import Modality, StepState, Target, block_target

TOWERS = ("vision", "text")
SPANS = ("image", "text", "generated")


@dataclass(frozen=True)
class Layout:
    """Dotted paths of the two block lists of one architecture."""

    vision: str
    text: str


# Keyed by the HF config class; other VLMs fall back to the guesser below.
LAYOUTS = {
    "LlavaConfig": Layout("model.vision_tower.encoder.layers", "model.language_model.layers"),
    "Idefics3Config": Layout("model.vision_model.encoder.layers", "model.text_model.layers"),
    "SmolVLMConfig": Layout("model.vision_model.encoder.layers", "model.text_model.layers"),
}
_TOWER_KEYWORDS = {"vision": ("vision", "visual"), "text": ("language_model", "text_model")}


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def tower_prefix(model: nn.Module, tower: str) -> str:
    """The block-list path of ``tower``: the layout table first, else the most frequent numbered prefix."""
    layout = LAYOUTS.get(type(getattr(model, "config", None)).__name__)
    if layout is not None and _submodule(model, getattr(layout, tower)) is not None:
        return getattr(layout, tower)
    keywords = _TOWER_KEYWORDS[tower]
    names = [name for name, _ in model.named_modules() if any(k in name for k in keywords)]
    guessed = guess_layer_prefix(names)
    if guessed is None:
        raise PolysteerError(f"cannot find the {tower} tower's blocks in {type(model).__name__}; "
                             f"supported layouts: {', '.join(LAYOUTS)}")
    return guessed


def image_token_id(model: Any) -> int:
    """The id of the placeholder token that the image features replace in the text sequence."""
    config = model.config
    for key in ("image_token_id", "image_token_index"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise PolysteerError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


class VisionLanguageModality(Modality):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``) and Idefics3 / SmolVLM, plus guessed look-alikes."""

    name = "vision_language"
    priority = 10  # above the text modality, which would otherwise take the language model
    _image_id: int | None = None

    def accepts(self, model: Any) -> bool:
        config = getattr(model, "config", None)
        if not isinstance(model, nn.Module) or getattr(config, "vision_config", None) is None:
            return False
        try:
            return all(len(self.blocks(model, tower)) > 0 for tower in TOWERS)
        except PolysteerError:
            return False

    def blocks(self, model: nn.Module, tower: str) -> nn.ModuleList:
        """The block list of ``tower`` ('vision' or 'text')."""
        if tower not in TOWERS:
            raise PolysteerError(f"tower {tower!r} is not in vision-language models; use one of {TOWERS}")
        return model.get_submodule(tower_prefix(model, tower))

    def n_layers(self, model: Any, tower: str = "text") -> int:
        """Blocks of ``tower`` (default the language model, which generates and which workflows steer)."""
        return len(self.blocks(model, tower))

    def load_model(self, name: str | None = None, device: str = "auto", dtype: str = "auto",
                   **options: Any) -> tuple[Any, Any]:
        """``(model, processor)``: an HF vision-language model, or ``tiny-llava`` / ``tiny-idefics3`` (random)."""
        from polysteer.modalities.vision_language.workflow import load_vlm

        if name is None:
            raise PolysteerError("vision-language models have no default: name a folder or hub id "
                                 "(llava-hf/llava-1.5-7b-hf) or a random test model (tiny-llava, tiny-idefics3)")
        return load_vlm(name, device=device, dtype=dtype, **options)

    def capture(self, model: Any, processor: Any, inputs: Sequence[Any], hook_points: Sequence[str],
                **options: Any) -> dict[str, torch.Tensor]:
        """Pooled activations of ``(image, prompt, answer)`` triples, read over the answer's tokens.

        ``options``: pooling (``last``, VTI's, or ``mean``), batch_size (see ``generation.collect``).
        """
        from polysteer.modalities.vision_language.generation import collect

        images, prompts, answers = _columns(inputs, 3, "(image, prompt, answer) triples")
        return collect(model, processor, images, prompts, answers, hook_points, **options)

    def generate(self, model: Any, processor: Any, inputs: Sequence[Any], plan: Any = None,
                 **options: Any) -> list[str]:
        """A greedy answer per ``(image, prompt)`` pair; ``options``: max_new_tokens, batch_size, progress."""
        from polysteer.modalities.vision_language.generation import generate

        images, prompts = _columns(inputs, 2, "(image, prompt) pairs")
        return generate(model, processor, images, prompts, plan, **options)

    def hook_points(self, model: Any) -> list[str]:
        return [str(HookPoint(tower, i, site)) for tower in TOWERS
                for i in range(self.n_layers(model, tower)) for site in SITES]

    def resolve(self, model: Any, hook_point: HookPoint) -> Target:
        hp = HookPoint.parse(hook_point)
        blocks = self.blocks(model, hp.tower)
        if not 0 <= hp.layer < len(blocks):
            raise PolysteerError(f"layer {hp.layer} out of range for the {hp.tower} tower of "
                                 f"{type(model).__name__}: it has {len(blocks)} blocks (0-{len(blocks) - 1})")
        return block_target(blocks[hp.layer], hp.site)

    def d_model(self, model: Any, hook_point: HookPoint) -> int:
        hp = HookPoint.parse(hook_point)
        config = model.config.vision_config if hp.tower == "vision" else model.config.get_text_config()
        return int(config.hidden_size)

    def span_mask(self, span: str, state: StepState, h: torch.Tensor) -> torch.Tensor:
        """'image': image tokens (every vision-tower position); 'text': the other tokens; 'generated': new ones.

        A tensor is taken for the text tower when its [batch, seq] matches the forward's ``input_ids``.
        """
        if span not in SPANS:
            raise PolysteerError(f"unknown span {span!r} for vision-language models; use one of {SPANS}")
        ids = state.batch.get("input_ids")
        if ids is None or tuple(ids.shape) != tuple(h.shape[:2]):  # a vision-tower tensor: all image patches
            return torch.full(h.shape[:2], span == "image", dtype=torch.bool, device=h.device)
        if span == "generated":
            return state.positions >= state.prompt_length
        image = ids.to(h.device) == self._image_id
        return image if span == "image" else ~image

    def tracker(self, model: Any):
        self._image_id = image_token_id(model)  # span_mask sees only the step state, not the model
        return super().tracker(model)

    def identity(self, model: Any) -> dict[str, str]:
        """Name and architecture, with a hash over both towers' geometry (nested configs)."""
        identity = super().identity(model)
        config = model.config
        parts = {"model_type": getattr(config, "model_type", ""),
                 "vision": _geometry(config.vision_config), "text": _geometry(config.get_text_config())}
        identity["config_hash"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        return identity


def _geometry(config: Any) -> dict[str, Any]:
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size", "patch_size", "image_size")
    return {k: getattr(config, k, None) for k in keys}


def _columns(rows: Sequence[Any], width: int, what: str) -> list[list[Any]]:
    """Split rows of ``width`` items into columns, with a clear error for anything else."""
    rows = list(rows)
    if not rows or any(not isinstance(row, (tuple, list)) or len(row) != width for row in rows):
        raise PolysteerError(f"vision-language inputs are {what}")
    return [list(column) for column in zip(*rows)]
