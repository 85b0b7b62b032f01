"""Pitch and rhythm analysis in numpy: chroma, note and chord estimation by harmonic templates, tempo.

A plain chroma argmax confuses a note with its fifth (the 3rd harmonic lands there), so estimates match
the chroma against templates that include each note's harmonics (amplitude ``HARMONIC_DECAY ** (h-1)``).
"""

from __future__ import annotations

import numpy as np

from polysteer.errors import PolysteerError
from polysteer.modalities.music.synth import CHORD_QUALITIES

HARMONICS = 8
HARMONIC_DECAY = 0.7
FMIN, FMAX = 50.0, 5000.0


def _frames(audio: np.ndarray, size: int, hop: int) -> np.ndarray:
    if len(audio) < size:
        audio = np.pad(audio, (0, size - len(audio)))
    count = 1 + (len(audio) - size) // hop
    idx = np.arange(size)[None, :] + hop * np.arange(count)[:, None]
    return audio[idx]


def mono(audio: np.ndarray) -> np.ndarray:
    """``[samples]`` float64 from mono, ``[channels, samples]`` or ``[1, channels, samples]`` input."""
    x = np.asarray(audio, dtype=np.float64)
    while x.ndim > 1:
        x = x.mean(0)
    if x.size == 0:
        raise PolysteerError("audio is empty")
    return x


def chromagram(audio: np.ndarray, sample_rate: int, frame_seconds: float = 0.5) -> np.ndarray:
    """``[12, frames]`` pitch-class energy: each FFT bin's magnitude goes to its nearest semitone.

    Frames are long (about 2 Hz resolution at ``frame_seconds=0.5``) so low notes, a few Hz apart,
    stay separate; a bin's weight falls off as ``cos^2`` of its distance from the semitone centre.
    """
    x = mono(audio)
    size = int(2 ** np.ceil(np.log2(frame_seconds * sample_rate)))
    spectrum = np.abs(np.fft.rfft(_frames(x, size, size // 4) * np.hanning(size), axis=1))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    keep = (freqs >= FMIN) & (freqs <= min(FMAX, 0.45 * sample_rate))
    semitones = 12 * np.log2(freqs[keep] / 440.0) + 69
    nearest = np.round(semitones)
    weight = np.cos(np.pi * (semitones - nearest)) ** 2
    mapping = np.zeros((keep.sum(), 12))
    mapping[np.arange(keep.sum()), nearest.astype(int) % 12] = weight
    return (spectrum[:, keep] @ mapping).T


def note_template() -> np.ndarray:
    """Chroma of a note on pitch class 0 with decaying harmonics."""
    template = np.zeros(12)
    for h in range(1, HARMONICS + 1):
        template[int(round(12 * np.log2(h))) % 12] += HARMONIC_DECAY ** (h - 1)
    return template / np.linalg.norm(template)


def _score(chroma: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Cosine similarity of each template row with each chroma column: ``[templates, frames]``."""
    c = chroma / np.maximum(np.linalg.norm(chroma, axis=0, keepdims=True), 1e-12)
    t = templates / np.linalg.norm(templates, axis=1, keepdims=True)
    return t @ c


def _note_templates() -> np.ndarray:
    base = note_template()
    return np.stack([np.roll(base, pc) for pc in range(12)])


def chord_templates() -> tuple[list[tuple[int, str]], np.ndarray]:
    """Every (root, quality) and its chroma template (sum of its notes' harmonic templates)."""
    notes = _note_templates()
    labels, rows = [], []
    for quality, steps in CHORD_QUALITIES.items():
        for root in range(12):
            labels.append((root, quality))
            rows.append(sum(notes[(root + s) % 12] for s in steps))
    return labels, np.stack(rows)


def estimate_note(audio: np.ndarray, sample_rate: int) -> int:
    """The dominant pitch class (0-11) of a clip, from its time-averaged chroma."""
    chroma = chromagram(audio, sample_rate).mean(1, keepdims=True)
    return int(_score(chroma, _note_templates())[:, 0].argmax())


def note_per_frame(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The dominant pitch class of each analysis frame (-1 for silent frames)."""
    chroma = chromagram(audio, sample_rate)
    best = _score(chroma, _note_templates()).argmax(0)
    energy = chroma.sum(0)
    return np.where(energy > 1e-3 * max(energy.max(), 1e-12), best, -1)


def estimate_chord(audio: np.ndarray, sample_rate: int) -> tuple[int, str]:
    """The best-matching (root pitch class, quality) of a clip."""
    chroma = chromagram(audio, sample_rate).mean(1, keepdims=True)
    labels, templates = chord_templates()
    return labels[int(_score(chroma, templates)[:, 0].argmax())]


def chord_pitch_classes(root: int, quality: str) -> frozenset[int]:
    """The pitch-class set of a chord: the fair test for symmetric chords (augmented, sus2 = sus4 inverted)."""
    return frozenset((root + s) % 12 for s in CHORD_QUALITIES[quality])


def parse_chord(name: str) -> tuple[int, str]:
    """``'C:major'``, ``'F#:minor7'`` -> (root, quality)."""
    from polysteer.modalities.music.synth import pitch_class

    root, _, quality = name.partition(":")
    if quality not in CHORD_QUALITIES:
        raise PolysteerError(f"bad chord {name!r}: use ROOT:QUALITY with quality in {', '.join(CHORD_QUALITIES)}")
    return pitch_class(root), quality


def onset_envelope(audio: np.ndarray, sample_rate: int, hop_seconds: float = 0.01) -> tuple[np.ndarray, float]:
    """Half-wave-rectified spectral flux and its frame rate (frames per second)."""
    x = mono(audio)
    hop = max(1, int(hop_seconds * sample_rate))
    size = 4 * hop
    spectrum = np.log1p(np.abs(np.fft.rfft(_frames(x, size, hop) * np.hanning(size), axis=1)))
    flux = np.maximum(np.diff(spectrum, axis=0), 0.0).sum(1)
    flux = np.convolve(flux, np.hanning(7), mode="same")  # clicks a fraction of a hop apart still overlap
    return flux - flux.mean(), sample_rate / hop


def estimate_tempo(audio: np.ndarray, sample_rate: int, bpm_range: tuple[float, float] = (50.0, 200.0),
                   prior_bpm: float = 120.0) -> float:
    """Beats per minute: the strongest onset-envelope autocorrelation lag, weighted by a log-normal prior.

    The prior (one octave wide, centred on ``prior_bpm``) settles the half/double-tempo ambiguity
    the way listeners do, as in librosa's tempo estimator.
    """
    env, rate = onset_envelope(audio, sample_rate)
    ac = np.correlate(env, env, mode="full")[len(env) - 1 :]
    lo, hi = int(rate * 60 / bpm_range[1]), min(int(rate * 60 / bpm_range[0]), len(ac) - 1)
    if hi <= lo:
        raise PolysteerError(f"clip too short for tempo estimation: give at least {2 * 60 / bpm_range[0]:.0f} s")
    lags = np.arange(lo, hi + 1)
    prior = np.exp(-0.5 * np.log2(60.0 * rate / lags / prior_bpm) ** 2)  # octave errors: prefer near prior_bpm
    lag = lo + int(np.argmax(np.maximum(ac[lo : hi + 1], 0) * prior))
    if 0 < lag < len(ac) - 1:  # parabolic interpolation between lags for sub-frame precision
        a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
        curvature = a - 2 * b + c
        lag = float(np.clip(lag + (0.5 * (a - c) / curvature if curvature < 0 else 0.0), lo, hi))
    return float(60.0 * rate / lag)
