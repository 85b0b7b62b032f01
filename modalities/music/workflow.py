"""Music concept directions: synthetic data -> teacher-forced activations -> one probe per layer -> Direction.

Each concept (``note:E``, ``chord:minor``) is one-vs-rest with balanced classes: every positive clip
and as many negatives drawn at random from the other classes. A held-out share of each class gives
every layer's validation AUC, which ranks the layers and sets MusicRFM's layer weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.hookpoints import hook_point
from polysteer.manager import registry
from polysteer.modalities.music import synth
from polysteer.modalities.music.modality import MusicModality
from polysteer.modalities.music.quiet import silence_third_party
from polysteer.plugins.rfm import layer_weights

silence_third_party()


@dataclass(frozen=True)
class Concept:
    """A one-vs-rest concept: ``note:<pitch class>`` or ``chord:<quality>``."""

    kind: str
    value: str

    @classmethod
    def parse(cls, spec: str) -> "Concept":
        kind, _, value = spec.partition(":")
        if kind == "note":
            return cls("note", synth.PITCH_CLASSES[synth.pitch_class(value)])
        if kind == "chord" and value in synth.CHORD_QUALITIES:
            return cls("chord", value)
        raise PolysteerError(
            f"bad concept {spec!r}: use note:<pitch class> (note:E, note:F#) or chord:<quality> with quality in "
            f"{', '.join(synth.CHORD_QUALITIES)}"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def slug(self) -> str:
        """A file-name-safe name, e.g. ``note_Fs``."""
        return f"{self.kind}_{self.value.replace('#', 's')}"

    def labels(self, clips: Sequence[synth.Clip]) -> np.ndarray:
        key = "pitch_class" if self.kind == "note" else "quality"
        return np.array([clip.labels.get(key) == self.value for clip in clips])


def concept_clips(kind: str, sample_rate: int, seconds: float = 1.0, variants: int = 2, seed: int = 0,
                  octaves: Sequence[int] | None = None) -> list[synth.Clip]:
    """The synthetic set a concept kind is learnt from: all notes, or all chords (default octaves if None)."""
    make = synth.notes if kind == "note" else synth.chords
    extra = {"octaves": tuple(octaves)} if octaves else {}
    return make(sample_rate, seconds, variants=variants, seed=seed, **extra)


def balanced_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: all positives, as many random negatives, each class split ``val_fraction``."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if len(pos) < 2 or len(neg) < 2:
        raise PolysteerError(f"need at least 2 positive and 2 negative clips, got {len(pos)} and {len(neg)}")
    neg = rng.choice(neg, size=min(len(pos), len(neg)), replace=False)
    train, val = [], []
    for group in (rng.permutation(pos), neg):
        n_val = max(1, round(val_fraction * len(group))) if val_fraction > 0 else 0
        val.append(group[:n_val])
        train.append(group[n_val:])
    return np.concatenate(train), np.concatenate(val)


def default_finder() -> str:
    """RFM (MusicRFM's probe) when its plugin is installed, else DiffMean."""
    return "rfm" if "rfm" in registry("direction_finders") else "diffmean"


@dataclass
class ConceptFit:
    """A concept's Direction (every layer, AUC-weighted) and each layer's validation AUC (empty without
    a validation split)."""

    concept: Concept
    direction: Direction
    aucs: dict[str, float]


def fit_concept(model: Any, concept: Concept, acts: dict[str, torch.Tensor], clips: Sequence[synth.Clip],
                finder: Any = None, val_fraction: float = 0.25, top_k: int | None = None, seed: int = 0,
                **finder_params) -> ConceptFit:
    """Fit one probe per hook point on ``acts`` (rows aligned with ``clips``) and package the Direction."""
    labels = concept.labels(clips)
    train, val = balanced_split(labels, val_fraction, seed)
    proto = make_finder(finder or default_finder(), **finder_params)
    fitted, aucs = {}, {}
    for hp, X in acts.items():
        X_tr, y_tr = X[train], labels[train]
        fitted[hp] = make_finder(proto).fit(X_tr[y_tr], X_tr[~y_tr])
        if len(val):
            aucs[hp] = float(roc_auc_score(labels[val], fitted[hp].score(X[val]).detach().numpy()))
    direction = Direction.from_fitted(
        fitted, model=model, modality=MusicModality(), finder=proto,
        weights=layer_weights(aucs, top_k=top_k) if aucs else {},
        provenance={"concept": str(concept), "data": "polysteer synthetic audio", "n_train": len(train),
                    "n_val": len(val), "val_auc": aucs, "pooling": "mean over teacher-forced frames",
                    "top_k": top_k},
    )
    return ConceptFit(concept, direction, aucs)


def find_concepts(model: Any, concepts: Sequence[str], layers: Sequence[int] | None = None, finder: Any = None,
                  seconds: float = 1.0, variants: int = 2, val_fraction: float = 0.25, top_k: int | None = None,
                  seed: int = 0, cache_dir: str | None = None, octaves: Sequence[int] | None = None,
                  **finder_params) -> dict[str, ConceptFit]:
    """Directions for several concepts, capturing each synthetic set once for all of them.

    Args:
        model: a MusicGen (transformers or audiocraft).
        concepts: specs such as ``note:E`` or ``chord:minor``.
        layers: decoder blocks to probe (default: all); the site is ``resid_post``.
        finder: registered finder name, class or instance (default :func:`default_finder`).
        seconds, variants, seed: size and randomness of the synthetic clips.
        octaves: octaves to render (default: notes 2-5, chords 3-4). One octave turns a pitch-class
            concept into a pitch-height one, which even random features can carry.
        val_fraction: held-out share of each class for the per-layer AUC.
        top_k: keep only the k best layers' weights (MusicRFM's top-k).
        cache_dir: reuse captured activations saved there.
    """
    modality = MusicModality()
    parsed = [Concept.parse(c) for c in concepts]
    layers = list(range(modality.n_layers(model))) if layers is None else list(layers)
    points = [hook_point(layer, "resid_post", "decoder") for layer in layers]
    sample_rate = modality.backend(model).sample_rate
    results = {}
    for kind in sorted({c.kind for c in parsed}):
        clips = concept_clips(kind, sample_rate, seconds, variants, seed, octaves)
        acts = modality.capture(model, None, [c.audio for c in clips], points, sample_rate=sample_rate,
                                cache_dir=cache_dir)
        for concept in tqdm([c for c in parsed if c.kind == kind], desc=f"fitting {kind} probes", leave=False):
            results[str(concept)] = fit_concept(model, concept, acts, clips, finder, val_fraction, top_k, seed,
                                                **finder_params)
    return results
