"""Local judges: perplexity (batched equals one at a time and the manual loss), keywords."""

import math

import torch

from polysteer.modalities.text.evaluators.judges import KeywordJudge, Perplexity


def test_batched_perplexity_matches_single_rows_and_the_manual_loss(llama, tokenizer):
    texts = ["the ocean is good", "we love the music and the food", "our", ""]
    prompts = ["tell me about the ocean", "hello", "tell me", "hello"]
    batched = Perplexity(llama, tokenizer, batch_size=16).evaluate(texts, prompts=prompts)
    single = Perplexity(llama, tokenizer, batch_size=1).evaluate(texts, prompts=prompts)
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(batched[:3], single[:3]))
    assert math.isinf(batched[3])  # nothing to score
    ids = tokenizer(texts[1], add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = llama(input_ids=torch.tensor([ids])).logits[0]
    manual = math.exp(float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))))
    assert math.isclose(Perplexity(llama, tokenizer).evaluate([texts[1]])[0], manual, rel_tol=1e-4)


def test_keywords_match_whole_words_and_plurals():
    judge = KeywordJudge(["sea", "wave"])
    assert judge.evaluate(["Waves broke.", "The seaside.", "A sea view"]) == [1.0, 0.0, 1.0]
