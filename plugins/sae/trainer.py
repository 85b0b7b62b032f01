"""Train a TopK sparse autoencoder on an activation store (Gao et al. 2024), with AuxK for dead latents.

Inputs are scaled so the mean activation norm is ``sqrt(d_in)`` during training; the scale is folded
back into the biases at the end, so the saved SAE reads raw activations, its decoder rows stay unit
norm and its latents are in activation units.

Attention-sink tokens (a leading ``\n\n`` or delimiter; in SmolLM2 about 0.04% of tokens, norm ~24000
against a median of ~140) would carry most of the variance, so tokens whose norm exceeds
``max_norm_ratio`` x the median are left out of training and metrics, and left unchanged when splicing.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Protocol

import torch
from torch.nn.functional import embedding_bag
from tqdm.auto import tqdm

from polysteer.errors import PolysteerError
from polysteer.plugins.sae.model import SAE


class ActivationStore(Protocol):
    """What training reads: shards of ``[tokens, d_in]`` activations on disk and a manifest describing them."""

    hook_point: str
    manifest: dict[str, Any]
    n_shards: int

    def shard(self, index: int) -> tuple[torch.Tensor, Any]: ...

    def batches(self, batch_size: int, shards: Iterable[int], seed: int, buffer_shards: int,
                epochs: int) -> Iterator[torch.Tensor]: ...


@dataclass
class TrainConfig:
    """TopK SAE training settings.

    Attributes:
        d_sae: latents; k: latents kept per token.
        lr: Adam learning rate (warm-up over ``warmup_steps``, linear decay over the last 20% of steps).
        batch_size: tokens per step; epochs: passes over the training shards.
        aux_k: dead latents used by the AuxK loss (default ``d_in // 2``); aux_coef: its weight [1/32].
        dead_tokens: a latent that has not fired for this many tokens counts as dead.
        holdout_shards: last shards of the store kept out of training, for the metrics.
        max_norm_ratio: tokens with a norm above this multiple of the median are skipped (None: keep all).
    """

    d_sae: int = 4096
    k: int = 32
    lr: float = 4e-4
    batch_size: int = 4096
    epochs: int = 1
    aux_k: int | None = None
    aux_coef: float = 1 / 32
    dead_tokens: int = 1_000_000
    holdout_shards: int = 1
    max_norm_ratio: float | None = 10.0
    warmup_steps: int = 50
    buffer_shards: int = 4
    seed: int | None = None  # None: derived from the hook point, so SAEs of different layers start apart


class _Trainer:
    """One training run: parameters, optimiser and the tokens-since-fired counter of every latent."""

    def __init__(self, store: ActivationStore, config: TrainConfig):
        if config.holdout_shards >= store.n_shards:
            raise PolysteerError(f"the store has {store.n_shards} shards; keep at least one for training "
                                 f"beyond the {config.holdout_shards} held out")
        self.store, self.config = store, config
        first = store.shard(0)[0]
        norms = first.norm(dim=1)
        self.max_norm = float(config.max_norm_ratio * norms.median()) if config.max_norm_ratio else float("inf")
        self.scale = float(store.d_model**0.5 / norms[norms <= self.max_norm].mean())
        self.sae = SAE(store.d_model, config.d_sae, "topk", config.k)
        # a shared seed gives every layer's SAE the same initial decoder rows, which feature matching then links
        self.seed = config.seed if config.seed is not None else zlib.crc32(store.hook_point.encode())
        self.sae.reset_parameters(self.seed)
        with torch.no_grad():
            self.sae.b_dec.copy_(first.mean(0) * self.scale)
        self.aux_k = min(config.aux_k or store.d_model // 2, config.d_sae)
        self.since_fired = torch.zeros(config.d_sae, dtype=torch.long)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=config.lr, betas=(0.9, 0.999))

    def step(self, x: torch.Tensor) -> dict[str, float]:
        sae, config = self.sae, self.config
        x = x[x.norm(dim=1) <= self.max_norm] * self.scale
        pre = sae.pre_activations(x)
        top = pre.topk(config.k, dim=-1)
        values = top.values.relu()
        x_hat = embedding_bag(top.indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec
        variance = (x - x.mean(0)).pow(2).sum(-1).mean()
        mse = (x_hat - x).pow(2).sum(-1).mean() / variance
        self._count_firing(top.indices, values, len(x))
        aux = self._aux_loss(pre, (x - x_hat).detach())
        loss = mse + config.aux_coef * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._drop_parallel_gradient()
        self.optimizer.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        dead = float((self.since_fired > config.dead_tokens).float().mean())
        return {"nmse": mse.item(), "aux": aux.item(), "dead": dead}

    def _count_firing(self, indices: torch.Tensor, values: torch.Tensor, n: int) -> None:
        self.since_fired += n
        self.since_fired[indices[values > 0]] = 0

    def _aux_loss(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """AuxK: the dead latents' top activations should reconstruct what the live ones missed."""
        dead = self.since_fired > self.config.dead_tokens
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        top = pre.masked_fill(~dead, float("-inf")).topk(min(self.aux_k, n_dead), dim=-1)
        guess = embedding_bag(top.indices, self.sae.W_dec, per_sample_weights=top.values.relu(), mode="sum")
        return (guess - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp_min(1e-8)

    def _drop_parallel_gradient(self) -> None:
        """Keep decoder rows on the unit sphere: remove the gradient component along each row."""
        W, grad = self.sae.W_dec, self.sae.W_dec.grad
        grad -= (grad * W).sum(1, keepdim=True) * W

    def fold_scale(self) -> SAE:
        """The trained SAE for raw activations: latents and biases divided by the training scale."""
        with torch.no_grad():
            self.sae.b_enc.div_(self.scale)
            self.sae.b_dec.div_(self.scale)
        return self.sae.eval()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(0.8 * total)
    return 1.0 if step < decay_start else max(0.0, (total - step) / max(1, total - decay_start))


def train_sae(store: ActivationStore, config: TrainConfig | None = None, progress: bool = True) -> tuple[SAE, dict]:
    """Train on all shards but the held-out ones; return the SAE and its metrics on the held-out shards."""
    config = config or TrainConfig()
    trainer = _Trainer(store, config)
    shards = range(store.n_shards - config.holdout_shards)
    per_epoch = len(shards) * store.manifest["shard_tokens"] // config.batch_size
    total = per_epoch * config.epochs
    bar = tqdm(store.batches(config.batch_size, shards, trainer.seed, config.buffer_shards, config.epochs),
               total=total, desc="training SAE", disable=not progress)
    stats: dict[str, float] = {}
    curve = []  # (step, training normalised MSE) every 10 steps, for plots
    for step, batch in enumerate(bar):
        for group in trainer.optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, total, config.warmup_steps)
        stats = trainer.step(batch)
        if step % 10 == 0:
            curve.append([step, round(stats["nmse"], 5)])
            bar.set_postfix(nmse=f"{stats['nmse']:.3f}", dead=f"{stats['dead']:.3f}")
    sae = trainer.fold_scale()
    sae.metadata["max_norm"] = trainer.max_norm
    holdout = range(store.n_shards - config.holdout_shards, store.n_shards)
    metrics = {**evaluate_sae(sae, store, holdout), "dead_fraction_training": stats.get("dead", 0.0),
               "tokens_trained": total * config.batch_size, "nmse_curve": curve}
    sae.metadata.update(hook_name=store.hook_point, model_name=store.manifest["model"]["name"],
                        model=store.manifest["model"], training=asdict(config), metrics=metrics,
                        corpus=store.manifest.get("corpus", ""))
    return sae, metrics


@torch.no_grad()
def evaluate_sae(sae: SAE, store: ActivationStore, shards, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance, mean L0 and the fraction of latents that never fire on the given shards.

    Tokens above the SAE's ``max_norm`` (attention sinks) are left out; ``outlier_fraction`` counts them.
    """
    sq_err = total_var = l0 = count = skipped = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for index in shards:
        acts = store.shard(index)[0]
        keep = acts.norm(dim=1) <= sae.metadata.get("max_norm", float("inf"))
        skipped += float((~keep).sum())
        acts = acts[keep]
        mean = acts.mean(0)
        for lo in range(0, len(acts), batch_size):
            x = acts[lo : lo + batch_size]
            z = sae.encode(x)
            sq_err += float((sae.decode(z) - x).pow(2).sum())
            total_var += float((x - mean).pow(2).sum())
            active = z > 0
            l0 += float(active.sum())
            fired |= active.any(0)
            count += len(x)
    return {"explained_variance": 1 - sq_err / total_var, "l0": l0 / count,
            "dead_fraction": float((~fired).float().mean()), "tokens_evaluated": int(count),
            "outlier_fraction": skipped / (count + skipped)}
