"""Loading MusicGen: real checkpoints from a local path or hub id, and tiny random models for tests and dry runs.

``tiny:transformers`` and ``tiny:audiocraft`` build seeded random models (16-wide, 3 blocks, 4 codebooks,
50 frames/s at 16 kHz) that exercise every code path in seconds; their audio is noise.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polysteer.device import SPREAD, resolve_device, resolve_dtype
from polysteer.errors import PolysteerError
from polysteer.hub import first_line, resolve_model_source
from polysteer.modalities.music.quiet import silence_third_party

silence_third_party()  # Python API users load models without the CLI, and meet the same noise

TINY = {"tiny:transformers": "transformers", "tiny:audiocraft": "audiocraft"}
BACKEND_NAMES = ("auto", "transformers", "audiocraft")
_TINY_WORDS = (
    "lofi piano rock jazz ambient guitar drums bass synth beat slow fast happy sad calm upbeat chill electronic "
    "classical orchestral strings pop funk soft loud dark bright dreamy epic acoustic a the with and in of"
).split()
_TINY = dict(dim=16, layers=3, heads=2, codebooks=4, card=64, sample_rate=16000, ratios=[8, 5, 4, 2])


def load_music_model(name_or_path: str, backend: str = "auto", device: str | torch.device = "auto",
                     dtype: str | torch.dtype = "auto") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` on ``device`` in ``dtype``; the tokenizer is None for audiocraft.

    Args:
        name_or_path: a local folder or hub id (``facebook/musicgen-small``), or ``tiny:transformers`` /
            ``tiny:audiocraft`` for random test models.
        backend: ``transformers``, ``audiocraft``, or ``auto`` (a folder with ``config.json`` or any hub
            id loads with transformers; a folder with only audiocraft's ``state_dict.bin`` with audiocraft).
        device: ``auto`` (CUDA, then MPS, else CPU) or a torch device name.
        dtype: ``auto`` (bfloat16 on a GPU, float32 on CPU), a name such as ``bfloat16``, or a torch dtype.
    """
    if backend not in BACKEND_NAMES:
        raise PolysteerError(f"unknown backend {backend!r}; use one of {', '.join(BACKEND_NAMES)}")
    if str(device) == SPREAD:
        raise PolysteerError("--device map spreads text and vision-language models over several GPUs; MusicGen "
                             "(3.3B at most) fits one: use --device cuda")
    place = resolve_device(device)
    precision = resolve_dtype(dtype, place)
    if name_or_path in TINY:
        model, tokenizer = tiny_musicgen(TINY[name_or_path])
        return _place(model, place, precision), tokenizer
    source = resolve_model_source(name_or_path)
    if backend == "auto":
        backend = _auto_backend(source)
    if backend == "audiocraft":
        model = _load_audiocraft(source, place)
        model.name = str(name_or_path)  # the hub id as given, even when read from the cache
        return _place(model, place, precision), None
    return _load_transformers(name_or_path, source, place, precision)


def _auto_backend(source: str) -> str:
    """transformers for a hub id or a folder with ``config.json`` (the hub repos hold both layouts);
    audiocraft for a folder with only audiocraft's ``state_dict.bin``."""
    folder = Path(source)
    if (folder / "state_dict.bin").is_file() and not (folder / "config.json").is_file():
        return "audiocraft"
    return "transformers"


def _place(model, device: torch.device, dtype: torch.dtype):
    """Move a model to ``device`` in ``dtype``; the EnCodec codec stays float32, since audio comes in as float32.

    audiocraft's MusicGen (not a Module) keeps float32 weights and autocasts to ``dtype``, as it does on a GPU.
    """
    if isinstance(model, torch.nn.Module):
        # part by part: a round trip of the codec through ``dtype`` would round its float32 weights (other codes)
        for name, part in model.named_children():
            part.to(device=device, dtype=torch.float32 if name == "audio_encoder" else dtype)
        return model.eval()
    from audiocraft.utils.autocast import TorchAutocast

    model.lm.to(device)
    model.compression_model.to(device)
    model.device = device
    model.autocast = TorchAutocast(enabled=dtype != torch.float32, device_type=device.type, dtype=dtype)
    return model


def _load_transformers(name_or_path: str, source: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    try:
        # float32 first, then ``_place`` casts all but the codec: loading in ``dtype`` would round the codec too
        model = MusicgenForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise PolysteerError(f"cannot load MusicGen {name_or_path!r} with transformers: {first_line(exc)}") from None
    model.config._name_or_path = str(name_or_path)  # the hub id as given, even when read from the cache
    return _place(model, device, dtype), tokenizer


def _load_audiocraft(name_or_path: str, device: torch.device):
    """audiocraft's loader, which unpickles with torch's default ``weights_only=True`` (torch >= 2.6)."""
    try:
        from audiocraft.models import MusicGen
    except ImportError:
        raise PolysteerError(
            "audiocraft is not installed: run scripts/install.sh (it adds audiocraft with --no-deps)") from None
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() not in ("0", "", "false"):
        raise PolysteerError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, so torch would run code stored in the "
                             "checkpoint; unset it to load audiocraft models")
    try:
        return MusicGen.get_pretrained(name_or_path, device=str(device))
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise PolysteerError(f"{name_or_path}: the checkpoint is not a plain-weights pickle ({reason}); polysteer "
                             "loads weights only and never runs code from a model file") from None
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, struct.error) as exc:  # corrupt or foreign files
        raise PolysteerError(f"cannot load MusicGen {name_or_path!r} with audiocraft: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}") from None


