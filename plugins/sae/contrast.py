"""Contrast selection of SAE features (``sae_contrast``): which latents separate positive from negative tokens.

The finder reads token-level activations (every answer token a row; the text workflow captures them for it by
default, see ``SAEContrast.preferred_pooling``). Encoding a mean-pooled vector instead is out of distribution for
the SAE: a TopK SAE answers with whatever generic latents align with the mean (issue 16 found one latent, " I" /
"?", chosen for most concepts). Each latent's difference of class means is divided by its spread over all tokens
(a scale-free effect size, so a large-scale latent does not win on scale alone), and latents that fire on most
tokens are dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, finish_direction
from polysteer.plugins.sae.model import SAE, load_sae, load_stats

NORMALIZATIONS = ("std", "active", "none")


def filter_features(ranking: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int = 1) -> torch.Tensor:
    """The first ``top_k`` features of ``ranking`` whose score passes ``threshold`` (Arad et al.'s filter)."""
    kept = [int(f) for f in ranking if float(scores[f]) >= threshold][:top_k]
    if not kept:
        raise PolysteerError(f"no feature passes the score threshold {threshold}; lower it (scores go up to "
                             f"{float(scores[ranking].max()):.3g})")
    return torch.tensor(kept)


class LatentMoments:
    """Running per-latent sums over token rows (float64, chunked, so a large token stack never sits encoded)."""

    def __init__(self, sae: SAE, X: torch.Tensor, chunk: int = 2048):
        d = sae.d_sae
        self.n = len(X)
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sq, self.fired = torch.zeros_like(self.sum), torch.zeros_like(self.sum)
        with torch.no_grad():
            for lo in range(0, len(X), chunk):
                z = sae.encode(X[lo : lo + chunk]).double()
                self.sum += z.sum(0)
                self.sq += (z * z).sum(0)
                self.fired += (z > 0).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def rate(self) -> torch.Tensor:
        return self.fired / self.n


def latent_contrast(pos: LatentMoments, neg: LatentMoments, normalize: str = "std",
                    max_density: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-latent contrast score and density; latents denser than ``max_density`` score ``-inf``.

    Args:
        normalize: divide the difference of class means by ``'std'`` (the latent's standard deviation over the
            tokens of both classes), ``'active'`` (its mean activation where it fires) or ``'none'``.
        max_density: drop latents whose firing rate, averaged over the two classes (so class sizes do not weigh
            in), exceeds this. A latent that fires on every positive token and no negative one has density 0.5.

    Returns:
        ``(score [d_sae], density [d_sae])``.
    """
    if normalize not in NORMALIZATIONS:
        raise PolysteerError(f"unknown normalize {normalize!r}; expected one of {', '.join(NORMALIZATIONS)}")
    difference = pos.mean - neg.mean
    n = pos.n + neg.n
    if normalize == "std":
        average = (pos.sum + neg.sum) / n
        typical = ((pos.sq + neg.sq) / n - average**2).clamp_min(0).sqrt()
    elif normalize == "active":
        typical = (pos.sum + neg.sum) / (pos.fired + neg.fired).clamp_min(1)
    else:
        typical = torch.ones_like(difference)
    score = difference / typical.clamp_min(1e-8)
    density = (pos.rate + neg.rate) / 2
    return score.masked_fill(density > max_density, float("-inf")).float(), density.float()


class SAEContrast(DirectionFinder):
    """Rank SAE latents by their normalised difference on positive vs negative tokens; steer with the best rows.

    The SAE only ever encodes real activations, never a steering vector (Mayne et al.: out of distribution), and
    by default token rows rather than pooled ones (``polysteer find`` captures tokens for this finder).

    Args:
        sae: SAE directory (or instance) trained on the hook point the activations come from.
        top_k: number of features combined, weighted by their activation difference.
        score_filter: keep only features whose score reaches ``threshold`` (Arad et al.): ``'output'`` or
            ``'input'`` reads that score from the SAE directory's feature statistics, or a ``[d_sae]`` tensor.
        threshold: the filter's minimum score.
        normalize: ``'std'`` (default), ``'active'`` or ``'none'`` (the raw difference of means); see
            :func:`latent_contrast`.
        max_density: drop latents firing on more than this fraction of tokens (class-averaged); 1.0 keeps all.
    """

    name = "sae_contrast"
    preferred_pooling = "tokens"  # what the text workflow captures for this finder unless told otherwise

    def __init__(self, sae: Any = None, top_k: int = 1, score_filter: "str | torch.Tensor | None" = None,
                 threshold: float = 0.01, normalize: str = "std", max_density: float = 0.6):
        self.sae = sae
        self.top_k = top_k
        self.score_filter = score_filter
        self.threshold = threshold
        self.normalize = normalize
        self.max_density = max_density

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        """A dictionary of +-each axis, so contrast selection can find the common checks' planted axis."""
        sae = SAE(d_model, 2 * d_model, architecture="standard")
        eye = torch.eye(d_model)
        with torch.no_grad():
            sae.W_dec.copy_(torch.cat([eye, -eye]))
            sae.W_enc.copy_(sae.W_dec.T)
        return {"sae": sae}

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        if self.sae is None:
            raise PolysteerError("sae_contrast needs an SAE: make_finder('sae_contrast', sae='path/to/sae')")
        if self.normalize not in NORMALIZATIONS:
            raise PolysteerError(f"unknown normalize {self.normalize!r}; expected one of {', '.join(NORMALIZATIONS)}")
        if not 0 < self.max_density <= 1:
            raise PolysteerError(f"max_density must be in (0, 1], got {self.max_density}; 1 keeps every latent")
        self.sae_ = sae = load_sae(self.sae)
        sae.check_width(X_pos.shape[1])
        pos, neg = LatentMoments(sae, _without_sinks(sae, X_pos)), LatentMoments(sae, _without_sinks(sae, X_neg))
        self.differences_ = (pos.mean - neg.mean).float()
        self.contrast_, self.density_ = latent_contrast(pos, neg, self.normalize, self.max_density)
        if not torch.isfinite(self.contrast_).any():
            raise PolysteerError(f"every latent fires on more than max_density={self.max_density} of the tokens; "
                                 "raise max_density")
        with torch.no_grad():
            self.features_ = self._select(self.contrast_)
            values = self.differences_[self.features_].clamp_min(0)
            self.feature_weights_ = values if values.any() else torch.ones(len(self.features_))
            v = (self.feature_weights_.unsqueeze(1) * sae.W_dec[self.features_].float()).sum(0)
        self.direction_, self.scale_ = finish_direction(v.float(), X_pos, X_neg)
        return self

    def _select(self, contrast: torch.Tensor) -> torch.Tensor:
        ranking = contrast.argsort(descending=True)
        ranking = ranking[torch.isfinite(contrast[ranking])]
        if self.score_filter is None:
            return ranking[: self.top_k]
        scores = self.score_filter
        if isinstance(scores, str):
            stats = load_stats(self.sae) if not isinstance(self.sae, SAE) else None
            key = f"{scores}_score"
            if stats is None or key not in stats:
                raise PolysteerError(f"the SAE has no saved {key}s to filter on; compute them with "
                                     "benchmarks/sae_feature_scores.py --sae DIR, or pass a [d_sae] tensor")
            scores = stats[key]
        return filter_features(ranking, torch.as_tensor(scores), self.threshold, self.top_k)

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Concept score: the selected latents' activations (weighted), not a projection."""
        with torch.no_grad():
            return self.sae_.encode(torch.as_tensor(X).float())[:, self.features_] @ self.feature_weights_


def _without_sinks(sae: SAE, X: torch.Tensor) -> torch.Tensor:
    """Rows within the SAE's ``max_norm`` (attention-sink positions, which it was not trained on, left out)."""
    limit = sae.metadata.get("max_norm")
    if limit is None:
        return X
    kept = X[X.norm(dim=1) <= float(limit)]
    if len(kept) == 0:
        raise PolysteerError(f"every activation row is above the SAE's max_norm {float(limit):.4g} (attention "
                             "sinks); are these activations from the SAE's hook point?")
    return kept
