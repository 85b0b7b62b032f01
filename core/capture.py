"""Activation capture: pooled hidden states at many hook points in one forward pass per batch."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from polysteer.cache import load_tensors
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.io import atomic_write
from polysteer.modality import Modality

POOLINGS = ("mean", "last", "tokens")


class _Done(Exception):
    """Raised by the last hook of a forward pass so layers after the deepest one never run."""


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``h [B, T, D]`` over positions where ``mask [B, T]`` is True.

    ``mean``: masked mean per row; ``last``: the last masked position per row; ``tokens``: every masked
    position as its own row (row-major order).
    """
    mask = mask.to(h.device).bool()
    if (mask.sum(1) == 0).any():
        raise PolysteerError("an example has no tokens to pool; is its text empty?")
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)
    if pooling == "last":
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
        return h[torch.arange(h.shape[0], device=h.device), last]
    if pooling == "tokens":
        return h[mask]
    raise PolysteerError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def capture(
    model: Any,
    modality: Modality,
    hook_points: Iterable[str],
    batches: Iterable[Mapping[str, Any]],
    pooling: str = "mean",
    forward: Callable[[Any, Mapping[str, Any]], Any] | None = None,
    total: int | None = None,
    desc: str = "capturing",
) -> dict[str, torch.Tensor]:
    """Run each batch once and return ``{hook_point: [N, d_model] float32}``.

    Each batch is ``{"inputs": forward kwargs, "mask": [B, T] bool of positions to pool}``. All hook
    points are read in the same pass, and the pass stops after the last of them has fired.
    """
    points = [str(HookPoint.parse(hp)) for hp in hook_points]
    if pooling not in POOLINGS:
        raise PolysteerError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    forward = forward or (lambda m, inputs: m(**inputs))
    store: dict[str, list[torch.Tensor]] = {hp: [] for hp in points}
    current: dict[str, Any] = {}
    handles = []
    try:
        for hp in points:
            target = modality.resolve(model, HookPoint.parse(hp))
            hook = _recorder(hp, store, current, len(points), pooling)
            if target.edit == "input":
                handles.append(target.module.register_forward_pre_hook(
                    lambda m, a, k, _h=hook: _h(k["hidden_states"] if not a else a[0]), with_kwargs=True))
            else:
                handles.append(target.module.register_forward_hook(
                    lambda m, a, out, _h=hook: _h(out[0] if isinstance(out, tuple) else out)))
        with torch.no_grad():
            for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=total == 1):
                current.clear()
                current["mask"], current["seen"] = batch["mask"], set()
                try:
                    forward(model, batch["inputs"])
                except _Done:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return {hp: torch.cat(chunks).float().cpu() for hp, chunks in store.items()}


def _recorder(hp: str, store, current, n_points: int, pooling: str):
    def record(h: torch.Tensor) -> None:
        if hp in current["seen"]:
            return
        current["seen"].add(hp)
        # pool in float32: a float16 sum over many positions overflows where their mean does not
        store[hp].append(pool(h.detach().float(), current["mask"], pooling).cpu())
        if len(current["seen"]) == n_points:
            raise _Done

    return record


def cache_key(**parts: Any) -> str:
    """A short stable hash of everything that determines a capture's result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_capture(path: str | os.PathLike | None, key: str, compute: Callable[[], dict[str, torch.Tensor]]):
    """Load activations saved under ``path`` for ``key``, or compute and save them atomically.

    A file that cannot be read (truncated, or written for another key) is computed again, with a warning.
    """
    if path is None:
        return compute()
    file = Path(path) / f"acts-{key}.safetensors"
    found = load_tensors(file, key)
    if found is not None:
        return found
    acts = compute()
    write_safetensors_atomic(file, {k: v.contiguous() for k, v in acts.items()}, {"key": key})
    return acts


def write_safetensors_atomic(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save tensors with their metadata atomically."""
    atomic_write(file, lambda tmp: save_file(tensors, tmp, metadata=metadata))
