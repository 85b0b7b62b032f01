"""Text commands: ``polysteer find``, ``generate`` and ``convert``."""

from __future__ import annotations

import click

from polysteer.data import read_contrastive, read_lines
from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.generation import Example, generate
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import PERSONAS
from polysteer.options import coef_option, direction_option, layers_option, model_options


@click.command()
@text_model_options
@click.option("--finder", default="diffmean", show_default=True, help="Registered direction-finder name.")
@click.option("--data", type=click.Path(), help="JSONL of positive/negative pairs or text/label rows.")
@click.option("--persona", help=f"Built-in persona pair ({', '.join(PERSONAS)}) or 'POSITIVE|NEGATIVE' personas.")
@click.option("--questions", type=click.Path(), help="Questions for persona answers (one per line).")
@layers_option(help="Default: 40% of the depth.")
@click.option("--site", default="resid_post", show_default=True)
@click.option("--pooling", default="mean", type=click.Choice(["mean", "last"]), show_default=True)
@click.option("--cache-dir", type=click.Path(), help="Reuse activations saved here.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Direction file to write (.safetensors).")
def find(model_name, device, dtype, finder, data, persona, questions, layers, site, pooling, cache_dir, output):
    """Find a steering direction from contrastive data or a persona pair."""
    from polysteer.modalities.text.presets import TRAIN_QUESTIONS, PersonaPair
    from polysteer.modalities.text.workflow import choose_layers, find_direction, persona_data

    if bool(data) == bool(persona):
        raise PolysteerError("give exactly one of --data FILE or --persona NAME")
    model, tokenizer = load_text_model(model_name, device, dtype)
    if data:
        pos_rows, neg_rows = read_contrastive(data)
        positives = [Example(r["text"], r["prompt"]) for r in pos_rows]
        negatives = [Example(r["text"], r["prompt"]) for r in neg_rows]
        source = {"data": str(data)}
    else:
        pair = _persona_pair(persona, PersonaPair)
        qs = read_lines(questions) if questions else TRAIN_QUESTIONS
        positives, negatives = persona_data(model, tokenizer, pair, qs)
        source = {"persona_positive": pair.positive, "persona_negative": pair.negative, "n_questions": len(qs)}
    layer_list = choose_layers(layers, TextModality().n_layers(model))
    direction = find_direction(model, tokenizer, positives, negatives, layer_list, finder, site, pooling,
                               cache_dir, provenance=source)
    direction.save(output)
    click.echo(f"wrote {output}: {finder} at {', '.join(direction.hook_points)}")


def _persona_pair(spec: str, cls):
    if spec in PERSONAS:
        return PERSONAS[spec]
    if "|" not in spec:
        raise PolysteerError(f"unknown persona {spec!r}: use one of {', '.join(PERSONAS)} or 'POSITIVE|NEGATIVE'")
    pos, neg = (s.strip() for s in spec.split("|", 1))
    return cls(name="custom", positive=pos, negative=neg, description=pos, keywords=())


def load_plan(model, directions, coef, schedule, operator, force) -> Plan:
    """One plan for ``(path, coef or None)`` pairs (see :func:`polysteer.options.parse_direction_spec`), each
    direction checked against the model; a pair without its own coefficient takes ``coef``."""
    modality = TextModality()
    plan = Plan()
    for path, own in directions:
        direction = Direction.load(path)
        first = direction.hook_points[0]
        direction.check_model(modality.identity(model), modality.d_model(model, first), force=force)
        plan = plan + direction.to_plan(coef if own is None else own, operator=operator, schedule=schedule)
    return plan


@click.command(name="generate")
@text_model_options
@click.argument("prompts", nargs=-1)
@click.option("--prompts-file", type=click.Path(), help="One prompt per line.")
@direction_option(multiple=True)
@coef_option(help="Coefficient for directions without @COEF (default: each file's own).")
@click.option("--schedule", default=None, help="e.g. constant, generated-only, window:0-20, ramp:0-10.")
@click.option("--operator", default=None, help="add, rotate, clamp, ablate ... (default: the file's own).")
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--sample/--greedy", default=False, show_default=True)
@click.option("--compare", is_flag=True, help="Print unsteered and steered outputs side by side.")
@click.option("--force", is_flag=True, help="Use directions made for another model configuration.")
def generate_cmd(model_name, device, dtype, prompts, prompts_file, directions, coef, schedule, operator,
                 max_new_tokens, batch_size, seed, sample, compare, force):
    """Generate text, steered by direction files."""
    prompts = list(prompts) + (read_lines(prompts_file) if prompts_file else [])
    if not prompts:
        raise PolysteerError("give at least one prompt (arguments or --prompts-file)")
    model, tokenizer = load_text_model(model_name, device, dtype)
    plan = load_plan(model, directions, coef, schedule, operator, force) if directions else None
    kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, do_sample=sample)
    steered = generate(model, tokenizer, prompts, plan, **kwargs)
    base = generate(model, tokenizer, prompts, None, **kwargs) if compare else None
    for i, prompt in enumerate(prompts):
        click.echo(f"### {prompt}")
        if base is not None:
            click.echo(f"[unsteered] {base[i].strip()}")
            click.echo(f"[steered]   {steered[i].strip()}\n")
        else:
            click.echo(steered[i].strip() + "\n")


@click.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="A .gguf or a .safetensors file.")
@coef_option(help="Exporting: bake this coefficient in (default: the file's).")
@model_options(help="Importing: record this model's identity (e.g. smollm2).")
def convert(source, output, coef, model_name, device, dtype):
    """Convert between direction files and llama.cpp/repeng GGUF control vectors."""
    from polysteer.modalities.text.gguf_control import export_gguf, import_gguf

    if output.endswith(".gguf"):
        export_gguf(Direction.load(source), output, coef)
    else:
        identity = None
        if model_name:
            model, _ = load_text_model(model_name, device, dtype)
            identity = TextModality().identity(model)
        import_gguf(source, identity).save(output)
    click.echo(f"wrote {output}")
