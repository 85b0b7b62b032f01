"""Preference objectives for trained steering vectors: RePS and BiPO, both bidirectional.

Each row's ``target`` is the completion the vector should make preferred over the row's ``contrast`` when it is
added (``+v``); with the vector negated (``-v``) the preference flips. Two published losses:

- ``reps``: Reference-free Preference Steering (Wu et al. 2025, "Improved Representation Steering for Language
  Models", the AxBench authors). SimPO-style, on per-token mean log-likelihoods, both directions every step::

      up   = w+ * mean logp(target | +v) - mean logp(contrast | +v)
      down = w- * mean logp(contrast | -v) - mean logp(target | -v)
      loss = -log sigmoid(beta * up - margin) - log sigmoid(beta * down - margin)

  with ``w+ = max(log p(contrast) - log p(target), 1)`` and ``w- = max(log p(target) - log p(contrast), 1)`` from
  the unsteered model's summed log-probs: the preferred completion's likelihood is up-weighted where the model
  finds it unlikely. The paper's setting is ``beta = 1``, ``margin = 0``; the reference only sets these weights.
- ``bipo``: Bi-directional Preference Optimization (Cao et al. 2024). DPO with the unsteered model as reference
  (its log-probs computed once per row, without gradients); each step draws ``d`` in {+1, -1}::

      loss = -log sigmoid(d * beta * ([logp(target | d v) - ref(target)] - [logp(contrast | d v) - ref(contrast)]))

  on summed log-probs, ``beta = 0.1`` as published. At ``v = 0`` the loss is ``log 2``.

Both expose ``loss(rows, step)`` and ``monitor(rows)`` like the other objectives; the monitor averages both
directions, so it does not depend on the drawn signs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from polysteer.errors import PolysteerError
from polysteer.modalities.text.trained.data import TrainRow, completion_ids, completion_logprobs, prompt_ids

DEFAULT_BETA = {"reps": 1.0, "bipo": 0.1}


class SteeringSign:
    """The sign the trained vectors are applied with: ``+1`` steers, ``-1`` suppresses, ``0`` leaves the model alone.

    The training operator reads ``value`` at every forward pass; ``with sign(-1.0): ...`` sets it for a block.
    """

    def __init__(self) -> None:
        self.value = 1.0

    @contextmanager
    def __call__(self, value: float) -> Iterator[None]:
        previous, self.value = self.value, float(value)
        try:
            yield
        finally:
            self.value = previous


def check_preference(variant: str, beta: float | None, margin: float) -> None:
    """Refuse an unknown variant or a non-finite / non-positive ``beta`` or a negative ``margin``."""
    if variant not in DEFAULT_BETA:
        raise PolysteerError(f"unknown preference {variant!r}; use 'reps' or 'bipo'")
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise PolysteerError(f"beta must be a finite number > 0, got {beta}")
    if not (math.isfinite(margin) and margin >= 0):
        raise PolysteerError(f"margin must be a finite number >= 0, got {margin}")


class Preference:
    """RePS or BiPO on rows with a ``target`` and a ``contrast`` (see the module docstring for the losses).

    Args:
        sign: the :class:`SteeringSign` the training plan's operator reads (set to -1 and 0 here).
        variant: ``'reps'`` or ``'bipo'``.
        beta: the loss's temperature; None: 1.0 for RePS, 0.1 for BiPO (the papers' values).
        margin: RePS's SimPO margin ``gamma`` (0 in the paper); BiPO ignores it.
        seed: seeds BiPO's draw of the direction at each step.
    """

    def __init__(self, model, tokenizer, sign: SteeringSign, variant: str = "reps", beta: float | None = None,
                 margin: float = 0.0, chat: bool = True, seed: int = 0):
        check_preference(variant, beta, margin)
        self.model, self.tokenizer, self.sign, self.variant, self.chat = model, tokenizer, sign, variant, chat
        self.beta = DEFAULT_BETA[variant] if beta is None else float(beta)
        self.margin, self.seed = float(margin), seed
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._encoded: dict[TrainRow, tuple[list[int], list[int], list[int]]] = {}
        self._reference: dict[TrainRow, tuple[float, float]] = {}

    def check(self, rows: Sequence[TrainRow]) -> None:
        """Refuse, before any forward pass, a row without a target or a contrast completion."""
        for i, row in enumerate(rows):
            self._encode(row, i)

    def _encode(self, row: TrainRow, index: int | None = None) -> tuple[list[int], list[int], list[int]]:
        if row not in self._encoded:
            target, contrast = completion_ids(self.tokenizer, row.target), completion_ids(self.tokenizer, row.contrast)
            if not target or not contrast:
                where, missing = f"row {index}" if index is not None else "a row", "contrast" if target else "target"
                raise PolysteerError(f"{where} (prompt {row.prompt!r}) has no {missing}; the preference objective "
                                     "needs both a target and a contrast on every row")
            self._encoded[row] = (prompt_ids(self.tokenizer, row.prompt, self.chat), target, contrast)
        return self._encoded[row]

    def scores(self, rows: Sequence[TrainRow]) -> tuple[torch.Tensor, ...]:
        """Summed log-probs of targets and contrasts ``[rows]`` and their token counts, under the current sign."""
        encoded = [self._encode(r) for r in rows]
        pairs = [(p, t) for p, t, _ in encoded] + [(p, c) for p, _, c in encoded]
        logp, mask = completion_logprobs(self.model, pairs, self.pad)
        sums, counts, k = (logp * mask).sum(1), mask.sum(1).to(logp.dtype), len(rows)
        return sums[:k], sums[k:], counts[:k], counts[k:]

    def reference(self, rows: Sequence[TrainRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """The unsteered model's summed log-probs of targets and contrasts, computed once per row."""
        todo = list(dict.fromkeys(r for r in rows if r not in self._reference))
        if todo:
            with torch.no_grad(), self.sign(0.0):
                target, contrast, _, _ = self.scores(todo)
            self._reference.update({r: (float(t), float(c)) for r, t, c in zip(todo, target, contrast)})
        device = next(self.model.parameters()).device
        values = torch.tensor([self._reference[r] for r in rows], device=device)
        return values[:, 0], values[:, 1]

    def loss(self, rows: Sequence[TrainRow], step: int = 0) -> torch.Tensor:
        ref_target, ref_contrast = self.reference(rows)
        if self.variant == "reps":
            return self._reps(rows, ref_target, ref_contrast)
        draw = torch.rand(1, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step))
        return self._bipo(rows, ref_target, ref_contrast, 1.0 if float(draw) < 0.5 else -1.0)

    def _reps(self, rows, ref_target: torch.Tensor, ref_contrast: torch.Tensor) -> torch.Tensor:
        with self.sign(1.0):
            target, contrast, n_target, n_contrast = self.scores(rows)
        up = (ref_contrast - ref_target).clamp(min=1) * target / n_target - contrast / n_contrast
        with self.sign(-1.0):
            target, contrast, n_target, n_contrast = self.scores(rows)
        down = (ref_target - ref_contrast).clamp(min=1) * contrast / n_contrast - target / n_target
        return -(F.logsigmoid(self.beta * up - self.margin) + F.logsigmoid(self.beta * down - self.margin)).mean()

    def _bipo(self, rows, ref_target: torch.Tensor, ref_contrast: torch.Tensor, d: float) -> torch.Tensor:
        with self.sign(d):
            target, contrast, _, _ = self.scores(rows)
        return -F.logsigmoid(d * self.beta * ((target - ref_target) - (contrast - ref_contrast))).mean()

    @torch.no_grad()
    def monitor(self, rows: Sequence[TrainRow], chunk: int = 8) -> float:
        """The loss over all ``rows`` (BiPO: averaged over both directions), ``chunk`` rows at a time."""
        total = 0.0
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            refs = self.reference(part)
            if self.variant == "reps":
                value = float(self._reps(part, *refs))
            else:
                value = (float(self._bipo(part, *refs, 1.0)) + float(self._bipo(part, *refs, -1.0))) / 2
            total += value * len(part)
        return total / len(rows)
