"""CorrSteer: pick SAE features whose activation on generated tokens correlates with a task reward.

The model answers task prompts; only generated tokens are SAE-encoded, max-pooled per answer, and a
streaming Pearson correlation (running sums, O(d_sae) memory) is kept between every latent and the
answer's reward. Variant ``S`` keeps the single best feature over all hook points, ``A`` the best
feature at every hook point. A feature's coefficient is its mean pooled activation over rewarded
answers; steering adds ``coefficient * W_dec[f]`` at generated positions only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.modalities.text.generation import generate
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


@contextmanager
def _record_generated(model, saes: Mapping[str, SAE], eos_ids: set[int]):
    """Max-pool SAE latents over each row's generated tokens (decode steps, up to its first EOS)."""
    state: dict = {"pooled": {hp: None for hp in saes}, "finished": None, "last": None}
    eos = torch.tensor(sorted(eos_ids))

    def track(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids.shape[1] > 1:  # the prompt pass starts a new batch
            state["finished"], state["last"] = torch.zeros(ids.shape[0], dtype=torch.bool), None
        elif state["last"] is not None:  # a row is done once an earlier step fed it EOS
            state["finished"] = state["finished"] | torch.isin(state["last"], eos)
        state["last"] = ids[:, -1]

    handles = [model.register_forward_pre_hook(track, with_kwargs=True)]
    for hp, sae in saes.items():
        handles.append(_hook(model, hp, lambda h, hp=hp, sae=sae: _pool(state, hp, sae, h)))
    try:
        yield state["pooled"]
    finally:
        for handle in handles:
            handle.remove()


def _pool(state: dict, hp: str, sae: SAE, h: torch.Tensor) -> None:
    if h.shape[1] > 1:
        state["pooled"][hp] = torch.zeros(h.shape[0], sae.d_sae)
        return
    z = sae.encode(h[:, -1].float()) * (~state["finished"]).unsqueeze(1)
    state["pooled"][hp] = torch.maximum(state["pooled"][hp], z)


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
              variant: str = "S", max_new_tokens: int = 32, batch_size: int = 8) -> list[CorrSteerFeature]:
    """Select features by streaming correlation with ``reward(prompt, answer)`` (CorrSteer-S or -A)."""
    if variant not in ("S", "A"):
        raise PolysteerError(f"CorrSteer variant must be 'S' (one feature) or 'A' (one per hook point), "
                             f"got {variant!r}")
    stats = {hp: StreamingPearson(sae.d_sae) for hp, sae in saes.items()}
    rewarded_sum = {hp: torch.zeros(sae.d_sae, dtype=torch.float64) for hp, sae in saes.items()}
    n_rewarded = 0
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for lo in tqdm(range(0, len(prompts), batch_size), desc="CorrSteer", leave=False):
        chunk = list(prompts[lo : lo + batch_size])
        with _record_generated(model, saes, eos) as pooled:
            answers = generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, batch_size=len(chunk),
                               progress=False)
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
    return [max(picks, key=lambda p: p.correlation)] if variant == "S" else picks


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
