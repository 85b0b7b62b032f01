"""``polysteer sae lf`` and ``polysteer sae saif``, and the consistency / instruction-following evaluators."""

from __future__ import annotations

import math

import click

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import POSITIVE_INT, PROBABILITY, CheckedChoice, Parsed, input_type
from polysteer.options import coef_option, max_new_tokens_option, output_option
from polysteer.plugins.sae.pretrained import sae_type

sae_option = click.option("--sae", "sae_path", type=sae_type(),
                          help="SAE folder or SAELens RELEASE/SAE_ID; its hook_name is where activations are read "
                               "and steering applies (default: the shipped SmolLM2 SAE, block 12).")
position_option = click.option("--position", type=CheckedChoice(["last", "mean"]), default="last", show_default=True,
                               help="Pool the last prompt token (chat template) or the mean over the plain prompt.")
direction_output_option = output_option(help="Direction file to write (.safetensors).")


def _threshold(text: str, option: str = "--agree-threshold") -> float | None:
    """A number in [0, 1], or None for ``median``."""
    if text == "median":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # also refuses nan
        raise PolysteerError(f"{option} must be a number in [0, 1] or 'median', got {text!r}")
    return value


@click.command(name="lf")
@text_model_options
@sae_option
@click.option("--groups", "groups_path", required=True, type=input_type(),
              help='JSON list of {"answer", "paraphrases": [...]} groups (see benchmarks/data/paraphrase_groups.json).')
@click.option("--top-k", type=POSITIVE_INT, default=8, show_default=True, help="Latents biased at most.")
@click.option("--mode", type=CheckedChoice(["pull", "shift"]), default="pull", show_default=True,
              help="pull: towards the agreeing groups' mean activation; shift: a constant bias.")
@click.option("--agreement", type=CheckedChoice(["exact", "contains", "similarity"]), default="contains",
              show_default=True, help="How two answers agree (see polysteer.modalities.text.evaluators.consistency).")
@click.option("--agree-threshold", default="1", show_default=True, type=Parsed("threshold", _threshold),
              help="A group agrees when its mean pairwise agreement reaches this (0 to 1); 'median': groups above "
                   "the median.")
@coef_option(1.0, help="The file's default steering strength c.")
@max_new_tokens_option(16, help="Answer length.")
@click.option("--suffix", default="Answer in a few words.", show_default=True,
              help="Text appended to every paraphrase, so answers are short enough to compare.")
@position_option
@direction_output_option
def lf(model_name, device, dtype, sae_path, groups_path, top_k, mode, agreement, agree_threshold, coef,
       max_new_tokens, suffix, position, output):
    """LF-Steering: bias the SAE latents that vary within paraphrase groups whose answers disagree."""
    from polysteer.modalities.text.cli.sae import _sae_path
    from polysteer.modalities.text.evaluators.consistency import Consistency, read_paraphrase_groups
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.sae.guided import fit_lf_steering

    groups = read_paraphrase_groups(groups_path)
    path = _sae_path(sae_path)
    model, tokenizer = load_text_model(model_name, device, dtype)
    direction, finder, base = fit_lf_steering(
        model, tokenizer, groups, path, top_k, mode, agree_threshold=agree_threshold, position=position,
        coefficient=coef, judge=Consistency(agreement), max_new_tokens=max_new_tokens, suffix=suffix)
    direction.save(output)
    click.echo(f"unsteered consistency {base.consistency:.3f}, accuracy {base.accuracy:.3f} over {len(groups)} groups")
    scores = [round(s, 3) for s in finder.scores_[finder.latents_].tolist()]
    click.echo(f"latents {finder.latents_.tolist()} (scores {scores})")
    click.echo(f"wrote {output}: sae_bias ({mode}) at {direction.hook_points[0]}; "
               f"apply with `polysteer generate -d {output}@C`")


@click.command(name="saif")
@text_model_options
@sae_option
@click.option("--data", "data_path", required=True, type=input_type(),
              help='JSON {"contents": [...], "instructions": {name: {"check", "wordings"}}} '
                   "(see benchmarks/data/saif_instructions.json).")
@click.option("--instruction", required=True, help="Instruction name in the data file, e.g. french.")
@click.option("--top-k", type=POSITIVE_INT, default=10, show_default=True, help="Latents summed at most.")
@click.option("--min-fraction", type=PROBABILITY, default=0.9, show_default=True,
              help="A latent must rise in this fraction of [content + instruction] / [content] pairs.")
@position_option
@direction_output_option
def saif(model_name, device, dtype, sae_path, data_path, instruction, top_k, min_fraction, position, output):
    """SAIF: sum the SAE latents an instruction consistently switches on into a steering vector.

    SAIF steers best at a late layer: train an SAE there first, e.g. `polysteer sae train --layer 26 -o sae-L26`,
    then pass `--sae sae-L26`.
    """
    from polysteer.modalities.text.cli.sae import _sae_path
    from polysteer.modalities.text.evaluators.instructions import read_instructions
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.sae.guided import fit_saif

    data = read_instructions(data_path)
    if instruction not in data.instructions:
        raise PolysteerError(f"{data_path} has no instruction {instruction!r}; it has {', '.join(data.instructions)}")
    chosen = data.instructions[instruction]
    path = _sae_path(sae_path)
    model, tokenizer = load_text_model(model_name, device, dtype)
    direction, finder = fit_saif(model, tokenizer, data.contents, chosen.wordings, path, top_k, min_fraction,
                                 position, {"instruction": instruction, "check": chosen.check})
    direction.save(output)
    activations = [round(a, 2) for a in finder.activations_.tolist()]
    click.echo(f"latents {finder.latents_.tolist()} (mean activation {activations})")
    click.echo(f"wrote {output}: SAIF vector (norm {finder.scale_:.2f}) at {direction.hook_points[0]}; "
               f"apply with `polysteer generate -d {output}@1`")
