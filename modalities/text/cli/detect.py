"""``polysteer detect``: score texts with a direction, a probe or an SAE feature; AUROC and F1 on labelled texts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import click

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.io import write_text_atomic
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.detect import read_texts, score_texts, text_activations
from polysteer.modalities.text.modality import TextModality
from polysteer.options import direction_option
from polysteer.plugins.detection import (
    DetectionMetrics,
    DirectionDetector,
    FeatureDetector,
    FinderDetector,
    detection_metrics,
)
from polysteer.plugins.sae import SAE


def _parse_params(pairs: Sequence[str]) -> dict:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolysteerError(f"finder parameter {pair!r} must look like KEY=VALUE, e.g. bandwidth=50")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _direction_detector(model, path: str, hook_point: str | None):
    direction = Direction.load(path)
    hp = hook_point or direction.hook_points[0]
    if hp not in direction.vectors:
        raise PolysteerError(f"{path} has no vector at {hp}; it has {', '.join(direction.hook_points)}")
    direction.check_model(TextModality().identity(model), TextModality().d_model(model, hp), force=True)
    return DirectionDetector(direction.vectors[hp]), hp, None, {"kind": "direction", "file": str(path)}


def _feature_detector(feature: int, sae_path: str | None):
    from polysteer.modalities.text.sae.workflow import SHIPPED_SAE  # imports the SAE trainer: only when needed

    path = Path(sae_path) if sae_path else SHIPPED_SAE
    sae = SAE.load(path)
    hp = sae.hook_point
    detector = FeatureDetector(sae, feature)
    return detector, hp, sae.metadata.get("max_norm"), {"kind": "sae-feature", "feature": feature, "sae": str(path)}


def _finder_detector(model, tokenizer, finder: str, train: str, hook_point: str | None, params: dict):
    from polysteer.modalities.text.workflow import default_layer

    texts, labels = read_texts(train)
    if labels is None:
        raise PolysteerError(f"--train {train} must be labelled JSONL rows {{\"text\": ..., \"label\": 0|1}}")
    hp = hook_point or f"text.blocks.{default_layer(TextModality().n_layers(model))}.resid_post"
    pooled = text_activations(model, tokenizer, texts, hp).pool(pooling="mean")
    detector = FinderDetector.fit(finder, pooled, labels, **params)
    return detector, hp, None, {"kind": "finder", "finder": finder, "train": str(train), "params": params}


def _report(texts, scores, metrics: DetectionMetrics | None, threshold) -> list[str]:
    if metrics is None:
        flags = [f"\t{int(s >= threshold)}" if threshold is not None else "" for s in scores]
        return [f"{s:.4f}{flag}\t{t[:80]}" for s, flag, t in zip(scores, flags, texts)]
    how = "given" if threshold is not None else "best F1 on these texts"
    return [f"AUROC {metrics.auroc:.4f}  F1 {metrics.f1:.4f} (precision {metrics.precision:.3f}, recall "
            f"{metrics.recall:.3f}, accuracy {metrics.accuracy:.3f}) at threshold {metrics.threshold:.4g} ({how}); "
            f"{metrics.n_positive} positive, {metrics.n_negative} negative"]


@click.command()
@text_model_options
@click.option("--texts", "texts_path", required=True, type=click.Path(),
              help="JSONL of {\"text\", \"label\": 0|1} rows (AUROC/F1), or plain text, one passage a line (scores).")
@direction_option(with_coef=False, coef_hint="detection reads the direction, not its strength",
                  help="Detect with a direction file's projection.")
@click.option("--feature", type=int, help="Detect with an SAE latent (with --sae).")
@click.option("--sae", "sae_path", type=click.Path(), help="SAE folder for --feature (default: the shipped one).")
@click.option("--finder", help="Fit this registered finder as a probe (diffmean, probe, rfm, ...) on --train.")
@click.option("--train", "train_path", type=click.Path(), help="Labelled JSONL to fit --finder on.")
@click.option("-p", "--param", "params", multiple=True, help="Finder parameter KEY=VALUE (repeatable).")
@click.option("--hook-point", help="Where to read (default: the direction's first, the SAE's, or 40% depth).")
@click.option("--pooling", type=click.Choice(["mean", "max"]), default="mean", show_default=True)
@click.option("--threshold", type=float, help="Call a text positive at score >= this (default: best F1, reported).")
@click.option("-o", "--output", type=click.Path(), help="Write per-text scores and metrics as JSON (atomically).")
def detect(model_name, device, dtype, texts_path, direction, feature, sae_path, finder, train_path, params, hook_point,
           pooling, threshold, output):
    """Score texts with a direction, a probe or an SAE feature; AUROC and F1 on labelled texts."""
    from polysteer.modalities.text.models import load_text_model

    if sum(x is not None for x in (direction, feature, finder)) != 1:
        raise PolysteerError("give exactly one of --direction FILE, --feature N or --finder NAME (with --train)")
    if bool(finder) != bool(train_path):
        raise PolysteerError("--finder and --train go together: the probe is fitted on the --train texts")
    texts, labels = read_texts(texts_path)
    model, tokenizer = load_text_model(model_name, device, dtype)
    if direction:
        detector, hp, max_norm, about = _direction_detector(model, direction, hook_point)
    elif feature is not None:
        detector, hp, max_norm, about = _feature_detector(feature, sae_path)
    else:
        detector, hp, max_norm, about = _finder_detector(model, tokenizer, finder, train_path, hook_point,
                                                         _parse_params(params))
    scores = score_texts(model, tokenizer, texts, detector, hp, pooling, max_norm).tolist()
    metrics = detection_metrics(scores, labels, threshold) if labels is not None else None
    for line in _report(texts, scores, metrics, threshold):
        click.echo(line)
    if output:
        about.update(hook_point=hp, pooling=pooling)
        _write_scores(output, texts, labels, scores, metrics, threshold, about)


def _write_scores(path, texts, labels, scores, metrics, threshold, about) -> None:
    cut = metrics.threshold if metrics else threshold
    rows = [{"text": t, "score": s, **({"label": labels[i]} if labels is not None else {}),
             **({"predicted": int(s >= cut)} if cut is not None else {})}
            for i, (t, s) in enumerate(zip(texts, scores))]
    data = {"detector": about, "metrics": asdict(metrics) if metrics else None, "threshold": cut, "texts": rows}
    write_text_atomic(path, json.dumps(data, indent=2))
    click.echo(f"wrote {path}")
