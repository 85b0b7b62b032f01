"""SAE-TS (Chalnev, Siu, Conmy): targeted steering vectors from a linear model of steering effects.

0. Training set: random sparse vectors in feature space (a few decoder rows at random weights), each at a random
   norm, steered one by one (:func:`random_feature_vectors`, :func:`build_training_set`).
1. Effect of a steering vector ``s``: mean SAE latents of steered generations minus those of unsteered
   ones. The generations are read back by the *unsteered* model, so the SAE never encodes ``s`` itself.
2. Fit ``e(s) ~ s^T W + b`` (ridge) on many ``(s, e)`` pairs.
3. Targeted vector for a target latent set ``t``: ``normalize(normalize(W t) - normalize(W b))``: it moves
   the targets while cancelling the generic effect every vector has.
4. Scale: the coefficient at which the LM loss on reference text rises by a chosen amount (bisection).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from polysteer.capture import write_safetensors_atomic
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


#: Ridge strengths :func:`fit_effects` chooses from on held-out vectors (large ones shrink towards the bias).
RIDGES = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class EffectModel:
    """``e(s) = s^T W + b``: ``W [d_model, d_sae]``, ``b [d_sae]``; ``info`` says how it was fitted."""

    W: torch.Tensor
    b: torch.Tensor
    info: dict = field(default_factory=dict)

    def predict(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.float() @ self.W + self.b

    def targeted_vector(self, target: torch.Tensor) -> torch.Tensor:
        """Unit vector ``normalize(normalize(W t) - normalize(W b))`` for a ``[d_sae]`` target weighting."""
        unit = torch.nn.functional.normalize
        v = unit(self.W @ target.float(), dim=0) - unit(self.W @ self.b, dim=0)
        if not v.any():
            raise PolysteerError("the targeted vector is zero: the target's effect equals the generic one")
        return unit(v, dim=0)

    def explained(self, vectors: torch.Tensor, effects: torch.Tensor) -> float:
        """``1 - SSE / sum(e^2)``: the share of the effects' energy predicted (0 for always predicting zero)."""
        residual = (self.predict(vectors) - effects.float()).pow(2).sum()
        return float(1 - residual / effects.float().pow(2).sum().clamp_min(1e-12))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``W``, ``b`` and ``info`` to a safetensors file, atomically."""
        path = Path(path)
        write_safetensors_atomic(path, {"W": self.W.detach().float().contiguous(),
                                        "b": self.b.detach().float().contiguous()},
                                 {"polysteer": "sae-ts-effects", "info": json.dumps(self.info)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EffectModel":
        """Read a file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("polysteer") != "sae-ts-effects" or not {"W", "b"} <= set(f.keys()):
                    raise PolysteerError(f"{path} is not an SAE-TS effect model; write one with `polysteer sae ts`")
                return cls(f.get_tensor("W").float(), f.get_tensor("b").float(), json.loads(meta.get("info", "{}")))
        except (OSError, SafetensorError) as exc:
            raise PolysteerError(f"cannot read the effect model {path}: {exc}; delete it to fit a new one") from exc


def fit_effect_model(vectors: torch.Tensor, effects: torch.Tensor, ridge: float = 1e-2) -> EffectModel:
    """Ridge regression of effects on vectors, with an unpenalised bias.

    ``ridge`` is relative to the vectors' mean squared (centred) norm per dimension, so it means the same at
    any activation scale.
    """
    if len(vectors) != len(effects) or len(vectors) < 2:
        raise PolysteerError(f"need matching (vector, effect) pairs, at least 2; got {len(vectors)} and {len(effects)}")
    X, Y = vectors.double(), effects.double()
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    gram = Xc.T @ Xc
    gram += ridge * float(gram.trace()) / X.shape[1] * torch.eye(X.shape[1], dtype=torch.float64)
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


