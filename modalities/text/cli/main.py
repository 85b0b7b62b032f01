"""Text commands: ``polysteer find``, ``generate`` and ``convert``."""

from __future__ import annotations

import click

from polysteer.data import read_contrastive, read_lines
from polysteer.direction import Direction
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.generation import generate
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.models import load_text_model
from polysteer.modalities.text.presets import PERSONAS
from polysteer.option_types import POSITIVE_INT, CheckedChoice, input_type, output_type
from polysteer.options import (
    coef_option,
    direction_option,
    finder_option,
    finder_param_option,
    layers_option,
    max_new_tokens_option,
    model_options,
    operator_option,
    output_option,
    schedule_option,
    seed_option,
    site_option,
)


@click.command()
@text_model_options
@finder_option()
@finder_param_option()
@click.option("--data", type=input_type(), help="JSONL of positive/negative pairs or text/label rows.")
@click.option("--persona", help=f"Built-in persona pair ({', '.join(PERSONAS)}) or 'POSITIVE|NEGATIVE' personas.")
@click.option("--questions", type=input_type(), help="Questions for persona answers (one per line).")
@layers_option(help="Default: 40% of the depth.")
@site_option()
@click.option("--pooling", type=CheckedChoice(["mean", "last", "tokens"]),
              help="Rows the finder fits: mean over answer tokens, the last token, or every token. Default: the "
                   "finder's choice (tokens for sae_contrast, else mean).")
@max_new_tokens_option(None, help="Tokens per persona answer (default 48).")
@click.option("--cache-dir", type=output_type("dir"), help="Reuse activations saved here.")
@click.option("--no-cache", is_flag=True,
              help="Generate persona answers and capture activations anew, ignoring the polysteer cache "
                   "(also POLYSTEER_NO_CACHE=1).")
@output_option(help="Direction file to write (.safetensors).")
def find(model_name, device, dtype, finder, finder_params, data, persona, questions, layers, site, pooling,
         max_new_tokens, cache_dir, no_cache, output):
    """Find a steering direction from contrastive data or a persona pair.

    Persona answers and activations are cached (under $POLYSTEER_CACHE, default ~/.cache/polysteer), keyed by the
    model, the data and the settings, so running the same command again skips that work.
    """
    from polysteer.finder import make_finder
    from polysteer.modalities.text.workflow import choose_layers, find_direction

    make_finder(finder, **finder_params)  # unknown parameters fail here, before the model loads
    if cache_dir and no_cache:
        raise PolysteerError("--cache-dir reuses saved activations and --no-cache turns reuse off: give one")
    source, examples = _examples(data, persona, questions, max_new_tokens, not no_cache)
    model, tokenizer = load_text_model(model_name, device, dtype)
    positives, negatives = examples(model, tokenizer)
    layer_list = choose_layers(layers, TextModality().n_layers(model))
    direction = find_direction(model, tokenizer, positives, negatives, layer_list, finder, site, pooling,
                               cache_dir, provenance=source, cache=not no_cache, **finder_params)
    direction.save(output)
    click.echo(f"wrote {output}: {finder} at {', '.join(direction.hook_points)}")


def _examples(data: str | None, persona: str | None, questions: str | None, max_new_tokens: int | None = None,
              cache: bool = True):
    """Provenance and a function of ``(model, tokenizer)`` giving the two classes; the files are read now."""
    from polysteer.modalities.text.presets import TRAIN_QUESTIONS, PersonaPair
    from polysteer.modalities.text.workflow import persona_data

    if bool(data) == bool(persona):
        raise PolysteerError("give exactly one of --data FILE or --persona NAME")
    if data:
        if questions:
            raise PolysteerError("--questions goes with --persona: --data already holds both classes")
        if max_new_tokens is not None:
            raise PolysteerError("--max-new-tokens goes with --persona: --data already holds the answers")
        classes = list(read_contrastive(data))
        return {"data": str(data)}, lambda model, tokenizer: classes
    pair = _persona_pair(persona, PersonaPair)
    qs = read_lines(questions, "questions") if questions else TRAIN_QUESTIONS
    source = {"persona_positive": pair.positive, "persona_negative": pair.negative, "n_questions": len(qs)}
    tokens = 48 if max_new_tokens is None else max_new_tokens
    return source, lambda model, tokenizer: persona_data(model, tokenizer, pair, qs, tokens, cache)


