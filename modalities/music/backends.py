"""The two MusicGen implementations behind one interface: transformers and audiocraft.

A backend answers everything that differs between them: where the decoder blocks are, how a forward
pass reveals its cache length and classifier-free-guidance (CFG) doubling, how audio becomes codes,
how codes are teacher-forced with the null text condition, and how to generate. Both run CFG as one
batch ``[cond rows; uncond rows]`` (the halves tile, they do not interleave).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from polysteer.errors import PolysteerError
from polysteer.modality import cache_length

DEFAULT_FRAME_RATE = 50.0  # every released MusicGen decodes 50 frames per second


def _hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class Backend:
    """Adapter for one MusicGen implementation; subclasses fill in every method."""

    name = ""
    attn_name = ""
    mlp_name = ""

    def __init__(self, model: Any):
        self.model = model

    @staticmethod
    def matches(model: Any) -> bool:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def root(self) -> nn.Module:
        """The module whose forward runs once per decoding step (the step tracker hooks it)."""
        raise NotImplementedError

    def d_model(self) -> int:
        raise NotImplementedError

    @property
    def frame_rate(self) -> float:
        return DEFAULT_FRAME_RATE

    @property
    def sample_rate(self) -> int:
        raise NotImplementedError

    def step_shape(self, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        """(batch rows as the blocks see them, new positions, cached positions) of one root forward."""
        raise NotImplementedError

    def cfg_doubled(self, args: tuple, kwargs: dict, batch: int) -> bool:
        """Whether this forward's batch is ``[cond; uncond]``."""
        raise NotImplementedError

    def identity(self) -> dict[str, str]:
        raise NotImplementedError

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, samples]`` mono audio at :attr:`sample_rate` -> ``[B, codebooks, frames]`` codes."""
        raise NotImplementedError

    @property
    def num_codebooks(self) -> int:
        raise NotImplementedError

    def teacher_force(self, codes: torch.Tensor) -> None:
        """Run the decoder on ``codes`` laid out in the delay pattern (``frames + codebooks`` positions,
        the first holding only the start token), with the null text condition."""
        raise NotImplementedError

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """Continuous audio-encoder embeddings ``[B, frames, dim]`` (before quantisation)."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[str], seconds: float, tokenizer=None, *, sample: bool, top_k: int,
                 temperature: float, guidance: float) -> np.ndarray:
        """Waveforms ``[B, channels, samples]`` for the text prompts."""
        raise NotImplementedError


