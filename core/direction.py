"""The Direction artifact: vectors in safetensors, a JSON manifest in the safetensors metadata.

Only safetensors and JSON are ever read, so a direction file from a stranger cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open

from polysteer.capture import write_safetensors_atomic
from polysteer.engine import Intervention, Plan, steer
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.io import portable
from polysteer.manifest import check_manifest
from polysteer.modality import Modality, modality_for

FORMAT_VERSION = 1
_MANIFEST_KEY = "polysteer"
_EXTRA = "extra."
_OPERATOR_PARAM = "operator."
_CHECKED_FIELDS = ("modality", "model", "d_model", "operator", "schedule", "coefficient", "scales", "unit",
                   "separations", "weights", "finder", "provenance", "created")


def operator_param_key(hook_point: str, name: str) -> str:
    """The ``extras`` key of an operator tensor for one hook point (e.g. a learned gate's ``w``).

    ``to_plan`` passes every such tensor of a hook point to the stored operator's constructor by name, or to its
    classmethod ``from_stored(direction, hook_point, **tensors)`` when it has one.
    """
    return f"{_OPERATOR_PARAM}{hook_point}.{name}"


@dataclass
class Direction:
    """Steering vectors for one model, one per hook point, plus how to apply them.

    The plan coefficient for hook point ``hp`` is ``coefficient * scales[hp] * weights[hp]``, and ``unit`` says
    what ``scales`` hold:

    - ``"activation-norm"`` (what ``find`` writes): the median norm of one token's activation at ``hp`` on the
      data the direction was fitted on, so coefficient 0.1 adds a tenth of a typical activation. The unit depends
      on neither the data set nor the model's scale; fluent steering lies around 0.05-0.5, and past 1 the added
      vector outweighs the activation itself (:meth:`to_plan` warns). ``separations`` keeps the class separation.
    - ``"separation"`` (files written before the norm unit): the distance between the classes along the vector.
    - ``"raw"`` (no scales): the coefficient multiplies the stored vector as it is, e.g. an SAE latent value.
    """

    vectors: dict[str, torch.Tensor]
    modality: str
    model: dict[str, str]
    d_model: int
    operator: str = "add"
    schedule: str = "constant"
    coefficient: float = 1.0
    scales: dict[str, float] = field(default_factory=dict)
    unit: str = ""
    separations: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    finder: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    polysteer_version: str = ""

    def __post_init__(self):
        self.unit = self.unit or ("separation" if self.scales else "raw")
        for hp, v in self.vectors.items():
            HookPoint.parse(hp)
            if v.ndim != 1 or v.shape[0] != self.d_model:
                raise PolysteerError(f"vector for {hp} has shape {tuple(v.shape)}, expected ({self.d_model},)")
            if not v.is_floating_point():
                raise PolysteerError(f"vector for {hp} has dtype {v.dtype}; steering vectors are floats")
            if not torch.isfinite(v).all():
                raise PolysteerError(f"vector for {hp} contains NaN or inf")
        for name, tensor in self.extras.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise PolysteerError(f"extra tensor {name!r} contains NaN or inf")
        check_manifest({"format_version": FORMAT_VERSION, "hook_points": self.hook_points,
                        **{k: getattr(self, k) for k in _CHECKED_FIELDS}}, "direction")
        if not self.polysteer_version:
            from polysteer import __version__

            self.polysteer_version = __version__

    @classmethod
    def from_fitted(
        cls,
        fitted: Mapping[str, Any],
        *,
        model: Any,
        modality: "Modality | str",
        finder: Any = None,
        d_model: int | None = None,
        scaled: bool = True,
        norms: Mapping[str, float] | None = None,
        provenance: dict[str, Any] | None = None,
        operator: str = "add",
        coefficient: float | None = None,
        weights: dict[str, float] | None = None,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> "Direction":
        """Package fitted finders (or learned vectors) as a Direction, one vector per hook point.

        Args:
            fitted: hook point -> a fitted finder (its unit ``direction_`` and class separation ``scale_``) or a raw
                vector (stored unit-normalised, its norm as the scale).
            model: the model the vectors were found on, or its identity dict (name, architecture, config_hash) when
                the caller has no model (e.g. an SAE's recorded metadata).
            modality: the Modality, or its name (then a model's identity comes from the registered modality).
            finder: the finder whose name and JSON-able ``get_params()`` are recorded, or a ready
                ``{"name", "params"}`` dict; default: the first fitted finder.
            d_model: the vectors' width; default: the length of the first vector.
            scaled: give the coefficient a unit (False: ``"raw"``, for a coefficient meant in other units, e.g. an
                SAE latent value).
            norms: hook point -> the typical (median) token activation norm there on the fitting data; with
                ``scaled`` the coefficient is then a fraction of it (unit ``"activation-norm"``), else of the class
                separation (unit ``"separation"``).
            coefficient: the default strength (0.2 in the activation-norm unit, else 1).
            provenance, operator, weights, extras: stored as given.
        """
        if not fitted:
            raise PolysteerError("no fitted hook points to make a direction from")
        vectors, scales = {}, {}
        for hp, item in fitted.items():
            vectors[hp], scales[hp] = _unit_and_scale(hp, item)
        identity = dict(model) if isinstance(model, Mapping) else _modality(model, modality).identity(model)
        unit, chosen = _unit(scales, norms, scaled)
        return cls(
            vectors=vectors, modality=modality.name if isinstance(modality, Modality) else modality, model=identity,
            d_model=d_model or next(iter(vectors.values())).shape[0], operator=operator,
            coefficient=DEFAULT_COEFFICIENT[unit] if coefficient is None else coefficient,
            scales=chosen, unit=unit, separations=scales if unit == "activation-norm" else {},
            weights=dict(weights or {}),
            finder=_finder_record(finder if finder is not None else next(iter(fitted.values()))),
            provenance=dict(provenance or {}), extras=dict(extras or {}),
        )

    def apply(self, model: Any, coefficient: float | None = None, **plan_kwargs: Any):
        """``with direction.apply(model, coefficient=4.0): ...`` steers ``model`` inside the block only.

        The context manager of :func:`polysteer.steer` with this direction's plan (``plan_kwargs`` go to
        :meth:`to_plan`: operator, schedule, hook_points, span, branch, ...); every hook is gone after the block.
        """
        return steer(model, self.to_plan(coefficient, **plan_kwargs))

    @property
    def hook_points(self) -> list[str]:
        return sorted(self.vectors, key=HookPoint.parse)

    def to_plan(
        self,
        coefficient: float | None = None,
        operator: str | None = None,
        schedule: Any = None,
        hook_points: list[str] | None = None,
        **intervention_kwargs: Any,
    ) -> Plan:
        """A plan with one intervention per hook point, using the stored defaults unless given."""
        coef = self.coefficient if coefficient is None else coefficient
        if self.unit == "activation-norm":
            _warn_if_outside_norm_range(coef)
        ivs = []
        for hp in hook_points or self.hook_points:
            if hp not in self.vectors:
                raise PolysteerError(f"direction has no vector for {hp}; it has {', '.join(self.hook_points)}")
            factor = self.scales.get(hp, 1.0) * self.weights.get(hp, 1.0)
            scaled = coef * factor if not isinstance(coef, (list, tuple)) else [c * factor for c in coef]
            ivs.append(Intervention(self.vectors[hp], hp, scaled, self._operator(hp, operator),
                                    schedule or self.schedule, **intervention_kwargs))
        return Plan(ivs)

    def only(self, hook_points: list[str], **changes: Any) -> "Direction":
        """A copy with the vectors (and their scales, weights and operator tensors) at ``hook_points`` only, and
        any other field set by ``changes`` (e.g. ``coefficient=0.3``)."""
        missing = sorted(set(hook_points) - set(self.vectors))
        if missing:
            raise PolysteerError(f"direction has no vector for {missing}; it has {', '.join(self.hook_points)}")
        pick = lambda table: {hp: v for hp, v in table.items() if hp in hook_points}  # noqa: E731
        dropped = [operator_param_key(hp, "") for hp in self.vectors if hp not in hook_points]
        extras = {k: v for k, v in self.extras.items() if not any(k.startswith(p) for p in dropped)}
        return dataclasses.replace(self, vectors=pick(self.vectors), scales=pick(self.scales),
                                   separations=pick(self.separations), weights=pick(self.weights), extras=extras,
                                   **changes)

    def operator_params(self, hook_point: str) -> dict[str, torch.Tensor]:
        """The stored operator's tensors for one hook point (see :func:`operator_param_key`)."""
        prefix = operator_param_key(hook_point, "")
        return {k[len(prefix):]: v for k, v in self.extras.items() if k.startswith(prefix)}

    def _operator(self, hook_point: str, operator: Any) -> Any:
        """The operator for a hook point: built from its stored tensors when it has some and is not overridden."""
        params = self.operator_params(hook_point)
        if not params or (operator is not None and operator != self.operator):
            return operator or self.operator
        from polysteer.manager import registry

        op = registry("operators")[self.operator]
        try:
            if hasattr(op, "from_stored"):  # it also needs the manifest, e.g. the SAE path in the provenance
                return op.from_stored(self, hook_point, **params)
            return op(**params)
        except TypeError as exc:
            raise PolysteerError(f"operator {self.operator!r} does not take the tensors {sorted(params)} stored "
                                 f"for {hook_point}: {exc}; the file was written by another plugin version") from None

    def check_model(self, identity: dict[str, str], d_model: int, force: bool = False) -> None:
        """Refuse a model with another d_model, or (unless ``force``) another architecture/config."""
        if d_model != self.d_model:
            raise PolysteerError(
                f"direction was made for d_model {self.d_model} ({self.model.get('name')}), but this model has "
                f"d_model {d_model}; find a new direction on this model"
            )
        for key in ("architecture", "config_hash"):
            if not force and self.model.get(key) and identity.get(key) != self.model.get(key):
                raise PolysteerError(
                    f"direction was made for {self.model.get('name')} ({key} {self.model.get(key)}), this model "
                    f"is {identity.get('name')} ({key} {identity.get(key)}); pass force=True (--force) to use it anyway"
                )

    def manifest(self) -> dict[str, Any]:
        """The JSON manifest; absolute paths in the provenance and model name are made portable
        (:func:`polysteer.io.portable`)."""
        data = asdict(self)
        data.pop("vectors"), data.pop("extras")
        data["provenance"], data["model"] = portable(data["provenance"]), portable(data["model"])
        data["format_version"] = FORMAT_VERSION
        data["hook_points"] = self.hook_points
        return data

    def save(self, path: str | Path) -> Path:
        """Write atomically; the manifest travels inside the safetensors header."""
        path = Path(path)
        tensors = {hp: v.detach().float().contiguous().cpu() for hp, v in self.vectors.items()}
        tensors.update({_EXTRA + k: v.detach().contiguous().cpu() for k, v in self.extras.items()})
        write_safetensors_atomic(path, tensors, {_MANIFEST_KEY: json.dumps(self.manifest())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Direction":
        """Read a direction file, with a clear error for missing, corrupt or foreign files."""
        path = Path(path)
        if not path.is_file():
            raise PolysteerError(f"direction file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PolysteerError(f"cannot read {path}: truncated or not a safetensors file ({exc})") from None
        if _MANIFEST_KEY not in meta:
            raise PolysteerError(f"{path} is a safetensors file without a polysteer manifest")
        try:
            manifest = json.loads(meta[_MANIFEST_KEY])
        except json.JSONDecodeError as exc:
            raise PolysteerError(f"{path} has a corrupt manifest: {exc}") from None
        return cls._from_parts(path, manifest, tensors)

    @classmethod
    def _from_parts(cls, path, manifest, tensors) -> "Direction":
        manifest = dict(check_manifest(manifest, str(path)))
        if manifest.pop("format_version") != FORMAT_VERSION:
            raise PolysteerError(f"{path} has another format version; this polysteer reads {FORMAT_VERSION}")
        points = manifest.pop("hook_points")
        missing = [hp for hp in points if hp not in tensors]
        if missing:
            raise PolysteerError(f"{path} lists hook points without vectors: {missing}")
        stray = sorted(set().union(*(manifest.get(k, {}) for k in ("scales", "separations", "weights"))) - set(points))
        if stray:
            raise PolysteerError(f"{path} has scales or weights for hook points it has no vector for: {stray}")
        vectors = {hp: tensors[hp] for hp in points}
        extras = {k[len(_EXTRA):]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
        return cls(vectors=vectors, extras=extras, **manifest)


SANE_NORM_FRACTION = 1.0
DEFAULT_COEFFICIENT = {"activation-norm": 0.2, "separation": 1.0, "raw": 1.0}  # 0.2: fluent on SmolLM2 (README)


def _unit(separations: dict[str, float], norms: Mapping[str, float] | None, scaled: bool) -> tuple[str, dict]:
    """The coefficient's unit and the scales that give it (see :class:`Direction`)."""
    if not scaled:
        return "raw", {}
    if norms is None:
        return "separation", separations
    missing = sorted(set(separations) - set(norms))
    bad = [hp for hp, n in norms.items() if not (n > 0 and math.isfinite(n))]
    if missing or bad:
        raise PolysteerError(f"activation norms missing or not positive for {missing or bad}; measure them on the "
                             "fitting data (or pass norms=None for the separation unit)")
    return "activation-norm", {hp: float(norms[hp]) for hp in separations}


def _warn_if_outside_norm_range(coef: Any) -> None:
    largest = max(abs(float(c)) for c in (coef if isinstance(coef, (list, tuple)) else [coef]))
    if largest > SANE_NORM_FRACTION:
        warnings.warn(f"coefficient {largest:g} is in units of the typical activation norm: the added vector is "
                      f"{largest:g}x the activation it steers, which breaks text; fluent steering lies around "
                      "0.05-0.5", stacklevel=3)


def _unit_and_scale(hook_point: str, item: Any) -> tuple[torch.Tensor, float]:
    """A fitted finder's ``(direction_, scale_)``, or a raw vector made unit with its norm as the scale."""
    if hasattr(item, "direction_"):
        return item.direction_.detach().float().cpu(), float(item.scale_)
    vector = torch.as_tensor(item).detach().float().cpu()
    norm = float(vector.norm())
    if norm == 0:
        raise PolysteerError(f"the vector at {hook_point} is zero: nothing to steer with")
    return vector / norm, norm


def _modality(model: Any, modality: "Modality | str") -> Modality:
    return modality if isinstance(modality, Modality) else modality_for(model, modality)


def _finder_record(finder: Any) -> dict[str, Any]:
    """``{"name", "params"}`` of a finder: its registered name and the parameters JSON can hold."""
    if isinstance(finder, Mapping):
        return {"name": finder["name"], "params": dict(finder.get("params", {}))}
    params = finder.get_params() if hasattr(finder, "get_params") else {}
    return {"name": getattr(finder, "name", type(finder).__name__),
            "params": {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))}}
