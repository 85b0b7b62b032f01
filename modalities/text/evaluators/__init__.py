"""Text evaluators: keyword and embedding judges, perplexity, AxBench-style rubric scores, paraphrase consistency,
instruction checks, detector scores, and the refusal and QA-accuracy judges. Names load on first use."""

from polysteer.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ConceptSimilarity", "KeywordJudge", "Perplexity"), ".judges"),
    **dict.fromkeys(("AxBenchScore", "ConceptScore", "FluencyScore", "InstructionScore"), ".rubric"),
    **dict.fromkeys(("Consistency", "ParaphraseGroup", "is_correct", "read_paraphrase_groups"), ".consistency"),
    **dict.fromkeys(("InstructionFollowing", "check", "read_instructions", "word_count"), ".instructions"),
    "DetectorScore": ".detector",
    **dict.fromkeys(("QAAccuracy", "RefusalRate"), ".refusal"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
