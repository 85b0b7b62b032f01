"""``polysteer detect``: score texts with a direction, a probe or an SAE feature; AUROC and F1 on labelled texts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.hookpoints import HookPoint
from polysteer.io import write_text_atomic
from polysteer.modalities.text.cli import text_model_options
from polysteer.modalities.text.detect import read_texts, score_texts, text_activations
from polysteer.modalities.text.modality import TextModality
from polysteer.option_types import FINITE_FLOAT, NONNEGATIVE_INT, CheckedChoice, Parsed, input_type
from polysteer.options import direction_option, finder_option, finder_param_option, output_option
from polysteer.plugins.detection import (
    DetectionMetrics,
    DirectionDetector,
    FeatureDetector,
    FinderDetector,
    detection_metrics,
)
from polysteer.plugins.sae import SAE
from polysteer.plugins.sae.pretrained import sae_type


def _direction_detector(path: str, hook_point: str | None):
    """Read the direction now; the returned function checks it against the model and builds the detector."""
    direction = Direction.load(path)
    hp = hook_point or direction.hook_points[0]
    if hp not in direction.vectors:
        raise PolysteerError(f"{path} has no vector at {hp}; it has {', '.join(direction.hook_points)}")

    def build(model, tokenizer):
        direction.check_model(TextModality().identity(model), TextModality().d_model(model, hp), force=True)
        return DirectionDetector(direction.vectors[hp]), hp, None, {"kind": "direction", "file": str(path)}

    return build


def _feature_detector(feature: int, sae_path: str | None):
    """Load the SAE now; the detector needs no model."""
    from polysteer.modalities.text.sae.workflow import SHIPPED_SAE  # imports the SAE trainer: only when needed

    path = Path(sae_path) if sae_path else SHIPPED_SAE
    sae = SAE.load(path)
    about = {"kind": "sae-feature", "feature": feature, "sae": str(path)}
    result = FeatureDetector(sae, feature), sae.hook_point, sae.metadata.get("max_norm"), about
    return lambda model, tokenizer: result


def _finder_detector(finder: str, train_path: str, hook_point: str | None, params: dict):
    """Read the labelled --train texts now; the returned function fits the probe on the model's activations."""
    from polysteer.modalities.text.workflow import default_layer

    texts, labels = read_texts(train_path)
    if labels is None:
        raise PolysteerError(f"--train {train_path} must be labelled JSONL rows {{\"text\": ..., \"label\": 0|1}}")
    kwargs = dict(params)

    def build(model, tokenizer):
        hp = hook_point or f"text.blocks.{default_layer(TextModality().n_layers(model))}.resid_post"
        tokens = text_activations(model, tokenizer, texts, hp)
        token_level = getattr(make_finder(finder), "preferred_pooling", "mean") == "tokens"
        detector = FinderDetector.fit(finder, tokens if token_level else tokens.pool(pooling="mean"), labels, **kwargs)
        return detector, hp, None, {"kind": "finder", "finder": finder, "train": str(train_path), "params": kwargs,
                                    "fitted_on": detector.fitted_on}

    return build


def _check_detector_options(direction, feature, finder, train_path, params) -> None:
    """One detector, and no option that the chosen one would ignore."""
    if sum(x is not None for x in (direction, feature, finder)) != 1:
        raise PolysteerError("give exactly one of --direction FILE, --feature N or --finder NAME (with --train)")
    if bool(finder) != bool(train_path):
        raise PolysteerError("--finder and --train go together: the probe is fitted on the --train texts")
    if params and not finder:
        raise PolysteerError("--finder-param sets --finder parameters; give --finder NAME --train FILE too")


def _check_hook_point(text: str, option: str) -> str:
    try:
        return str(HookPoint.parse(text))
    except PolysteerError as exc:
        raise PolysteerError(f"{option}: {exc}") from None


def _report(texts, scores, metrics: DetectionMetrics | None, threshold) -> list[str]:
    if metrics is None:
        flags = [f"\t{int(s >= threshold)}" if threshold is not None else "" for s in scores]
        return [f"{s:.4f}{flag}\t{t[:80]}" for s, flag, t in zip(scores, flags, texts)]
    how = {"given": "threshold given", "train": "threshold: best F1 on --train",
           "cross-validated": "each text called at a threshold chosen on the other folds; the threshold shown is "
                              f"the best on all texts, where F1 would read {metrics.oracle_f1:.4f} in hindsight",
           "oracle": "threshold: best F1 on these same texts (a class has one text, too few to cross-validate), "
                     "so F1 is an upper bound"}[metrics.threshold_source]
    return [f"AUROC {metrics.auroc:.4f}  F1 {metrics.f1:.4f} (precision {metrics.precision:.3f}, recall "
            f"{metrics.recall:.3f}, accuracy {metrics.accuracy:.3f}) at threshold {metrics.threshold:.4g} ({how}); "
            f"{metrics.n_positive} positive, {metrics.n_negative} negative"]


@click.command()
@text_model_options
@click.option("--texts", "texts_path", required=True, type=input_type(),
              help="JSONL of {\"text\", \"label\": 0|1} rows (AUROC/F1), or plain text, one passage a line (scores).")
@direction_option(with_coef=False, coef_hint="detection reads the direction, not its strength",
                  help="Detect with a direction file's projection.")
@click.option("--feature", type=NONNEGATIVE_INT, help="Detect with an SAE latent (with --sae).")
@click.option("--sae", "sae_path", type=sae_type(), help="SAE for --feature: folder or SAELens RELEASE/SAE_ID "
              "(default: the shipped one).")
@finder_option(None, help="Fit this registered finder as a probe (diffmean, probe, rfm, ...) on --train.")
@click.option("--train", "train_path", type=input_type(), help="Labelled JSONL to fit --finder on.")
@finder_param_option()
@click.option("--hook-point", type=Parsed("hook point", _check_hook_point), metavar="TOWER.blocks.I.SITE",
              help="Where to read (default: the direction's first, the SAE's, or 40% depth).")
@click.option("--pooling", type=CheckedChoice(["mean", "max"]), default="mean", show_default=True)
@click.option("--threshold", type=FINITE_FLOAT, help="Call a text positive at score >= this (default: best F1).")
@output_option(required=False, help="Write per-text scores and metrics as JSON.")
def detect(model_name, device, dtype, texts_path, direction, feature, sae_path, finder, train_path, finder_params,
           hook_point, pooling, threshold, output):
    """Score texts with a direction, a probe or an SAE feature; AUROC and F1 on labelled texts."""
    from polysteer.modalities.text.models import load_text_model

    _check_detector_options(direction, feature, finder, train_path, finder_params)
    texts, labels = read_texts(texts_path)
    if direction:
        build = _direction_detector(direction, hook_point)
    elif feature is not None:
        build = _feature_detector(feature, sae_path)
    else:
        build = _finder_detector(finder, train_path, hook_point, finder_params)
    model, tokenizer = load_text_model(model_name, device, dtype)
    detector, hp, max_norm, about = build(model, tokenizer)
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
