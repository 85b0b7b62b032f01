"""On the real SmolLM2-135M-Instruct: a persona-pair DiffMean direction makes neutral answers express the concept."""

import pytest

from polysteer.modalities.text.presets import EVAL_PROMPTS, PERSONAS, TRAIN_QUESTIONS
from polysteer.modalities.text.workflow import concept_rate, find_direction, persona_data

pytestmark = pytest.mark.slow


def test_ocean_direction_steers_neutral_prompts(smollm2):
    model, tokenizer = smollm2
    pair = PERSONAS["ocean"]
    positives, negatives = persona_data(model, tokenizer, pair, TRAIN_QUESTIONS[:16], max_new_tokens=32)
    direction = find_direction(model, tokenizer, positives, negatives, [12], "diffmean")
    assert direction.d_model == 576 and direction.model["architecture"] == "LlamaForCausalLM"
    result = concept_rate(model, tokenizer, direction.to_plan(0.3), pair.keywords, EVAL_PROMPTS[:6], 32)
    assert result.unsteered <= 1 / 6
    assert result.steered >= result.unsteered + 0.5, result.steered_texts
    assert result.steered_texts != result.unsteered_texts
