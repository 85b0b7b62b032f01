"""AxBench-style judges: calibration, 0-2 mapping, repetition penalty, the harmonic-mean rule, registration."""

import pytest

from polysteer import PolysteerError, registry
from polysteer.modalities.text.evaluators import Perplexity
from polysteer.modalities.text.evaluators.rubric import (
    AxBenchScore,
    ConceptScore,
    FluencyScore,
    InstructionScore,
    Thresholds,
    calibrate,
    harmonic_mean,
    repetition_penalty,
)

OCEAN = ["The waves crashed on the beach as the tide came in.", "Sailors steered the ship across the open sea.",
         "Coral reefs and fish fill the warm ocean water.", "The ferry rocked on the grey sea under a storm."]
OTHER = ["The spreadsheet lists every invoice from March.", "Remember to buy milk and bread on the way home.",
         "The bus to the library leaves at nine.", "She fixed the squeaky hinge on the cupboard door.",
         "Homework is due on Friday morning.", "The printer on the second floor is out of toner."]


def test_calibrate_puts_low_between_classes_and_high_at_the_positive_median():
    t = calibrate([0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3])
    assert t.low == pytest.approx(0.45) and t.high == pytest.approx(0.7)
    assert [t.score(x) for x in (0.05, 0.65, 0.95)] == [0, 1, 2]
    with pytest.raises(PolysteerError, match="at least two"):
        calibrate([0.5], [0.1, 0.2])


def test_lower_is_better_thresholds_and_nan():
    t = Thresholds(low=30.0, high=10.0, lower_is_better=True)
    assert [t.score(x) for x in (5.0, 20.0, 100.0, float("nan"), float("inf"))] == [2, 1, 0, 0, 0]


def test_harmonic_mean_is_zero_when_any_part_is_zero():
    assert harmonic_mean(2, 2, 2) == 2 and harmonic_mean(2, 0, 2) == 0
    assert harmonic_mean(1, 2, 2) == pytest.approx(3 / (1 + 0.5 + 0.5))


def test_repetition_penalty_catches_loops():
    assert repetition_penalty("the sea is wide and the sky is blue and the sun is warm today") == 0
    assert repetition_penalty("the sea, the sea, the sea, the sea, the sea, the sea") == 2


def test_repetition_penalty_catches_loops_without_spaces():
    # a steered SmolLM2 answer that perplexity alone rated fully fluent: one "word", so no word 3-grams at all
    assert repetition_penalty("1. **1011101110111111111111111111111111111111111111111111111111111") == 2
    assert repetition_penalty("1. **101** - 101.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1") == 1
    assert repetition_penalty("Paris, Lyon and Marseille are the three largest cities of France.") == 0


def test_concept_score_separates_concept_text_from_other_text():
    judge = ConceptScore.calibrated("Text about the ocean and the sea.", OCEAN, OTHER)
    scores = judge.evaluate(["The ocean waves rolled onto the sandy beach.", "The tax form is due in April.", ""])
    assert scores[0] >= 1 and scores[1] == 0 and scores[2] == 0


def test_instruction_score_rewards_answers_to_their_own_instruction():
    instructions = ["Give tips for sleeping well.", "Explain how to boil an egg.", "Describe how to change a tyre."]
    answers = ["Go to bed at the same time and avoid screens before sleep.",
               "Put the egg in boiling water for about eight minutes, then cool it.",
               "Loosen the wheel nuts, jack up the car, swap the wheel and tighten the nuts."]
    judge = InstructionScore.calibrated(instructions, answers)
    on, off = judge.evaluate(answers[:1] * 2, prompts=[instructions[0], instructions[2]])
    assert on > off
    with pytest.raises(PolysteerError, match="pass prompts"):
        judge.evaluate(answers)


def test_fluency_is_calibrated_on_unsteered_answers_and_penalises_loops(llama, tokenizer):
    prompts = ["tell me about the ocean"] * 4
    answers = ["the music was good", "we love the food", "our best friend", "the ocean is good"]
    calibrated = FluencyScore.calibrated(llama, tokenizer, answers)
    assert sum(s == 2 for s in calibrated.evaluate(answers, prompts=prompts)) >= 3  # up to the 90th percentile
    lenient = FluencyScore(llama, tokenizer, Thresholds(float("inf"), float("inf"), lower_is_better=True))
    loop = "the best the best the best the best the best the best"
    varied = "we walked to the music hall and then our friend found good food"
    assert lenient.evaluate([varied, loop], prompts=prompts[:2]) == [2.0, 0.0]


def test_fluency_reads_the_output_alone_as_axbench_does(llama, tokenizer):
    """AxBench's fluency judge disregards relevance to the prompt: the prompt must not move the score."""
    text = "the ocean is good and the music was good"
    alone = Perplexity(llama, tokenizer).evaluate([text])[0]
    for high, expected in ((alone * 1.001, 2.0), (alone * 0.999, 1.0)):
        judge = FluencyScore(llama, tokenizer, Thresholds(3 * high, high, lower_is_better=True))
        assert judge.evaluate([text] * 2, prompts=["tell me about the ocean", "how do I fix a bike?"]) == [expected] * 2


def test_axbench_score_combines_parts(llama, tokenizer):
    concept = ConceptScore.calibrated("Text about the ocean and the sea.", OCEAN, OTHER)
    instruction = InstructionScore(Thresholds(-1.0, -1.0))  # every answer counts as relevant
    fluency = FluencyScore(llama, tokenizer, Thresholds(float("inf"), float("inf"), lower_is_better=True))
    judge = AxBenchScore(concept, instruction, fluency)
    rows = judge.breakdown(["Ships sail across the deep blue sea.", "Invoices are due on Friday."], ["x", "x"])
    assert rows[0]["instruction"] == 2 and rows[0]["fluency"] == 2
    assert rows[0]["score"] == pytest.approx(harmonic_mean(rows[0]["concept"], 2, 2)) and rows[0]["score"] > 0
    assert rows[1]["concept"] == 0 and rows[1]["score"] == 0


def test_judges_are_registered_evaluators():
    names = set(registry("evaluators").names())
    assert {"axbench", "axbench-concept", "axbench-instruction", "axbench-fluency"} <= names
    with pytest.raises(PolysteerError, match="calibrated"):
        registry("evaluators")["axbench-concept"]()
