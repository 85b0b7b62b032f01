"""Steered music generation: plans from direction files, seeded generation under ``steer``."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch

from polysteer.direction import Direction
from polysteer.engine import Plan, as_plan, steer
from polysteer.errors import PolysteerError
from polysteer.modalities.music.modality import MusicModality


def build_plan(model: Any, directions: Sequence[Direction], coefficients: Sequence[float],
               schedules: Sequence[str | None], branch: str = "both", force: bool = False) -> Plan:
    """One plan from several directions (e.g. a note plus a chord, or a crossfade between two).

    ``coefficients`` and ``schedules`` hold one value per direction, or one value for all; a None
    schedule keeps the direction's stored default.
    """
    if not directions:
        raise PolysteerError("give at least one direction")
    coefficients, schedules = _per_direction(coefficients, directions, "coefficient"), \
        _per_direction(schedules, directions, "schedule")
    modality = MusicModality()
    identity = modality.identity(model)
    plan = Plan()
    for direction, coef, schedule in zip(directions, coefficients, schedules):
        if direction.modality != modality.name:
            raise PolysteerError(f"direction is for the {direction.modality!r} modality, not music")
        direction.check_model(identity, modality.backend(model).d_model(), force=force)
        plan = plan + direction.to_plan(coefficient=coef, schedule=schedule, branch=branch)
    return plan


def _per_direction(values: Sequence, directions: Sequence, what: str) -> list:
    values = list(values)
    if len(values) == 1:
        return values * len(directions)
    if len(values) != len(directions):
        raise PolysteerError(f"got {len(values)} {what} values for {len(directions)} directions; give one or one each")
    return values


def generate_audio(model: Any, prompts: Sequence[str], plan: Plan | None = None, seconds: float = 10.0,
                   tokenizer: Any = None, seed: int = 0, sample: bool = True, top_k: int = 250,
                   temperature: float = 1.0, guidance: float = 3.0) -> np.ndarray:
    """Generate ``[B, channels, samples]`` audio for the text prompts, steered by ``plan`` if given.

    Args:
        model: a MusicGen (transformers with its ``tokenizer``, or audiocraft).
        prompts: text descriptions, one per output.
        plan: interventions at ``decoder.blocks.*``; schedules may use seconds (``ramp:5s-15s``).
        seconds: audio length; the decoder runs ``seconds * frame_rate`` steps (plus the codebook delay).
        seed: seeds torch before generating, so steered and unsteered runs sample alike.
        sample, top_k, temperature: sampling (MusicGen's defaults); ``sample=False`` is greedy.
        guidance: classifier-free guidance scale (above 1 doubles the batch as ``[cond; uncond]``).
    """
    if seconds <= 0:
        raise PolysteerError(f"seconds must be positive, got {seconds}")
    backend = MusicModality().backend(model)
    plan = as_plan(plan) if plan is not None else Plan()
    torch.manual_seed(seed)
    context = steer(model, plan) if len(plan) else nullcontext()
    with torch.no_grad(), context:
        return backend.generate(list(prompts), seconds, tokenizer, sample=sample, top_k=top_k,
                                temperature=temperature, guidance=guidance)
