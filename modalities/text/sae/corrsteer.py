"""CorrSteer: pick SAE features whose activation on generated tokens correlates with a task reward.

The model answers task prompts; only generated tokens (every one, up to EOS) are SAE-encoded, max-pooled per
answer, and a streaming Pearson correlation (running sums, O(d_sae) memory) is kept between every latent and the
answer's reward. Variant ``S`` keeps the single best feature over all hook points, ``A`` the best feature at every
hook point, ``P`` those of ``A`` that raise the reward when steered alone on held-out validation prompts. A
feature's coefficient is its mean pooled activation over rewarded answers; steering adds ``coefficient * W_dec[f]``
at generated positions only.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention, Plan, steer
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.modalities.text.generation import format_prompt, generate, generate_ids
from polysteer.modalities.text.modality import TextModality
from polysteer.plugins.sae.model import SAE

Reward = Callable[[str, str], float]


class StreamingPearson:
    """Pearson correlation of each of ``d`` features with a scalar, from running sums (float64)."""

    def __init__(self, d: int):
        self.n = 0
        self.sx, self.sxx, self.sxy = (torch.zeros(d, dtype=torch.float64) for _ in range(3))
        self.sy = self.syy = 0.0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        self.n += len(y)
        self.sx += x.sum(0)
        self.sxx += (x * x).sum(0)
        self.sxy += (x * y.unsqueeze(1)).sum(0)
        self.sy += float(y.sum())
        self.syy += float((y * y).sum())

    def correlation(self) -> torch.Tensor:
        """``[d]`` correlations; 0 where a feature or the reward never varies."""
        cov = self.sxy - self.sx * self.sy / self.n
        var_x = self.sxx - self.sx**2 / self.n
        var_y = self.syy - self.sy**2 / self.n
        denom = (var_x * var_y).clamp_min(0).sqrt()
        return torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov)).float()


def _answer_mask(gen: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """True at each row's generated tokens before its first EOS (or pad)."""
    is_end = torch.isin(gen, torch.tensor(sorted(eos_ids), device=gen.device))
    return (is_end.long().cumsum(1) == 0)


