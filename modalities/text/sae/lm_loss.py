"""How much of the model's next-token loss an SAE keeps when its reconstruction replaces the activations."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from polysteer.engine import Intervention, steer
from polysteer.operator import Operator
from polysteer.plugins.sae.model import SAE
from polysteer.plugins.sae.steer import SAEReconstruct


class _ReplaceWith(Operator):
    """Operator: ``h + c (v - h)``; with ``c = 1`` steered positions become ``v`` (mean ablation).

    Positions above ``max_norm`` keep their activation, as when splicing the SAE.
    """

    name = "replace"

    def __init__(self, max_norm: float | None = None):
        self.max_norm = max_norm

    def __call__(self, h, v, coef):
        new = h + coef * (v - h)
        return new if self.max_norm is None else torch.where(h.norm(dim=-1, keepdim=True) > self.max_norm, h, new)


@torch.no_grad()
def spliced_loss(model, sae: SAE, hook_point: str, windows: torch.Tensor, mean: torch.Tensor | None = None,
                 skip: int = 1, batch_size: int = 8) -> dict[str, float]:
    """Next-token loss on ``windows`` clean, with the SAE output spliced in, and (given ``mean``) mean-ablated.

    Positions before ``skip`` and above the SAE's ``max_norm`` (attention sinks) keep their activation, in
    every condition. ``loss_recovered`` is
    ``(ablated - spliced) / (ablated - clean)``: 1 means the SAE loses nothing.
    """
    def after_sink(step, position, layer, prompt_length):
        return position >= skip

    base = sae.b_dec.detach().float()
    out = {"loss_clean": lm_loss(model, windows, skip, batch_size, None)}
    splice = Intervention(base, hook_point, 1.0, SAEReconstruct(sae, sae.metadata.get("max_norm")), after_sink)
    out["loss_spliced"] = lm_loss(model, windows, skip, batch_size, splice)
    out["loss_increase"] = out["loss_spliced"] - out["loss_clean"]
    if mean is not None:
        ablate = Intervention(mean.float(), hook_point, 1.0, _ReplaceWith(sae.metadata.get("max_norm")), after_sink)
        out["loss_mean_ablated"] = lm_loss(model, windows, skip, batch_size, ablate)
        gap = out["loss_mean_ablated"] - out["loss_clean"]
        out["loss_recovered"] = (out["loss_mean_ablated"] - out["loss_spliced"]) / gap if gap > 0 else float("nan")
    return out


@torch.no_grad()
def lm_loss(model, windows: torch.Tensor, skip: int = 1, batch_size: int = 8, intervention=None) -> float:
    """Mean next-token cross-entropy over ``windows [n, T]`` from position ``skip`` on, optionally steered."""
    total = count = 0.0
    with steer(model, intervention) if intervention is not None else nullcontext():
        for lo in tqdm(range(0, len(windows), batch_size), desc="LM loss", leave=False):
            ids = windows[lo : lo + batch_size]
            logits = model(input_ids=ids).logits[:, skip:-1].float()
            targets = ids[:, skip + 1 :]
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1), reduction="sum"))
            count += targets.numel()
    return total / count
