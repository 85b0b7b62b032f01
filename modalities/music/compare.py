"""Steered vs unsteered MusicGen output, side by side: both WAVs, one PNG, and the token divergence per step.

The PNG shows the two spectrograms (same colour scale) and, under them, each direction's strength over time
(coefficient x schedule) with the steps whose codebook tokens differ marked. On tiny random models the audio
decoder ignores its codes, so the spectrograms match; the marked steps still show where steering acted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from polysteer.io import atomic_write
from polysteer.modalities.music.generation import Divergence
from polysteer.schedule import parse_schedule


@dataclass
class Strength:
    """One direction's strength over time: its label, coefficient and schedule (spec or Schedule)."""

    label: str
    coefficient: float
    schedule: Any


def companion_paths(output: str | Path) -> tuple[Path, Path]:
    """Where ``--compare`` writes the unsteered WAV and the PNG, beside the steered ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.unsteered.wav"), output.with_name(f"{output.stem}.compare.png")


def strength_curve(strength: Strength, steps: int, steps_per_second: float) -> np.ndarray:
    """Coefficient x schedule multiplier at each decoding step (position = step, one start token)."""
    schedule = parse_schedule(strength.schedule, steps_per_second)
    values = []
    for step in range(steps):
        mult = schedule(step, torch.tensor(step + 1), 0, 1)
        values.append(float(torch.as_tensor(mult, dtype=torch.float32).mean()))
    return strength.coefficient * np.array(values)


def divergence_summary(divergence: Divergence, frame_rate: float, max_abs_diff: float) -> str:
    """Two lines for the terminal: where the tokens diverge, and how far apart the waveforms are."""
    steps = len(divergence.differs)
    if divergence.first is None:
        tokens = f"tokens: steered and unsteered codebook tokens are identical at all {steps} steps"
    else:
        tokens = (f"tokens: first differ at step {divergence.first} ({divergence.first / frame_rate:.2f} s); "
                  f"{sum(divergence.differs)}/{steps} steps differ ({divergence.fraction:.0%})")
    return f"{tokens}\naudio: max |steered - unsteered| = {max_abs_diff:.3g}"


def plot_comparison(path: str | Path, steered: np.ndarray, unsteered: np.ndarray, sample_rate: int,
                    strengths: Sequence[Strength], divergence: Divergence, frame_rate: float) -> Path:
    """Write the PNG: spectrograms side by side, strength and token divergence over time under them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 6.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    _spectrograms(fig, grid, {"unsteered": unsteered, "steered": steered}, sample_rate)
    _strength_panel(fig.add_subplot(grid[1, :]), strengths, divergence, frame_rate, len(steered) / sample_rate)
    gap = float(np.abs(np.asarray(steered) - np.asarray(unsteered)).max())
    fig.suptitle(f"steered vs unsteered (same seed): max |difference| of the waveforms = {gap:.3g}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)


def _spectrograms(fig, grid, clips: dict[str, np.ndarray], sample_rate: int) -> None:
    """Log-magnitude spectrograms on one colour scale, so equal audio looks equal."""
    n_fft = 1024 if sample_rate >= 16000 else 256
    spectra = {name: 10 * np.log10(_power(clip, n_fft) + 1e-12) for name, clip in clips.items()}
    low = min(s.min() for s in spectra.values())
    high = max(s.max() for s in spectra.values())
    seconds = max(len(c) for c in clips.values()) / sample_rate
    for column, (name, spectrum) in enumerate(spectra.items()):
        ax = fig.add_subplot(grid[0, column])
        image = ax.imshow(spectrum, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                          extent=(0, seconds, 0, sample_rate / 2000))
        ax.set_title(name)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=ax, label="power (dB)")


def _power(audio: np.ndarray, n_fft: int) -> np.ndarray:
    """``[frequencies, frames]`` power of a Hann-windowed STFT with 75% overlap."""
    hop = n_fft // 4
    audio = np.pad(np.asarray(audio, dtype=np.float64).reshape(-1), (0, max(0, n_fft - len(audio))))
    starts = range(0, len(audio) - n_fft + 1, hop)
    frames = np.stack([audio[s : s + n_fft] for s in starts]) * np.hanning(n_fft)
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T


def _strength_panel(ax, strengths: Sequence[Strength], divergence: Divergence, frame_rate: float,
                    seconds: float) -> None:
    steps = max(len(divergence.differs), 1)
    times = np.arange(steps) / frame_rate
    for strength in strengths:
        label = f"{strength.label} (x{strength.coefficient:g})"
        ax.step(times, strength_curve(strength, steps, frame_rate), where="post", label=label)
    differing = [t for t, d in zip(times, divergence.differs) if d]
    for t in differing:
        ax.axvspan(t, t + 1 / frame_rate, color="tab:red", alpha=0.25, lw=0)
    first = "none" if divergence.first is None else f"first at {divergence.first / frame_rate:.2f} s"
    ax.plot([], [], color="tab:red", alpha=0.4, lw=6,
            label=f"steps whose tokens differ: {len(differing)}/{len(divergence.differs)} ({first})")
    ax.set_xlim(0, max(seconds, times[-1] + 1 / frame_rate))
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.0), max(high, 0.0))  # zero in view: strength is read against no steering
    ax.set_xlabel("time (s)")
    ax.set_ylabel("strength (coefficient x schedule)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("steering strength over time; shaded: steps where steered tokens differ from unsteered")
