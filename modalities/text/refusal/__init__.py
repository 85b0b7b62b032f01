"""Refusal steering (the Phi-3 refusal seed on any chat model): a DiffMean refusal direction added (more refusal)
or ablated (less), SAE refusal features clamped, each chosen on the select split and reported with its side
effects (over-refusal on look-alikes, benign QA accuracy, fluency). Names load on first use. ::

    from polysteer.modalities.text import load_model
    from polysteer.modalities.text.refusal import addition_plan, calibrated_judge, fit_refusal, measure, refusal_data
    from polysteer.modalities.text.sae import SHIPPED_SAE

    model, tokenizer = load_model()
    data = refusal_data()
    direction, features = fit_refusal(model, tokenizer, data, layers=[12], sae=SHIPPED_SAE)
    judge, unsteered = calibrated_judge(model, tokenizer, data)       # threshold set on the select split
    measure(model, tokenizer, data.report, addition_plan(direction, 12, 2.0), judge)
"""

from polysteer.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("REFUSAL_DATA", "RefusalData", "RefusalSplit", "refusal_data"), ".data"),
    **dict.fromkeys(("ZERO_CLAMP", "ablation_plan", "addition_plan", "clamp_plan", "find_refusal_direction",
                     "find_refusal_features", "last_token_examples", "recorded_sae", "refusal_features"), ".steer"),
    **dict.fromkeys(("GROUPS", "QA_SUFFIX", "RefusalScores", "answer", "calibrated_judge", "group_prompts", "measure",
                     "score"), ".scoring"),
    **dict.fromkeys(("Choice", "ablation_candidates", "addition_candidates", "choose", "clamp_candidates",
                     "fit_refusal", "harmless_prompts", "objective", "sweep"), ".selection"),
    **dict.fromkeys(("choose_settings", "evaluate_direction", "keep_layer", "steering_plan"), ".workflow"),
    "QAAccuracy": "polysteer.modalities.text.evaluators.refusal",
    "RefusalRate": "polysteer.modalities.text.evaluators.refusal",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
