"""LF-Steering (Yang et al. 2025): SAE latents behind inconsistent answers to paraphrases, steered in SAE space.

Layer localisation (the paper's first step, :func:`localize_layers`). For every pair of paraphrases of one question,
a logistic-regression probe reads the pair's states ``[h_m; h_n]`` at one layer and predicts whether the two answers
agree; the layer whose probe is most accurate on held-out questions is where consistency is decided, and the SAE of
that layer is the one to select latents with.

Selection. Each paraphrase of a question gives one pooled activation, encoded by the SAE. ``score``:

- ``contrast`` (default, the paper's contrastive locating): ``(mean_agree - mean_disagree) / sd_all`` per latent, the
  mean activation over paraphrases of groups whose answers agree minus over groups that disagree, in units of the
  latent's spread: latents that fire when the model answers consistently.
- ``spread`` (polysteer's earlier score): the within-group standard deviation averaged over disagreeing groups minus
  over agreeing ones, ``(sd_disagree - sd_agree) / sd_all``: how much more the latent moves between wordings when the
  wording changes the answer.

The ``top_k`` latents with a positive score are kept.

Steering (operator ``sae_bias``). On the selected latents S, ``z'_S = z_S + c (b_S - p_S z_S)`` and
``h' = decode(z') + error(h)``; the decoder is linear, so that is ``h + c (b_S - p_S z_S) W_dec[S]`` exactly, which is
what is computed. The bias ``b`` is set in one of two modes:

- ``pull`` (default): ``p = 1``, ``b = t``, the mean activation of each latent over the paraphrases of agreeing groups.
  At ``c = 1`` every input gets that value; at ``0 < c < 1`` the spread between paraphrases shrinks by ``1 - c``. It
  removes exactly the variation the selection blamed for the disagreement.
- ``shift``: ``p = 0``, ``b = t - u`` with ``u`` the mean over disagreeing groups: a constant bias that moves the
  disagreeing groups' mean onto the agreeing groups' mean (the paper's additive bias on the located latents).

Positions whose norm exceeds the SAE's recorded ``max_norm`` (attention sinks it was not trained on) are left alone.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from sklearn.base import BaseEstimator

from polysteer.direction import Direction, operator_param_key
from polysteer.engine import Plan
from polysteer.errors import PolysteerError
from polysteer.operator import Operator
from polysteer.plugins.sae.model import SAE, load_sae
from polysteer.plugins.sae.rows import sae_from_rows, sae_rows
from polysteer.plugins.sae.steer import _on_device_of

STORED = ("latents", "bias", "pull")  # operator tensors kept in the Direction (see operator_param_key)
MODES = ("pull", "shift")
SCORES = ("contrast", "spread")


def _floats(values: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=torch.float32).flatten()


class SAEBias(Operator):
    """``decode(encode(h) + c (b - p * z)) + error(h)`` on a few latents (``sae_bias``).

    Args:
        sae: the SAE (or its directory) of the hook point.
        latents: indices of the biased latents.
        bias: ``b``, one value per latent (latent units).
        pull: ``p``, one value per latent (0: a constant bias; 1: pull towards ``b``); default zeros.
    """

    name = "sae_bias"

    def __init__(self, sae: "SAE | str | os.PathLike | None" = None, latents: Sequence[int] | None = None,
                 bias: Sequence[float] | None = None, pull: Sequence[float] | None = None):
        self.sae = load_sae(sae) if sae is not None else None
        self.latents = None if latents is None else torch.as_tensor(latents, dtype=torch.long).flatten()
        self.bias = _floats(bias)
        self.pull = _floats(pull) if pull is not None or bias is None else torch.zeros_like(self.bias)
        self._check()

    def _check(self) -> None:
        if self.sae is None or self.latents is None:
            return
        if not (len(self.latents) == len(self.bias) == len(self.pull)):
            raise PolysteerError(f"sae_bias needs one bias and one pull per latent, got {len(self.latents)} latents, "
                                 f"{len(self.bias)} biases and {len(self.pull)} pulls")
        if len(self.latents) and not (0 <= int(self.latents.min()) and int(self.latents.max()) < self.sae.d_sae):
            raise PolysteerError(f"sae_bias latents {self.latents.tolist()} fall outside the SAE's {self.sae.d_sae}")

    @classmethod
    def from_stored(cls, direction: Direction, hook_point: str, **tensors: torch.Tensor) -> "SAEBias":
        """Rebuilt by ``Direction.to_plan()`` from the tensors stored in the file (older files: the SAE path)."""
        rows = {k: v for k, v in tensors.items() if k.startswith("sae.")}
        if rows:
            sae, local = sae_from_rows(rows, tensors["latents"])
            return cls(sae, local, tensors["bias"], tensors.get("pull"))
        source = direction.provenance.get("sae")
        if not source:
            raise PolysteerError("the direction records no SAE; pass the SAE: lf_plan(direction, sae)")
        return cls(source, tensors["latents"], tensors["bias"], tensors.get("pull"))

    @classmethod
    def from_direction(cls, direction: Direction, sae: "SAE | str | os.PathLike | None" = None,
                       hook_point: str | None = None) -> "SAEBias":
        """The operator of an LF-Steering Direction, with ``sae`` replacing the recorded SAE when given."""
        hook_point = hook_point or direction.hook_points[0]
        tensors = direction.operator_params(hook_point)
        missing = [name for name in STORED if name not in tensors]
        if missing:
            raise PolysteerError(f"this direction lacks the sae_bias tensors {missing} for {hook_point}; make it with "
                                 "lf_direction() or `polysteer sae lf`")
        if sae is None:
            return cls.from_stored(direction, hook_point, **tensors)
        return cls(sae, tensors["latents"], tensors["bias"], tensors["pull"])

    def __call__(self, h, v, coef):
        if self.sae is None or self.latents is None:
            raise PolysteerError("sae_bias needs an SAE, latents and biases: build it with SAEBias(sae, latents, bias) "
                                 "or let Direction.to_plan() rebuild it from an LF-Steering direction file")
        self.sae = sae = _on_device_of(self.sae, h)
        with torch.no_grad():
            rows = sae.W_dec[self.latents.to(h.device)].to(h.dtype)
            delta = self.bias.to(h.device, h.dtype)
            if self.pull.any():  # only a pull needs the current code
                z = sae.encode(h)[..., self.latents.to(h.device)].to(h.dtype)
                delta = delta - self.pull.to(h.device, h.dtype) * z
            new = h + coef * (delta @ rows)
        max_norm = sae.metadata.get("max_norm")
        if max_norm is None:
            return new
        return torch.where(h.norm(dim=-1, keepdim=True) > float(max_norm), h, new)


def _group_spread(z: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``[n_groups, d_sae]`` population variance of each latent within each group."""
    counts = torch.bincount(inverse, minlength=n_groups).unsqueeze(1).to(z.dtype)
    means = torch.zeros(n_groups, z.shape[1], dtype=z.dtype).index_add_(0, inverse, z) / counts
    return torch.zeros_like(means).index_add_(0, inverse, (z - means[inverse]) ** 2) / counts


