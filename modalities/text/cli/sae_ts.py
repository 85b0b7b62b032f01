"""``polysteer sae ts``: an SAE-TS targeted direction for one SAE feature, or for a concept's top feature."""

from __future__ import annotations

import click

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import NONNEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, input_type, output_type
from polysteer.options import coef_option, max_new_tokens_option, output_option, seed_option
from polysteer.plugins.sae.pretrained import sae_type


@click.command("ts")
@text_model_options
@click.option("--sae", "sae_path", type=sae_type(), help="SAE folder or SAELens RELEASE/SAE_ID (default: the shipped "
              "SmolLM2 SAE).")
@click.option("--feature", type=NONNEGATIVE_INT, help="Target SAE feature.")
@click.option("--data", "data_path", type=input_type(), help="Contrastive JSONL: target its top contrast feature.")
@click.option("--effects", "effects_path", type=output_type("file"),
              help="Effect model file: read when it exists, else fitted and written there (also cached).")
@click.option("--vectors", "n_vectors", type=POSITIVE_INT, default=256, show_default=True,
              help="Random feature-space vectors to measure for the effect model.")
@click.option("--max-features", type=POSITIVE_INT, default=4, show_default=True,
              help="Decoder rows per random vector (1 to this many).")
@click.option("--norm-low", type=POSITIVE_FLOAT, default=0.25, show_default=True,
              help="Smallest random-vector norm, as a fraction of the typical activation norm.")
@click.option("--norm-high", type=POSITIVE_FLOAT, default=1.0, show_default=True, help="Largest one.")
@click.option("--prompts", "prompts_path", type=input_type(), help="Prompts to measure effects on (one per line; "
              "default: 8 built-in questions).")
@max_new_tokens_option(16, help="Tokens generated per prompt and vector when measuring effects.")
@click.option("--ridge", "ridges", type=POSITIVE_FLOAT, multiple=True,
              help="Ridge strength; repeat to choose on held-out vectors (default: 0.01, 0.1, 1, 10 and 100).")
@seed_option()
@click.option("--no-cache", is_flag=True, help="Fit the effect model anew, ignoring the polysteer cache.")
@coef_option(1.0, help="The file's default coefficient (--feature: the norm `sae feature` would add at it).")
@output_option(help="Direction file to write (.safetensors).")
def ts(model_name, device, dtype, sae_path, feature, data_path, effects_path, n_vectors, max_features, norm_low,
       norm_high, prompts_path, max_new_tokens, ridges, seed, no_cache, coef, output):
    """SAE-Targeted Steering: a vector that raises one SAE feature while cancelling generic side effects.

    Fits (or reuses) a linear model of how steering vectors change the SAE's features in generated text, from
    random sparse combinations of decoder rows, then solves it for the target feature.
    """
    from pathlib import Path

    from polysteer.data import read_contrastive, read_lines
    from polysteer.modalities.text.cli.sae import _sae_path
    from polysteer.modalities.text.sae.ts import RIDGES, EffectModel
    from polysteer.modalities.text.sae.ts_finder import check_effects_shape
    from polysteer.plugins.sae.model import SAE

    if (feature is None) == (data_path is None):
        raise PolysteerError("give exactly one of --feature N or --data FILE")
    if norm_low > norm_high:
        raise PolysteerError(f"--norm-low {norm_low} is above --norm-high {norm_high}")
    classes = read_contrastive(data_path) if data_path else None
    prompts = read_lines(prompts_path, "prompts") if prompts_path else None
    sae = SAE.load(_sae_path(sae_path))
    if feature is not None and feature >= sae.d_sae:
        raise PolysteerError(f"--feature {feature} out of range: the SAE has {sae.d_sae} latents (0-{sae.d_sae - 1})")
    if effects_path and Path(effects_path).is_file():
        check_effects_shape(EffectModel.load(effects_path), sae, str(effects_path))
    settings = {"n_vectors": n_vectors, "max_features": max_features, "relative_norms": (norm_low, norm_high),
                "max_new_tokens": max_new_tokens, "ridge": list(ridges) or RIDGES, "seed": seed}
    direction, info = _targeted(model_name, device, dtype, sae, feature, classes, effects_path, prompts,
                                not no_cache, coef, settings)
    direction.save(output)
    explained = info.get("heldout_explained")
    quality = f", held-out effects explained {explained:.3f}" if explained is not None else ""
    click.echo(f"wrote {output}: SAE-TS vector for feature {direction.provenance['target_feature']} at "
               f"{sae.hook_point} (effect model of {info.get('n_vectors')} vectors{quality})")


def _targeted(model_name, device, dtype, sae, feature, classes, effects_path, prompts, cache, coef, settings):
    """Load the model, get the effect model, and package the targeted vector as a Direction."""
    import torch

    from polysteer.direction import Direction
    from polysteer.modalities.text.modality import TextModality
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.sae.ts_finder import SAETS, effect_model

    model, tokenizer = load_text_model(model_name, device, dtype)
    modality, hp = TextModality(), sae.hook_point
    sae.check_width(modality.d_model(model, hp), "this model's activations")
    effects = effect_model(model, tokenizer, sae, effects_path, cache, prompts, **settings)
    if classes is None:
        target = torch.zeros(sae.d_sae)
        target[feature] = 1.0
        vector = effects.targeted_vector(target) * sae.W_dec[feature].detach().float().norm()
    else:
        acts = [modality.capture(model, tokenizer, examples, [hp], pooling="mean")[hp] for examples in classes]
        finder = SAETS(sae=sae, effects=effects).fit(*acts)
        feature, vector = finder.feature_, finder.direction_ * finder.scale_
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return Direction.from_fitted(
        {hp: vector}, model=model, modality=modality, coefficient=coef,
        finder={"name": "sae_ts", "params": {**params, "feature": int(feature)}},
        provenance={"target_feature": int(feature), "sae_hook_name": hp,
                    "effect_model": {k: v for k, v in effects.info.items() if k != "key"}},
    ), effects.info
