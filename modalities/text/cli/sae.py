"""SAE commands: ``polysteer sae train``, ``polysteer sae feature`` and ``polysteer explain``."""

from __future__ import annotations

from pathlib import Path

import click

from polysteer.errors import PolysteerError
from polysteer.modalities.text.cli import text_model_options
from polysteer.option_types import (
    FINITE_FLOAT,
    NONNEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    CheckedChoice,
    CheckedInt,
    input_type,
    output_type,
)
from polysteer.options import coef_option, direction_option, output_option, site_option
from polysteer.plugins.sae.pretrained import sae_type


@click.group()
def sae():
    """Sparse autoencoders: train one on a text model, turn features into direction files."""


@sae.command()
@text_model_options
@click.option("--layer", type=NONNEGATIVE_INT, default=12, show_default=True)
@site_option()
@click.option("--text", "texts", multiple=True, type=input_type(), help="Text or JSONL files (default: Debian corpus).")
@click.option("--tokens", type=POSITIVE_INT, default=2_000_000, show_default=True, help="Training tokens to store.")
@click.option("--d-sae", type=POSITIVE_INT, default=4096, show_default=True)
@click.option("-k", "--k", type=POSITIVE_INT, default=32, show_default=True)
@click.option("--epochs", type=POSITIVE_INT, default=1, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=4e-4, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=4096, show_default=True)
@click.option("--context", type=CheckedInt(min=2), default=128, show_default=True)
@click.option("--bf16/--no-bf16", default=False, help="Collect activations under bfloat16 autocast (faster).")
@click.option("--shard-tokens", type=POSITIVE_INT, default=2**16, show_default=True, help="Tokens per store shard.")
@click.option("--store", "store_dir", type=output_type("dir"), help="Activation store folder (resumed if present).")
@click.option("--seed", type=NONNEGATIVE_INT, help="Initialisation and shuffling seed (default: derived from the hook "
              "point, so SAEs of different layers do not start from the same decoder rows).")
@output_option("dir", help="SAE folder to write (SAELens format).")
def train(model_name, device, dtype, layer, site, texts, tokens, d_sae, k, epochs, lr, batch_size, context, bf16,
          shard_tokens, store_dir, seed, output):
    """Train a TopK SAE on activations streamed from the model; prints its metrics."""
    import json

    from polysteer.hookpoints import hook_point
    from polysteer.modalities.text.models import cache_dir, load_text_model
    from polysteer.modalities.text.sae.corpus import debian_corpus, read_documents
    from polysteer.modalities.text.sae.workflow import train_text_sae
    from polysteer.plugins.sae.trainer import TrainConfig

    if k > d_sae:
        raise PolysteerError(f"-k {k} is more than --d-sae {d_sae}: TopK keeps k of the d_sae latents")
    model, tokenizer = load_text_model(model_name, device, dtype)
    hp = hook_point(layer, site)
    documents = read_documents(texts) if texts else debian_corpus()
    corpus = ",".join(map(str, texts)) or "debian"
    store_dir = store_dir or cache_dir() / f"sae-store-{model_name.replace('/', '_')}-{hp}"
    config = TrainConfig(d_sae=d_sae, k=k, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed)
    _, metrics = train_text_sae(model, tokenizer, documents, hp, output, store_dir, tokens, config, context,
                                bf16, corpus, shard_tokens=shard_tokens)
    click.echo(json.dumps(metrics, indent=2))


@sae.command()
@click.argument("feature", type=NONNEGATIVE_INT)
@click.option("--sae", "sae_path", type=sae_type(), help="SAE folder or SAELens RELEASE/SAE_ID (default: the shipped "
              "SmolLM2 SAE).")
@click.option("--operator", type=CheckedChoice(["add", "sae_clamp"]), default="add", show_default=True)
@coef_option(1.0, help="The file's default coefficient, in latent units (the feature's activation scale).")
@output_option(help="Direction file to write (.safetensors).")
def feature(feature, sae_path, operator, coef, output):
    """Write one SAE feature as a direction file (its decoder row; index and SAE path recorded)."""
    from polysteer.plugins.sae.model import SAE
    from polysteer.plugins.sae.steer import feature_direction

    path = _sae_path(sae_path)
    model_sae = SAE.load(path)
    hp = model_sae.hook_point
    feature_direction(model_sae, feature, hp, operator, coef, str(path)).save(output)
    click.echo(f"wrote {output}: feature {feature} at {hp} ({operator})")


