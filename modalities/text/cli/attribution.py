"""``polysteer attribute`` (rank layers and SAE features by attribution) and the sweep's ``--rank-layers``."""

from __future__ import annotations

import json
from typing import Callable, Sequence

import click

from polysteer.data import read_lines
from polysteer.errors import PolysteerError
from polysteer.hookpoints import hook_point, parse_layers
from polysteer.io import write_text_atomic
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.presets import EVAL_PROMPTS
from polysteer.option_types import POSITIVE_INT, input_type, words_type
from polysteer.options import direction_option, layers_option, output_option, site_option
from polysteer.plugins.sae.pretrained import sae_type


def attribution_points(model, tokenizer, direction, prompts: Sequence[str], keywords: Sequence[str] | None,
                       points: Sequence[str], top: int, echo: Callable[[str], None] = click.echo) -> list[str]:
    """The ``top`` hook points of a Direction by predicted steering effect, printing the whole ranking."""
    from polysteer.modalities.text.attribution import rank_direction_layers

    if not keywords:
        raise PolysteerError("--rank-layers attribution scores concept tokens: give --keywords a,b,c")
    if top < 1:
        raise PolysteerError(f"--top-layers must be >= 1, got {top}")
    ranking = rank_direction_layers(model, tokenizer, direction, prompts, keywords, points)
    echo("attribution ranking (first-order change of log p(concept token next) at coefficient 1):")
    for rank, (hp, value) in enumerate(ranking.items(), 1):
        echo(f"  {rank:2d}. {hp}  {value:+.4f}" + ("  <- swept" if rank <= top else ""))
    return list(ranking)[:top]


def _layer_rows(model, tokenizer, prompts, keywords, points, direction) -> list[dict]:
    from polysteer.modalities.text.attribution import layer_attribution, rank_by_attribution

    result = layer_attribution(model, tokenizer, prompts, keywords, points)
    along = {}
    if direction is not None:
        vectors = {hp: direction.vectors[hp] * direction.scales.get(hp, 1.0)
                   for hp in points if hp in direction.vectors}
        along = result.along(vectors)
    order = rank_by_attribution(along) if along else rank_by_attribution(result.act, absolute=True)
    return [{"hook_point": hp, "act": result.act[hp], **({"along": along[hp]} if hp in along else {})}
            for hp in order]


def _feature_rows(model, tokenizer, prompts, keywords, sae, top) -> tuple[str, list[dict]]:
    from polysteer.modalities.text.attribution import feature_attribution

    hp = sae.hook_point
    result = feature_attribution(model, tokenizer, prompts, keywords, hp, sae)
    return hp, [{"feature": j, "attribution": a, "effect": float(result.effect[j])} for j, a in result.top(top)]


@click.command()
@text_model_options
@click.option("--keywords", required=True, type=words_type,
              help="Comma-separated concept keywords (their tokens are scored).")
@click.option("--prompts-file", type=input_type(), help="One prompt per line (default: 20 built-in neutral prompts).")
@layers_option(default="all", help="With -d: 'all' means the file's layers.")
@site_option()
@direction_option(with_coef=False, coef_hint="attribution ranks at coefficient 1",
                  help="Rank by the effect of steering with this direction file.")
@click.option("--sae", "sae_path", type=sae_type(), help="Also rank this SAE's features (folder or SAELens "
              "RELEASE/SAE_ID).")
@click.option("-n", "--top", default=10, show_default=True, type=POSITIVE_INT, help="Features to list.")
@output_option(required=False, help="Write the rankings as JSON.")
def attribute(model_name, device, dtype, keywords, prompts_file, layers, site, direction, sae_path, top, output):
    """Rank layers (and SAE features) by gradient x activation of the concept tokens' log-probability."""
    from polysteer.direction import Direction
    from polysteer.modalities.text.models import load_text_model
    from polysteer.plugins.sae.model import SAE

    prompts = read_lines(prompts_file, "prompts") if prompts_file else list(EVAL_PROMPTS)
    direction = Direction.load(direction) if direction else None
    sae = SAE.load(sae_path) if sae_path else None
    model, tokenizer = load_text_model(model_name, device, dtype)
    points = list(direction.hook_points) if direction and layers == "all" else [
        hook_point(i, site) for i in parse_layers(layers, TextModality().n_layers(model))]
    report = {"layers": _layer_rows(model, tokenizer, prompts, keywords, points, direction)}
    click.echo("hook point                      grad.act" + ("    grad.v" if direction else ""))
    for row in report["layers"]:
        click.echo(f"{row['hook_point']:30s} {row['act']:+9.4f}" + (f" {row['along']:+9.4f}" if "along" in row else ""))
    if sae is not None:
        hp, report["features"] = _feature_rows(model, tokenizer, prompts, keywords, sae, top)
        click.echo(f"top SAE features at {hp} (attribution, steering effect):")
        for row in report["features"]:
            click.echo(f"  {row['feature']:6d} {row['attribution']:+.4f} {row['effect']:+.4f}")
    if output:
        write_text_atomic(output, json.dumps(report, indent=1))
