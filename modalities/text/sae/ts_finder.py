"""The ``sae_ts`` direction finder and the cached SAE-TS effect model behind it and ``polysteer sae ts``.

A finder sees pooled activations only, so the effect model comes from, in order: the ``effects`` parameter (an
:class:`EffectModel` or a file written by ``polysteer sae ts --effects``), the polysteer cache entry for this
model, SAE and settings, or a new fit, which loads the model named by ``model`` (default: the one the SAE was
trained on) and stores the result in the cache, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from polysteer.cache import CacheWarning, cache_enabled, entry_path, make_key, model_fingerprint, note
from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, make_finder
from polysteer.modalities.text.presets import TRAIN_QUESTIONS
from polysteer.modalities.text.sae.ts import RIDGES, EffectModel, fit_effects
from polysteer.plugins.sae.model import SAE, load_sae

#: Prompts the effects are measured on by default (training questions: the benchmark reports on others).
DEFAULT_PROMPTS = tuple(TRAIN_QUESTIONS[:8])
_EMBEDDED = {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"}


def sae_fingerprint(sae: SAE) -> str:
    """SHA-256 of the SAE's architecture, hook point and every weight: two SAEs that encode alike hash alike."""
    digest = hashlib.sha256(f"{sae.architecture}|{sae.k}|{sae.metadata.get('hook_name')}".encode())
    for name, p in sorted(sae.named_parameters()):
        digest.update(name.encode() + p.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_effects_shape(effects: EffectModel, sae: SAE, where: str) -> EffectModel:
    """``effects`` when it maps this SAE's ``d_in`` to its ``d_sae``, else a one-line error naming ``where``."""
    if tuple(effects.W.shape) != (sae.d_in, sae.d_sae):
        raise PolysteerError(f"the effect model {where} maps {tuple(effects.W.shape)}, the SAE needs "
                             f"({sae.d_in}, {sae.d_sae}); fit one for this SAE")
    return effects


def effect_model(model, tokenizer, sae: SAE, path: str | Path | None = None, cache: bool = True,
                 prompts: Sequence[str] | None = None, **settings: Any) -> EffectModel:
    """The SAE-TS effect model: read from ``path`` when it exists, else from the cache, else fitted.

    A new fit (see :func:`fit_effects` for ``settings``) is written to the cache and, given, to ``path``.
    """
    if path is not None and Path(path).is_file():
        note(f"using the effect model in {path}")
        return check_effects_shape(EffectModel.load(path), sae, str(path))
    prompts = list(prompts or DEFAULT_PROMPTS)
    key = make_key(kind="sae-ts-effects", model=model_fingerprint(model), sae=sae_fingerprint(sae), prompts=prompts,
                   tokenizer=[str(getattr(tokenizer, "name_or_path", "")), len(tokenizer)], settings=settings)
    entry = entry_path("sae-ts-effects", key, ".safetensors")
    found = _cached(entry, key) if cache_enabled(cache) else None
    if found is None:
        found = fit_effects(model, tokenizer, sae, prompts, **settings)
        found.info["key"] = key
        if cache_enabled(cache):
            _store(found, entry)
    else:
        note(f"using cached SAE-TS effect model (key {key[:12]})")
    if path is not None:
        found.save(path)
    return check_effects_shape(found, sae, "found")


def _cached(entry: Path, key: str) -> EffectModel | None:
    if not entry.is_file():
        return None
    try:
        found = EffectModel.load(entry)
        if found.info.get("key") == key:
            return found
        raise PolysteerError("its key differs")
    except PolysteerError as exc:
        warnings.warn(f"ignoring the unreadable cache entry {entry} ({exc}); fitting again", CacheWarning,
                      stacklevel=3)
        return None


def _store(effects: EffectModel, entry: Path) -> None:
    try:
        effects.save(entry)
    except OSError as exc:  # a read-only cache only costs the reuse
        warnings.warn(f"cannot write the cache entry {entry} ({exc})", CacheWarning, stacklevel=3)


@lru_cache(maxsize=1)
def _load_model(name: str):
    from polysteer.modalities.text.models import load_text_model

    return load_text_model(name)


def _model_name(sae: SAE) -> str:
    name = sae.metadata.get("model_name") or sae.metadata.get("model", {}).get("name")
    if not name:
        raise PolysteerError("the SAE records no model to measure steering effects on; pass "
                             "--finder-param model=NAME (or an effect model with --finder-param effects=FILE)")
    return _EMBEDDED.get(name, name)


class SAETS(DirectionFinder):
    """SAE-Targeted Steering: the vector that raises one SAE feature while cancelling the generic side effects.

    Args:
        sae: SAE directory (or instance); default: the shipped SmolLM2 SAE.
        feature: target latent; None: the contrast finder's top latent on the two classes.
        effects: an :class:`EffectModel`, or a file: read when it exists, else written after fitting.
        model: text model to measure effects on when none is cached (default: the SAE's recorded model).
        n_vectors, max_features, norm_low, norm_high, max_new_tokens, ridge, seed: the training set and fit (see
            :func:`polysteer.modalities.text.sae.ts.fit_effects`; norms are fractions of the typical norm; ridge:
            one value or candidates chosen on held-out vectors, default 0.01 to 100).

    ``scale_`` is the distance between the class means, so coefficient 1 moves activations as far as
    DiffMean's coefficient 1 does.
    """

    name = "sae_ts"

    def __init__(self, sae: Any = None, feature: int | None = None, effects: Any = None, model: str | None = None,
                 n_vectors: int = 256, max_features: int = 4, norm_low: float = 0.25, norm_high: float = 1.0,
                 max_new_tokens: int = 16, ridge: Any = None, seed: int = 0):
        self.sae, self.feature, self.effects, self.model = sae, feature, effects, model
        self.n_vectors, self.max_features, self.norm_low, self.norm_high = n_vectors, max_features, norm_low, norm_high
        self.max_new_tokens, self.ridge, self.seed = max_new_tokens, ridge, seed

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        """A +-axis dictionary whose effect model is its decoder: the targeted vector is then the feature's axis."""
        sae = SAE(d_model, 2 * d_model, architecture="standard")
        with torch.no_grad():
            sae.W_dec.copy_(torch.cat([torch.eye(d_model), -torch.eye(d_model)]))
            sae.W_enc.copy_(sae.W_dec.T)
        return {"sae": sae, "effects": EffectModel(sae.W_dec.detach().T.clone(), torch.zeros(sae.d_sae))}

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        self.sae_ = sae = load_sae(self.sae if self.sae is not None else _shipped())
        sae.check_width(X_pos.shape[1])
        self.feature_ = self._target(sae, X_pos, X_neg)
        self.effects_ = self._effects(sae)
        target = torch.zeros(sae.d_sae)
        target[self.feature_] = 1.0
        self.direction_ = self.effects_.targeted_vector(target)
        self.scale_ = float((X_pos.mean(0) - X_neg.mean(0)).norm())
        if self.scale_ == 0:
            raise PolysteerError("the two classes have the same mean: nothing sets the coefficient's unit")
        return self

    def _target(self, sae: SAE, X_pos: torch.Tensor, X_neg: torch.Tensor) -> int:
        if self.feature is None:
            return int(make_finder("sae_contrast", sae=sae).fit(X_pos, X_neg).features_[0])
        if not 0 <= int(self.feature) < sae.d_sae:
            raise PolysteerError(f"feature {self.feature} out of range: the SAE has {sae.d_sae} latents")
        return int(self.feature)

    def _effects(self, sae: SAE) -> EffectModel:
        if isinstance(self.effects, EffectModel):
            return check_effects_shape(self.effects, sae, "given")
        if self.effects is not None and Path(self.effects).is_file():
            return check_effects_shape(EffectModel.load(self.effects), sae, str(self.effects))
        model, tokenizer = _load_model(self.model or _model_name(sae))
        ridge = RIDGES if self.ridge is None else self.ridge
        settings = {"n_vectors": self.n_vectors, "max_features": self.max_features, "ridge": ridge,
                    "relative_norms": (self.norm_low, self.norm_high), "max_new_tokens": self.max_new_tokens,
                    "seed": self.seed}
        return effect_model(model, tokenizer, sae, self.effects, **settings)


def _shipped() -> Path:
    from polysteer.modalities.text.sae.workflow import SHIPPED_SAE

    if not SHIPPED_SAE.is_dir():
        raise PolysteerError("no sae given and the shipped SmolLM2 SAE is missing; pass --finder-param sae=DIR")
    return SHIPPED_SAE
