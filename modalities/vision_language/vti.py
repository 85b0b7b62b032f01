"""VTI, Visual and Textual Intervention (Liu et al., 2024): directions that stabilise a VLM's features.

Visual directions, per vision-encoder layer and token position: the encoder states of an image whose
patches are mostly replaced by the channel mean, averaged over ``trials`` random maskings, minus the
clean image's states. Textual directions, per decoder layer: the last-token state after a clean caption
minus the same after a hallucinated caption. Both are injected at each layer's MLP output with the
norm-preserving rotation ``||y|| * normalize(normalize(y) + 0.1 * alpha * normalize(d))``.

Both directions are ``PC1 + mean`` of the per-demo shifts. ``pca`` chooses what one PCA spans:

- ``joint`` (default, the reference code's ``obtain_textual_vti`` / ``obtain_visual_vti``): the shifts of all
  chosen layers are concatenated into one vector per demo and one PCA is fitted over those vectors; each
  layer's direction is its slice of ``PC1 + mean``, so PC1 is unit-norm across layers, not per layer. Text: one
  PCA over ``[layers * d]``. Vision: one PCA per token position over ``[layers * d]`` (the reference reshapes its
  ``[layers, tokens, d]`` stack to ``[tokens, layers * d]`` without a transpose, so its rows are contiguous
  chunks of the layer-major buffer; we follow the evident intent, token ``t`` across all layers). PC1's sign
  is the reference's ``svd_flip``: the demo with the largest absolute score gets a positive one.
- ``per-token``: one PCA per layer (and, for vision, per token), PC1 signed to agree with the mean.

Idefics3/SmolVLM split an image into crops that the vision tower encodes as separate images, and one
per-token table is applied to every crop; so each crop's shift is one PCA sample (demos x crops rows), as each
view is its own encoder input in the reference. For one-view models (LLaVA) this is the reference exactly.
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
from polysteer.finder import DirectionFinder, check_inputs, finish_direction, fit_layers
from polysteer.hookpoints import HookPoint
from polysteer.modalities.vision_language.generation import pixel_inputs, vision_states
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.operator import Operator

GAIN = 0.1  # VTI's fixed step size inside the rotation
PCA_MODES = ("joint", "per-token")


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


def joint_rank1(rows: torch.Tensor) -> torch.Tensor:
    """The reference's ``PC1 + mean`` of each ``[..., n, D]`` stack, PC1 signed as scikit-learn's ``svd_flip``.

    ``svd_flip`` makes the largest-magnitude entry of the left singular vector (the demos' PC1 scores) positive.
    """
    rows = rows.double()
    mean = rows.mean(-2)
    centred = rows - mean.unsqueeze(-2)
    _, vectors = torch.linalg.eigh(centred @ centred.transpose(-1, -2))
    scores = vectors[..., -1]  # unit left singular vector: one score per demo
    pc1 = (scores.unsqueeze(-2) @ centred).squeeze(-2)
    pc1 = pc1 / pc1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sign = torch.sign(scores.gather(-1, scores.abs().argmax(-1, keepdim=True)))
    return (sign * pc1 + mean).float()


def _check_pca(pca: str) -> None:
    if pca not in PCA_MODES:
        raise PolysteerError(f"VTI pca must be one of {PCA_MODES}, got {pca!r}")


class VTI(DirectionFinder):
    """VTI's textual direction: ``PC1 + mean`` of the paired differences ``x_pos_i - x_neg_i``.

    Positives are states after clean captions, negatives after hallucinated ones, paired by image.
    ``direction_`` is the unit vector; ``mean_shift_`` the mean difference it is built around.

    Args:
        pca: ``joint`` (one PCA across all layers fitted together, see :meth:`fit_layers`; one layer alone is its
            own joint PCA, signed as the reference) or ``per-token`` (one PCA per layer, PC1 signed by the mean).
    """

    name = "vti"

    def __init__(self, pca: str = "joint"):
        self.pca = pca

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = self._check(X_pos, X_neg)
        rank1 = joint_rank1 if self.pca == "joint" else rank1_direction
        return self._finish(rank1(X_pos - X_neg), X_pos, X_neg)

    def fit_layers(self, X_pos: dict[str, torch.Tensor], X_neg: dict[str, torch.Tensor]) -> dict[str, "VTI"]:
        """One fitted clone per hook point; with ``pca='joint'`` all layers share one PCA, as the reference."""
        if self.pca != "joint" or len(X_pos) < 2:
            return fit_layers(self, X_pos, X_neg)
        if set(X_pos) != set(X_neg):
            raise PolysteerError(f"positive and negative activations differ in hook points: "
                                 f"{sorted(set(X_pos) ^ set(X_neg))}")
        points = list(X_pos)
        pairs = {hp: self._check(X_pos[hp], X_neg[hp]) for hp in points}
        joint = joint_rank1(torch.cat([p - n for p, n in pairs.values()], dim=1))
        slices = joint.split([pairs[hp][0].shape[1] for hp in points])
        return {hp: VTI(self.pca)._finish(v, *pairs[hp]) for hp, v in zip(points, slices)}

    def _check(self, X_pos, X_neg) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pca(self.pca)
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if len(X_pos) != len(X_neg):
            raise PolysteerError(f"vti needs paired demos (one clean and one hallucinated caption per image), got "
                                 f"{len(X_pos)} positives and {len(X_neg)} negatives")
        return X_pos, X_neg

    def _finish(self, v: torch.Tensor, X_pos: torch.Tensor, X_neg: torch.Tensor) -> "VTI":
        """Unit ``v``, oriented so clean captions project higher (the finder contract; the reference never flips,
        which differs only where a layer's slice of PC1 outweighs its mean shift and points against it)."""
        self.mean_shift_ = (X_pos - X_neg).mean(0)
        self.direction_, self.scale_ = finish_direction(v, X_pos, X_neg)
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
    """Vision states ``[crops, tokens, d]`` of one image, each crop averaged over ``trials`` masked copies."""
    patch = int(model.config.vision_config.patch_size)
    one = pixels["pixel_values"]
    copies = mask_patches(one.expand(trials, *one.shape[1:]), patch, ratio, generator)
    total: dict[str, torch.Tensor] = {}
    for start in range(0, trials, batch_size):
        chunk = copies[start : start + batch_size]
        # contiguous: Idefics3 views its pixel_attention_mask, which fails on an expanded (stride-0) tensor
        inputs = {k: chunk if k == "pixel_values" else v.expand(len(chunk), *v.shape[1:]).contiguous()
                  for k, v in pixels.items()}
        for hp, h in vision_states(model, hook_points, inputs).items():
            per_copy = h.view(len(chunk), -1, *h.shape[1:])  # rows are copy-major: [copies, crops, tokens, d]
            total[hp] = total.get(hp, 0) + per_copy.sum(0)
    return {hp: t / trials for hp, t in total.items()}


def visual_shifts(model, processor, images: Sequence[Image.Image], points: Sequence[str], trials: int,
                  ratio: float, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Masked-minus-clean states ``{hook_point: [demos * crops, tokens, d]}``, one row per crop of each demo.

    Demo ``k``'s maskings are drawn from ``torch.Generator().manual_seed(seed + k)``.
    """
    diffs: dict[str, list[torch.Tensor]] = {hp: [] for hp in points}
    for k, image in enumerate(tqdm(images, desc="visual directions", leave=False, disable=len(images) == 1)):
        pixels = pixel_inputs(model, processor, [image])
        clean = vision_states(model, points, pixels)
        masked = masked_mean_states(model, points, pixels, trials, ratio, batch_size,
                                    torch.Generator().manual_seed(seed + k))
        for hp in points:
            diffs[hp].append(masked[hp] - clean[hp])
    return {hp: torch.cat(stack) for hp, stack in diffs.items()}


def visual_directions(model, processor, images: Sequence[Image.Image], layers: Sequence[int] | None = None,
                      trials: int = 50, ratio: float = 0.99, batch_size: int = 10, seed: int = 0,
                      pca: str = "joint") -> dict[str, torch.Tensor]:
    """Per-token visual directions ``{vision.blocks.{i}.resid_post: [tokens, d_vision]}`` (layer outputs).

    ``pca='joint'``: per token, one PCA over the shifts of all ``layers`` concatenated (the reference);
    ``'per-token'``: one PCA per layer and token. Every crop of every demo is one sample.
    """
    _check_pca(pca)
    modality = VisionLanguageModality()
    layers = range(modality.n_layers(model, "vision")) if layers is None else layers
    points = [str(HookPoint("vision", i, "resid_post")) for i in layers]
    shifts = visual_shifts(model, processor, images, points, trials, ratio, batch_size, seed)
    if pca == "per-token":
        return {hp: rank1_direction(rows.transpose(0, 1)) for hp, rows in shifts.items()}
    widths = [shifts[hp].shape[-1] for hp in points]
    joint = joint_rank1(torch.cat([shifts[hp] for hp in points], dim=-1).transpose(0, 1))  # [tokens, layers * d]
    return {hp: table for hp, table in zip(points, joint.split(widths, dim=-1))}


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
