"""The two objectives a trained steering vector optimises: supervised likelihood and REINFORCE on a reward.

Each objective exposes ``loss(rows, step)`` (differentiable, computed while the vector steers the model)
and ``monitor(rows)`` (a held-out number, lower is better, for early stopping).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from polysteer.errors import PolysteerError
from polysteer.modalities.text.trained.data import TrainRow, completion_ids, completion_logprobs, prompt_ids, sample

RewardFunction = Callable[[list[str]], Sequence[float]]


def contrast_penalty(mean_logp: torch.Tensor) -> torch.Tensor:
    """``-log(1 - p)`` of the geometric-mean token probability ``p = exp(mean log p)`` of a contrast completion.

    Bounded below by 0 and close to ``p`` once ``p`` is small, so pushing an already unlikely contrast
    further down earns nothing (an unbounded ``+ logp(contrast)`` would run to minus infinity instead of
    raising the target).
    """
    p = mean_logp.exp().clamp(max=1 - 1e-6)
    return -torch.log1p(-p)


class Supervised:
    """``-mean logp(target) + contrast_weight * mean -log(1 - p(contrast))`` (per-token means, see above)."""

    def __init__(self, model, tokenizer, contrast_weight: float = 1.0, chat: bool = True):
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.contrast_weight = contrast_weight
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache: dict[TrainRow, tuple[list[int], list[int], list[int]]] = {}

    def _encode(self, row: TrainRow) -> tuple[list[int], list[int], list[int]]:
        if row not in self._cache:
            target = completion_ids(self.tokenizer, row.target)
            if not target:
                raise PolysteerError(f"row with prompt {row.prompt!r} has an empty target; the supervised "
                                     "objective needs a target completion on every row")
            contrast = completion_ids(self.tokenizer, row.contrast) if row.contrast else []
            self._cache[row] = (prompt_ids(self.tokenizer, row.prompt, self.chat), target, contrast)
        return self._cache[row]

    def terms(self, rows: Sequence[TrainRow]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token mean log-probs of the targets ``[rows]`` and of the non-empty contrasts ``[k]``."""
        encoded = [self._encode(r) for r in rows]
        pairs = [(p, t) for p, t, _ in encoded] + [(p, c) for p, _, c in encoded if c]
        logp, mask = completion_logprobs(self.model, pairs, self.pad)
        mean = (logp * mask).sum(1) / mask.sum(1)
        return mean[: len(rows)], mean[len(rows):]

    def loss(self, rows: Sequence[TrainRow], step: int = 0) -> torch.Tensor:
        return self._combine(*self.terms(rows))

    def _combine(self, target: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        loss = -target.mean()
        if len(contrast) and self.contrast_weight:
            loss = loss + self.contrast_weight * contrast_penalty(contrast).mean()
        return loss

    @torch.no_grad()
    def monitor(self, rows: Sequence[TrainRow], chunk: int = 8) -> float:
        """The loss over all ``rows``, computed ``chunk`` rows at a time (logits over the vocabulary are big)."""
        parts = [self.terms(rows[i : i + chunk]) for i in range(0, len(rows), chunk)]
        return float(self._combine(torch.cat([t for t, _ in parts]), torch.cat([c for _, c in parts])))


class Reinforce:
    """REINFORCE with a baseline: ``-mean((r - b) * log p(sample))`` over sampled completions.

    Args:
        reward: scores a list of completions, one float each.
        baseline: ``'batch'`` (mean reward of the batch) or ``'running'`` (exponential mean of past batches).
        num_samples: completions sampled per prompt.
    """

    def __init__(self, model, tokenizer, reward: RewardFunction, baseline: str = "batch", num_samples: int = 4,
                 max_new_tokens: int = 32, temperature: float = 1.0, chat: bool = True, seed: int = 0,
                 momentum: float = 0.9):
        if not callable(reward):
            raise PolysteerError("the reward objective needs reward=a function list[str] -> list[float]")
        if baseline not in ("batch", "running"):
            raise PolysteerError(f"unknown baseline {baseline!r}; use 'batch' or 'running'")
        self.model, self.tokenizer, self.reward, self.baseline = model, tokenizer, reward, baseline
        self.num_samples, self.max_new_tokens, self.temperature = num_samples, max_new_tokens, temperature
        self.chat, self.seed, self.momentum = chat, seed, momentum
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.running: float | None = None
        self.last_reward = math.nan

    def _rollouts(self, rows: Sequence[TrainRow], seed: int) -> tuple[list, torch.Tensor]:
        prompts = [prompt_ids(self.tokenizer, r.prompt, self.chat) for r in rows]
        samples = sample(self.model, self.tokenizer, prompts, self.num_samples, self.max_new_tokens,
                         self.temperature, seed)
        texts = self.tokenizer.batch_decode([c for _, c in samples], skip_special_tokens=True)
        return samples, self._score(texts)

    def _score(self, texts: list[str]) -> torch.Tensor:
        scores = list(self.reward(texts))
        if len(scores) != len(texts):
            raise PolysteerError(f"the reward function returned {len(scores)} scores for {len(texts)} completions; "
                                 "it must return one float per completion")
        rewards = torch.tensor([float(s) for s in scores])
        if not torch.isfinite(rewards).all():
            raise PolysteerError("the reward function returned NaN or inf; return finite floats")
        return rewards

    def _baseline(self, rewards: torch.Tensor) -> float:
        mean = float(rewards.mean())
        if self.baseline == "batch":
            return mean
        value = mean if self.running is None else self.running  # the past only: keeps the estimate unbiased
        self.running = mean if self.running is None else self.momentum * self.running + (1 - self.momentum) * mean
        return value

    def loss(self, rows: Sequence[TrainRow], step: int = 0) -> torch.Tensor:
        samples, rewards = self._rollouts(rows, self.seed * 1_000_003 + step)
        advantage = rewards - self._baseline(rewards)
        self.last_reward = float(rewards.mean())
        logp, mask = completion_logprobs(self.model, samples, self.pad)
        return -(advantage.to(logp.device) * (logp * mask).sum(1)).mean()

    @torch.no_grad()
    def monitor(self, rows: Sequence[TrainRow], chunk: int = 8) -> float:
        """Minus the mean reward of held-out samples drawn with a fixed seed (comparable across evaluations)."""
        rewards = [self._rollouts(rows[i : i + chunk], self.seed - 1 - i)[1] for i in range(0, len(rows), chunk)]
        return -float(torch.cat(rewards).mean())
