"""The text modality: Hugging Face causal LMs, their workflows, judges and commands.

``from polysteer.modalities import text``, then ``model, tokenizer = text.load_model()``,
``text.find_direction(...)``, ``text.generate(...)``. Names load on first use, so registering the plugin
(every ``polysteer`` command does) does not import transformers.
"""

from polysteer.hookspecs import hookimpl
from polysteer.lazy import lazy_exports
from polysteer.modalities.text.modality import TextModality

_EXPORTS = {
    **dict.fromkeys(("Example", "collect", "format_prompt", "generate", "persona_answers", "persona_examples",
                     "token_labels"), ".generation"),
    **dict.fromkeys(("ConceptRate", "choose_layers", "concept_rate", "default_layer", "find_direction",
                     "persona_data"), ".workflow"),
    **dict.fromkeys(("EVAL_PROMPTS", "PERSONAS", "PersonaPair", "TRAIN_QUESTIONS"), ".presets"),
    **dict.fromkeys(("DEFAULT_MODEL", "cache_dir"), ".models"),
    "load_model": ".models:load_text_model",
    **dict.fromkeys(("markdown_table", "score_rows", "summarize", "sweep_direction"), ".sweep"),
    **dict.fromkeys(("FeatureAttribution", "LayerAttribution", "feature_attribution", "layer_attribution",
                     "rank_by_attribution", "rank_direction_layers"), ".attribution"),
    **dict.fromkeys(("read_texts", "score_texts", "text_activations"), ".detect"),
    **dict.fromkeys(("export_gguf", "import_gguf"), ".gguf_control"),
    **dict.fromkeys(("TuneResult", "tune_direction", "tuned"), ".tune"),
}
__all__ = sorted([*_EXPORTS, "TextModality"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def register_modalities(register):
    register(TextModality)


@hookimpl
def register_direction_finders(register):
    from polysteer.modalities.text.sae.ts_finder import SAETS
    from polysteer.modalities.text.trained.finder import TrainedVector

    register(TrainedVector)
    register(SAETS)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.text.evaluators.consistency import Consistency
    from polysteer.modalities.text.evaluators.detector import DetectorScore
    from polysteer.modalities.text.evaluators.instructions import InstructionFollowing
    from polysteer.modalities.text.evaluators.judges import ConceptSimilarity, KeywordJudge, Perplexity
    from polysteer.modalities.text.evaluators.refusal import QAAccuracy, RefusalRate
    from polysteer.modalities.text.evaluators.rubric import AxBenchScore, ConceptScore, FluencyScore, InstructionScore

    for evaluator in (KeywordJudge, ConceptSimilarity, Perplexity, ConceptScore, InstructionScore, FluencyScore,
                      AxBenchScore, DetectorScore, Consistency, InstructionFollowing, RefusalRate, QAAccuracy):
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.text.cli import register

    register(cli)
