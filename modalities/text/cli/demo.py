"""``polysteer demo``: the main job on the embedded model, end to end in a few minutes on 2 CPU cores."""

from __future__ import annotations

import time

import click

from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import EVAL_PROMPTS, PERSONAS
from polysteer.option_types import NONNEGATIVE_INT, CheckedChoice, CheckedInt
from polysteer.options import coef_option, max_new_tokens_option, output_option, schedule_option

DEFAULT_CONCEPT = "ocean"
# chosen on the 14 built-in prompts the demo does not show, among 0.2-0.4 at one block and 0.06-0.15 at three,
# constant, generated-only or decaying: 3 blocks at 0.12, fading out over 20 steps, wrote about the ocean in 14/14
# answers at fluency 1.64, where one block at 0.3, constant (the earlier default) reached fluency 1.14
DEFAULT_COEF = 0.12
DEFAULT_SCHEDULE = "decay:0-20"
SPREAD = (-2, 0, 2)  # blocks around --layer: three small pushes are more fluent than one large one


def _say(message: str, start: float) -> None:
    click.echo(f"[{time.time() - start:5.0f}s] {message}", err=True)


@click.command()
@text_model_options
@click.option("--concept", type=CheckedChoice(sorted(PERSONAS)), default=DEFAULT_CONCEPT, show_default=True)
@click.option("--layer", type=NONNEGATIVE_INT,
              help="Middle block to steer, with the blocks 2 before and 2 after it (default: 40% of the depth, 12 on "
                   "SmolLM2).")
@coef_option(DEFAULT_COEF, help="At each block, a fraction of the typical activation norm there (fluent around "
                                "0.05-0.2 over three blocks).")
@schedule_option(default=DEFAULT_SCHEDULE, help="When to steer: decay:0-20 fades out over the first 20 steps; "
                                                "constant, generated-only, window:0-20, ramp:0-10 also work.")
@click.option("--prompts", "n_prompts", default=6, show_default=True, type=CheckedInt(1, len(EVAL_PROMPTS)),
              help=f"How many of the {len(EVAL_PROMPTS)} neutral prompts to print (all are scored).")
@max_new_tokens_option(40)
@output_option(required=False, help="Also save the direction here (.safetensors).")
def demo(model_name, device, dtype, concept, layer, coef, schedule, n_prompts, max_new_tokens, output):
    """Find a concept direction from a persona pair and show unsteered vs steered generations."""
    from polysteer.modalities.text.modality import TextModality
    from polysteer.modalities.text.workflow import default_layer, find_direction, persona_data

    start = time.time()
    pair = PERSONAS[concept]
    _say(f"loading {model_name} (the first run converts the packaged GGUF once)", start)
    model, tokenizer = load_text_model(model_name, device, dtype)
    n_layers = TextModality().n_layers(model)
    layer = default_layer(n_layers) if layer is None else layer
    layers = sorted({min(max(layer + k, 0), n_layers - 1) for k in SPREAD})
    _say(f"writing answers with and without the instruction {pair.positive!r}", start)
    positives, negatives = persona_data(model, tokenizer, pair)
    _say(f"fitting DiffMean at blocks {layers} (resid_post)", start)
    direction = find_direction(model, tokenizer, positives, negatives, layers, "diffmean",
                               provenance={"persona_positive": pair.positive, "persona_negative": pair.negative})
    if output:
        direction.save(output)
    _say(f"generating unsteered and steered answers to {len(EVAL_PROMPTS)} prompts", start)
    _show(model, tokenizer, direction, pair, concept, coef, schedule, n_prompts, max_new_tokens)
    _say("done", start)


def _show(model, tokenizer, direction, pair, concept, coef, schedule, n_prompts, max_new_tokens) -> None:
    """Print ``n_prompts`` answer pairs, then the concept rate and fluency over every built-in prompt."""
    from polysteer.modalities.text.evaluators.rubric import FluencyScore
    from polysteer.modalities.text.workflow import concept_rate

    result = concept_rate(model, tokenizer, direction.to_plan(coef, schedule=schedule), pair.keywords, EVAL_PROMPTS,
                          max_new_tokens)
    for prompt, base, steered in list(zip(result.prompts, result.unsteered_texts, result.steered_texts))[:n_prompts]:
        click.echo(f"\n### {prompt}\n[unsteered] {_one_line(base)}\n[steered]   {_one_line(steered)}")
    scales = ", ".join(f"{direction.scales[hp]:.1f}" for hp in direction.hook_points)
    click.echo(f"\n({n_prompts} of {len(result.prompts)} prompts shown; scores over all {len(result.prompts)})\n"
               f"concept '{concept}' mentioned: unsteered {result.unsteered:.0%}, steered {result.steered:.0%} "
               f"(coefficient {coef} x typical activation norm [{scales}] at {len(direction.hook_points)} blocks, "
               f"schedule {schedule})")
    fluency = FluencyScore.calibrated(model, tokenizer, result.unsteered_texts)
    mean = lambda texts: sum(fluency.evaluate(texts)) / len(texts)  # noqa: E731
    click.echo(f"fluency (0-2 judge calibrated on the unsteered answers): unsteered "
               f"{mean(result.unsteered_texts):.2f}, steered {mean(result.steered_texts):.2f}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
