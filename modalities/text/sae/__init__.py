"""Sparse autoencoders on a text model: training on a corpus, feature scores and explanations, CorrSteer,
decompositions, and the LF-Steering and SAIF workflows. Names load on first use."""

from polysteer.lazy import lazy_exports

# Imported now: the module of the same name would otherwise shadow the function once anything imports it.
from polysteer.modalities.text.sae.corrsteer import corrsteer as corrsteer

_EXPORTS = {
    **dict.fromkeys(("SHIPPED_SAE", "save_with_stats", "train_text_sae"), ".workflow"),
    **dict.fromkeys(("debian_corpus", "read_documents", "token_windows"), ".corpus"),
    **dict.fromkeys(("CorrSteerFeature", "corrsteer_plan", "prune", "side_effect_ratio"), ".corrsteer"),
    **dict.fromkeys(("explain_decomposition", "token_activations"), ".decompose"),
    **dict.fromkeys(("TokenLists", "top_snippets", "vocab_proj"), ".explain"),
    **dict.fromkeys(("ConsistencyResult", "agreeing_groups", "fit_lf_steering", "fit_saif", "follow_rate",
                     "measure_consistency", "paraphrase_prompts", "prompt_examples", "saif_prompts"), ".guided"),
    **dict.fromkeys(("FeatureStats", "feature_stats", "input_scores", "output_scores"), ".select"),
    "ActivationStore": ".store",
    **dict.fromkeys(("EffectModel", "fit_effect_model", "fit_effects", "measure_effects", "random_feature_vectors",
                     "typical_norm"), ".ts"),
}
__all__ = sorted([*_EXPORTS, "corrsteer"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
