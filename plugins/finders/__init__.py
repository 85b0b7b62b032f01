"""Linear direction finders on pooled activations: difference of means, PCA of differences, logistic probe."""

from polysteer.hookspecs import hookimpl
from polysteer.plugins.finders.linear import DiffMean, LogisticProbe, PCACenter, PCADiff

__all__ = ["DiffMean", "LogisticProbe", "PCACenter", "PCADiff"]


@hookimpl
def register_direction_finders(register):
    for finder in (DiffMean, PCADiff, PCACenter, LogisticProbe):
        register(finder)
