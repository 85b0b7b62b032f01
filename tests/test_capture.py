"""Activation capture: padding-correct pooling, one pass for many hook points, disk cache."""

import torch

from polysteer.capture import pool
from polysteer.modalities.text.generation import Example, collect, token_labels

HPS = ["text.blocks.0.resid_post", "text.blocks.1.resid_post"]  # the last block's HF hidden state is post-norm
TEXTS = ["tell me about the ocean and the sea", "hello", "a wedding party with cake and music"]


def reference(model, tokenizer, text, layer):
    """Mean over tokens 1.. of one unpadded example, computed directly from output_hidden_states."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
    return hidden[1:].mean(0) if len(hidden) > 1 else hidden.mean(0)


def test_batched_mean_pooling_matches_unpadded(llama, tokenizer):
    acts = collect(llama, tokenizer, TEXTS, HPS, batch_size=3)
    for i, text in enumerate(TEXTS):
        assert torch.allclose(acts[HPS[1]][i], reference(llama, tokenizer, text, 1), atol=1e-4)
        assert torch.allclose(acts[HPS[0]][i], reference(llama, tokenizer, text, 0), atol=1e-4)


def test_pool_modes():
    h = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert torch.equal(pool(h, mask, "mean"), torch.stack([h[0, :2].mean(0), h[1, 1:].mean(0)]))
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 1], h[1, 2]]))
    assert torch.equal(pool(h, mask, "tokens"), torch.stack([h[0, 0], h[0, 1], h[1, 1], h[1, 2]]))


def test_prompted_examples_pool_only_the_answer(llama, tokenizer):
    a = collect(llama, tokenizer, [Example("the ocean", prompt="tell me")], HPS, pooling="last", chat=False)
    b = collect(llama, tokenizer, ["the ocean"], HPS, pooling="last", chat=False)
    assert a[HPS[1]].shape == (1, 32)
    assert not torch.allclose(a[HPS[1]], b[HPS[1]])  # the prompt is context, so the answer reads differently


def test_token_pooling_with_labels(llama, tokenizer):
    acts = collect(llama, tokenizer, TEXTS, HPS, pooling="tokens")
    labels = token_labels(tokenizer, TEXTS, [1, 0, 1])
    assert acts[HPS[0]].shape[0] == len(labels) == sum(len(t.split()) for t in TEXTS) - 3 + 1  # 'hello' keeps 1
    assert labels.tolist()[:7] == [1] * 7


def test_disk_cache_skips_the_model(llama, tokenizer, tmp_path, monkeypatch):
    first = collect(llama, tokenizer, TEXTS, HPS, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("acts-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although the activations were cached")

    monkeypatch.setattr(llama, "forward", fail)
    second = collect(llama, tokenizer, TEXTS, HPS, cache_dir=str(tmp_path))
    assert all(torch.equal(first[hp], second[hp]) for hp in HPS)


def test_capture_leaves_no_hooks(llama, tokenizer):
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in llama.modules())
    collect(llama, tokenizer, TEXTS, HPS + ["text.blocks.2.resid_pre"])
    assert before == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in llama.modules())
