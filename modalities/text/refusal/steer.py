"""Refusal directions and their plans: DiffMean added or ablated, and SAE refusal features clamped.

Every activation is read at the last prompt token of the chat-formatted request (Arditi et al.'s position), where
the model has read the whole request and not yet answered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from polysteer.direction import Direction
from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.hookpoints import HookPoint, hook_point
from polysteer.modalities.text.generation import Example, collect
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.workflow import find_direction
from polysteer.plugins.sae.model import SAE, load_sae
from polysteer.plugins.sae.steer import SAEClamp

FEATURES_KEY = "refusal.sae_features"
VALUES_KEY = "refusal.sae_values"
# The engine skips zero coefficients (its no-op fast path), so "clamp to zero" clamps to a value below any real
# activation instead.
ZERO_CLAMP = 1e-6


def last_token_examples(prompts: Sequence[str]) -> list[Example]:
    """Inputs whose pooled activation is the last token of the chat-formatted prompt."""
    return [Example("", prompt=p) for p in prompts]


def find_refusal_direction(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], layers: Sequence[int],
                           finder: str = "diffmean", site: str = "resid_post", cache_dir: str | None = None,
                           **finder_params) -> Direction:
    """A refusal direction per layer: harmful minus harmless requests at the last prompt token.

    The stored scale is the class separation, so ``add`` at coefficient 1 moves a harmless request's activation
    about as far as a harmful one's (see :func:`addition_plan`). ``cache_dir`` reuses saved activations.
    """
    if not harmful or not harmless:
        raise PolysteerError("a refusal direction needs harmful and harmless requests")
    return find_direction(model, tokenizer, last_token_examples(harmful), last_token_examples(harmless), layers,
                          finder, site, cache_dir=cache_dir,
                          provenance={"position": "last prompt token", "purpose": "refusal"}, **finder_params)


def addition_plan(direction: Direction, layer: int | None = None, coefficient: float | None = None) -> Plan:
    """``add`` the refusal direction at one of its layers (default: every layer it holds), at every position.

    A positive coefficient raises refusal, a negative one lowers it; 1 moves by the class separation.
    """
    points = [_point(direction, layer)] if layer is not None else None
    return direction.to_plan(coefficient, operator="add", hook_points=points)


def ablation_plan(direction: Direction, layer: int, n_layers: int, blocks: Sequence[int] | None = None,
                  fraction: float = 1.0) -> Plan:
    """Directional ablation of the unit refusal direction found at ``layer``.

    With ``blocks`` None the direction is removed from the embeddings and from every attention and MLP output,
    so no residual stream of the model holds it (as orthogonalising the weights would). With ``blocks`` it is
    removed from those blocks' outputs only.

    Args:
        fraction: the part of the projection removed (1: all of it); ``ablate`` ignores the stored scale.
    """
    v = direction.vectors[_point(direction, layer)]
    if blocks is None:
        points = [hook_point(0, "resid_pre")]
        points += [hook_point(b, s) for b in range(n_layers) for s in ("attn_out", "mlp_out")]
    else:
        points = [hook_point(b, "resid_post") for b in blocks]
    return Plan([Intervention(v, hp, fraction, "ablate") for hp in points])


def _point(direction: Direction, layer: int | None) -> str:
    if layer is None:
        return direction.hook_points[0]
    matches = [hp for hp in direction.hook_points if HookPoint.parse(hp).layer == layer]
    if not matches:
        layers = [HookPoint.parse(hp).layer for hp in direction.hook_points]
        raise PolysteerError(f"the direction has no vector at layer {layer}; it has layers {layers}")
    return matches[0]


def find_refusal_features(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str],
                          sae: SAE | str | Path, top_k: int = 4, cache_dir: str | None = None) -> Direction:
    """SAE refusal features: the ``top_k`` latents whose mean activation rises most from harmless to harmful
    requests at the last prompt token (``sae_contrast``), at the SAE's hook point.

    The Direction's vector is their weighted decoder sum (an ``add`` direction); its extras hold the features and
    each one's largest activation on the harmful requests, the unit of :func:`clamp_plan`.
    """
    sae_model = load_sae(sae)
    hp = sae_model.hook_point
    sae_model.check_width(TextModality().d_model(model, hp), "this model's activations")
    X_pos = collect(model, tokenizer, last_token_examples(harmful), [hp], cache_dir=cache_dir)[hp]
    X_neg = collect(model, tokenizer, last_token_examples(harmless), [hp], cache_dir=cache_dir)[hp]
    # the plain rise of the mean, as benchmarks/results/refusal measured it (no spread normalisation or density cut)
    finder = make_finder("sae_contrast", sae=sae_model, top_k=top_k, normalize="none", max_density=1.0)
    finder.fit(X_pos, X_neg)
    with torch.no_grad():
        peaks = sae_model.encode(X_pos.float())[:, finder.features_].max(dim=0).values.float()
    source = "" if isinstance(sae, SAE) else str(Path(sae).resolve())
    return Direction.from_fitted(
        {hp: finder}, model=model, modality=TextModality(), finder={"name": "sae_contrast", "params": {"top_k": top_k}},
        d_model=sae_model.d_in, operator="add",
        provenance={"sae": source, "position": "last prompt token", "purpose": "refusal", "n_positive": len(harmful),
                    "n_negative": len(harmless),
                    "differences": [round(float(finder.differences_[f]), 4) for f in finder.features_]},
        extras={FEATURES_KEY: finder.features_.clone(), VALUES_KEY: peaks},
    )


def refusal_features(direction: Direction) -> tuple[list[int], list[float]]:
    """The SAE features of a :func:`find_refusal_features` Direction and their peak harmful activations."""
    if FEATURES_KEY not in direction.extras:
        raise PolysteerError("this direction holds no SAE refusal features; make it with find_refusal_features() "
                             "or `polysteer refusal find --sae`")
    return direction.extras[FEATURES_KEY].tolist(), direction.extras[VALUES_KEY].tolist()


def recorded_sae(direction: Direction) -> Path:
    """The SAE folder a feature direction records. Manifests keep a folder's path only below the working
    directory (else its name), so the shipped SAE is also found by name; any other must be passed."""
    from polysteer.modalities.text.sae.workflow import SHIPPED_SAE

    recorded = direction.provenance.get("sae")
    if not recorded:
        raise PolysteerError("the direction records no SAE; pass the SAE folder (sae=, --sae DIR)")
    if Path(recorded).is_dir():
        return Path(recorded)
    if Path(recorded).name == SHIPPED_SAE.name:
        return SHIPPED_SAE
    raise PolysteerError(f"the SAE this direction was found with ({recorded}) is not here; pass its folder "
                         "(sae=, --sae DIR)")


def clamp_plan(direction: Direction, multiplier: float, sae: SAE | str | Path | None = None) -> Plan:
    """``sae_clamp`` every refusal feature to ``multiplier`` x its peak harmful activation, at every position.

    ``multiplier`` > 1 amplifies the features (the seed's refusal steering), 0 removes them, < 0 pushes against.

    Args:
        sae: the SAE (or folder); default: the one recorded in the direction's provenance.
    """
    features, peaks = refusal_features(direction)
    sae_model = load_sae(sae if sae is not None else recorded_sae(direction))
    hp = direction.hook_points[0]
    interventions = []
    for feature, peak in zip(features, peaks):
        value = multiplier * peak or ZERO_CLAMP
        interventions.append(Intervention(sae_model.W_dec[feature].detach().float(), hp, value,
                                          SAEClamp(sae_model, feature)))
    return Plan(interventions)
