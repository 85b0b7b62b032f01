"""Activations of audio: encode with the model's own EnCodec, teacher-force the codes, mean-pool per layer.

No text goes in: the decoder sees the null condition (CFG's unconditional input), as in MusicRFM.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from polysteer.capture import cache_key, cached_capture, capture
from polysteer.errors import PolysteerError
from polysteer.modalities.music.dsp import mono
from polysteer.modalities.music.modality import MusicModality


def _same_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by audio length (so no padding ever reaches the encoder), at most ``batch_size`` each."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < batch_size and lengths[groups[-1][0]] == lengths[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _batches(backend, audios: list[np.ndarray], groups: list[list[int]]) -> Iterator[dict[str, Any]]:
    for group in groups:
        wav = torch.as_tensor(np.stack([audios[i] for i in group]), dtype=torch.float32)
        with torch.no_grad():
            codes = backend.encode(wav)
        if codes.shape[1] != backend.num_codebooks:
            raise PolysteerError(
                f"the audio encoder gives {codes.shape[1]} codebooks but the decoder reads {backend.num_codebooks}; "
                "stereo MusicGen models are not supported for activation capture, use a mono one"
            )
        length = codes.shape[-1] + codes.shape[1]  # the delay pattern adds one step per extra codebook
        mask = torch.ones(len(group), length, dtype=torch.bool)
        mask[:, 0] = False  # position 0 holds only the start token
        yield {"inputs": {"codes": codes}, "mask": mask}


def collect_audio(
    model: Any,
    audios: Sequence[np.ndarray],
    hook_points: Sequence[str],
    sample_rate: int,
    batch_size: int = 16,
    cache_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """Mean-pooled decoder activations ``{hook_point: [N, d_model]}`` of the clips, in their order.

    Args:
        model: a MusicGen (transformers or audiocraft).
        audios: mono float clips at ``sample_rate``, which must be the model's sample rate.
        hook_points: e.g. every ``decoder.blocks.{i}.resid_post``.
        batch_size: clips per forward pass (clips of equal length share a batch).
        cache_dir: reuse activations saved there for the same model, clips and hook points.
    """
    modality = MusicModality()
    backend = modality.backend(model)
    if sample_rate != backend.sample_rate:
        raise PolysteerError(
            f"clips are at {sample_rate} Hz but the model's audio encoder expects {backend.sample_rate} Hz; "
            "render or resample the audio at the model's rate"
        )
    audios = [mono(a).astype(np.float32) for a in audios]
    if not audios:
        raise PolysteerError("no audio clips to collect activations from")
    digest = hashlib.sha256(b"".join(a.tobytes() for a in audios)).hexdigest()
    key = cache_key(model=backend.identity(), audio=digest, hook_points=sorted(hook_points), pooling="mean")
    return cached_capture(cache_dir, key, lambda: _collect(model, modality, backend, audios, hook_points, batch_size))


def _collect(model, modality, backend, audios, hook_points, batch_size):
    groups = _same_length_batches([len(a) for a in audios], batch_size)
    acts = capture(model, modality, hook_points, _batches(backend, audios, groups), pooling="mean",
                   forward=lambda m, inputs: backend.teacher_force(inputs["codes"]), total=len(groups),
                   desc="teacher-forcing audio")
    order = torch.tensor([i for group in groups for i in group])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return {hp: a[inverse] for hp, a in acts.items()}
