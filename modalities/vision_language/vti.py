"""VTI, Visual and Textual Intervention (Liu et al., 2024): directions that stabilise a VLM's features.

Visual directions, per vision-encoder layer and token position: the encoder states of an image whose
patches are mostly replaced by the channel mean, averaged over ``trials`` random maskings, minus the
clean image's states; one vector per token from a rank-1 PCA over the demo images. Textual
directions, per decoder layer: the last-token state after a clean caption minus the same after a
hallucinated caption, same PCA. Both are injected at each layer's MLP output with the norm-preserving
rotation ``||y|| * normalize(normalize(y) + 0.1 * alpha * normalize(d))``.

The rank-1 PCA is the reference code's ``PC1 + mean`` of the per-demo differences, computed for each
(layer, token) separately as the paper describes; PC1's sign is chosen to agree with the mean.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, finish_direction
from polysteer.hookpoints import HookPoint
from polysteer.modalities.vision_language.generation import pixel_inputs, vision_states
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.operator import Operator

GAIN = 0.1  # VTI's fixed step size inside the rotation


def rank1_direction(diffs: torch.Tensor) -> torch.Tensor:
    """``PC1 + mean`` of the rows of each ``[..., n_demos, d]`` stack; returns ``[..., d]``.

    PC1 is the unit top principal axis of the centred rows (from the small ``n x n`` Gram matrix, since
    demos are far fewer than dimensions), signed to agree with the mean. One demo gives just the mean.
    """
    diffs = diffs.double()
    mean = diffs.mean(-2)
    centred = diffs - mean.unsqueeze(-2)
    gram = centred @ centred.transpose(-1, -2)
    _, vectors = torch.linalg.eigh(gram)
    pc1 = (vectors[..., -1].unsqueeze(-2) @ centred).squeeze(-2)
    pc1 = pc1 / pc1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sign = torch.where((pc1 * mean).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return (sign * pc1 + mean).float()


class VTI(DirectionFinder):
    """VTI's textual direction: ``PC1 + mean`` of the paired differences ``x_pos_i - x_neg_i``.

    Positives are states after clean captions, negatives after hallucinated ones, paired by image.
    ``direction_`` is the unit vector; ``mean_shift_`` the mean difference it is built around.
    """

    name = "vti"

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if len(X_pos) != len(X_neg):
            raise PolysteerError(f"vti needs paired demos (one clean and one hallucinated caption per image), got "
                                 f"{len(X_pos)} positives and {len(X_neg)} negatives")
        self.mean_shift_ = (X_pos - X_neg).mean(0)
        self.direction_, self.scale_ = finish_direction(rank1_direction(X_pos - X_neg), X_pos, X_neg)
        return self


def mask_patches(pixels: torch.Tensor, patch_size: int, ratio: float = 0.99,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace ``int(ratio * n_patches)`` random patches of each ``[..., C, H, W]`` image by its channel mean."""
    *_, channels, height, width = pixels.shape
    rows, cols = height // patch_size, width // patch_size
    if rows * cols == 0:
        raise PolysteerError(f"images of {height}x{width} pixels hold no {patch_size}-pixel patch")
    flat = pixels.reshape(-1, channels, height, width)
    order = torch.rand(flat.shape[0], rows * cols, generator=generator).argsort(1)
    chosen = torch.zeros(flat.shape[0], rows * cols, dtype=torch.bool)
    chosen.scatter_(1, order[:, : int(ratio * rows * cols)], True)
    grid = chosen.view(-1, rows, cols).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    mask = torch.zeros(flat.shape[0], 1, height, width, dtype=torch.bool)
    mask[:, 0, : grid.shape[1], : grid.shape[2]] = grid
    mean = flat.mean(dim=(-2, -1), keepdim=True)
    return torch.where(mask.to(flat.device), mean, flat).view(pixels.shape)


