"""The text modality plugin: HF causal LMs, their judges and the text commands."""

from polysteer.hookspecs import hookimpl
from polysteer.modalities.text.modality import TextModality


@hookimpl
def register_modalities(register):
    register(TextModality)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.text.judges import ConceptSimilarity, KeywordJudge, Perplexity
    from polysteer.modalities.text.rubric import AxBenchScore, ConceptScore, FluencyScore, InstructionScore

    for evaluator in (KeywordJudge, ConceptSimilarity, Perplexity, ConceptScore, InstructionScore, FluencyScore,
                      AxBenchScore):
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.text.cli import register

    register(cli)
