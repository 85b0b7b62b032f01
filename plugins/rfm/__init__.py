"""Recursive Feature Machines: a kernel probe that learns its features (steering directions from its AGOP),
one-vs-rest multiclass probes, and MusicRFM's per-layer weights."""

from polysteer.hookspecs import hookimpl
from polysteer.plugins.rfm.finder import RFM
from polysteer.plugins.rfm.layers import MUSICRFM_POWER, layer_weights, rank_layers
from polysteer.plugins.rfm.multi import fit_multiclass

__all__ = ["MUSICRFM_POWER", "RFM", "fit_multiclass", "layer_weights", "rank_layers"]


@hookimpl
def register_direction_finders(register):
    register(RFM)
