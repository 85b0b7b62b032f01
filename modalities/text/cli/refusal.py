"""``polysteer refusal find`` and ``polysteer refusal eval``: refusal steering with its side effects."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import (
    NONNEGATIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    CheckedChoice,
    CheckedFloat,
    Parsed,
    input_type,
    output_type,
)
from polysteer.options import (
    coef_option,
    coefs_option,
    direction_option,
    layers_option,
    max_new_tokens_option,
    output_option,
)
from polysteer.plugins.sae.pretrained import check_sae, sae_type

SPLITS = ("select", "report")
data_option = click.option("--data", type=input_type(), help="Refusal data JSON (default: the shipped set, see "
                                                             "modalities/text/data/refusal/refusal.json).")
limit_option = click.option("--limit", type=POSITIVE_INT, help="Only the first N items of each group.")
batch_option = click.option("--batch-size", type=POSITIVE_INT, default=8, show_default=True)


@click.group()
def refusal():
    """Refusal steering: a DiffMean refusal direction (add raises refusal, ablate removes it) and SAE refusal
    features (sae_clamp), with over-refusal on harmless look-alikes and benign QA accuracy as side effects."""


def _data(path, limit):
    from polysteer.modalities.text.refusal.data import refusal_data

    data = refusal_data(path)
    data.select, data.report = data.select.head(limit), data.report.head(limit)
    return data


@refusal.command()
@text_model_options
@data_option
@layers_option(help="Default: 40% of the depth; with --choose, every layer listed is tried.")
@click.option("--sae", "sae_path", is_flag=False, flag_value="shipped", default=None, metavar="DIR",
              type=Parsed("sae", lambda text, option: text if text == "shipped" else check_sae(text, option)),
              help="Also find SAE refusal features (sae_contrast): an SAE folder, or --sae alone for the shipped "
                   "SmolLM2 SAE; written to --sae-output.")
@click.option("--top-k", type=POSITIVE_INT, default=4, show_default=True, help="--sae: SAE features kept.")
@click.option("--choose", is_flag=True, help="Sweep the select split and keep the best layer and coefficient.")
@coefs_option(default="1,2,4")
@click.option("--max-accuracy-drop", type=PROBABILITY, default=0.1, show_default=True,
              help="--choose: the most benign QA accuracy may fall below unsteered.")
@limit_option
@max_new_tokens_option(16, help="--choose: tokens per answer in the sweep (refusals show in the first few).")
@batch_option
@output_option(help="Direction file to write (.safetensors).")
@click.option("--sae-output", type=output_type(), help="--sae: the SAE feature file (default: OUTPUT's name + "
                                                       "'-sae').")
@click.pass_context
def find(ctx, model_name, device, dtype, data, layers, sae_path, top_k, choose, coefs, max_accuracy_drop, limit,
         max_new_tokens, batch_size, output, sae_output):
    """Find the refusal direction (harmful minus harmless requests, last prompt token) on the select split."""
    from polysteer.modalities.text.modality import TextModality
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.refusal.selection import fit_refusal
    from polysteer.modalities.text.workflow import choose_layers

    _refuse_unused(ctx, ("sae_output", "top_k"), sae_path is not None, "--sae")
    _refuse_unused(ctx, ("coefs", "max_accuracy_drop", "max_new_tokens", "batch_size"), choose, "--choose")
    refusal_set = _data(data, limit)
    model, tokenizer = load_text_model(model_name, device, dtype)
    layer_list = choose_layers(layers, TextModality().n_layers(model))
    direction, features = fit_refusal(model, tokenizer, refusal_set, layer_list, _sae(sae_path), top_k)
    if choose:
        from polysteer.modalities.text.refusal.workflow import choose_settings

        gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
        direction, features = choose_settings(model, tokenizer, refusal_set, direction, features, coefs,
                                              max_accuracy_drop, echo=click.echo, **gen)
    direction.save(output)
    click.echo(f"wrote {output}: refusal direction at {', '.join(direction.hook_points)}")
    if features is not None:
        path = sae_output or str(Path(output).with_name(Path(output).stem + "-sae.safetensors"))
        features.save(path)
        click.echo(f"wrote {path}: SAE refusal features {features.extras['refusal.sae_features'].tolist()} at "
                   f"{features.hook_points[0]}")


def _sae(path: str | None) -> Path | None:
    if path is None:
        return None
    if path == "shipped":
        from polysteer.modalities.text.sae.workflow import SHIPPED_SAE

        return SHIPPED_SAE
    return Path(path)


def _refuse_unused(ctx: click.Context, names: tuple[str, ...], used: bool, needs: str) -> None:
    """A PolysteerError when an option given on the command line would be ignored without ``needs``."""
    given = [p for p in ctx.command.params if p.name in names
             and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given and not used:
        flags = ", ".join(max(p.opts, key=len) for p in given)
        one = len(given) == 1
        raise PolysteerError(f"{flags} only matter{'s' if one else ''} with {needs}; add {needs} or drop "
                             f"{'it' if one else 'them'}")


@refusal.command(name="eval")
@text_model_options
@direction_option(required=True, help="A file from `polysteer refusal find`, FILE@COEF for its coefficient.")
@click.option("--mode", type=CheckedChoice(["add", "ablate", "clamp"]), default=None,
              help="add / ablate the direction, or clamp the SAE features (default: clamp for an SAE feature file, "
                   "else add).")
@coef_option(help="add: x the class separation (default: the file's); ablate: fraction removed (default 1); "
                  "clamp: x each feature's peak harmful activation (default: the file's choice, else 2; 0 removes).")
@layers_option(help="add: the file's layers to add at (default: all); ablate: the direction's layer "
                    "(default: the file's first).")
@layers_option("--ablate-blocks", help="ablate: remove the direction after these blocks only (default: from the "
                                       "embeddings and every attention and MLP output).")
@click.option("--sae", "sae_path", type=sae_type(), help="clamp: the SAE folder (default: the one the file "
                                                                "records; the shipped SAE is found by name).")
@click.option("--split", type=CheckedChoice(SPLITS), default="report", show_default=True)
@click.option("--threshold", type=CheckedFloat(min=-1, max=1), help="The judge's MiniLM threshold (default: "
                                                                    "calibrated on the select split's unsteered "
                                                                    "answers).")
@data_option
@limit_option
@max_new_tokens_option(48)
@batch_option
@click.option("--show", type=NONNEGATIVE_INT, default=0, help="Print N answers per group.")
@output_option(required=False, help="Write the scores and answers here (JSON).")
@click.option("--force", is_flag=True, help="Use a direction made for another model configuration.")
@click.pass_context
def eval_cmd(ctx, model_name, device, dtype, direction, mode, coef, layers, ablate_blocks, sae_path, split, threshold,
             data, limit, max_new_tokens, batch_size, show, output, force):
    """Refusal on harmful requests, over-refusal on look-alikes, QA accuracy and perplexity: unsteered vs steered."""
    from polysteer.direction import Direction
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.refusal.steer import FEATURES_KEY, refusal_features
    from polysteer.modalities.text.refusal.workflow import evaluate_direction

    path, own = direction
    loaded = Direction.load(path)
    mode = mode or ("clamp" if FEATURES_KEY in loaded.extras else "add")
    if mode == "clamp":
        refusal_features(loaded)  # a file without SAE features stops here, before the model loads
    _refuse_unused(ctx, ("ablate_blocks",), mode == "ablate", "--mode ablate")
    _refuse_unused(ctx, ("sae_path",), mode == "clamp", "--mode clamp")
    _refuse_unused(ctx, ("layers",), mode != "clamp", "--mode add or ablate")
    refusal_set = _data(data, limit)
    model, tokenizer = load_text_model(model_name, device, dtype)
    results = evaluate_direction(model, tokenizer, refusal_set, loaded, mode, own if own is not None else coef,
                                 layers, ablate_blocks, split, threshold, force, _sae(sae_path),
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
    click.echo(f"{'setting':28} {'refusal':>8} {'over-refusal':>13} {'qa-accuracy':>12} {'perplexity':>11}")
    for name, scores in results.items():
        ppl = f"{scores.perplexity:.2f}" if scores.perplexity is not None else "-"
        click.echo(f"{name:28} {scores.refusal:8.3f} {scores.over_refusal:13.3f} {scores.accuracy:12.3f} {ppl:>11}")
    for name, scores in results.items():
        for group, texts in scores.outputs.items():
            for text in texts[:show]:
                click.echo(f"[{name} / {group}] {text.strip()[:200]}")
    if output:
        from polysteer.io import write_json_atomic

        write_json_atomic(output, {name: {**s.row(), "outputs": s.outputs} for name, s in results.items()})
        click.echo(f"wrote {output}")