def random_feature_vectors(sae: SAE, n: int, norms: tuple[float, float], max_features: int = 4,
                           pool: Sequence[int] | None = None, seed: int = 0) -> torch.Tensor:
    """``[n, d_model]`` random sparse feature-space vectors: each sums 1 to ``max_features`` decoder rows of
    ``pool`` (default: every latent) at weights drawn from U(0.2, 1), and is rescaled to a norm from U(norms)."""
    pool_t = torch.arange(sae.d_sae) if pool is None else torch.as_tensor(list(pool), dtype=torch.long)
    if n < 1 or max_features < 1 or len(pool_t) == 0 or not 0 < norms[0] <= norms[1]:
        raise PolysteerError(f"need n >= 1, max_features >= 1, a non-empty pool and 0 < low <= high norms; got "
                             f"n={n}, max_features={max_features}, pool of {len(pool_t)}, norms={norms}")
    g = torch.Generator().manual_seed(seed)
    decoder = sae.W_dec.detach().float()
    vectors = []
    for _ in range(n):
        count = int(torch.randint(1, min(max_features, len(pool_t)) + 1, (1,), generator=g))
        features = pool_t[torch.randperm(len(pool_t), generator=g)[:count]]
        weights = 0.2 + 0.8 * torch.rand(count, generator=g)
        v = weights @ decoder[features]
        norm = norms[0] + (norms[1] - norms[0]) * float(torch.rand(1, generator=g))
        vectors.append(v / v.norm().clamp_min(1e-12) * norm)
    return torch.stack(vectors)


@torch.no_grad()
def typical_norm(model, tokenizer, hook_point: str, prompts: Sequence[str]) -> float:
    """Median activation norm over the prompts' tokens at ``hook_point`` (a median: attention sinks do not move it)."""
    examples = [Example(p) for p in prompts]
    acts = collect(model, tokenizer, examples, [hook_point], pooling="tokens")[hook_point]
    return float(acts.float().norm(dim=1).median())


def fit_effects(model, tokenizer, sae: SAE, prompts: Sequence[str], n_vectors: int = 256,
                relative_norms: tuple[float, float] = (0.25, 1.0), max_features: int = 4,
                pool: Sequence[int] | None = None, max_new_tokens: int = 16,
                ridge: float | Sequence[float] = RIDGES,
                holdout: float = 0.2, seed: int = 0, vectors_per_batch: int = 8) -> EffectModel:
    """Build the training set at the SAE's hook point, fit the effect model and record its held-out quality.

    Vector norms are ``relative_norms`` times :func:`typical_norm`. The last ``holdout`` share of the vectors
    is held out: the ridge (one of ``ridge``) that predicts them best is kept; ``info['heldout_explained']`` is
    its :meth:`EffectModel.explained` on them (0 = predicting zero), ``info['heldout_bias_only']`` the same for
    the bias alone. The returned model is then refitted on all pairs.
    """
    hp = sae.hook_point
    scale = typical_norm(model, tokenizer, hp, prompts)
    vectors = random_feature_vectors(sae, n_vectors, (relative_norms[0] * scale, relative_norms[1] * scale),
                                     max_features, pool, seed)
    effects = measure_effects(model, tokenizer, sae, hp, vectors, prompts, max_new_tokens, vectors_per_batch)
    n_test = int(round(holdout * n_vectors))
    info = {"n_vectors": n_vectors, "typical_norm": scale, "relative_norms": list(relative_norms),
            "max_features": max_features, "max_new_tokens": max_new_tokens, "ridge": ridge, "seed": seed,
            "n_prompts": len(prompts), "hook_point": hp}
    ridges = [float(ridge)] if isinstance(ridge, (int, float)) else [float(r) for r in ridge]
    if 2 <= n_test <= n_vectors - 2:
        train, test = (vectors[:-n_test], effects[:-n_test]), (vectors[-n_test:], effects[-n_test:])
        scores = {r: fit_effect_model(*train, r).explained(*test) for r in ridges}
        info["ridge"] = max(scores, key=scores.get)
        bias = effects[:-n_test].float().mean(0)
        info.update(heldout_explained=scores[info["ridge"]], n_heldout=n_test, ridge_scores=scores,
                    heldout_bias_only=EffectModel(torch.zeros(sae.d_in, sae.d_sae), bias).explained(*test))
    else:
        info["ridge"] = ridges[0]
    fitted = fit_effect_model(vectors, effects, info["ridge"])
    fitted.info = info
    return fitted
