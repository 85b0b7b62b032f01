"""Audio evaluators for the music modality: target note and chord, tempo, and a Frechet quality proxy.

Every evaluator takes ``outputs`` as audio arrays (``[samples]``, ``[channels, samples]``) and the
``sample_rate`` as context, and returns one score per output.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.modalities.music import dsp
from polysteer.modalities.music.synth import pitch_class


class NoteAccuracy(Evaluator):
    """1 when a clip's dominant pitch class (harmonic-template chroma) is the target, else 0."""

    name = "note-accuracy"
    modalities = ("music",)

    def __init__(self, target: str):
        self.target = pitch_class(target)

    def evaluate(self, outputs, sample_rate: int, **context) -> list[float]:
        return [float(dsp.estimate_note(audio, sample_rate) == self.target) for audio in outputs]


class NoteShare(Evaluator):
    """The share of a clip's non-silent analysis frames whose dominant pitch class is the target."""

    name = "note-share"
    modalities = ("music",)

    def __init__(self, target: str):
        self.target = pitch_class(target)

    def evaluate(self, outputs, sample_rate: int, **context) -> list[float]:
        scores = []
        for audio in outputs:
            notes = dsp.note_per_frame(audio, sample_rate)
            voiced = notes[notes >= 0]
            scores.append(float((voiced == self.target).mean()) if len(voiced) else 0.0)
        return scores


class ChordAccuracy(Evaluator):
    """1 when a clip's best chord has the target's pitch classes (``C:major``), else 0.

    Comparing pitch-class sets is fair to symmetric chords: C augmented is also E and G# augmented,
    and Csus2 holds the notes of Gsus4.
    """

    name = "chord-accuracy"
    modalities = ("music",)

    def __init__(self, target: str):
        self.target = dsp.chord_pitch_classes(*dsp.parse_chord(target))

    def evaluate(self, outputs, sample_rate: int, **context) -> list[float]:
        return [float(dsp.chord_pitch_classes(*dsp.estimate_chord(a, sample_rate)) == self.target) for a in outputs]


class TempoEstimate(Evaluator):
    """Each clip's tempo in beats per minute (onset autocorrelation)."""

    name = "tempo"
    modalities = ("music",)

    def evaluate(self, outputs, sample_rate: int, **context) -> list[float]:
        return [dsp.estimate_tempo(audio, sample_rate) for audio in outputs]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between two sets of row vectors."""
    if len(a) < 2 or len(b) < 2:
        raise PolysteerError("the Frechet distance needs at least 2 embedding frames in each set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr((S_a S_b)^1/2) from the symmetric form S_a^1/2 S_b S_a^1/2, whose eigenvalues are real and >= 0
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(distance, 0.0))  # identical sets can round to a tiny negative number


def audio_embeddings(model: Any, audios: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """Every frame's continuous EnCodec embedding of the clips, stacked ``[frames, dim]``."""
    from polysteer.modalities.music.modality import MusicModality

    backend = MusicModality().backend(model)
    if sample_rate != backend.sample_rate:
        raise PolysteerError(f"audio is at {sample_rate} Hz, the model's encoder at {backend.sample_rate} Hz; "
                             "resample it (read_audio(path, sample_rate=...))")
    frames = []
    with torch.no_grad():
        for audio in audios:
            wav = torch.as_tensor(dsp.mono(audio), dtype=torch.float32).unsqueeze(0)
            frames.append(backend.embed(wav)[0].float().cpu().numpy())
    return np.concatenate(frames).astype(np.float64)


class FrechetAudioDistance(Evaluator):
    """Frechet distance between the outputs' and a reference set's EnCodec embeddings (lower is closer).

    A distribution-level quality proxy (steered vs unsteered), so every output gets the same score.
    """

    name = "frechet-audio"
    modalities = ("music",)

    def __init__(self, model: Any, reference: Sequence[np.ndarray], sample_rate: int):
        self.model = model
        self.sample_rate = sample_rate
        self.reference_ = audio_embeddings(model, reference, sample_rate)

    def evaluate(self, outputs, sample_rate: int | None = None, **context) -> list[float]:
        embedded = audio_embeddings(self.model, outputs, sample_rate or self.sample_rate)
        return [frechet_distance(embedded, self.reference_)] * len(outputs)


EVALUATORS = (NoteAccuracy, NoteShare, ChordAccuracy, TempoEstimate, FrechetAudioDistance)
