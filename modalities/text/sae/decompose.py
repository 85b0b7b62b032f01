"""``polysteer explain --direction FILE --decompose``: a direction's SAE features, with VocabProj tokens.

The pure decompositions are in :mod:`polysteer.plugins.sae.decompose`; this module reads the direction,
the contrastive data and the texts, runs the text model for activations and VocabProj, and formats lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from polysteer.data import read_contrastive, read_lines
from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.modalities.text.generation import Example, collect
from polysteer.modalities.text.sae.explain import vocab_proj
from polysteer.plugins.sae.decompose import (
    Contribution,
    Decomposition,
    contrast_decomposition,
    decoder_cosine,
    measure_typical_norm,
    norm_warning,
    reconstruction_cosine,
    typical_norm,
)
from polysteer.plugins.sae.model import SAE


@dataclass
class Report:
    """What ``explain --decompose`` prints: ``lines`` on stdout, ``warnings`` (one line each) on stderr."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def applied_vector(direction: Direction, hook_point: str, coefficient: float | None = None) -> torch.Tensor:
    """The vector a plan adds at ``hook_point``: ``coefficient * scale * weight * unit vector``."""
    if hook_point not in direction.vectors:
        raise PolysteerError(f"the direction has no vector at {hook_point} (the SAE's hook point); it has "
                             f"{', '.join(direction.hook_points)}: use an SAE trained on one of those")
    coef = direction.coefficient if coefficient is None else coefficient
    factor = direction.scales.get(hook_point, 1.0) * direction.weights.get(hook_point, 1.0)
    return coef * factor * direction.vectors[hook_point].float()


def token_activations(model, tokenizer, examples: list[Example], hook_point: str, chat: bool = True) -> torch.Tensor:
    """Every pooled token's activation at ``hook_point`` (the first token, an attention sink, is skipped)."""
    return collect(model, tokenizer, examples, [hook_point], pooling="tokens", chat=chat)[hook_point]


def contrast_from_file(model, tokenizer, sae: SAE, data_path: str | Path, hook_point: str) -> Decomposition:
    """Contrast decomposition on the token activations of a contrastive JSONL file (as ``polysteer find`` reads)."""
    pos, neg = read_contrastive(data_path)
    return contrast_decomposition(sae, token_activations(model, tokenizer, pos, hook_point),
                                  token_activations(model, tokenizer, neg, hook_point))


def feature_lines(model, tokenizer, sae: SAE, contributions: list[Contribution], n_tokens: int = 6) -> list[str]:
    """``sign index score VocabProj`` for each contribution."""
    lines = []
    for c in contributions:
        tokens = vocab_proj(model, tokenizer, sae.W_dec[c.feature].detach(), n_tokens).top
        lines.append(f"  {'+' if c.score > 0 else '-'} {c.feature:6d}  {c.score:+.4f}  VocabProj: {tokens}")
    return lines


def _norm_check(model, tokenizer, sae: SAE, vector: torch.Tensor, hook_point: str,
                text_path: str | None) -> tuple[float | None, str | None]:
    """(typical norm, warning or None); the norm is measured on ``text_path`` when given, else read from the SAE."""
    if text_path:
        texts = [Example(t) for t in read_lines(text_path)]
        typical = measure_typical_norm(token_activations(model, tokenizer, texts, hook_point, chat=False))
    else:
        typical = typical_norm(sae)
    if typical is None:
        return None, ("cannot check the vector's norm: the SAE records no max_norm; pass --text FILE to measure "
                      "the typical activation norm on your texts")
    return typical, norm_warning(float(vector.norm()), typical)


def explain_decomposition(model, tokenizer, direction_path: str | Path, sae: SAE, data_path: str | None = None,
                          text_path: str | None = None, coefficient: float | None = None, n: int = 10) -> Report:
    """Decoder-cosine (and, with ``data_path``, contrast) decomposition of a direction file's vector.

    The SAE's ``hook_name`` chooses the vector; the norm check uses the vector at ``coefficient`` (default
    the file's own).
    """
    direction = Direction.load(direction_path)
    hook_point = sae.metadata.get("hook_name") or direction.hook_points[0]
    sae.check_width(direction.d_model, "the direction's vectors")
    vector = applied_vector(direction, hook_point, coefficient)
    typical, warning = _norm_check(model, tokenizer, sae, vector, hook_point, text_path)
    report = Report(warnings=[warning] if warning else [])
    coef = direction.coefficient if coefficient is None else coefficient
    report.lines.append(f"{direction_path} at {hook_point}: norm {float(vector.norm()):.4g} at coefficient {coef:g}"
                        + (f", typical activation norm {typical:.4g}" if typical else ""))
    cosine = decoder_cosine(sae, vector)
    report.lines += [f"decoder cosine (signed cosine with each of {sae.d_sae} decoder rows):"]
    report.lines += feature_lines(model, tokenizer, sae, cosine.positive(n) + cosine.negative(n))
    if data_path:
        contrast = contrast_from_file(model, tokenizer, sae, data_path, hook_point)
        report.lines.append(f"contrast (mean SAE code on positives minus negatives of {data_path}; rebuilds the "
                            f"vector with cosine {reconstruction_cosine(sae, contrast, vector):.3f}):")
        report.lines += feature_lines(model, tokenizer, sae, contrast.positive(n) + contrast.negative(n))
    return report
