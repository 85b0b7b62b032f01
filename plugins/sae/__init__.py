"""Sparse autoencoders on activations: the SAE model and its trainer, SAE-feature finders (contrast, SAIF),
operators (clamp, bias), Feature Flow, decompositions of directions into features, and LF-Steering."""

from polysteer.hookspecs import hookimpl
from polysteer.plugins.sae.decompose import (
    contrast_decomposition,
    decoder_cosine,
    norm_warning,
    reconstruction_cosine,
)
from polysteer.plugins.sae.flow import FlowGraph, FlowNode, flow_graph, saes_by_hook_point
from polysteer.plugins.sae.flow_finder import CorrSteerFinder, FeatureFlow
from polysteer.plugins.sae.lf_layers import LayerLocalization, localize_layers, paraphrase_pairs
from polysteer.plugins.sae.lf_steering import LFSteering, SAEBias, lf_direction, lf_plan
from polysteer.plugins.sae.model import SAE, STATS_FILE, load_sae, load_stats
from polysteer.plugins.sae.saif import SAIF
from polysteer.plugins.sae.steer import (
    SAEClamp,
    SAEContrast,
    SAEReconstruct,
    feature_direction,
    feature_plan,
)
from polysteer.plugins.sae.trainer import TrainConfig, evaluate_sae, train_sae

__all__ = [
    "LFSteering", "SAE", "SAEBias", "SAEClamp", "SAEContrast", "SAEReconstruct", "SAIF", "STATS_FILE", "TrainConfig",
    "contrast_decomposition", "decoder_cosine", "evaluate_sae", "feature_direction", "feature_plan",
    "flow_graph", "lf_direction", "lf_plan", "load_sae", "load_stats", "norm_warning",
    "reconstruction_cosine", "train_sae",
    "LayerLocalization", "localize_layers", "paraphrase_pairs",  # LF-Steering's layer localisation
    "CorrSteerFinder", "FeatureFlow", "FlowGraph", "FlowNode", "saes_by_hook_point",
]


@hookimpl
def register_operators(register):
    register(SAEClamp)
    register(SAEBias)


@hookimpl
def register_direction_finders(register):
    register(SAEContrast)
    register(SAIF)
    register(FeatureFlow)
    register(CorrSteerFinder)
