"""Trained steering vectors ("Small Vectors, Big Effects"): one additive vector per layer, learned by Adam
through the frozen model, optionally scaled per position by a learned gate ``sigmoid(w . h_t + b)``.

The vectors steer through :func:`polysteer.steer` during training (a ``LearnedAdd`` operator holding the
trainable tensors), so every hook is removed when training ends or raises. Only the vector and the gate get
gradients (``torch.autograd.grad`` on them alone): the model's parameters are never touched.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention, Plan, steer
from polysteer.errors import PolysteerError
from polysteer.hookpoints import hook_point
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.trained.data import TrainRow, as_rows, frozen
from polysteer.modalities.text.trained.objectives import Reinforce, Supervised
from polysteer.modalities.text.trained.preference import Preference, SteeringSign, check_preference
from polysteer.modalities.text.workflow import choose_layers
from polysteer.model_finder import ModelFinder
from polysteer.operator import Operator
from polysteer.plugins.operators.gated import LearnedAdd

OBJECTIVES = ("supervised", "reward", "preference")


class _Signed(Operator):
    """Applies the training operator with the coefficient times ``sign.value`` (the preference objectives flip it)."""

    name = "signed_learned_add"

    def __init__(self, inner: Operator, sign: SteeringSign):
        self.inner, self.sign = inner, sign

    def __call__(self, h, v, coef):
        return self.inner(h, v, coef * self.sign.value)


class _Trainable:
    """The learned tensors: a vector per hook point and, with a gate, its ``w`` and ``b``."""

    def __init__(self, points: Sequence[str], d_model: int, gate: bool, device):
        zeros = lambda *shape: torch.zeros(*shape, device=device, requires_grad=True)  # noqa: E731
        self.vectors = {hp: zeros(d_model) for hp in points}
        self.gates = {hp: {"w": zeros(d_model), "b": zeros(1)} for hp in points} if gate else {}
        self.sign = SteeringSign()

    def tensors(self) -> list[torch.Tensor]:
        return list(self.vectors.values()) + [t for g in self.gates.values() for t in g.values()]

    def plan(self) -> Plan:
        return Plan([Intervention(v.detach(), hp, 1.0, _Signed(LearnedAdd(v, **self._gate(hp)), self.sign))
                     for hp, v in self.vectors.items()])

    def _gate(self, hp: str) -> dict[str, torch.Tensor]:
        return {"w": self.gates[hp]["w"], "b": self.gates[hp]["b"][0]} if self.gates else {}

    def snapshot(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self.tensors()]

    @torch.no_grad()
    def restore(self, state: list[torch.Tensor]) -> None:
        for t, saved in zip(self.tensors(), state):
            t.copy_(saved)

    @torch.no_grad()
    def constrain(self, max_norm: float | None) -> None:
        """Project each vector back into the L2 ball of radius ``max_norm``."""
        if max_norm is None:
            return
        for v in self.vectors.values():
            v.mul_(min(1.0, max_norm / max(float(v.norm()), 1e-12)))

    def l2(self) -> torch.Tensor:
        return sum(v.pow(2).sum() for v in self.vectors.values())


class TrainedVector(ModelFinder):
    """Learn steering vectors by gradient descent on a frozen text model.

    Args:
        objective: ``'supervised'`` (rows with ``target`` and optional ``contrast``), ``'reward'``
            (REINFORCE on ``reward`` over sampled completions of the rows' prompts) or ``'preference'``
            (rows with ``target`` and ``contrast``: ``+v`` prefers the target, ``-v`` the contrast).
        layers: block indices (``12``, ``[8, 12]``, ``'8-12'``); None: 40% of the depth.
        site: hook-point site of every layer.
        steps: maximum optimiser steps; lr: Adam learning rate; batch_size: rows per step.
        contrast_weight: lambda of the bounded contrast term (see ``contrast_penalty``).
        gate: learn the token-wise gate ``alpha_t = sigmoid(w . h_t + b)`` (saved, applied by ``gated_add``).
        max_norm: keep every vector inside this L2 ball; l2: weight of an ``||v||^2`` penalty.
        patience: evaluations without improvement of the held-out monitor before stopping (None: never).
        eval_every: steps between evaluations; val_fraction: rows held out for the monitor.
        reward, baseline, num_samples, max_new_tokens, temperature: the reward objective's settings.
        preference: ``'reps'`` (RePS, reference-free, SimPO-style) or ``'bipo'`` (BiPO, DPO against the
            unsteered model); beta: its temperature (None: 1.0 for RePS, 0.1 for BiPO); margin: RePS's margin.
        chat: format prompts with the tokenizer's chat template (as ``generate`` does).
        seed: fixes batch order and sampling, so the same seed gives the same vectors.
        progress: show a tqdm bar.
    """

    name = "trained"
    operator_name = "gated_add"

    def __init__(self, objective: str = "supervised", layers: Any = None, site: str = "resid_post",
                 steps: int = 200, lr: float = 1e-2, batch_size: int = 8, contrast_weight: float = 1.0,
                 gate: bool = False, max_norm: float | None = None, l2: float = 0.0, patience: int | None = 5,
                 eval_every: int = 10, val_fraction: float = 0.2, reward: Any = None, baseline: str = "batch",
                 num_samples: int = 4, max_new_tokens: int = 32, temperature: float = 1.0, chat: bool = True,
                 seed: int = 0, progress: bool = True, preference: str = "reps", beta: float | None = None,
                 margin: float = 0.0):
        self.objective, self.layers, self.site, self.steps, self.lr = objective, layers, site, steps, lr
        self.batch_size, self.contrast_weight, self.gate = batch_size, contrast_weight, gate
        self.max_norm, self.l2, self.patience, self.eval_every = max_norm, l2, patience, eval_every
        self.val_fraction, self.reward, self.baseline, self.num_samples = val_fraction, reward, baseline, num_samples
        self.max_new_tokens, self.temperature, self.chat = max_new_tokens, temperature, chat
        self.seed, self.progress = seed, progress
        self.preference, self.beta, self.margin = preference, beta, margin

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        """Short, fast settings for the common model-finder checks on tiny models."""
        return {"layers": 1, "steps": 25, "lr": 0.05, "eval_every": 5, "patience": None, "progress": False}

    def hook_points(self, model) -> list[str]:
        """The canonical hook points of ``layers`` on this model."""
        spec = self.layers if self.layers is None or isinstance(self.layers, str) else ",".join(
            str(i) for i in _as_list(self.layers))
        return [hook_point(layer, self.site) for layer in choose_layers(spec, TextModality().n_layers(model))]

    def fit_model(self, model, tokenizer, data: Sequence[Any]) -> "TrainedVector":
        """Learn the vectors on ``data`` (TrainRow, ``{"prompt", "target", "contrast"}`` dicts or prompts)."""
        self._check()
        rows = as_rows(data)
        points = self.hook_points(model)
        d_model = TextModality().d_model(model, points[0])
        params = _Trainable(points, d_model, self.gate, next(model.parameters()).device)
        objective = self._objective(model, tokenizer, params.sign)
        if hasattr(objective, "check"):
            objective.check(rows)  # bad rows are refused before any forward pass
        train, val = self._split(rows)
        with torch.enable_grad(), frozen(model), steer(model, params.plan(), TextModality()):
            self.baseline_ = objective.monitor(val)
            self.history_, self.stopped_early_ = self._optimise(objective, params, train, val)
        self.vectors_ = {hp: v.detach().clone() for hp, v in params.vectors.items()}
        self.operator_params_ = {hp: {k: t.detach().clone() for k, t in g.items()} for hp, g in params.gates.items()}
        self._set_first()
        return self

    def _check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PolysteerError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}")
        if self.objective == "preference":
            check_preference(self.preference, self.beta, self.margin)
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.eval_every < 1:
            raise PolysteerError("steps, batch_size and eval_every must be >= 1 and lr > 0")
        if self.max_norm is not None and self.max_norm <= 0:
            raise PolysteerError(f"max_norm must be positive, got {self.max_norm}")
        if not 0 <= self.val_fraction < 1:
            raise PolysteerError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def _objective(self, model, tokenizer, sign: SteeringSign):
        if self.objective == "supervised":
            return Supervised(model, tokenizer, self.contrast_weight, self.chat)
        if self.objective == "preference":
            return Preference(model, tokenizer, sign, self.preference, self.beta, self.margin, self.chat, self.seed)
        return Reinforce(model, tokenizer, self.reward, self.baseline, self.num_samples, self.max_new_tokens,
                         self.temperature, self.chat, self.seed)

    def _split(self, rows: list[TrainRow]) -> tuple[list[TrainRow], list[TrainRow]]:
        """Seeded shuffle, then hold out ``val_fraction`` (the training rows are monitored when that is none)."""
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
        shuffled = [rows[i] for i in order]
        n_val = int(len(rows) * self.val_fraction)
        if n_val == 0 or n_val == len(rows):
            return shuffled, shuffled
        return shuffled[n_val:], shuffled[:n_val]

    def _optimise(self, objective, params: _Trainable, train, val) -> tuple[list[dict], bool]:
        optimizer = torch.optim.Adam(params.tensors(), lr=self.lr)
        batches = _Batches(len(train), self.batch_size, self.seed)
        history, best, best_state, bad = [{"step": 0, "monitor": self.baseline_}], math.inf, None, 0
        bar = tqdm(range(1, self.steps + 1), desc=f"training {self._label()} vector", disable=not self.progress)
        for step in bar:
            loss = objective.loss([train[i] for i in batches.next()], step)
            if self.l2:
                loss = loss + self.l2 * params.l2()
            optimizer.zero_grad()
            for tensor, grad in zip(params.tensors(), torch.autograd.grad(loss, params.tensors(), allow_unused=True)):
                tensor.grad = grad
            optimizer.step()
            params.constrain(self.max_norm)
            record = {"step": step, "loss": float(loss.detach()), **_reward_of(objective)}
            if step % self.eval_every == 0 or step == self.steps:
                record["monitor"] = objective.monitor(val)
                if not math.isfinite(record["monitor"]):
                    raise PolysteerError(f"the monitored loss became {record['monitor']} at step {step}; lower lr")
                if record["monitor"] < best:
                    best, best_state, bad = record["monitor"], params.snapshot(), 0
                else:
                    bad += 1
            history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})
            if self.patience is not None and bad >= self.patience:
                break
        params.restore(best_state)
        self.n_steps_, self.best_monitor_ = history[-1]["step"], best
        return history, history[-1]["step"] < self.steps

    def _label(self) -> str:
        return self.preference if self.objective == "preference" else self.objective


class _Batches:
    """Seeded epochs of shuffled indices, ``size`` at a time (a batch never repeats a row)."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size, self.queue = n, min(size, n), []
        self.generator = torch.Generator().manual_seed(seed + 1)

    def next(self) -> list[int]:
        if len(self.queue) < self.size:
            self.queue = torch.randperm(self.n, generator=self.generator).tolist()
        batch, self.queue = self.queue[: self.size], self.queue[self.size:]
        return batch


def _reward_of(objective) -> dict[str, float]:
    return {"reward": objective.last_reward} if isinstance(objective, Reinforce) else {}


def _as_list(value: Any) -> list[int]:
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]