@torch.no_grad()
def _pooled_answers(model, tokenizer, prompts: Sequence[str], saes: Mapping[str, SAE], max_new_tokens: int,
                    plan: Plan | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Generate, then encode every generated token (the last one too) in one teacher-forced pass; max-pool
    each SAE's latents over each answer."""
    texts = [format_prompt(tokenizer, p) for p in prompts]
    out, prompt_mask = generate_ids(model, tokenizer, texts, plan, max_new_tokens)
    start = prompt_mask.shape[1]
    answer = _answer_mask(out[:, start:], {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
    seen: dict[str, torch.Tensor] = {}
    handles = [_hook(model, hp, lambda h, hp=hp: seen.__setitem__(hp, h[:, start:].float())) for hp in saes]
    try:
        with steer(model, plan) if plan is not None else nullcontext():
            model(input_ids=out, attention_mask=torch.cat([prompt_mask, answer.long()], 1))
    finally:
        for handle in handles:
            handle.remove()
    mask = answer.unsqueeze(-1).cpu()
    pooled = {hp: (sae.encode(seen[hp].cpu()) * mask).amax(1) for hp, sae in saes.items()}
    return tokenizer.batch_decode(out[:, start:], skip_special_tokens=True), pooled


def _hook(model, hp: str, record):
    target = TextModality().resolve(model, HookPoint.parse(hp))
    if target.edit == "input":
        return target.module.register_forward_pre_hook(
            lambda m, a, k: record(k["hidden_states"] if not a else a[0]), with_kwargs=True)
    return target.module.register_forward_hook(lambda m, a, out: record(out[0] if isinstance(out, tuple) else out))


@dataclass
class CorrSteerFeature:
    """A selected feature: where it lives, its correlation with the reward and its steering coefficient."""

    hook_point: str
    feature: int
    correlation: float
    coefficient: float


@torch.no_grad()
def corrsteer(model, tokenizer, prompts: Sequence[str], reward: Reward, saes: Mapping[str, SAE],
              variant: str = "S", max_new_tokens: int = 32, batch_size: int = 8,
              validation_prompts: Sequence[str] | None = None) -> list[CorrSteerFeature]:
    """Select features by streaming correlation with ``reward(prompt, answer)``.

    Variant ``S`` keeps the single best feature, ``A`` the best at every hook point, and ``P`` prunes ``A``'s
    features by intervention: a feature stays only if steering with it alone raises the mean reward on
    ``validation_prompts`` (which must not overlap ``prompts``) above the unsteered model's.
    """
    if variant not in ("S", "A", "P"):
        raise PolysteerError(f"CorrSteer variant must be 'S' (one feature), 'A' (one per hook point) or 'P' (A, "
                             f"pruned on validation prompts), got {variant!r}")
    if (variant == "P") != bool(validation_prompts):
        raise PolysteerError("CorrSteer-P, and only it, needs validation_prompts (held out from the selection ones)")
    if variant == "P" and set(validation_prompts) & set(prompts):
        raise PolysteerError("CorrSteer-P's validation prompts overlap its selection prompts; hold them out")
    picks = _select(model, tokenizer, prompts, reward, saes, max_new_tokens, batch_size)
    if variant == "S":
        return [max(picks, key=lambda p: p.correlation)]
    if variant == "A":
        return picks
    return prune(model, tokenizer, picks, saes, validation_prompts, reward, max_new_tokens, batch_size)


def _select(model, tokenizer, prompts, reward, saes, max_new_tokens, batch_size) -> list[CorrSteerFeature]:
    stats = {hp: StreamingPearson(sae.d_sae) for hp, sae in saes.items()}
    rewarded_sum = {hp: torch.zeros(sae.d_sae, dtype=torch.float64) for hp, sae in saes.items()}
    n_rewarded = 0
    for lo in tqdm(range(0, len(prompts), batch_size), desc="CorrSteer", leave=False):
        chunk = list(prompts[lo : lo + batch_size])
        answers, pooled = _pooled_answers(model, tokenizer, chunk, saes, max_new_tokens)
        y = torch.tensor([float(reward(p, a)) for p, a in zip(chunk, answers)])
        for hp in saes:
            stats[hp].update(pooled[hp], y)
            rewarded_sum[hp] += pooled[hp][y > 0].double().sum(0)
        n_rewarded += int((y > 0).sum())
    if n_rewarded == 0:
        raise PolysteerError("no answer earned a reward, so nothing correlates; use easier prompts or a softer reward")
    picks = []
    for hp in saes:
        corr = stats[hp].correlation()
        best = int(corr.argmax())
        picks.append(CorrSteerFeature(hp, best, float(corr[best]), float(rewarded_sum[hp][best] / n_rewarded)))
    return picks


def prune(model, tokenizer, features: Sequence[CorrSteerFeature], saes: Mapping[str, SAE],
          prompts: Sequence[str], reward: Reward, max_new_tokens: int = 32,
          batch_size: int = 8) -> list[CorrSteerFeature]:
    """The features whose steering alone raises the mean reward on ``prompts`` above the unsteered model's."""
    def mean_reward(plan: Plan | None) -> float:
        answers = generate(model, tokenizer, list(prompts), plan, max_new_tokens, batch_size, progress=False)
        return sum(float(reward(p, a)) for p, a in zip(prompts, answers)) / len(prompts)

    base = mean_reward(None)
    return [f for f in tqdm(features, desc="CorrSteer-P", leave=False) if mean_reward(corrsteer_plan([f], saes)) > base]


def corrsteer_plan(features: Sequence[CorrSteerFeature], saes: Mapping[str, SAE], scale: float = 1.0) -> Plan:
    """Add ``scale * coefficient * W_dec[f]`` for each selected feature, on generated positions only."""
    return Plan([Intervention(saes[f.hook_point].W_dec[f.feature].detach().float(), f.hook_point,
                              scale * f.coefficient, "add", "generated-only") for f in features])


def side_effect_ratio(correct_before: Sequence[bool], correct_after: Sequence[bool],
                      answers_before: Sequence[str], answers_after: Sequence[str]) -> float:
    """Answers flipped from right to wrong, over answers that changed at all (0 when none changed)."""
    changed = [b != a for b, a in zip(answers_before, answers_after)]
    flipped = [c and before and not after for c, before, after in zip(changed, correct_before, correct_after)]
    return sum(flipped) / sum(changed) if any(changed) else 0.0