def _persona_pair(spec: str, cls):
    if spec in PERSONAS:
        return PERSONAS[spec]
    pos, sep, neg = (s.strip() for s in spec.partition("|"))
    if not sep or not pos or not neg:
        raise PolysteerError(f"unknown persona {spec!r}: use one of {', '.join(PERSONAS)} or 'POSITIVE|NEGATIVE'")
    return cls(name="custom", positive=pos, negative=neg, description=pos, keywords=())


def load_plan(model, directions, coef, schedule, operator, force) -> Plan:
    """One plan for ``(Direction or path, coef or None)`` pairs (see :func:`polysteer.options.parse_direction_spec`),
    each direction checked against the model; a pair without its own coefficient takes ``coef``."""
    modality = TextModality()
    plan = Plan()
    for direction, own in directions:
        direction = direction if isinstance(direction, Direction) else Direction.load(direction)
        first = direction.hook_points[0]
        direction.check_model(modality.identity(model), modality.d_model(model, first), force=force)
        plan = plan + direction.to_plan(coef if own is None else own, operator=operator, schedule=schedule)
    return plan


@click.command(name="generate")
@text_model_options
@click.argument("prompts", nargs=-1)
@click.option("--prompts-file", type=input_type(), help="One prompt per line.")
@direction_option(multiple=True)
@coef_option(help="Coefficient for directions without @COEF (default: each file's own).")
@schedule_option(help="Schedule for the -d directions, e.g. constant, generated-only, window:0-20, ramp:0-10.")
@operator_option(help="Operator for the -d directions: add, rotate, clamp, ablate ... (default: the file's own).")
@max_new_tokens_option(48)
@click.option("--batch-size", default=8, show_default=True, type=POSITIVE_INT, help="Prompts per forward pass.")
@seed_option()
@click.option("--sample/--greedy", default=False, show_default=True)
@click.option("--compare", is_flag=True, help="Print unsteered and steered outputs side by side.")
@click.option("--force", is_flag=True, help="Use directions made for another model configuration.")
def generate_cmd(model_name, device, dtype, prompts, prompts_file, directions, coef, schedule, operator,
                 max_new_tokens, batch_size, seed, sample, compare, force):
    """Generate text, steered by direction files."""
    prompts = list(prompts) + (read_lines(prompts_file, "prompts") if prompts_file else [])
    if not prompts:
        raise PolysteerError("give at least one prompt (arguments or --prompts-file)")
    unused = [flag for flag, value in (("--coef", coef), ("--schedule", schedule), ("--operator", operator))
              if value is not None]
    if unused and not directions:
        verb = "applies" if len(unused) == 1 else "apply"
        raise PolysteerError(f"{' and '.join(unused)} {verb} to steering directions: give -d FILE[@COEF] too")
    loaded = [(Direction.load(path), own) for path, own in directions]
    model, tokenizer = load_text_model(model_name, device, dtype)
    plan = load_plan(model, loaded, coef, schedule, operator, force) if loaded else None
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
@click.argument("source", type=input_type())
@output_option(help="A .gguf (export) or a .safetensors file (import).")
@coef_option(help="Exporting: bake this coefficient in (default: the file's).")
@model_options(help="Importing: record this model's identity (e.g. smollm2).")
def convert(source, output, coef, model_name, device, dtype):
    """Convert between direction files and llama.cpp/repeng GGUF control vectors."""
    from polysteer.modalities.text.gguf_control import export_gguf, import_gguf

    exporting = output.endswith(".gguf")
    if exporting and model_name:
        raise PolysteerError("--model is for importing a .gguf; exporting reads the model from the direction file")
    if not exporting and coef is not None:
        raise PolysteerError("--coef is for exporting to .gguf; an imported vector keeps its own scale")
    if exporting:
        export_gguf(Direction.load(source), output, coef)
        click.echo(f"wrote {output}")
        return
    direction = import_gguf(source)  # read before the model loads, so a bad file fails first
    if model_name:
        model, _ = load_text_model(model_name, device, dtype)
        direction.model = TextModality().identity(model)
    direction.save(output)
    click.echo(f"wrote {output}")
