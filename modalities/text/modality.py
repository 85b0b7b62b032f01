"""The text modality: Hugging Face causal LMs, their canonical hook points, and which models it accepts."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from polysteer.errors import PolysteerError
from polysteer.hookpoints import SITES, HookPoint, guess_layer_prefix
from polysteer.modality import Modality, Target, block_target

# Where the transformer blocks live, keyed by the HF config class.
LAYER_PATHS = {
    "LlamaConfig": "model.layers",
    "MistralConfig": "model.layers",
    "MixtralConfig": "model.layers",
    "Qwen2Config": "model.layers",
    "Qwen3Config": "model.layers",
    "GemmaConfig": "model.layers",
    "Gemma2Config": "model.layers",
    "Gemma3TextConfig": "model.layers",
    "Phi3Config": "model.layers",
    "PhiConfig": "model.layers",
    "OlmoConfig": "model.layers",
    "Olmo2Config": "model.layers",
    "GPT2Config": "transformer.h",
    "GPTJConfig": "transformer.h",
    "BloomConfig": "transformer.h",
    "FalconConfig": "transformer.h",
    "GPTNeoXConfig": "gpt_neox.layers",
    "OPTConfig": "model.decoder.layers",
}
# Configs that belong to other modalities (vision-language, audio): the text modality declines them.
_FOREIGN_SUBCONFIGS = ("vision_config", "audio_encoder", "text_encoder", "decoder")


def layer_prefix(model: nn.Module) -> str:
    """The dotted path of the block list: the table for known configs, else the guesser."""
    config = getattr(model, "config", None)
    known = LAYER_PATHS.get(type(config).__name__)
    if known is not None and _get(model, known) is not None:
        return known
    names = [name for name, _ in model.named_modules()]
    guessed = guess_layer_prefix(names)
    if guessed is None:
        raise PolysteerError(f"cannot find transformer blocks in {type(model).__name__}: no numbered sub-modules")
    return guessed


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


class TextModality(Modality):
    """Any Hugging Face causal LM: hook points ``text.blocks.{i}.{site}``."""

    name = "text"
    priority = 0

    def accepts(self, model: Any) -> bool:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "generate") or not isinstance(model, nn.Module):
            return False
        if any(getattr(config, sub, None) is not None for sub in _FOREIGN_SUBCONFIGS):
            return False
        try:
            return len(self._blocks(model)) > 0
        except PolysteerError:
            return False

    def _blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(layer_prefix(model))

    def hook_points(self, model: Any) -> list[str]:
        n = len(self._blocks(model))
        return [str(HookPoint("text", i, site)) for i in range(n) for site in SITES]

    def resolve(self, model: Any, hook_point: HookPoint) -> Target:
        hp = HookPoint.parse(hook_point)
        if hp.tower != "text":
            raise PolysteerError(f"hook point {hp} is in the {hp.tower!r} tower; text models have only 'text'")
        blocks = self._blocks(model)
        if not 0 <= hp.layer < len(blocks):
            raise PolysteerError(
                f"layer {hp.layer} out of range for {type(model).__name__}: it has {len(blocks)} blocks "
                f"(0-{len(blocks) - 1})"
            )
        return block_target(blocks[hp.layer], hp.site)

    def d_model(self, model: Any, hook_point: HookPoint) -> int:
        config = model.config
        for key in ("hidden_size", "n_embd", "d_model"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        return int(model.get_input_embeddings().weight.shape[1])

    def n_layers(self, model: Any) -> int:
        return len(self._blocks(model))

    def load_model(self, name: str | None = None, device: str = "auto", dtype: str = "auto",
                   **options: Any) -> tuple[Any, Any]:
        """``(model, tokenizer)``: None or ``smollm2`` is the embedded SmolLM2-135M-Instruct, else an HF path or id."""
        from polysteer.modalities.text.models import load_text_model

        return load_text_model(name, device=device, dtype=dtype, **options)

    def capture(self, model: Any, processor: Any, inputs: Sequence[Any], hook_points: Sequence[str],
                **options: Any) -> dict[str, torch.Tensor]:
        """Pooled activations of texts or :class:`~polysteer.modalities.text.generation.Example` rows.

        ``options``: pooling (``mean``, ``last``, ``tokens``), batch_size, chat, cache_dir (see ``collect``).
        """
        from polysteer.modalities.text.generation import collect

        return collect(model, processor, inputs, hook_points, **options)

    def generate(self, model: Any, processor: Any, inputs: Sequence[str], plan: Any = None,
                 **options: Any) -> list[str]:
        """A completion per prompt; ``options``: max_new_tokens, batch_size, chat, system, do_sample, seed, ..."""
        from polysteer.modalities.text.generation import generate

        return generate(model, processor, inputs, plan, **options)
