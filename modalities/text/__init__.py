"""The text modality plugin: HF causal LMs, their judges and the text commands."""

from polysteer.hookspecs import hookimpl
from polysteer.modalities.text.modality import TextModality


@hookimpl
def register_modalities(register):
    register(TextModality)


@hookimpl
def register_direction_finders(register):
    from polysteer.modalities.text.trained.finder import TrainedVector

    register(TrainedVector)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.text.evaluators.consistency import Consistency
    from polysteer.modalities.text.evaluators.detector import DetectorScore
    from polysteer.modalities.text.evaluators.instructions import InstructionFollowing
    from polysteer.modalities.text.evaluators.judges import ConceptSimilarity, KeywordJudge, Perplexity
    from polysteer.modalities.text.evaluators.rubric import AxBenchScore, ConceptScore, FluencyScore, InstructionScore

    for evaluator in (KeywordJudge, ConceptSimilarity, Perplexity, ConceptScore, InstructionScore, FluencyScore,
                      AxBenchScore, DetectorScore, Consistency, InstructionFollowing):
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.text.cli import register

    register(cli)