def _consistency_per_group(groups: torch.Tensor, consistent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group index of each row and one consistency flag per group (it must not vary within a group)."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    flags = torch.zeros(len(ids), dtype=torch.bool).index_put_((inverse,), consistent, accumulate=False)
    if not torch.equal(flags[inverse], consistent):
        raise PolysteerError("`consistent` differs between paraphrases of one group; give every row its group's flag")
    if flags.all() or not flags.any():
        kind = "agree" if flags.all() else "disagree"
        raise PolysteerError(f"all {len(ids)} groups {kind}; LF-Steering contrasts agreeing with disagreeing groups, "
                             "so add groups of the other kind (or change the agreement threshold)")
    return inverse, flags


class LFSteering(BaseEstimator):
    """Select the SAE latents that vary within disagreeing paraphrase groups and set their bias.

    Not a two-class :class:`~polysteer.DirectionFinder`: it needs the group of every row and whether that group's
    answers agreed, which ``fit(X_pos, X_neg)`` cannot carry. scikit-learn conventions otherwise hold.

    Args:
        sae: SAE (or directory) of the hook point the activations come from.
        top_k: latents kept at most.
        mode: ``pull`` (towards the agreeing groups' mean) or ``shift`` (a constant bias); see the module docs.
        score: ``contrast`` (the paper's: mean activation, agreeing minus disagreeing) or ``spread`` (within-group
            spread, disagreeing minus agreeing); see the module docs.
    """

    name = "lf_steering"

    def __init__(self, sae: Any = None, top_k: int = 8, mode: str = "pull", score: str = "contrast"):
        self.sae = sae
        self.top_k = top_k
        self.mode = mode
        self.score = score

    def fit(self, X: torch.Tensor, groups: Sequence[int], consistent: Sequence[bool]) -> "LFSteering":
        """Fit on one activation row per paraphrase.

        Args:
            X: ``[n, d_model]`` pooled activations.
            groups: ``[n]`` group id of each row (paraphrases of one question share it).
            consistent: ``[n]`` whether the row's group answered consistently.
        """
        X, groups, consistent = self._check_inputs(X, groups, consistent)
        self.sae_ = sae = load_sae(self.sae)
        sae.check_width(X.shape[1])
        inverse, flags = _consistency_per_group(groups, consistent)
        with torch.no_grad():
            z = sae.encode(X).float()
            if self.score == "contrast":
                gap = z[consistent].mean(0) - z[~consistent].mean(0)
            else:
                spread = _group_spread(z, inverse, len(flags))
                gap = spread[~flags].mean(0).sqrt() - spread[flags].mean(0).sqrt()
            sd_all = z.std(0, unbiased=False)
            score = gap / sd_all.clamp_min(1e-12)
            self.scores_ = torch.where(sd_all > 0, score, torch.zeros_like(score))  # a latent that never fires: 0
            self._select(z, consistent, sae)
        return self

    def _check_inputs(self, X, groups, consistent):
        if self.sae is None:
            raise PolysteerError("LF-Steering needs an SAE: LFSteering(sae='path/to/sae')")
        if self.mode not in MODES:
            raise PolysteerError(f"LF-Steering mode must be one of {MODES}, got {self.mode!r}")
        if self.score not in SCORES:
            raise PolysteerError(f"LF-Steering score must be one of {SCORES}, got {self.score!r}")
        X = torch.as_tensor(X).float()
        groups = torch.as_tensor(groups, dtype=torch.long).flatten()
        consistent = torch.as_tensor(consistent, dtype=torch.bool).flatten()
        if X.ndim != 2 or not len(X) == len(groups) == len(consistent):
            raise PolysteerError(f"LF-Steering needs X [n, d_model] with one group id and one consistency flag per "
                                 f"row; got X {tuple(X.shape)}, {len(groups)} groups, {len(consistent)} flags")
        if not torch.isfinite(X).all():
            raise PolysteerError("activations contain NaN or inf; check the model's dtype (use float32)")
        return X, groups, consistent

    def _select(self, z: torch.Tensor, consistent: torch.Tensor, sae: SAE) -> None:
        top = self.scores_.topk(min(self.top_k, len(self.scores_)))
        keep = top.values > 0
        if not keep.any():
            what = ("is more active in agreeing groups than in disagreeing ones" if self.score == "contrast" else
                    "varies more within disagreeing groups than within agreeing ones")
            raise PolysteerError(f"no SAE latent {what}; use more groups, another layer or another SAE")
        self.latents_ = top.indices[keep]
        target = z[consistent][:, self.latents_].mean(0)
        other = z[~consistent][:, self.latents_].mean(0)
        pull = self.mode == "pull"
        self.bias_ = target if pull else target - other
        self.pull_ = torch.full_like(target, 1.0 if pull else 0.0)
        shift = (target - other) @ sae.W_dec[self.latents_].float()  # the mean move of a disagreeing row at c = 1
        if shift.norm() < 1e-8:
            shift = self.scores_[self.latents_] @ sae.W_dec[self.latents_].float()
        self.scale_ = float(shift.norm())
        self.direction_ = shift / shift.norm()

    def operator(self) -> SAEBias:
        """The fitted ``sae_bias`` operator."""
        return SAEBias(self.sae_, self.latents_, self.bias_, self.pull_)


def lf_direction(finder: LFSteering, hook_point: str, sae_path: str | os.PathLike, coefficient: float = 1.0,
                 model: dict[str, str] | None = None, provenance: dict[str, Any] | None = None,
                 modality: str = "text") -> Direction:
    """A Direction whose ``to_plan()`` rebuilds the fitted ``sae_bias`` operator from the SAE tensors it stores.

    The stored vector is the unit mean shift of a disagreeing paraphrase at ``c = 1`` (what ``--operator add`` adds).
    ``scales`` stays empty: the ``sae_bias`` coefficient is ``c`` itself.
    """
    sae = finder.sae_
    params = {k: v for k, v in finder.get_params().items() if k != "sae"}
    return Direction.from_fitted(
        {hook_point: finder}, model=dict(model or sae.metadata.get("model", {})), modality=modality,
        d_model=sae.d_in, scaled=False, finder={"name": LFSteering.name, "params": params}, operator=SAEBias.name,
        coefficient=coefficient,
        provenance={"sae": str(sae_path), "sae_hook_name": sae.metadata.get("hook_name"),
                    "mean_shift_norm": finder.scale_, **(provenance or {})},
        extras={operator_param_key(hook_point, k): v for k, v in {
            "latents": finder.latents_.clone(), "bias": finder.bias_.float().clone(),
            "pull": finder.pull_.float().clone(), **sae_rows(sae, finder.latents_)}.items()},
    )


def lf_plan(direction: Direction, sae: "SAE | str | os.PathLike | None" = None, coefficient: float | None = None,
            **intervention_kwargs: Any) -> Plan:
    """The plan of an LF-Steering Direction; ``sae`` replaces the recorded SAE path (e.g. after moving it)."""
    if sae is None:
        return direction.to_plan(coefficient, **intervention_kwargs)
    plans = [direction.to_plan(coefficient, operator=SAEBias.from_direction(direction, sae, hp), hook_points=[hp],
                               **intervention_kwargs) for hp in direction.hook_points]
    return Plan([iv for plan in plans for iv in plan])
