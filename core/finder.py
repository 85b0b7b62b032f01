"""Direction-finder base class (scikit-learn estimator conventions) and helpers to fit many layers."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from sklearn.base import BaseEstimator, clone

from polysteer.errors import PolysteerError

FinderFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DirectionFinder(BaseEstimator):
    """Fits a steering direction from pooled activations of two classes.

    Subclasses follow scikit-learn: ``__init__`` stores parameters only, ``fit(X_pos, X_neg)`` returns
    self and sets ``direction_`` (a unit vector oriented so positives project higher). ``scale_``
    is the separation of the class means along the direction.

    A finder whose one fit yields vectors at other hook points too (Feature Flow) defines
    ``to_direction(model, provenance=None)``; ``find`` then saves the Direction it returns.
    """

    name: str = ""

    def fit(self, X_pos: torch.Tensor, X_neg: torch.Tensor) -> "DirectionFinder":
        raise NotImplementedError

    @classmethod
    def check_params(cls, d_model: int) -> dict:
        """Parameters that let the common finder checks build this finder for ``d_model``-sized data.

        Finders that need a resource (an SAE, a model) return one here, as scikit-learn's check params do.
        """
        return {}

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Concept score of each row: its projection on the direction."""
        return X.float() @ self.direction_.float()


def check_inputs(X_pos: torch.Tensor, X_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two activation stacks and return them as float32 2-D tensors."""
    X_pos, X_neg = torch.as_tensor(X_pos).float(), torch.as_tensor(X_neg).float()
    if X_pos.ndim != 2 or X_neg.ndim != 2 or X_pos.shape[1] != X_neg.shape[1]:
        raise PolysteerError(
            f"finder inputs must be two [n, d_model] stacks with the same d_model, got "
            f"{tuple(X_pos.shape)} and {tuple(X_neg.shape)}"
        )
    if len(X_pos) == 0 or len(X_neg) == 0:
        raise PolysteerError("finder needs at least one positive and one negative example")
    if not (torch.isfinite(X_pos).all() and torch.isfinite(X_neg).all()):
        raise PolysteerError("activations contain NaN or inf; check the model's dtype (use float32)")
    return X_pos, X_neg


def finish_direction(v: torch.Tensor, X_pos: torch.Tensor, X_neg: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Unit-normalise ``v``, orient it so positives project higher, and return (v, class separation)."""
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise PolysteerError("finder produced a zero or NaN direction: are the two classes identical?")
    v = v / norm
    gap = float(X_pos.mean(0) @ v - X_neg.mean(0) @ v)
    if gap < 0:
        v, gap = -v, -gap
    return v, gap


class FunctionFinder(DirectionFinder):
    """Adapts a bare ``(X_pos, X_neg) -> Tensor`` function into a finder."""

    def __init__(self, function: FinderFunction | None = None):
        self.function = function

    def fit(self, X_pos, X_neg):
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        self.direction_, self.scale_ = finish_direction(self.function(X_pos, X_neg).float(), X_pos, X_neg)
        return self


def make_finder(finder: "str | DirectionFinder | type | FinderFunction", **params) -> DirectionFinder:
    """Build a finder from a registered name, a class, an instance or a bare function."""
    name = finder if isinstance(finder, str) else None
    if isinstance(finder, str):
        from polysteer.manager import registry

        finder = registry("direction_finders")[finder]
    if isinstance(finder, DirectionFinder):
        _check_params(type(finder), params)
        return clone(finder).set_params(**params) if params else clone(finder)
    if isinstance(finder, type) and issubclass(finder, DirectionFinder):
        _check_params(finder, params)
        return finder(**params)
    if callable(finder):
        _check_params(FunctionFinder, params, about=f"the function finder {name or finder.__name__!r}")
        wrapped = FunctionFinder(finder)
        wrapped.name = name or getattr(finder, "name", getattr(finder, "__name__", "function"))
        return wrapped
    raise PolysteerError(f"cannot use {finder!r} as a direction finder")


def _check_params(cls: type, params: dict, about: str | None = None) -> None:
    accepted = [] if cls is FunctionFinder else cls._get_param_names()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        about = about or f"finder {getattr(cls, 'name', '') or cls.__name__!r}"
        offer = f"its parameters: {', '.join(accepted)}" if accepted else "it takes none"
        raise PolysteerError(f"{about} has no parameter {', '.join(map(repr, unknown))}; {offer}")


def fit_layers(
    finder: DirectionFinder, X_pos: Mapping[str, torch.Tensor], X_neg: Mapping[str, torch.Tensor]
) -> dict[str, DirectionFinder]:
    """Fit one clone of ``finder`` per hook point on activations captured in one pass."""
    missing = set(X_pos) ^ set(X_neg)
    if missing:
        raise PolysteerError(f"positive and negative activations differ in hook points: {sorted(missing)}")
    return {hp: _fitted_clone(finder).fit(X_pos[hp], X_neg[hp]) for hp in X_pos}


def _fitted_clone(finder: DirectionFinder) -> DirectionFinder:
    if isinstance(finder, FunctionFinder):
        copy = FunctionFinder(finder.function)
        copy.name = finder.name
        return copy
    return clone(finder)
