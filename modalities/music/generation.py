"""Steered music generation: plans from direction files, seeded generation under ``steer``, and the codebook
tokens each decoding step produced (to see steering where the audio cannot show it)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.engine import Plan, as_plan, steer
from polysteer.errors import PolysteerError
from polysteer.modalities.music.modality import MusicModality
from polysteer.modalities.music.quiet import silence_third_party

silence_third_party()


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
                   temperature: float = 1.0, guidance: float = 3.0, tokens: list | None = None,
                   progress: bool = True) -> np.ndarray:
    """Generate ``[B, channels, samples]`` audio for the text prompts, steered by ``plan`` if given.

    Args:
        model: a MusicGen (transformers with its ``tokenizer``, or audiocraft).
        prompts: text descriptions, one per output.
        plan: interventions at ``decoder.blocks.*``; schedules may use seconds (``ramp:5s-15s``).
        seconds: audio length; the decoder runs ``seconds * frame_rate`` steps (plus the codebook delay).
        seed: seeds torch before generating, so steered and unsteered runs sample alike.
        sample, top_k, temperature: sampling (MusicGen's defaults); ``sample=False`` is greedy.
        guidance: classifier-free guidance scale (above 1 doubles the batch as ``[cond; uncond]``).
        tokens: if a list, receives each decoding step's codebook tokens ``[B, codebooks]`` (see :class:`StepTokens`).
        progress: show a progress bar over the decoding steps.
    """
    if seconds <= 0:
        raise PolysteerError(f"seconds must be positive, got {seconds}")
    backend = MusicModality().backend(model)
    plan = as_plan(plan) if plan is not None else Plan()
    torch.manual_seed(seed)
    context = steer(model, plan) if len(plan) else nullcontext()
    with torch.no_grad(), context, StepTokens(model, len(prompts), progress, seconds) as recorder:
        audio = backend.generate(list(prompts), seconds, tokenizer, sample=sample, top_k=top_k,
                                 temperature=temperature, guidance=guidance)
    if tokens is not None:
        tokens.extend(recorder.tokens)
    return audio


class StepTokens:
    """Context manager that watches the decoder's forward passes: one progress-bar tick per decoding step, and
    ``tokens``, the codebook tokens ``[B, codebooks]`` each step sampled (conditional rows only).

    A step's tokens are read from the next forward's input, so the last step's are not seen. Leading forwards
    fed only the start token are skipped (transformers runs one more than audiocraft), so both backends number
    the steps alike; positions masked by the codebook delay pattern hold the special token in any run.
    """

    def __init__(self, model: Any, batch: int, progress: bool = True, seconds: float | None = None):
        self.backend, self.batch, self.progress = MusicModality().backend(model), batch, progress
        # one forward per frame plus the codebook delay; transformers adds one more start-token forward
        extra = self.backend.num_codebooks - (self.backend.name != "transformers")
        self.total = round(seconds * self.backend.frame_rate) + extra if seconds else None
        self._inputs: list[torch.Tensor] = []
        self._handle, self._bar = None, None

    @property
    def tokens(self) -> list[torch.Tensor]:
        """Sampled tokens per step, ``[B, codebooks]`` each."""
        start = 1
        while start < len(self._inputs) and torch.equal(self._inputs[start], self._inputs[0]):
            start += 1
        return self._inputs[start:]

    def __enter__(self) -> "StepTokens":
        self._handle = self.backend.root().register_forward_pre_hook(self._record, with_kwargs=True)
        self._bar = tqdm(total=self.total, desc="generating audio", unit="step", leave=False,
                         disable=not self.progress)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._bar.close()

    def _record(self, module, args, kwargs) -> None:
        self._inputs.append(self._input_codes(args, kwargs)[: self.batch, :, -1].detach().cpu())
        self._bar.update(1)

    def _input_codes(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The forward's token input as ``[rows, codebooks, positions]`` (conditional rows first)."""
        if self.backend.name == "transformers":
            ids = kwargs.get("input_ids", args[0] if args else None)
            return ids.reshape(-1, self.backend.num_codebooks, ids.shape[-1])
        return args[0] if args else kwargs["sequence"]


@dataclass
class Divergence:
    """Where two runs' codebook tokens differ, step by step.

    Attributes:
        differs: one bool per decoding step both runs reached (True: some codebook token differs).
        first: the first differing step, or None when every step matches.
    """

    differs: list[bool]
    first: int | None

    @property
    def fraction(self) -> float:
        """Share of steps whose tokens differ."""
        return sum(self.differs) / len(self.differs) if self.differs else 0.0


def token_divergence(steered: Sequence[torch.Tensor], unsteered: Sequence[torch.Tensor], row: int = 0) -> Divergence:
    """Compare the step tokens of two runs (from ``generate_audio(..., tokens=[])``) for one batch row."""
    differs = [bool((a[row] != b[row]).any()) for a, b in zip(steered, unsteered)]
    return Divergence(differs, differs.index(True) if any(differs) else None)
