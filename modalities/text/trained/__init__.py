"""Steering vectors learnt through the frozen model: the ``trained`` finder, its data rows and objectives."""

from polysteer.lazy import lazy_exports

_EXPORTS = {
    "TrainedVector": ".finder",
    **dict.fromkeys(("TrainRow", "read_rows", "rows_from_examples"), ".data"),
    **dict.fromkeys(("Reinforce", "Supervised"), ".objectives"),
    "Preference": ".preference",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
