"""CLAP text adherence: cosine between CLAP's embedding of the prompt and of the generated audio.

MusicRFM keeps this within 0.02 of unsteered while steering notes. The default checkpoint is
``laion/clap-htsat-unfused`` (a local folder works too); :func:`save_tiny_clap` writes a seeded random CLAP in the
same layout, for tests and dry runs, whose scores are plumbing, not quality.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from polysteer.device import resolve_device
from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.hub import first_line, resolve_model_source
from polysteer.modalities.music import dsp

DEFAULT_CLAP = "laion/clap-htsat-unfused"


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4) or an output whose ``pooler_output`` holds it (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapScore(Evaluator):
    """Cosine, in [-1, 1], between CLAP's text embedding of each output's prompt and its audio embedding.

    Audio is mixed to mono and resampled (polyphase) to CLAP's rate (48 kHz). Clips longer than CLAP's window
    (10 s) are cut to their first window: the unfused model sees one window, and the processor would otherwise
    pick a random crop, so scores would not repeat.

    Args:
        model: a local folder or hub id holding a ``ClapModel`` and its ``ClapProcessor``.
        device: ``auto`` (CUDA, then MPS, else CPU) or a torch device name.
        batch_size: clips embedded per forward pass.
    """

    name = "clap"
    modalities = ("music",)

    def __init__(self, model: str = DEFAULT_CLAP, device: str = "auto", batch_size: int = 8):
        from transformers import ClapModel, ClapProcessor

        source = resolve_model_source(model)
        self.device = resolve_device(device)
        try:
            self.model = ClapModel.from_pretrained(source, dtype=torch.float32).to(self.device).eval()
            self.processor = ClapProcessor.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise PolysteerError(f"cannot load CLAP {model!r}: {first_line(exc)}") from None
        self.batch_size = batch_size
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)

    def evaluate(self, outputs, sample_rate: int, prompts: Sequence[str] | str = (), **context) -> list[float]:
        """One cosine per clip; ``prompts`` holds one text for all clips or one per clip."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) not in (1, len(outputs)):
            raise PolysteerError(f"got {len(prompts)} prompts for {len(outputs)} clips; give one for all or one each")
        prompts = prompts * len(outputs) if len(prompts) == 1 else prompts
        scores = []
        for start in range(0, len(outputs), self.batch_size):
            text = self.embed_text(prompts[start : start + self.batch_size])
            audio = self.embed_audio(outputs[start : start + self.batch_size], sample_rate)
            scores += (text * audio).sum(-1).clamp(-1.0, 1.0).tolist()
        return scores

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm CLAP text embeddings ``[len(texts), projection_dim]``."""
        inputs = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        embeds = _features(self.model.get_text_features(**inputs.to(self.device)))
        return torch.nn.functional.normalize(embeds.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_audio(self, audios: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
        """Unit-norm CLAP audio embeddings ``[len(audios), projection_dim]``."""
        extractor = self.processor.feature_extractor
        clips = [self.prepare(audio, sample_rate)[: extractor.nb_max_samples] for audio in audios]
        inputs = extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        embeds = _features(self.model.get_audio_features(**inputs.to(self.device)))
        return torch.nn.functional.normalize(embeds.float(), dim=-1).cpu()

    def prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float32 audio at CLAP's sample rate."""
        audio = dsp.mono(audio)
        if sample_rate != self.sample_rate:
            from scipy.signal import resample_poly

            common = math.gcd(int(sample_rate), self.sample_rate)
            audio = resample_poly(audio, self.sample_rate // common, int(sample_rate) // common)
        return audio.astype(np.float32)


def save_tiny_clap(folder: str | Path, seed: int = 0) -> Path:
    """Write a seeded random CLAP (16-wide towers, byte-level tokenizer, 48 kHz processor) to ``folder``."""
    from tokenizers import pre_tokenizers
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[])  # characters only: every text tokenizes, nothing is unknown
    text = ClapTextConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, projection_dim=8, max_position_embeddings=256)
    audio = ClapAudioConfig(window_size=4, spec_size=64, num_mel_bins=16, hidden_size=16, projection_dim=8,
                            depths=(1, 1), num_attention_heads=(1, 2), patch_embeds_hidden_size=8, num_hidden_layers=2)
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)).eval()
    extractor = ClapFeatureExtractor(feature_size=16, truncation="rand_trunc", max_length_s=2)
    folder = Path(folder)
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
