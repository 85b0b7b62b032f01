"""Audio files: read with soundfile (torchaudio.load would need torchcodec), write atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from polysteer.errors import PolysteerError
from polysteer.io import atomic_write


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``[samples]`` or ``[channels, samples]`` float audio as a 32-bit float WAV."""
    import soundfile as sf

    data = np.asarray(audio, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise PolysteerError(f"audio must be [samples] or [channels, samples], got shape {data.shape}")
    return atomic_write(path, lambda tmp: sf.write(tmp, data.T if data.ndim == 2 else data, sample_rate,
                                                     format="WAV", subtype="FLOAT"))


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 audio and its sample rate; resampled (polyphase) when ``sample_rate`` is given and differs."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise PolysteerError(f"audio file {path} does not exist")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as exc:
        raise PolysteerError(f"cannot read {path} as audio: {exc}") from None
    audio = data.mean(1)
    if sample_rate is not None and rate != sample_rate:
        from scipy.signal import resample_poly

        common = math.gcd(rate, sample_rate)
        audio, rate = resample_poly(audio, sample_rate // common, rate // common), sample_rate
    return audio.astype(np.float32), rate