def masked_mean_states(model, hook_points: Sequence[str], pixels: dict[str, torch.Tensor], trials: int,
                       ratio: float, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Vision states ``[tokens, d]`` averaged over ``trials`` masked copies of one image (and its crops)."""
    patch = int(model.config.vision_config.patch_size)
    one = pixels["pixel_values"]
    copies = mask_patches(one.expand(trials, *one.shape[1:]), patch, ratio, generator)
    total: dict[str, torch.Tensor] = {}
    rows = 0
    for start in range(0, trials, batch_size):
        chunk = copies[start : start + batch_size]
        # contiguous: Idefics3 views its pixel_attention_mask, which fails on an expanded (stride-0) tensor
        inputs = {k: chunk if k == "pixel_values" else v.expand(len(chunk), *v.shape[1:]).contiguous()
                  for k, v in pixels.items()}
        states = vision_states(model, hook_points, inputs)
        for hp, h in states.items():
            total[hp] = total.get(hp, 0) + h.sum(0)
        rows += len(next(iter(states.values())))  # copies x crops
    return {hp: t / rows for hp, t in total.items()}


def visual_directions(model, processor, images: Sequence[Image.Image], layers: Sequence[int] | None = None,
                      trials: int = 50, ratio: float = 0.99, batch_size: int = 10, seed: int = 0
                      ) -> dict[str, torch.Tensor]:
    """Per-token visual directions ``{vision.blocks.{i}.resid_post: [tokens, d_vision]}`` (layer outputs).

    Demo ``k``'s maskings are drawn from ``torch.Generator().manual_seed(seed + k)``.
    """
    modality = VisionLanguageModality()
    layers = range(modality.n_layers(model, "vision")) if layers is None else layers
    points = [str(HookPoint("vision", i, "resid_post")) for i in layers]
    diffs: dict[str, list[torch.Tensor]] = {hp: [] for hp in points}
    for k, image in enumerate(tqdm(images, desc="visual directions", leave=False, disable=len(images) == 1)):
        pixels = pixel_inputs(model, processor, [image])
        clean = vision_states(model, points, pixels)
        masked = masked_mean_states(model, points, pixels, trials, ratio, batch_size,
                                    torch.Generator().manual_seed(seed + k))
        for hp in points:
            diffs[hp].append(masked[hp] - clean[hp].mean(0))
    return {hp: rank1_direction(torch.stack(stack, dim=1)) for hp, stack in diffs.items()}


class TokenRotate(Operator):
    """VTI's rotation with one direction per token position (the visual directions).

    Tensors whose length differs from the table's (another image layout) use the plan's vector instead.
    """

    name = "rotate-tokens"

    def __init__(self, directions: torch.Tensor, gain: float = GAIN):
        self.directions = F.normalize(directions.float(), dim=-1)
        self.gain = gain

    def __call__(self, h, v, coef):
        table = self.directions if h.shape[-2] == len(self.directions) else F.normalize(v.float(), dim=-1)
        x = h.float()  # as in ``rotate``: float16 rounds the 1e-12 floor to 0, so a zero row would give NaN
        norm = x.norm(dim=-1, keepdim=True)
        mixed = x / norm.clamp_min(1e-12) + (self.gain * coef) * table.to(x.device)
        return (norm * mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to(h.dtype)


def vti_plan(direction: Direction, alpha_vision: float | None = None, alpha_text: float | None = None) -> Plan:
    """The plan of a VTI direction file: ``rotate`` on the text layers, per-token rotation on the vision layers.

    Defaults come from the file (its coefficient is alpha_text; provenance holds alpha_vision). Any
    other direction file gives its text vectors with ``alpha_text`` as the coefficient.
    """
    alpha_text = direction.coefficient if alpha_text is None else alpha_text
    alpha_vision = direction.provenance.get("alpha_vision", 0.0) if alpha_vision is None else alpha_vision
    plan = direction.to_plan(alpha_text) if alpha_text and direction.vectors else Plan()
    for hp, table in sorted(direction.extras.items()):
        if alpha_vision and hp.startswith("vision."):
            mean = F.normalize(table.float(), dim=-1).mean(0)
            plan = plan + Plan([Intervention(mean, hp, alpha_vision, TokenRotate(table))])
    return plan
