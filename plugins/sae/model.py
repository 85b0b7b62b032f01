"""Sparse autoencoders: the SAE module (ReLU, TopK, JumpReLU) and the SAELens on-disk format.

``z = act(W_enc^T (n(h) - b_dec) + b_enc)``, ``h_hat = n^-1(W_dec^T z + b_dec)``, ``error = h - h_hat``, where
``n`` is SAELens' runtime ``normalize_activations`` (identity unless ``constant_norm_rescale`` or ``layer_norm``) and
``- b_dec`` applies only with ``apply_b_dec_to_input``; encode and decode compute exactly what SAELens 6 computes. A
directory holds ``cfg.json`` and ``sae_weights.safetensors`` with keys ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]`` (SAELens'
layout). ``SAE.load`` also takes a Gemma Scope ``params.npz`` and a SAELens ``RELEASE/SAE_ID``.
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
    DTYPES,
    WEIGHTS_FILE,
    SAEFields,
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
from polysteer.plugins.sae.normalize import NORMALIZATIONS, RUNTIME, fold, normalize_in, normalize_out
from polysteer.plugins.sae.pretrained import SAESource, locate

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
        normalize_activations: SAELens' normalisation; ``constant_norm_rescale`` and ``layer_norm`` run at encode
            and decode time, the others are folded into the weights at load (see ``normalize``) and run as identity.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 32,
                 apply_b_dec_to_input: bool = True, metadata: dict[str, Any] | None = None, init: bool = True,
                 normalize_activations: str = "none"):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise PolysteerError(f"unknown SAE architecture {architecture!r}; expected one of {ARCHITECTURES}")
        if normalize_activations not in NORMALIZATIONS:
            raise PolysteerError(f"unknown normalize_activations {normalize_activations!r}; expected one of "
                                 f"{NORMALIZATIONS}")
        if architecture == "topk" and not (k and 0 < k <= d_sae):
            raise PolysteerError(f"a TopK SAE needs 0 < k <= d_sae ({d_sae}), got k={k}")
        self.d_in, self.d_sae, self.architecture = int(d_in), int(d_sae), architecture
        self.k = int(k) if architecture == "topk" else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.normalize_activations = normalize_activations
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

    def _normalized(self, h: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``h`` in the SAE's dtype and runtime normalisation, and the statistics that undo it."""
        return normalize_in(self.normalize_activations, h.to(self.W_enc.dtype))

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def pre_activations(self, h: torch.Tensor) -> torch.Tensor:
        """``W_enc^T (n(h) - b_dec) + b_enc`` before the sparsifying activation."""
        return self._pre(self._normalized(h)[0])

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparsifying activation: ReLU; TopK then ReLU; JumpReLU ``relu(pre) * (pre > threshold)``."""
        if self.architecture == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        return pre.relu()

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of activations ``[..., d_in]``."""
        self.check_width(h.shape[-1])
        return self.activate(self.pre_activations(h))

    def decode(self, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of latents ``[..., d_sae]``.

        Args:
            z: latents.
            h: the activations ``z`` was encoded from; needed (and only used) when the SAE normalises at runtime
                (``constant_norm_rescale``, ``layer_norm``), whose reconstruction is undone with ``h``'s norm.
        """
        y = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.normalize_activations not in RUNTIME:
            return y
        if h is None:
            raise PolysteerError(f"this SAE normalises its input ({self.normalize_activations}), so decoding needs "
                                 "the activations that were encoded: decode(z, h)")
        return normalize_out(self.normalize_activations, y, self._normalized(h)[1])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.check_width(h.shape[-1])
        x, stats = self._normalized(h)
        y = self.activate(self._pre(x)) @ self.W_dec + self.b_dec
        return normalize_out(self.normalize_activations, y, stats)

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
               "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": self.normalize_activations,
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
    def load(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = torch.float32,
             hook_point: str | None = None) -> "SAE":
        """Read an SAELens folder, a Gemma Scope ``params.npz`` or a SAELens ``RELEASE/SAE_ID``; shapes are checked
        before any allocation, and a known ``normalize_activations`` scale or whitening is folded in.

        Args:
            path: the folder (``cfg.json`` + ``sae_weights.safetensors``), a ``params.npz`` or its folder, or a
                release id from SAELens' pretrained directory (needs sae-lens; fetched into the HF cache).
            dtype: the parameters' dtype; None takes the cfg's ``dtype``, as SAELens' ``load_from_disk`` does.
            hook_point: where the SAE reads, when its files do not say (Gemma Scope outside ``layer_N/``).
        """
        source = locate(path)
        fields, tensors = _read(source, hook_point or source.hook_point)
        folder = source.path if source.path.is_dir() else source.path.parent
        normalize = fold(tensors, fields.normalize, fields.rescale_by_decoder_norm, fields.apply_b_dec_to_input,
                         folder, source.scaling_factor)
        if source.release:
            fields.metadata.setdefault("sae_lens_release", source.release)
        target = _dtype(dtype, fields)
        sae = cls(fields.d_in, fields.d_sae, fields.architecture, fields.k, fields.apply_b_dec_to_input,
                  fields.metadata, init=False, normalize_activations=normalize)
        with torch.no_grad():
            for key, tensor in tensors.items():
                getattr(sae, key).copy_(tensor)
        return sae.to(target).eval()


def _read(source: SAESource, hook_point: str | None) -> tuple[SAEFields, dict[str, torch.Tensor]]:
    """The validated fields and float32 tensors of the SAE at ``source``."""
    path = source.path
    if is_gemma_scope(path):
        return read_gemma_scope(path, hook_point)
    cfg = {**read_config(path), **source.overrides}
    shapes = header_shapes(path)
    fields = parse_config(cfg, shapes, str(path))
    tensors = read_weights(path, check_shapes(fields, shapes, str(path / WEIGHTS_FILE)))
    if hook_point:
        fields.metadata["hook_name"] = to_hook_point(hook_point)
    return fields, tensors


def _dtype(dtype: torch.dtype | str | None, fields: SAEFields) -> torch.dtype:
    """``dtype`` as a torch dtype; None means the cfg's (float32 when it names none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or fields.dtype or "float32").removeprefix("torch.")
    if name not in DTYPES:
        raise PolysteerError(f"SAE dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def load_stats(path: "str | os.PathLike") -> dict[str, torch.Tensor] | None:
    """The per-feature statistics saved next to an SAE (frequency, mean, max, output/input scores), or None."""
    file = Path(path) / STATS_FILE
    return load_file(str(file)) if file.is_file() else None


def load_sae(sae: "SAE | str | os.PathLike") -> SAE:
    """An SAE instance, loading it when given a directory."""
    return sae if isinstance(sae, SAE) else SAE.load(sae)
