"""The part of an SAE that steering a few of its latents needs, stored inside the direction file.

A ``sae_clamp`` or ``sae_bias`` direction reads some latents and writes along their decoder rows. Reading a
ReLU or JumpReLU latent needs only its encoder column; reading a TopK latent needs the whole encoder, since
whether it is among the top k depends on every latent. So the file carries those encoder columns, the decoder
rows of the steered latents and ``b_dec``: it steers exactly as the full SAE would, with no folder to find.
"""

from __future__ import annotations

import torch

from polysteer.errors import PolysteerError
from polysteer.plugins.sae.model import SAE

_ARCHITECTURES = ("standard", "topk", "jumprelu")
KEYS = ("sae.W_enc", "sae.b_enc", "sae.b_dec", "sae.W_dec", "sae.columns", "sae.config")


def sae_rows(sae: SAE, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors that steer ``latents`` of ``sae``, keyed for :func:`polysteer.operator_param_key`."""
    latents = torch.as_tensor(latents, dtype=torch.long).flatten()
    columns = torch.arange(sae.d_sae) if sae.architecture == "topk" else latents
    max_norm = sae.metadata.get("max_norm")
    config = [_ARCHITECTURES.index(sae.architecture), sae.k or 0, int(sae.apply_b_dec_to_input),
              -1.0 if max_norm is None else float(max_norm)]
    with torch.no_grad():
        rows = {"sae.W_enc": sae.W_enc[:, columns], "sae.b_enc": sae.b_enc[columns], "sae.b_dec": sae.b_dec,
                "sae.W_dec": sae.W_dec[latents], "sae.columns": columns, "sae.config": torch.tensor(config)}
        if sae.threshold is not None:
            rows["sae.threshold"] = sae.threshold[columns]
    return {k: v.detach().cpu().clone().contiguous() for k, v in rows.items()}


def sae_from_rows(tensors: dict[str, torch.Tensor], latents: torch.Tensor) -> tuple[SAE, torch.Tensor]:
    """An SAE over the stored encoder columns, and ``latents`` renumbered into it.

    Decoder rows of latents that were not stored are zero: the operators only ever write along stored rows.
    """
    missing = [key for key in KEYS if key not in tensors]
    if missing:
        raise PolysteerError(f"the direction lacks the stored SAE tensors {missing}; re-make it with this polysteer")
    arch, k, apply_b_dec, max_norm = tensors["sae.config"].tolist()
    columns, W_enc = tensors["sae.columns"].long(), tensors["sae.W_enc"].float()
    latents = torch.as_tensor(latents, dtype=torch.long).flatten()
    position = {int(c): i for i, c in enumerate(columns)}
    if any(int(j) not in position for j in latents) or len(tensors["sae.W_dec"]) != len(latents):
        raise PolysteerError("the stored SAE tensors do not cover the direction's latents; the file is corrupt")
    local = torch.tensor([position[int(j)] for j in latents], dtype=torch.long)
    metadata = {} if max_norm < 0 else {"max_norm": max_norm}
    sae = SAE(W_enc.shape[0], W_enc.shape[1], _ARCHITECTURES[int(arch)], int(k) or None, bool(apply_b_dec),
              metadata, init=False)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(tensors["sae.b_enc"].float())
        sae.b_dec.copy_(tensors["sae.b_dec"].float())
        sae.W_dec.zero_()
        sae.W_dec[local] = tensors["sae.W_dec"].float()
        if sae.threshold is not None:
            sae.threshold.copy_(tensors["sae.threshold"].float())
    return sae.eval(), local