def tiny_musicgen(backend: str = "transformers", seed: int = 0) -> tuple[Any, Any]:
    """A seeded random MusicGen for tests: ``(model, tokenizer)`` (tokenizer None for audiocraft)."""
    torch.manual_seed(seed)
    if backend == "audiocraft":
        return _tiny_audiocraft(), None
    return _tiny_transformers(), _tiny_tokenizer()


def _tiny_transformers():
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    t = _TINY
    text = T5Config(vocab_size=len(_TINY_WORDS) + 3, d_model=t["dim"], d_kv=8, d_ff=2 * t["dim"], num_layers=1,
                    num_heads=t["heads"])
    # 4 codebooks of 6 bits at 50 frames/s is 1.2 kbps
    audio = EncodecConfig(sampling_rate=t["sample_rate"], upsampling_ratios=t["ratios"], codebook_size=t["card"],
                          target_bandwidths=[1.2], hidden_size=t["dim"], num_filters=4, num_lstm_layers=1)
    decoder = MusicgenDecoderConfig(vocab_size=t["card"], hidden_size=t["dim"], num_hidden_layers=t["layers"],
                                    ffn_dim=2 * t["dim"], num_attention_heads=t["heads"], num_codebooks=t["codebooks"],
                                    pad_token_id=t["card"], bos_token_id=t["card"], max_position_embeddings=4096)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
    _init_codebooks(model.audio_encoder)
    model.generation_config.decoder_start_token_id = t["card"]
    model.config._name_or_path = "tiny:transformers"
    return model.eval()


def _tone_frames(encoder, sample_rate: int) -> torch.Tensor:
    """Encoder output ``[clips, dim, frames]`` of random tones: what codebooks must cover to tell pitches apart."""
    from polysteer.modalities.music.synth import TIMBRES, render

    rng = np.random.default_rng(0)
    wav = [render([rng.uniform(36, 84)], 0.2, sample_rate, TIMBRES[i % len(TIMBRES)], rng) for i in range(64)]
    with torch.no_grad():
        return encoder(torch.as_tensor(np.stack(wav)).unsqueeze(1))


def _init_codebooks(encodec) -> None:
    """transformers creates EnCodec codebooks as zeros (every frame gets code 0): seed each residual
    stage with encoder frames of random tones, one k-means-style initialisation step."""
    residual = _tone_frames(encodec.encoder, _TINY["sample_rate"]).transpose(1, 2).reshape(-1, _TINY["dim"])
    for layer in encodec.quantizer.layers:
        book = layer.codebook
        book.embed.copy_(residual[torch.randperm(len(residual))[: len(book.embed)]])
        book.embed_avg.copy_(book.embed)
        residual = residual - book.embed[torch.cdist(residual, book.embed).argmin(1)]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_TINY_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _tiny_audiocraft():
    from audiocraft import quantization
    from audiocraft.models import MusicGen
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.models.lm import LMModel
    from audiocraft.modules import SEANetDecoder, SEANetEncoder
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
    from audiocraft.modules.conditioners import ConditionFuser, ConditioningProvider, LUTConditioner

    t = _TINY
    seanet = dict(n_filters=4, n_residual_layers=1, dimension=t["dim"], ratios=t["ratios"])
    quantizer = quantization.ResidualVectorQuantizer(dimension=t["dim"], bins=t["card"], n_q=t["codebooks"])
    encoder = SEANetEncoder(**seanet)
    # k-means codebook init on tone frames; in eval mode, so no EMA step shrinks the fresh codebooks
    quantizer.eval()(_tone_frames(encoder, t["sample_rate"]), 50)
    compression = EncodecModel(encoder, SEANetDecoder(**seanet), quantizer, frame_rate=50,
                               sample_rate=t["sample_rate"], channels=1)
    # 'noop' tokenizer: the stock debug LM's 'whitespace' one calls spacy.load, which downloads a model
    text = LUTConditioner(n_bins=64, dim=t["dim"], output_dim=t["dim"], tokenizer="noop")
    fuser = ConditionFuser({"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []})
    lm = LMModel(DelayedPatternProvider(n_q=t["codebooks"]), ConditioningProvider({"description": text}), fuser,
                 n_q=t["codebooks"], card=t["card"], dim=t["dim"], num_heads=t["heads"], num_layers=t["layers"],
                 custom=True, cross_attention=True, causal=True)
    return MusicGen("tiny:audiocraft", compression.eval(), lm.eval(), max_duration=30)
