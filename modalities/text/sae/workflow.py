"""End to end: stream a text model's activations to disk, train a TopK SAE, measure it, save it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from polysteer.capture import write_safetensors_atomic
from polysteer.modalities.text.sae.lm_loss import spliced_loss
from polysteer.modalities.text.sae.select import feature_stats
from polysteer.modalities.text.sae.store import ActivationStore
from polysteer.plugins.sae.model import SAE, STATS_FILE
from polysteer.plugins.sae.trainer import TrainConfig, train_sae

SHIPPED_SAE = Path(__file__).parents[1] / "data" / "sae-smollm2-L12"


def train_text_sae(model, tokenizer, documents: Iterable[str], hook_point: str, output: str | Path,
                   store_dir: str | Path, n_tokens: int, config: TrainConfig, context: int = 128,
                   bf16: bool = False, corpus: str = "", eval_windows: int = 64,
                   dtype: torch.dtype = torch.float16, shard_tokens: int = 2**16) -> tuple[SAE, dict]:
    """Build (or resume) the store, train, add the spliced LM loss to the metrics and save the SAE.

    The last ``config.holdout_shards`` shards are never trained on: explained variance, L0, dead
    fraction, feature statistics and the spliced loss (on ``eval_windows`` of their windows) come from them.
    """
    per_window = context - 1
    holdout_tokens = config.holdout_shards * (shard_tokens // per_window) * per_window
    store = ActivationStore.build(model, tokenizer, documents, hook_point, store_dir, n_tokens + holdout_tokens,
                                  context=context, bf16=bf16, corpus=corpus, shard_tokens=shard_tokens)
    sae, metrics = train_sae(store, config)
    holdout = list(range(store.n_shards - config.holdout_shards, store.n_shards))
    acts, windows = store.shard(holdout[0])
    mean = acts[acts.norm(dim=1) <= sae.metadata["max_norm"]].mean(0)
    metrics.update(spliced_loss(model, sae, hook_point, windows[:eval_windows].long(), mean,
                                skip=store.manifest["skip"]))
    metrics["tokens_stored"] = store.n_tokens
    sae.metadata["metrics"] = metrics
    save_with_stats(sae, store, holdout, output, dtype)
    return sae, metrics


def save_with_stats(sae: SAE, store: ActivationStore, shards, output: str | Path, dtype: torch.dtype) -> Path:
    """Save the SAE and its per-feature frequency / mean / max activation on ``shards``."""
    stats = feature_stats(sae, store, shards, top=1)
    output = Path(output)
    sae.save(output, dtype=dtype)
    write_safetensors_atomic(output / STATS_FILE, {"frequency": stats.frequency, "mean": stats.mean,
                                                   "max": stats.max}, {"shards": json.dumps(list(shards))})
    return output
