"""Tempo directions, so that note, chord and tempo can be steered together in one generation.

A tempo concept is one-vs-rest over synthetic click tracks: ``tempo:fast`` labels the tracks above
``split_bpm`` positive, ``tempo:slow`` those below. It is fitted exactly as note and chord concepts are (one probe
per decoder layer, AUC-weighted layers), so its Direction joins theirs in one plan::

    fits = music.find_concepts(model, ["note:E", "chord:minor"])
    fits["tempo:fast"] = music.find_tempo(model, "fast")
    directions = [fits[k].direction for k in ("note:E", "chord:minor", "tempo:fast")]
    plan = music.build_plan(model, directions, [2.0, 1.0, 1.5], ["constant", "exp-decay:0.998", "ramp:0s-2s"])

``examples/music_multi_property.py`` runs that end to end; docs/music.md explains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from polysteer.errors import PolysteerError
from polysteer.hookpoints import hook_point
from polysteer.modalities.music import synth
from polysteer.modalities.music.modality import MusicModality
from polysteer.modalities.music.workflow import ConceptFit, fit_concept

#: Click-track tempos: five slow and five fast, split at 115 BPM.
TEMPO_BPMS = (60, 70, 80, 90, 100, 130, 140, 150, 160, 170)
TEMPO_CLASSES = ("slow", "fast")


@dataclass(frozen=True)
class TempoConcept:
    """``tempo:fast`` (click tracks above ``split_bpm`` are positive) or ``tempo:slow`` (those below)."""

    value: str = "fast"
    split_bpm: float = 115.0
    kind: ClassVar[str] = "tempo"

    def __post_init__(self):
        if self.value not in TEMPO_CLASSES:
            raise PolysteerError(f"bad tempo {self.value!r}: use one of {', '.join(TEMPO_CLASSES)}")

    def __str__(self) -> str:
        return f"tempo:{self.value}"

    @property
    def slug(self) -> str:
        """A file-name-safe name, e.g. ``tempo_fast``."""
        return f"tempo_{self.value}"

    def labels(self, clips: Sequence[synth.Clip]) -> np.ndarray:
        bpm = np.array([clip.labels["bpm"] for clip in clips])
        return bpm > self.split_bpm if self.value == "fast" else bpm < self.split_bpm


def tempo_clips(sample_rate: int, seconds: float = 4.0, variants: int = 2, seed: int = 0,
                bpms: Sequence[float] = TEMPO_BPMS) -> list[synth.Clip]:
    """Click tracks at every tempo, ``variants`` times with differently seeded clicks."""
    return [clip for v in range(variants) for clip in synth.tempos(sample_rate, bpms, seconds, seed=seed + v)]


def find_tempo(model: Any, target: str = "fast", layers: Sequence[int] | None = None, finder: Any = None,
               seconds: float = 4.0, variants: int = 2, val_fraction: float = 0.25, top_k: int | None = None,
               seed: int = 0, cache_dir: str | None = None, **finder_params) -> ConceptFit:
    """A tempo direction (every probed layer, AUC-weighted), like :func:`find_concepts` for notes and chords.

    Args:
        model: a MusicGen (transformers or audiocraft).
        target: ``fast`` or ``slow``.
        layers: decoder blocks to probe (default: all); the site is ``resid_post``.
        finder: registered finder name, class or instance (default: rfm if installed, else diffmean).
        seconds: length of each click track; at least two beats of the slowest tempo (2 s at 60 BPM).
        variants, seed: how many differently seeded copies of the tempo set, and their first seed.
        val_fraction, top_k: held-out share for the per-layer AUC; keep only the k best layers.
        cache_dir: reuse captured activations saved there.
    """
    concept = TempoConcept(target)
    if seconds * min(TEMPO_BPMS) / 60 < 2:
        raise PolysteerError(f"tempo clips of {seconds:g} s hold under two beats at {min(TEMPO_BPMS)} BPM; "
                             f"give at least {120 / min(TEMPO_BPMS):g} s")
    modality = MusicModality()
    layers = list(range(modality.n_layers(model))) if layers is None else list(layers)
    points = [hook_point(layer, "resid_post", "decoder") for layer in layers]
    sample_rate = modality.backend(model).sample_rate
    clips = tempo_clips(sample_rate, seconds, variants, seed)
    acts = modality.capture(model, None, [c.audio for c in clips], points, sample_rate=sample_rate,
                            cache_dir=cache_dir)
    return fit_concept(model, concept, acts, clips, finder, val_fraction, top_k, seed, **finder_params)
