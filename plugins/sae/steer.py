"""Steering with SAE features: the ``sae_clamp`` operator, feature directions, contrast selection, feature flow.

Plain feature steering adds ``c * W_dec[j]`` with the ``add`` operator. ``sae_clamp`` encodes, sets latent
``j`` to ``c``, decodes and adds back the error term; since only latent ``j`` changes, that equals
``h + (c - z_j(h)) W_dec[j]`` exactly, which is what it computes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from polysteer.direction import Direction, operator_param_key
from polysteer.engine import Intervention, Plan
from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, finish_direction
from polysteer.operator import Operator
from polysteer.plugins.sae.model import SAE, load_sae, load_stats
from polysteer.plugins.sae.rows import sae_from_rows, sae_rows

FEATURE_KEY = "sae_feature"


def feature_activation(sae: SAE, h: torch.Tensor, feature: int) -> torch.Tensor:
    """``z_feature`` for every position of ``h`` (TopK needs the full encoding; the others one column)."""
    if sae.architecture == "topk":
        return sae.encode(h)[..., feature]
    x = h.to(sae.W_enc.dtype) - (sae.b_dec if sae.apply_b_dec_to_input else 0)
    pre = x @ sae.W_enc[:, feature] + sae.b_enc[feature]
    floor = sae.threshold[feature] if sae.architecture == "jumprelu" else 0.0
    return pre * (pre > floor)


def _on_device_of(sae: SAE, h: torch.Tensor) -> SAE:
    """Move the SAE next to the activations once (a CPU-loaded SAE steering a GPU model)."""
    return sae if sae.W_dec.device == h.device else sae.to(h.device)


class SAEClamp(Operator):
    """Set SAE latent ``feature`` to the coefficient, keeping the SAE's error term (``sae_clamp``).

    Build it with the SAE (or its directory) and the feature index, e.g.
    ``Intervention(sae.W_dec[j], hp, 8.0, operator=SAEClamp(sae, j))``, or let :func:`feature_plan`
    do it from a feature Direction.
    """

    name = "sae_clamp"

    def __init__(self, sae: "SAE | str | os.PathLike | None" = None, feature: int | None = None):
        self.sae = load_sae(sae) if sae is not None else None
        self.feature = feature

    @classmethod
    def from_stored(cls, direction: Direction, hook_point: str, feature: torch.Tensor,
                    **rows: torch.Tensor) -> "SAEClamp":
        """Rebuilt by ``Direction.to_plan()`` from the SAE tensors stored in the file (older files: the SAE path)."""
        if rows:
            sae, local = sae_from_rows(rows, feature)
            return cls(sae, int(local[0]))
        if not direction.provenance.get("sae"):
            raise PolysteerError("the direction records no SAE; pass the SAE: feature_plan(direction, sae)")
        return cls(direction.provenance["sae"], int(feature[0]))

    @classmethod
    def from_direction(cls, direction: Direction, sae: "SAE | str | os.PathLike | None" = None) -> "SAEClamp":
        """The operator for a feature Direction: its ``sae_feature`` index, with ``sae`` replacing the stored SAE."""
        if FEATURE_KEY not in direction.extras:
            raise PolysteerError("this direction has no sae_feature index; make it with feature_direction()")
        feature = direction.extras[FEATURE_KEY]
        if sae is None:
            return cls.from_stored(direction, direction.hook_points[0], feature,
                                   **{k: v for k, v in direction.operator_params(direction.hook_points[0]).items()
                                      if k != "feature"})
        return cls(sae, int(feature[0]))

    def __call__(self, h, v, coef):
        if self.sae is None or self.feature is None:
            raise PolysteerError(
                "sae_clamp needs an SAE and a feature index: use operator=SAEClamp(sae, feature) or "
                "polysteer.plugins.sae.steer.feature_plan(direction, sae)"
            )
        self.sae = _on_device_of(self.sae, h)
        with torch.no_grad():
            current = feature_activation(self.sae, h, self.feature).unsqueeze(-1).to(h.dtype)
            row = self.sae.W_dec[self.feature].to(h.dtype)
        return h + (coef - current) * row


class SAEReconstruct(Operator):
    """``h + c (decode(encode(h)) - h)``: with ``c = 1`` the SAE output replaces the activation (splicing).

    Positions whose norm exceeds ``max_norm`` (attention sinks the SAE was not trained on) are kept.
    """

    name = "sae_reconstruct"

    def __init__(self, sae: "SAE | str | os.PathLike", max_norm: float | None = None):
        self.sae = load_sae(sae)
        self.max_norm = max_norm

    def __call__(self, h, v, coef):
        self.sae = _on_device_of(self.sae, h)
        with torch.no_grad():
            new = h + coef * (self.sae(h).to(h.dtype) - h)
        if self.max_norm is None:
            return new
        return torch.where(h.norm(dim=-1, keepdim=True) > self.max_norm, h, new)


def feature_direction(sae: SAE, feature: int, hook_point: str, operator: str = "add",
                      coefficient: float = 1.0, sae_path: str | None = None, modality: str = "text") -> Direction:
    """A Direction for one feature: its unit decoder row, with the index (and SAE path) recorded.

    ``scales`` holds the decoder row's norm, so the ``add`` plan with coefficient ``c`` adds ``c * W_dec[j]``
    (for ``sae_clamp``, ``c`` is the latent value; :func:`feature_plan` applies it without the scale).
    """
    if not 0 <= feature < sae.d_sae:
        raise PolysteerError(f"feature {feature} out of range: the SAE has {sae.d_sae} latents (0-{sae.d_sae - 1})")
    clamp = operator == "sae_clamp"
    extras = {FEATURE_KEY: torch.tensor([feature])}
    if clamp:  # the SAE tensors the clamp needs travel in the file, so to_plan() rebuilds it from the file alone
        params = {"feature": torch.tensor([feature]), **sae_rows(sae, torch.tensor([feature]))}
        extras.update({operator_param_key(hook_point, k): v for k, v in params.items()})
    return Direction.from_fitted(
        {hook_point: sae.W_dec[feature]}, model=dict(sae.metadata.get("model", {})), modality=modality,
        d_model=sae.d_in, scaled=not clamp,  # a clamp's coefficient is the latent value
        finder={"name": "sae_feature", "params": {"feature": feature}}, operator=operator, coefficient=coefficient,
        provenance={"sae": str(sae_path or ""), "sae_hook_name": sae.metadata.get("hook_name")}, extras=extras,
    )


def feature_plan(direction: Direction, sae: "SAE | str | os.PathLike | None" = None,
                 coefficient: float | None = None, **intervention_kwargs: Any) -> Plan:
    """The plan of a feature Direction; ``sae_clamp`` directions get their SAE operator built here.

    Args:
        direction: made by :func:`feature_direction` or a finder that records ``sae_feature``.
        sae: the SAE (or directory); by default the path recorded in the direction's provenance.
        coefficient: latent value (``sae_clamp``) or step along the feature (``add``).
    """
    if direction.operator != "sae_clamp":
        return direction.to_plan(coefficient, **intervention_kwargs)
    return direction.to_plan(coefficient, operator=SAEClamp.from_direction(direction, sae), **intervention_kwargs)


def filter_features(ranking: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int = 1) -> torch.Tensor:
    """The first ``top_k`` features of ``ranking`` whose score passes ``threshold`` (Arad et al.'s filter)."""
    kept = [int(f) for f in ranking if float(scores[f]) >= threshold][:top_k]
    if not kept:
        raise PolysteerError(f"no feature passes the score threshold {threshold}; lower it (scores go up to "
                             f"{float(scores[ranking].max()):.3g})")
    return torch.tensor(kept)


class SAEContrast(DirectionFinder):
    """Rank SAE features by mean activation on positives minus negatives; steer with the best decoder rows.

    The SAE only ever encodes real activations, never a steering vector (Mayne et al.: out of distribution).

    Args:
        sae: SAE directory (or instance) trained on the hook point the activations come from.
        top_k: number of features combined, weighted by their activation difference.
        score_filter: keep only features whose score reaches ``threshold`` (Arad et al.): ``'output'`` or
            ``'input'`` reads that score from the SAE directory's feature statistics, or a ``[d_sae]`` tensor.
        threshold: the filter's minimum score.
    """

    name = "sae_contrast"

    def __init__(self, sae: Any = None, top_k: int = 1, score_filter: "str | torch.Tensor | None" = None,
                 threshold: float = 0.01):
        self.sae = sae
        self.top_k = top_k
        self.score_filter = score_filter
        self.threshold = threshold

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
        self.sae_ = sae = load_sae(self.sae)
        sae.check_width(X_pos.shape[1])
        with torch.no_grad():
            self.differences_ = sae.encode(X_pos).mean(0) - sae.encode(X_neg).mean(0)
            self.features_ = self._select(self.differences_)
            values = self.differences_[self.features_].clamp_min(0)
            self.feature_weights_ = values if values.any() else torch.ones(len(self.features_))
            v = (self.feature_weights_.unsqueeze(1) * sae.W_dec[self.features_]).sum(0)
        self.direction_, self.scale_ = finish_direction(v.float(), X_pos, X_neg)
        return self

    def _select(self, differences: torch.Tensor) -> torch.Tensor:
        ranking = differences.argsort(descending=True)
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


def match_features(sae_a: SAE, sae_b: SAE, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each feature of ``sae_a``, the ``sae_b`` feature whose decoder row is closest in cosine.

    Returns ``(index [d_sae_a], cosine [d_sae_a])`` (Laptev et al.'s feature flow between adjacent layers).
    """
    if sae_a.d_in != sae_b.d_in:
        raise PolysteerError(f"cannot match SAEs of widths {sae_a.d_in} and {sae_b.d_in}: they read other models")
    b = torch.nn.functional.normalize(sae_b.W_dec.detach().float(), dim=1)
    a = torch.nn.functional.normalize(sae_a.W_dec.detach().float(), dim=1)
    best = [(a[i : i + chunk] @ b.T).max(dim=1) for i in range(0, len(a), chunk)]
    return torch.cat([m.indices for m in best]), torch.cat([m.values for m in best])


def flow_chain(saes: Sequence[tuple[str, SAE]], start: str, feature: int,
               min_cosine: float = 0.5) -> list[tuple[str, int, float]]:
    """Follow one feature forward and backward through SAEs of consecutive hook points.

    Args:
        saes: ``(hook_point, sae)`` pairs in layer order.
        start: the hook point of ``feature``.
        min_cosine: stop following when the best match is weaker than this.

    Returns:
        ``(hook_point, feature, cosine to its neighbour in the chain)`` for each linked layer, in layer order.
    """
    points = [hp for hp, _ in saes]
    if start not in points:
        raise PolysteerError(f"no SAE for {start}; the chain has {points}")
    i0 = points.index(start)
    chain = [(start, int(feature), 1.0)]
    for step in (1, -1):
        current, i = int(feature), i0
        while 0 <= i + step < len(saes):
            index, cosine = match_features(saes[i][1], saes[i + step][1])
            matched, score = int(index[current]), float(cosine[current])
            if score < min_cosine:
                break
            i, current = i + step, matched
            chain.append((points[i], current, score))
    return sorted(chain, key=lambda link: points.index(link[0]))


def flow_plan(saes: Sequence[tuple[str, SAE]], chain: Sequence[tuple[str, int, float]], coefficient: float,
              **intervention_kwargs: Any) -> Plan:
    """Multi-layer steering: add ``coefficient * W_dec[f]`` at every hook point of a :func:`flow_chain`."""
    by_point = dict(saes)
    return Plan([Intervention(by_point[hp].W_dec[f].detach().float(), hp, coefficient, "add", **intervention_kwargs)
                 for hp, f, _ in chain])
