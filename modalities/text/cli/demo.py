"""``polysteer demo``: the main job on the embedded model, end to end in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time

import click

from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import EVAL_PROMPTS, PERSONAS
from polysteer.option_types import NONNEGATIVE_INT, CheckedChoice, CheckedInt
from polysteer.options import coef_option, max_new_tokens_option, output_option

DEFAULT_CONCEPT = "ocean"
DEFAULT_COEF = 0.3


def _say(message: str, start: float) -> None:
    click.echo(f"[{time.time() - start:5.0f}s] {message}", err=True)


@click.command()
@text_model_options
@click.option("--concept", type=CheckedChoice(sorted(PERSONAS)), default=DEFAULT_CONCEPT, show_default=True)
@click.option("--layer", type=NONNEGATIVE_INT, help="Block to steer (default: 40% of the depth, 12 on SmolLM2).")
@coef_option(DEFAULT_COEF, help="A fraction of the typical activation norm at the layer (fluent around 0.05-0.5).")
@click.option("--prompts", "n_prompts", default=6, show_default=True, type=CheckedInt(1, len(EVAL_PROMPTS)),
              help="How many neutral prompts to show.")
@max_new_tokens_option(40)
@output_option(required=False, help="Also save the direction here (.safetensors).")
def demo(model_name, device, dtype, concept, layer, coef, n_prompts, max_new_tokens, output):
    """Find a concept direction from a persona pair and show unsteered vs steered generations."""
    from polysteer.modalities.text.evaluators.rubric import FluencyScore
    from polysteer.modalities.text.modality import TextModality
    from polysteer.modalities.text.workflow import concept_rate, default_layer, find_direction, persona_data

    start = time.time()
    pair = PERSONAS[concept]
    _say(f"loading {model_name} (the first run converts the packaged GGUF once)", start)
    model, tokenizer = load_text_model(model_name, device, dtype)
    layer = default_layer(TextModality().n_layers(model)) if layer is None else layer
    _say(f"writing answers with and without the instruction {pair.positive!r}", start)
    positives, negatives = persona_data(model, tokenizer, pair)
    _say(f"fitting DiffMean at text.blocks.{layer}.resid_post", start)
    direction = find_direction(model, tokenizer, positives, negatives, [layer], "diffmean",
                               provenance={"persona_positive": pair.positive, "persona_negative": pair.negative})
    if output:
        direction.save(output)
    _say("generating unsteered and steered answers", start)
    result = concept_rate(model, tokenizer, direction.to_plan(coef), pair.keywords, EVAL_PROMPTS[:n_prompts],
                          max_new_tokens)
    for prompt, base, steered in zip(result.prompts, result.unsteered_texts, result.steered_texts):
        click.echo(f"\n### {prompt}\n[unsteered] {_one_line(base)}\n[steered]   {_one_line(steered)}")
    scale = direction.scales[direction.hook_points[0]]
    click.echo(f"\nconcept '{concept}' mentioned: unsteered {result.unsteered:.0%}, steered {result.steered:.0%} "
               f"of {len(result.prompts)} prompts (coefficient {coef} x typical activation norm {scale:.1f})")
    fluency = FluencyScore.calibrated(model, tokenizer, result.unsteered_texts)
    mean = lambda texts: sum(fluency.evaluate(texts)) / len(texts)  # noqa: E731
    click.echo(f"fluency (0-2 judge calibrated on the unsteered answers): unsteered "
               f"{mean(result.unsteered_texts):.2f}, steered {mean(result.steered_texts):.2f}")
    _say("done", start)


def _one_line(text: str) -> str:
    return " ".join(text.split())