class TransformersMusicgen(Backend):
    """``transformers.MusicgenForConditionalGeneration``: blocks at ``decoder.model.decoder.layers``."""

    name = "transformers"
    attn_name = "self_attn"
    mlp_name = "fc2"

    @staticmethod
    def matches(model):
        from transformers import MusicgenForConditionalGeneration

        return isinstance(model, MusicgenForConditionalGeneration)

    def blocks(self):
        return self.model.decoder.model.decoder.layers

    def root(self):
        return self.model.decoder

    def d_model(self):
        return int(self.model.config.decoder.hidden_size)

    @property
    def frame_rate(self):
        return float(self.model.config.audio_encoder.frame_rate)

    @property
    def sample_rate(self):
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def num_codebooks(self):
        return int(self.model.decoder.num_codebooks)

    def step_shape(self, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, seq = (ids.shape[0] // self.num_codebooks, ids.shape[1]) if ids is not None \
            else embeds.shape[:2]
        return batch, seq, cache_length(kwargs)

    def cfg_doubled(self, args, kwargs, batch):
        # transformers appends the null condition as all-zero encoder states with an all-zero mask
        mask = kwargs.get("encoder_attention_mask")
        if mask is None:
            mask = kwargs.get("encoder_hidden_states")
        if mask is None or batch % 2 or mask.shape[0] != batch:
            return False
        flat = mask.reshape(batch, -1)
        return bool(flat[: batch // 2].any(dim=1).all()) and not flat[batch // 2 :].any()

    def identity(self):
        dec, audio = self.model.config.decoder, self.model.config.audio_encoder
        keep = {k: getattr(dec, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                                             "num_codebooks", "vocab_size")}
        keep["sampling_rate"] = audio.sampling_rate
        name = getattr(self.model.config, "_name_or_path", "") or "musicgen"
        return {"name": str(name), "architecture": type(self.model).__name__, "config_hash": _hash(keep)}

    def encode(self, audio):
        out = self.model.audio_encoder.encode(audio.unsqueeze(1).to(_device(self.model)))
        return out.audio_codes[0]

    def teacher_force(self, codes):
        decoder = self.model.decoder
        batch, k, frames = codes.shape
        start_id = self.model.generation_config.decoder_start_token_id
        start_id = decoder.config.bos_token_id if start_id is None else start_id
        start = torch.full((batch, k, 1), start_id, dtype=torch.long, device=codes.device)
        ids = torch.cat([start, codes], dim=-1).reshape(batch * k, frames + 1)
        _, delayed = decoder.build_delay_pattern_mask(ids, decoder.config.pad_token_id, max_length=frames + k)
        # the null condition of CFG's unconditional half: zero text states, fully masked
        null = torch.zeros(batch, 1, decoder.config.hidden_size, device=codes.device, dtype=decoder.dtype)
        decoder(input_ids=delayed, encoder_hidden_states=null,
                encoder_attention_mask=torch.zeros(batch, 1, dtype=torch.long, device=codes.device), use_cache=False)

    def embed(self, audio):
        return self.model.audio_encoder.encoder(audio.unsqueeze(1).to(_device(self.model))).transpose(1, 2)

    def generate(self, prompts, seconds, tokenizer=None, *, sample, top_k, temperature, guidance):
        if tokenizer is None:
            raise PolysteerError("transformers MusicGen needs its tokenizer: load the model with load_music_model")
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(_device(self.model))
        frames = max(1, round(seconds * self.frame_rate))
        out = self.model.generate(**enc, max_new_tokens=frames + self.model.decoder.num_codebooks - 1,
                                  do_sample=sample, top_k=top_k if sample else None,
                                  temperature=temperature if sample else None, guidance_scale=guidance)
        return out.float().cpu().numpy()


class AudiocraftMusicgen(Backend):
    """audiocraft's ``MusicGen`` (or its bare ``LMModel``): blocks at ``lm.transformer.layers``."""

    name = "audiocraft"
    attn_name = "self_attn"
    mlp_name = "linear2"

    @staticmethod
    def matches(model):
        if not type(model).__module__.startswith("audiocraft."):
            return False
        lm = getattr(model, "lm", model)
        return hasattr(lm, "transformer") and hasattr(lm, "condition_provider")

    @property
    def lm(self) -> nn.Module:
        return getattr(self.model, "lm", self.model)

    def _full(self, what: str):
        if not hasattr(self.model, "compression_model"):
            raise PolysteerError(f"{what} needs the whole audiocraft MusicGen, not its LMModel; pass the MusicGen")
        return self.model

    def blocks(self):
        return self.lm.transformer.layers

    def root(self):
        return self.lm

    def d_model(self):
        return int(self.lm.dim)

    @property
    def frame_rate(self):
        return float(self.model.frame_rate) if hasattr(self.model, "compression_model") else DEFAULT_FRAME_RATE

    @property
    def sample_rate(self):
        return int(self._full("the sample rate").sample_rate)

    @property
    def num_codebooks(self):
        return int(self.lm.num_codebooks)

    def step_shape(self, args, kwargs):
        sequence = args[0] if args else kwargs["sequence"]
        offsets = self.lm.transformer._streaming_state.get("offsets")
        return sequence.shape[0], sequence.shape[-1], int(offsets[0]) if offsets is not None else 0

    def cfg_doubled(self, args, kwargs, batch):
        # one-step CFG concatenates [sequence; sequence] before the forward; two-step runs the halves apart
        two_step = getattr(self.model, "generation_params", {}).get("two_step_cfg", self.lm.two_step_cfg)
        return bool(kwargs.get("condition_tensors")) and not two_step

    def identity(self):
        lm = self.lm
        keep = {"dim": lm.dim, "layers": len(lm.transformer.layers), "n_q": lm.num_codebooks, "card": lm.card}
        return {"name": str(getattr(self.model, "name", "audiocraft-lm")), "architecture": "audiocraft.LMModel",
                "config_hash": _hash(keep)}

    def encode(self, audio):
        model = self._full("encoding audio")
        codes, _ = model.compression_model.encode(audio.unsqueeze(1).to(_device(self.lm)))
        return codes

    def teacher_force(self, codes):
        model = self._full("teacher forcing")
        frames = codes.shape[-1]
        sequence, _, _ = self.lm.pattern_provider.get_pattern(frames).build_pattern_sequence(
            codes.contiguous(), self.lm.special_token_id)
        attributes, _ = model._prepare_tokens_and_attributes([None] * codes.shape[0], None)  # null text
        self.lm(sequence, conditions=attributes)

    def embed(self, audio):
        model = self._full("audio embeddings")
        return model.compression_model.encoder(audio.unsqueeze(1).to(_device(self.lm))).transpose(1, 2)

    def generate(self, prompts, seconds, tokenizer=None, *, sample, top_k, temperature, guidance):
        model = self._full("generation")
        saved = (dict(model.generation_params), model.duration)
        # top_k above the codebook size makes torch.topk fail; two-step CFG would split the steered batch
        model.set_generation_params(use_sampling=sample, top_k=min(top_k, self.lm.card), temperature=temperature,
                                    duration=seconds, cfg_coef=guidance, two_step_cfg=False)
        try:
            return model.generate(list(prompts), progress=False).float().cpu().numpy()
        finally:
            model.generation_params, model.duration = saved


BACKENDS = (TransformersMusicgen, AudiocraftMusicgen)


def backend_for(model: Any) -> Backend | None:
    """The backend for a MusicGen object, or None if it is not one."""
    for cls in BACKENDS:
        if cls.matches(model):
            return cls(model)
    return None
