"""SAE-TS (Chalnev, Siu, Conmy): targeted steering vectors from a linear model of steering effects.

1. Effect of a steering vector ``s``: mean SAE latents of steered generations minus those of unsteered
   ones. The generations are read back by the *unsteered* model, so the SAE never encodes ``s`` itself.
2. Fit ``e(s) ~ s^T W + b`` (ridge) on many ``(s, e)`` pairs.
3. Targeted vector for a target latent set ``t``: ``normalize(normalize(W t) - normalize(W b))``: it moves
   the targets while cancelling the generic effect every vector has.
4. Scale: the coefficient at which the LM loss on reference text rises by a chosen amount (bisection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention
from polysteer.errors import PolysteerError
from polysteer.modalities.text.generation import Example, collect, generate, token_labels
from polysteer.modalities.text.sae.lm_loss import lm_loss
from polysteer.modalities.text.sae.select import RowAdd
from polysteer.plugins.sae.model import SAE


def _mean_latents(model, tokenizer, sae: SAE, hook_point: str, prompts: Sequence[str], answers: Sequence[str],
                  groups: int) -> torch.Tensor:
    """``[groups, d_sae]`` mean latents over the answer tokens; answers come in ``groups`` equal blocks."""
    examples = [Example(a.strip() or ".", prompt=p) for p, a in zip(prompts, answers)]
    acts = collect(model, tokenizer, examples, [hook_point], pooling="tokens")[hook_point]
    group = token_labels(tokenizer, examples, [i * groups // len(examples) for i in range(len(examples))])
    z = sae.encode(acts)
    sums = torch.zeros(groups, sae.d_sae).index_add_(0, group, z)
    return sums / torch.bincount(group, minlength=groups).clamp_min(1).unsqueeze(1)


@torch.no_grad()
def measure_effects(model, tokenizer, sae: SAE, hook_point: str, vectors: torch.Tensor, prompts: Sequence[str],
                    max_new_tokens: int = 16, vectors_per_batch: int = 4) -> torch.Tensor:
    """``[n_vectors, d_sae]`` effects of adding each row of ``vectors`` (already scaled) at ``hook_point``."""
    prompts = list(prompts)
    base_answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False)
    base = _mean_latents(model, tokenizer, sae, hook_point, prompts, base_answers, 1)[0]
    effects = []
    for lo in tqdm(range(0, len(vectors), vectors_per_batch), desc="SAE-TS effects", leave=False):
        chunk = vectors[lo : lo + vectors_per_batch].float()
        rows = chunk.repeat_interleave(len(prompts), dim=0)
        plan = Intervention(rows[0], hook_point, 1.0, RowAdd(rows))
        batch_prompts = prompts * len(chunk)
        answers = generate(model, tokenizer, batch_prompts, plan, max_new_tokens=max_new_tokens,
                           batch_size=len(batch_prompts), progress=False)
        effects.append(_mean_latents(model, tokenizer, sae, hook_point, batch_prompts, answers, len(chunk)) - base)
    return torch.cat(effects)


@dataclass
class EffectModel:
    """``e(s) = s^T W + b``: ``W [d_model, d_sae]``, ``b [d_sae]``."""

    W: torch.Tensor
    b: torch.Tensor

    def predict(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.float() @ self.W + self.b

    def targeted_vector(self, target: torch.Tensor) -> torch.Tensor:
        """Unit vector ``normalize(normalize(W t) - normalize(W b))`` for a ``[d_sae]`` target weighting."""
        unit = torch.nn.functional.normalize
        v = unit(self.W @ target.float(), dim=0) - unit(self.W @ self.b, dim=0)
        if not v.any():
            raise PolysteerError("the targeted vector is zero: the target's effect equals the generic one")
        return unit(v, dim=0)


def fit_effect_model(vectors: torch.Tensor, effects: torch.Tensor, ridge: float = 1e-2) -> EffectModel:
    """Ridge regression of effects on vectors, with an unpenalised bias."""
    if len(vectors) != len(effects) or len(vectors) < 2:
        raise PolysteerError(f"need matching (vector, effect) pairs, at least 2; got {len(vectors)} and {len(effects)}")
    X, Y = vectors.double(), effects.double()
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    gram = Xc.T @ Xc + ridge * len(X) * torch.eye(X.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(gram, Xc.T @ Yc)
    return EffectModel(W.float(), (my - mx @ W).float())


@torch.no_grad()
def scale_for_loss(model, windows: torch.Tensor, vector: torch.Tensor, hook_point: str, target_increase: float,
                   high: float, iterations: int = 8) -> float:
    """Coefficient for unit ``vector`` at which the LM loss on ``windows`` rises by ``target_increase``."""
    unit = vector.float() / vector.float().norm()
    clean = lm_loss(model, windows)
    rise = lambda c: lm_loss(model, windows, intervention=Intervention(unit, hook_point, c)) - clean  # noqa: E731
    if rise(high) < target_increase:
        raise PolysteerError(f"even coefficient {high} raises the loss by less than {target_increase}; raise `high`")
    low = 0.0
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if rise(mid) < target_increase else (low, mid)
    return (low + high) / 2