def _sae_path(path: str | None) -> Path:
    from polysteer.modalities.text.sae.workflow import SHIPPED_SAE

    if path:
        return Path(path)
    if not SHIPPED_SAE.is_dir():
        raise PolysteerError("no --sae given and the shipped SmolLM2 SAE is missing; "
                             "train one with `polysteer sae train`")
    return SHIPPED_SAE


@click.command()
@text_model_options
@click.option("--sae", "sae_path", type=sae_type(), help="SAE folder or SAELens RELEASE/SAE_ID (default: the shipped "
              "SmolLM2 SAE).")
@click.option("--feature", type=NONNEGATIVE_INT, help="SAE feature to describe.")
@direction_option(with_coef=False, coef_hint="give the coefficient with --coef",
                  help="Direction file to describe instead.")
@click.option("--text", "text_path", type=input_type(), help="Text file: show its top-activating snippets.")
@click.option("--value", type=FINITE_FLOAT, default=10.0, show_default=True,
              help="TokenChange clamp value / step size.")
@click.option("-n", "--top", type=POSITIVE_INT, default=10, show_default=True)
@click.option("--decompose", is_flag=True, help="With --direction: its top signed SAE features (decoder cosine; "
              "contrast with --data); --text then measures the typical activation norm.")
@click.option("--data", "data_path", type=input_type(), help="--decompose: contrastive JSONL to encode per class.")
@coef_option(help="--decompose: coefficient for the norm check (default: the file's).")
def explain(model_name, device, dtype, sae_path, feature, direction, text_path, value, top, decompose, data_path, coef):
    """Describe an SAE feature or a direction: VocabProj, TokenChange and top-activating snippets.

    With --decompose, list a direction's top signed SAE features (never encoding the vector itself) and warn
    when its norm is more than 10x away from the typical activation norm at the hook point.
    """
    from polysteer.modalities.text.models import load_text_model
    from polysteer.modalities.text.sae.explain import describe

    if (feature is None) == (direction is None):
        raise PolysteerError("give exactly one of --feature N (with --sae) or --direction FILE")
    if (data_path or coef is not None) and not decompose:
        raise PolysteerError("--data and --coef go with --decompose")
    if decompose and direction is None:
        raise PolysteerError("--decompose takes --direction FILE (an SAE feature is already one feature)")
    _read_inputs(text_path, data_path)
    model, tokenizer = load_text_model(model_name, device, dtype)
    if decompose:
        _decompose(model, tokenizer, sae_path, direction, data_path, text_path, coef, top)
        return
    subject = _subject(model, sae_path, feature, direction)
    for line in describe(model, tokenizer, *subject, text_path=text_path, value=value, n=top):
        click.echo(line)


def _read_inputs(text_path: str | None, data_path: str | None) -> None:
    """Read the --text and --data files once before the model loads, so a bad row fails first."""
    from polysteer.data import read_contrastive, read_lines

    if text_path:
        read_lines(text_path)
    if data_path:
        read_contrastive(data_path)


def _decompose(model, tokenizer, sae_path, direction_path, data_path, text_path, coef, top) -> None:
    """Print a direction's SAE decomposition; warnings (such as the norm check) go to stderr, one line each."""
    from polysteer.modalities.text.sae.decompose import explain_decomposition
    from polysteer.plugins.sae.model import SAE

    report = explain_decomposition(model, tokenizer, direction_path, SAE.load(_sae_path(sae_path)), data_path,
                                   text_path, coef, top)
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    for line in report.lines:
        click.echo(line)


def _subject(model, sae_path, feature, direction_path):
    """``(vector, hook_point, operator for TokenChange, score function for snippets)``."""
    from polysteer.direction import Direction
    from polysteer.modalities.text.modality import TextModality
    from polysteer.plugins.sae.model import SAE
    from polysteer.plugins.sae.steer import SAEClamp, feature_activation

    modality = TextModality()
    if direction_path:
        direction = Direction.load(direction_path)
        hp = direction.hook_points[0]
        direction.check_model(modality.identity(model), modality.d_model(model, hp), force=True)
        v = direction.vectors[hp].float()
        return v, hp, "add", lambda acts: acts @ (v / v.norm())
    loaded = SAE.load(_sae_path(sae_path))
    hp = loaded.hook_point
    loaded.check_width(modality.d_model(model, hp), "this model's activations")
    if not 0 <= feature < loaded.d_sae:
        raise PolysteerError(f"feature {feature} out of range: the SAE has {loaded.d_sae} latents")
    return (loaded.W_dec[feature].detach(), hp, SAEClamp(loaded, feature),
            lambda acts: feature_activation(loaded, acts, feature).detach())
