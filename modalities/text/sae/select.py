"""Which SAE features steer: output and input scores (Arad, Mueller, Belinkov) and feature statistics.

Output score: ``T_f`` = the 20 tokens ``softmax(W_U . norm_final(W_dec[f]))`` ranks first. Adding 10 x the
feature's maximum activation along ``W_dec[f]`` at the last position of a neutral prompt moves the
next-token distribution to ``p'``; the score is ``(1 - min_rank(T_f) / |V|) * max_{t in T_f} p'(t)``.
Input score: the fraction of the feature's top-activating tokens that lie in ``T_f``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention, steer
from polysteer.errors import PolysteerError
from polysteer.modalities.text.sae.store import ActivationStore
from polysteer.operator import Operator
from polysteer.plugins.sae.model import SAE

NEUTRAL_PROMPT = "From my experience,"
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


def final_norm(model) -> torch.nn.Module:
    """The normalisation applied before the unembedding (``model.norm`` for Llama, ``ln_f`` for GPT-2)."""
    base = getattr(model, "base_model", model)
    for name in _NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise PolysteerError(f"cannot find the final norm of {type(model).__name__} (looked for {_NORM_NAMES})")


@torch.no_grad()
def vocab_logits(model, vectors: torch.Tensor) -> torch.Tensor:
    """``W_U . norm_final(v)`` for unit-normalised rows ``v``: ``[n, vocab]`` logits."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    head = model.get_output_embeddings()
    return head(final_norm(model)(unit.to(head.weight.dtype))).float()


def top_tokens(model, vectors: torch.Tensor, n: int = 20, chunk: int = 256) -> torch.Tensor:
    """``[rows, n]`` ids of the tokens each vector promotes most through the unembedding (``T_f``)."""
    return torch.cat([vocab_logits(model, vectors[i : i + chunk]).topk(n, dim=-1).indices
                      for i in range(0, len(vectors), chunk)])


class RowAdd(Operator):
    """Adds a different vector to each batch row: ``h + c * V[row]``."""

    name = "row_add"

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __call__(self, h, v, coef):
        return h + coef * self.rows.to(h.dtype).unsqueeze(1)


def _last_prompt_position(step, position, layer, prompt_length):
    return position == prompt_length - 1


@torch.no_grad()
def output_scores(model, tokenizer, sae: SAE, hook_point: str, max_activation: torch.Tensor,
                  features: Sequence[int] | None = None, prompt: str = NEUTRAL_PROMPT, amplify: float = 10.0,
                  n_tokens: int = 20, batch_size: int = 64) -> torch.Tensor:
    """Output score of each feature (``features``, default all), a float tensor in ``[0, 1]``."""
    features = torch.as_tensor(list(range(sae.d_sae)) if features is None else list(features), dtype=torch.long)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    targets = top_tokens(model, sae.W_dec.detach()[features], n_tokens)
    scores = []
    for lo in tqdm(range(0, len(features), batch_size), desc="output scores", leave=False):
        chunk = features[lo : lo + batch_size]
        rows = sae.W_dec.detach()[chunk] * (amplify * max_activation[chunk]).unsqueeze(1)
        plan = Intervention(rows[0], hook_point, 1.0, RowAdd(rows), _last_prompt_position)
        with steer(model, plan):
            probs = model(input_ids=ids.expand(len(chunk), -1)).logits[:, -1].float().softmax(-1)
        scores.append(_score(probs, targets[lo : lo + batch_size]))
    return torch.cat(scores)


def _score(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    ranks = probs.argsort(dim=-1, descending=True).argsort(dim=-1)
    best_rank = ranks.gather(1, targets).min(1).values.float()
    return (1 - best_rank / probs.shape[-1]) * probs.gather(1, targets).max(1).values


@dataclass
class FeatureStats:
    """Per-feature statistics over activation-store shards: firing frequency, mean and max activation,
    and the store rows of the ``top`` strongest activations (row -> token via :meth:`token_of`)."""

    frequency: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor
    top_values: torch.Tensor
    top_rows: torch.Tensor
    per_window: int
    skip: int
    windows: torch.Tensor

    def token_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Token id at each store row."""
        return self.windows[rows // self.per_window, self.skip + rows % self.per_window]


@torch.no_grad()
def feature_stats(sae: SAE, store: ActivationStore, shards: Sequence[int], top: int = 20,
                  batch_size: int = 4096) -> FeatureStats:
    """One pass over ``shards``: frequency, mean, max and top rows of every latent (sink tokens count as 0)."""
    count = torch.zeros(sae.d_sae)
    total = torch.zeros(sae.d_sae)
    best_v = torch.zeros(sae.d_sae, 0)
    best_r = torch.zeros(sae.d_sae, 0, dtype=torch.long)
    windows, offset, n = [], 0, 0
    max_norm = sae.metadata.get("max_norm", float("inf"))
    for index in tqdm(shards, desc="feature stats", leave=False):
        acts, tokens = store.shard(index)
        windows.append(tokens)
        for lo in range(0, len(acts), batch_size):
            x = acts[lo : lo + batch_size]
            z = (sae.encode(x) * (x.norm(dim=1, keepdim=True) <= max_norm)).T  # [d_sae, b]; sinks left out
            count += (z > 0).sum(1)
            total += z.sum(1)
            rows = torch.arange(lo, lo + z.shape[1]) + offset
            merged_v = torch.cat([best_v, z], 1)
            keep = merged_v.topk(min(top, merged_v.shape[1]), dim=1)
            best_r = torch.cat([best_r, rows.expand(sae.d_sae, -1)], 1).gather(1, keep.indices)
            best_v = keep.values
        offset += len(acts)
        n += len(acts)
    per_window = store.manifest["context"] - store.manifest["skip"]
    return FeatureStats(count / n, total / n, best_v[:, 0], best_v, best_r, per_window, store.manifest["skip"],
                        torch.cat(windows))


def input_scores(model, sae: SAE, stats: FeatureStats, n_tokens: int = 20) -> torch.Tensor:
    """Fraction of each feature's top-activating tokens that are among its top output tokens ``T_f``."""
    targets = top_tokens(model, sae.W_dec.detach(), n_tokens)
    tokens = stats.token_of(stats.top_rows)  # [d_sae, top]
    hits = (tokens.unsqueeze(-1) == targets.unsqueeze(1)).any(-1) & (stats.top_values > 0)
    fired = (stats.top_values > 0).sum(1).clamp_min(1)
    return hits.sum(1) / fired
