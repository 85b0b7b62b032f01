"""``polysteer sweep``: coefficients x layers on a prompt set, scored for concept and fluency."""

from __future__ import annotations

import json
from pathlib import Path

import click

from polysteer.data import read_lines
from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint, parse_layer_spec
from polysteer.io import write_text_atomic
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.cli.attribution import attribution_points
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import EVAL_PROMPTS
from polysteer.modalities.text.sweep import (
    markdown_table,
    plot,
    score_rows,
    summarize,
    sweep_direction,
    sweep_markdown,
)
from polysteer.option_types import NONNEGATIVE_INT, POSITIVE_INT, CheckedChoice, input_type, words_type
from polysteer.options import coefs_option, direction_option, layers_option, max_new_tokens_option, output_option


@click.command()
@text_model_options
@direction_option(required=True, with_coef=False, coef_hint="sweep coefficients with --coefs",
                  help="Direction file to sweep.")
@click.option("--prompts-file", type=input_type(),
              help="One prompt per line (default: 20 built-in neutral prompts).")
@coefs_option("0,0.1,0.2,0.3,0.5")
@layers_option(help="Which of the file's layers to sweep (default: all of them).")
@click.option("--concept", help="Concept description for the MiniLM similarity judge.")
@click.option("--keywords", type=words_type, help="Comma-separated concept keywords.")
@max_new_tokens_option(48)
@click.option("--rank-layers", type=CheckedChoice(["none", "attribution"]), default="none", show_default=True,
              help="attribution: rank the file's layers by gradient attribution of --keywords, sweep the best.")
@click.option("--top-layers", default=1, show_default=True, type=POSITIVE_INT,
              help="With --rank-layers: how many layers to sweep.")
@click.option("--samples", default=2, show_default=True, type=NONNEGATIVE_INT,
              help="Texts shown per cell in sweep.md (the same first prompts in every cell; all are in sweep.json).")
@click.option("--force", is_flag=True, help="Use a direction made for another model configuration.")
@output_option("dir", help="Folder for sweep.md, sweep.json and sweep.png.")
def sweep(model_name, device, dtype, direction, prompts_file, coefs, layers, concept, keywords, max_new_tokens,
          rank_layers, top_layers, samples, force, output):
    """Sweep coefficients x layers; write a table and a concept-vs-fluency plot.

    sweep.md defines every column (perplexity is a median, distinct a repetition check, concept and keyword
    the concept scores) and shows sample texts per cell; one progress bar counts the tokens of every cell.
    """
    if not concept and not keywords:
        raise PolysteerError("give --concept DESCRIPTION and/or --keywords a,b,c to score the concept")
    if rank_layers == "attribution" and not keywords:
        raise PolysteerError("--rank-layers attribution scores concept tokens: give --keywords a,b,c")
    prompts = read_lines(prompts_file, "prompts") if prompts_file else list(EVAL_PROMPTS)
    path, direction = direction, Direction.load(direction)
    points = _chosen_points(direction.hook_points, layers)
    model, tokenizer = load_text_model(model_name, device, dtype)
    modality = TextModality()
    direction.check_model(modality.identity(model), modality.d_model(model, direction.hook_points[0]), force)
    if rank_layers == "attribution":
        points = attribution_points(model, tokenizer, direction, prompts, keywords, points, top_layers)
    rows = sweep_direction(model, tokenizer, direction, prompts, coefs, points, max_new_tokens)
    table = summarize(score_rows(rows, model, tokenizer, concept, keywords))
    context = {"direction": f"`{Path(path).name}`", "model": f"`{model_name}`",
               "prompts": f"{len(prompts)} ({prompts_file or 'built-in neutral prompts'})",
               "max new tokens": str(max_new_tokens), "concept": f"'{concept}'" if concept else "-",
               "keywords": ", ".join(keywords) if keywords else "-"}
    _write(Path(output), rows, table, context, samples, "concept" if concept else "keyword")


def _write(out: Path, rows: list[dict], table: list[dict], context: dict, samples: int, score_key: str) -> None:
    """sweep.json (every text and score), sweep.md (table, column definitions, samples) and sweep.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.json", json.dumps(rows, indent=1))
    write_text_atomic(out / "sweep.md", sweep_markdown(table, rows, context, samples))
    plot(table, out / "sweep.png", score_key)
    click.echo(markdown_table(table))
    click.echo(f"wrote {out / 'sweep.md'} (with each column's definition and sample texts), {out / 'sweep.json'}, "
               f"{out / 'sweep.png'}")


def _chosen_points(hook_points: list[str], layers: str | None) -> list[str]:
    """The file's hook points at the ``--layers`` blocks (all of them without ``--layers``)."""
    wanted = parse_layer_spec(layers) if layers else None
    if wanted is None:
        return list(hook_points)
    missing = sorted(set(wanted) - {HookPoint.parse(hp).layer for hp in hook_points})
    if missing:
        raise PolysteerError(f"layers {missing} are not in the direction file ({', '.join(hook_points)}); "
                             "pick --layers among its blocks")
    return [hp for hp in hook_points if HookPoint.parse(hp).layer in wanted]
