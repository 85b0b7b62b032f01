"""Sparse autoencoders: the SAE module (ReLU, TopK, JumpReLU) and the SAELens on-disk format.

``z = act(W_enc^T (h - b_dec) + b_enc)``, ``h_hat = W_dec^T z + b_dec``, ``error = h - h_hat``. A directory
holds ``cfg.json`` and ``sae_weights.safetensors`` with keys ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]`` (SAELens' layout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from polysteer.capture import write_safetensors_atomic
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.io import write_json_atomic
from polysteer.plugins.sae.formats import (
    ARCHITECTURES,
    CFG_FILE,
    WEIGHTS_FILE,
    check_shapes,
    header_shapes,
    is_gemma_scope,
    parse_config,
    read_config,
    read_gemma_scope,
    read_weights,
    to_hook_point,
    to_saelens_hook_name,
)

STATS_FILE = "feature_stats.safetensors"
_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


class SAE(nn.Module):
    """A sparse autoencoder over ``d_in``-dimensional activations with ``d_sae`` latents.

    Args:
        d_in: width of the activations (the hook point's d_model).
        d_sae: number of latents.
        architecture: ``standard`` (ReLU), ``topk`` (keep the ``k`` largest, then ReLU) or ``jumprelu``
            (keep pre-activations above a learned per-latent ``threshold``).
        k: latents kept per token for ``topk``.
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (SAELens' flag).
        metadata: free-form provenance written to ``cfg.json`` (hook point, model, training metrics).
        init: draw random weights (False when they are about to be loaded).
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 32,
                 apply_b_dec_to_input: bool = True, metadata: dict[str, Any] | None = None, init: bool = True):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise PolysteerError(f"unknown SAE architecture {architecture!r}; expected one of {ARCHITECTURES}")
        if architecture == "topk" and not (k and 0 < k <= d_sae):
            raise PolysteerError(f"a TopK SAE needs 0 < k <= d_sae ({d_sae}), got k={k}")
        self.d_in, self.d_sae, self.architecture = int(d_in), int(d_sae), architecture
        self.k = int(k) if architecture == "topk" else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.threshold = nn.Parameter(torch.zeros(d_sae)) if architecture == "jumprelu" else None
        if init:
            self.reset_parameters()

    def reset_parameters(self, seed: int = 0) -> None:
        """Unit-norm random decoder rows, encoder tied to the decoder's transpose (Gao et al.)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.W_dec.copy_(torch.randn(self.d_sae, self.d_in, generator=generator))
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)

    def pre_activations(self, h: torch.Tensor) -> torch.Tensor:
        """``W_enc^T (h - b_dec) + b_enc`` before the sparsifying activation."""
        h = h.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            h = h - self.b_dec
        return h @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparsifying activation of the architecture."""
        if self.architecture == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        if self.architecture == "jumprelu":
            return pre * (pre > self.threshold)
        return pre.relu()

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of activations ``[..., d_in]``."""
        self.check_width(h.shape[-1])
        return self.activate(self.pre_activations(h))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of latents ``[..., d_sae]``."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(h))

    def error(self, h: torch.Tensor) -> torch.Tensor:
        """What the SAE misses: ``h - decode(encode(h))``."""
        return h - self(h).to(h.dtype)

    @property
    def hook_point(self) -> str:
        """Where the SAE reads (its cfg's ``hook_name``), or a clear error when the cfg names none."""
        hp = self.metadata.get("hook_name")
        if not hp:
            raise PolysteerError("the SAE's cfg.json names no hook_name, so polysteer cannot tell where it reads; "
                                 "add \"hook_name\": \"text.blocks.N.resid_post\" to it")
        return hp

    def check_width(self, d_model: int, where: str = "the activations") -> None:
        """Refuse activations of another width, naming both."""
        if int(d_model) != self.d_in:
            hook = self.metadata.get("hook_name", "its hook point")
            raise PolysteerError(
                f"SAE expects d_in {self.d_in} (trained on {hook}), but {where} have d_model {d_model}; "
                "use an SAE trained on this model and hook point"
            )

    def config(self) -> dict[str, Any]:
        """The SAELens ``cfg.json`` content: current and legacy activation keys, TransformerLens hook name."""
        activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[self.architecture]
        cfg = {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
               "dtype": str(self.W_enc.dtype).removeprefix("torch."), "device": "cpu",
               "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_activations": "none",
               "activation_fn_str": activation, "activation_fn_kwargs": {"k": self.k} if self.k else {},
               "polysteer": self.metadata}
        if self.k:
            cfg["k"] = self.k
        if self.metadata.get("hook_name"):
            cfg["hook_name"] = to_saelens_hook_name(self.metadata["hook_name"])
            cfg["hook_layer"] = HookPoint.parse(self.metadata["hook_name"]).layer
        if self.metadata.get("model_name"):
            cfg["model_name"] = self.metadata["model_name"]
        return cfg

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` into ``path``, each atomically."""
        path = Path(path)
        tensors = {name: p.detach().to(dtype or p.dtype).contiguous().cpu()
                   for name, p in self.named_parameters()}
        write_safetensors_atomic(path / WEIGHTS_FILE, tensors, {"format": "pt"})
        cfg = self.config()
        if dtype is not None:
            cfg["dtype"] = str(dtype).removeprefix("torch.")
        write_json_atomic(path / CFG_FILE, cfg)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, hook_point: str | None = None) -> "SAE":
        """Read an SAELens folder or a Gemma Scope ``params.npz``; shapes are checked before any allocation.

        Args:
            path: the folder (``cfg.json`` + ``sae_weights.safetensors``), or a ``params.npz`` or its folder.
            dtype: the parameters' dtype.
            hook_point: where the SAE reads, when its files do not say (Gemma Scope outside ``layer_N/``).
        """
        path = Path(path)
        if is_gemma_scope(path):
            fields, tensors = read_gemma_scope(path, hook_point)
        else:
            cfg = read_config(path)
            shapes = header_shapes(path)
            fields = parse_config(cfg, shapes, str(path))
            tensors = read_weights(path, check_shapes(fields, shapes, str(path / WEIGHTS_FILE)))
            if hook_point:
                fields.metadata["hook_name"] = to_hook_point(hook_point)
        sae = cls(fields.d_in, fields.d_sae, fields.architecture, fields.k, fields.apply_b_dec_to_input,
                  fields.metadata, init=False)
        with torch.no_grad():
            for key, tensor in tensors.items():
                getattr(sae, key).copy_(tensor)
        return sae.to(dtype).eval()


def load_stats(path: "str | os.PathLike") -> dict[str, torch.Tensor] | None:
    """The per-feature statistics saved next to an SAE (frequency, mean, max, output/input scores), or None."""
    file = Path(path) / STATS_FILE
    return load_file(str(file)) if file.is_file() else None


def load_sae(sae: "SAE | str | os.PathLike") -> SAE:
    """An SAE instance, loading it when given a directory."""
    return sae if isinstance(sae, SAE) else SAE.load(sae)
