"""Synthetic concept audio, SynTheory-style: notes, chords, intervals, scales and tempos rendered with numpy.

Every clip carries its labels, so one-vs-rest concept data (``note:E``, ``chord:minor``) is a filter over a
generated set. Tones are additive and band-limited (no aliasing), so their pitch is exact at any sample rate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from polysteer.errors import PolysteerError
from polysteer.io import write_text_atomic
from polysteer.modalities.music.audio import write_wav

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"DB": "C#", "EB": "D#", "GB": "F#", "AB": "G#", "BB": "A#"}
TIMBRES = ("sine", "saw", "square", "plucked")
CHORD_QUALITIES = {
    "major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6), "augmented": (0, 4, 8),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "major7": (0, 4, 7, 11), "minor7": (0, 3, 7, 10),
    "dominant7": (0, 4, 7, 10),
}
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "natural-minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic-minor": (0, 2, 3, 5, 7, 8, 11), "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10), "pentatonic": (0, 2, 4, 7, 9),
}
MAX_HARMONICS = 30  # beyond this the 1/h partials add little but cost a sine each
_FADE_S = 0.01  # attack/release ramp: avoids clicks that smear the spectrum


@dataclass
class Clip:
    """One rendered example: mono float32 audio in [-1, 1] and its labels."""

    audio: np.ndarray
    sample_rate: int
    labels: dict = field(default_factory=dict)


def pitch_class(name: str) -> int:
    """Index 0-11 of a pitch-class name (``E``, ``F#``, ``Bb``), with a clear error otherwise."""
    key = name.strip().upper()
    key = _FLATS.get(key, key)
    names = [p.upper() for p in PITCH_CLASSES]
    if key not in names:
        raise PolysteerError(f"unknown pitch class {name!r}; use one of {', '.join(PITCH_CLASSES)} (or flats like Bb)")
    return names.index(key)


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def tone(midi: float, seconds: float, sample_rate: int, timbre: str = "sine", phase: float = 0.0) -> np.ndarray:
    """One note as a sum of up to ``MAX_HARMONICS`` harmonics below 90% of Nyquist, faded in and out."""
    if timbre not in TIMBRES:
        raise PolysteerError(f"unknown timbre {timbre!r}; choose from {', '.join(TIMBRES)}")
    f0 = midi_to_hz(midi)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    x = 2 * np.pi * f0 * t + phase
    # sin(h x) by the Chebyshev recurrence: one multiply-add per harmonic instead of a sine
    two_cos, previous, current = 2 * np.cos(x), np.zeros_like(x), np.sin(x)
    # a plucked string's partial h decays as exp(-t (1.5 + 1.2 h)): higher partials die first
    plucked = timbre == "plucked"
    decay, step = (np.exp(-1.5 * t), np.exp(-1.2 * t)) if plucked else (1.0, 1.0)
    out = np.zeros_like(t)
    for h in range(1, min(MAX_HARMONICS, int(0.45 * sample_rate / f0)) + 1):
        decay = decay * step
        amp = _harmonic_amplitude(timbre, h)
        if amp:
            out += amp * decay * current
        previous, current = current, two_cos * current - previous
    return _fade(out, sample_rate)


def _harmonic_amplitude(timbre: str, h: int) -> float:
    if timbre == "sine":
        return 1.0 if h == 1 else 0.0
    if timbre == "square":
        return 1.0 / h if h % 2 else 0.0
    return 1.0 / h  # saw, and the plucked string's initial spectrum


def _fade(x: np.ndarray, sample_rate: int) -> np.ndarray:
    n = min(int(_FADE_S * sample_rate), len(x) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def render(midis: Iterable[float], seconds: float, sample_rate: int, timbre: str, rng: np.random.Generator,
           gain: float = 0.8) -> np.ndarray:
    """Mix simultaneous notes (random phases) and normalise the peak to ``gain``."""
    mix = sum(tone(m, seconds, sample_rate, timbre, rng.uniform(0, 2 * np.pi)) for m in midis)
    peak = np.abs(mix).max()
    return (gain * mix / peak if peak > 0 else mix).astype(np.float32)


def _variant(rng: np.random.Generator, detune_cents: float) -> tuple[float, float]:
    """A random detune (in semitones) and gain, so examples of one class are not identical."""
    return rng.uniform(-detune_cents, detune_cents) / 100, rng.uniform(0.5, 0.9)


def notes(sample_rate: int, seconds: float = 1.0, octaves: Sequence[int] = (2, 3, 4, 5),
          timbres: Sequence[str] = TIMBRES, variants: int = 1, detune_cents: float = 15.0, seed: int = 0) -> list[Clip]:
    """Single notes: 12 pitch classes x octaves x timbres x variants (random detune, gain and phase)."""
    rng = np.random.default_rng(seed)
    clips = []
    for pc in tqdm(range(12), desc="rendering notes", leave=False):
        for octave in octaves:
            for timbre in timbres:
                for _ in range(variants):
                    detune, gain = _variant(rng, detune_cents)
                    audio = render([12 * (octave + 1) + pc + detune], seconds, sample_rate, timbre, rng, gain)
                    clips.append(Clip(audio, sample_rate, {"kind": "note", "pitch_class": PITCH_CLASSES[pc],
                                                           "octave": octave, "timbre": timbre}))
    return clips


def chords(sample_rate: int, seconds: float = 1.0, qualities: Sequence[str] = tuple(CHORD_QUALITIES),
           octaves: Sequence[int] = (3, 4), timbres: Sequence[str] = TIMBRES, variants: int = 1,
           detune_cents: float = 10.0, seed: int = 0) -> list[Clip]:
    """Root-position chords: qualities x 12 roots x octaves x timbres x variants."""
    rng = np.random.default_rng(seed)
    unknown = set(qualities) - set(CHORD_QUALITIES)
    if unknown:
        raise PolysteerError(f"unknown chord qualities {sorted(unknown)}; choose from {', '.join(CHORD_QUALITIES)}")
    clips = []
    for quality in tqdm(qualities, desc="rendering chords", leave=False):
        for root in range(12):
            for octave in octaves:
                for timbre in timbres:
                    for _ in range(variants):
                        detune, gain = _variant(rng, detune_cents)
                        base = 12 * (octave + 1) + root + detune
                        audio = render([base + i for i in CHORD_QUALITIES[quality]], seconds, sample_rate, timbre,
                                       rng, gain)
                        clips.append(Clip(audio, sample_rate, {"kind": "chord", "root": PITCH_CLASSES[root],
                                                               "quality": quality, "octave": octave,
                                                               "timbre": timbre}))
    return clips


def intervals(sample_rate: int, seconds: float = 1.0, octave: int = 4, timbres: Sequence[str] = TIMBRES,
              seed: int = 0) -> list[Clip]:
    """Harmonic intervals of 1-12 semitones above each of the 12 roots."""
    rng = np.random.default_rng(seed)
    return [Clip(render([12 * (octave + 1) + root, 12 * (octave + 1) + root + size], seconds, sample_rate, timbre, rng),
                 sample_rate, {"kind": "interval", "semitones": size, "root": PITCH_CLASSES[root], "timbre": timbre})
            for size in range(1, 13) for root in range(12) for timbre in timbres]


def scales(sample_rate: int, note_seconds: float = 0.25, octave: int = 4, timbres: Sequence[str] = TIMBRES,
           seed: int = 0) -> list[Clip]:
    """Ascending scales (one note after another) for each mode and root."""
    rng = np.random.default_rng(seed)
    clips = []
    for mode, steps in SCALES.items():
        for root in range(12):
            for timbre in timbres:
                parts = [render([12 * (octave + 1) + root + s], note_seconds, sample_rate, timbre, rng) for s in steps]
                clips.append(Clip(np.concatenate(parts), sample_rate, {"kind": "scale", "mode": mode,
                                                                        "root": PITCH_CLASSES[root], "timbre": timbre}))
    return clips


def tempos(sample_rate: int, bpms: Sequence[float] = (60, 80, 100, 120, 140, 160), seconds: float = 8.0,
           seed: int = 0) -> list[Clip]:
    """Click tracks (short decaying noise bursts on every beat, accented downbeats) at each tempo."""
    rng = np.random.default_rng(seed)
    clips = []
    for bpm in bpms:
        audio = np.zeros(int(seconds * sample_rate), dtype=np.float32)
        click = rng.standard_normal(int(0.03 * sample_rate)) * np.exp(-np.linspace(0, 8, int(0.03 * sample_rate)))
        for beat, start in enumerate(np.arange(0, seconds, 60.0 / bpm)):
            i = int(start * sample_rate)
            piece = click[: len(audio) - i] * (1.0 if beat % 4 == 0 else 0.6)
            audio[i : i + len(piece)] += piece.astype(np.float32)
        clips.append(Clip(0.8 * audio / np.abs(audio).max(), sample_rate, {"kind": "tempo", "bpm": float(bpm)}))
    return clips


def write_dataset(clips: Sequence[Clip], folder: str | os.PathLike) -> Path:
    """Write each clip as a WAV (soundfile) plus ``index.jsonl`` of file names and labels, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, clip in enumerate(clips):
        name = f"{i:05d}-{clip.labels.get('kind', 'clip')}.wav"
        write_wav(folder / name, clip.audio, clip.sample_rate)
        rows.append(json.dumps({"file": name, "sample_rate": clip.sample_rate, **clip.labels}))
    return write_text_atomic(folder / "index.jsonl", "\n".join(rows) + "\n")


