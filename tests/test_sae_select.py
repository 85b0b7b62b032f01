"""Feature selection and descriptions on a tiny model: output/input scores, VocabProj, TokenChange, snippets."""

import copy
import random

import pytest
import torch
from tiny import WORDS

from polysteer import PolysteerError
from polysteer.modalities.text.sae.explain import describe, token_change, top_snippets, vocab_proj
from polysteer.modalities.text.sae.select import (
    _score,
    feature_stats,
    input_scores,
    output_scores,
    top_tokens,
)
from polysteer.modalities.text.sae.store import ActivationStore
from polysteer.plugins.sae.model import SAE
from polysteer.plugins.sae.steer import SAEClamp, SAEContrast, filter_features

LAST = "text.blocks.2.resid_post"


def token_row(llama, tokenizer, word):
    return llama.get_output_embeddings().weight[tokenizer.convert_tokens_to_ids(word)].detach()


@pytest.fixture(scope="module")
def planted(llama, tokenizer):
    """An SAE on the last block whose feature 0 writes the unembedding row of 'ocean'."""
    sae = SAE(32, 16, "topk", k=2)
    with torch.no_grad():
        sae.W_dec[0] = torch.nn.functional.normalize(token_row(llama, tokenizer, "ocean"), dim=0)
    return sae


@pytest.fixture(scope="module")
def sharp(llama):
    """The tiny model with a 50x unembedding, so its next-token distributions are peaked like a real LM's."""
    model = copy.deepcopy(llama)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


def test_score_formula():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert _score(probs, torch.tensor([[1, 3]])) == pytest.approx((1 - 1 / 4) * 0.3)
    assert _score(probs, torch.tensor([[0]])) == pytest.approx(0.5)


def test_output_score_ranks_a_token_writing_feature_first(sharp, tokenizer, planted):
    ocean = tokenizer.convert_tokens_to_ids("ocean")
    assert top_tokens(sharp, planted.W_dec[:1].detach(), 1)[0, 0] == ocean
    amplified = output_scores(sharp, tokenizer, planted, LAST, torch.full((16,), 5.0), prompt="tell me about the",
                              n_tokens=2)
    plain = output_scores(sharp, tokenizer, planted, LAST, torch.zeros(16), prompt="tell me about the", n_tokens=2)
    assert amplified.shape == (16,) and ((amplified >= 0) & (amplified <= 1)).all()
    assert amplified[0] > 0.99 and plain[0] < 0.5 and amplified.mean() > plain.mean() + 0.3
    subset = output_scores(sharp, tokenizer, planted, LAST, torch.full((16,), 5.0), features=[3, 0],
                           prompt="tell me about the", batch_size=1, n_tokens=2)
    assert torch.allclose(subset, amplified[[3, 0]], atol=1e-5)


def test_filter_keeps_ranking_order_and_explains_failure():
    scores = torch.tensor([0.9, 0.01, 0.5, 0.02])
    assert filter_features(torch.tensor([1, 2, 0]), scores, 0.1, top_k=2).tolist() == [2, 0]
    with pytest.raises(PolysteerError, match="lower it"):
        filter_features(torch.tensor([1, 3]), scores, 0.1)


def test_contrast_finder_skips_features_below_the_score_threshold(tmp_path):
    sae = SAE(8, 16, architecture="standard")
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([torch.eye(8), -torch.eye(8)]))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
    X_pos, X_neg = torch.randn(64, 8) * 0.1, torch.randn(64, 8) * 0.1
    X_pos[:, 2] += 3.0  # latent 2 separates best, latent 5 second
    X_pos[:, 5] += 1.0
    raw = {"normalize": "none", "max_density": 1.0}  # the raw gap ranks 2 over 5; noise fires every latent often
    assert SAEContrast(sae, **raw).fit(X_pos, X_neg).features_.tolist() == [2]
    scores = torch.ones(16)
    scores[2] = 0.0
    assert SAEContrast(sae, score_filter=scores, threshold=0.5, **raw).fit(X_pos, X_neg).features_.tolist() == [5]
    sae.save(tmp_path / "sae")
    with pytest.raises(PolysteerError, match="no saved output_scores"):
        SAEContrast(str(tmp_path / "sae"), score_filter="output").fit(X_pos, X_neg)


def test_feature_stats_and_input_scores(llama, tokenizer, planted, tmp_path):
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(100)]
    store = ActivationStore.build(llama, tokenizer, docs, LAST, tmp_path, n_tokens=2 * 150, context=16,
                                  shard_tokens=150)
    stats = feature_stats(planted, store, [0, 1], top=5)
    z = torch.cat([planted.encode(store.shard(i)[0]) for i in (0, 1)])
    assert torch.allclose(stats.max, z.max(0).values) and torch.allclose(stats.frequency, (z > 0).float().mean(0))
    assert torch.allclose(stats.top_values[:, 0], z.max(0).values)
    windows = torch.cat([store.shard(i)[1] for i in (0, 1)])
    row = int(stats.top_rows[0, 0])
    assert stats.token_of(torch.tensor([row]))[0] == windows[row // 15, 1 + row % 15]
    scores = input_scores(llama, planted, stats)
    assert scores.shape == (16,) and ((scores >= 0) & (scores <= 1)).all()


def test_vocab_proj_and_token_change_find_the_written_token(llama, tokenizer, planted):
    row = planted.W_dec[0].detach()
    assert vocab_proj(llama, tokenizer, row, 3).top[0] == "ocean"
    assert vocab_proj(llama, tokenizer, -row, 3).bottom[0] == "ocean"
    texts = ["tell me about the day", "the weather is good"]
    change = token_change(llama, tokenizer, row, LAST, 5.0, texts=texts, n=3)
    assert change.top[0] == "ocean" and "ocean" not in change.bottom
    clamped = token_change(llama, tokenizer, row, LAST, 5.0, SAEClamp(planted, 0), texts=texts, n=3)
    assert clamped.top[0] == "ocean"


def test_top_snippets_mark_the_strongest_token(llama, tokenizer):
    embed = llama.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("ocean")].detach()
    texts = ["tell me about the day and the park", "a ship on the ocean with fish", "the ocean is big"]
    snippets = top_snippets(llama, tokenizer, texts, "text.blocks.0.resid_pre", lambda a: a @ embed, n=2, window=3)
    assert [s.token for s in snippets] == ["ocean", "ocean"]
    assert snippets[0].activation >= snippets[1].activation and "[[ocean]]" in snippets[0].render()


def test_describe_lists_every_section(llama, tokenizer, planted, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the ocean is big\nthe park is small\n")
    lines = describe(llama, tokenizer, planted.W_dec[0].detach(), LAST, "add", lambda a: a @ planted.W_dec[0].detach(),
                     text_path=str(text), n=2)
    assert lines[1].startswith("VocabProj top:") and "'ocean'" in lines[1]
    assert any(line.startswith("TokenChange -10") for line in lines) and "[[" in lines[-1]
