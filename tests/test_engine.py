"""The steering engine: hook lifetime, step counting with the KV cache, padding, per-row plans, nesting."""

import warnings

import pytest
import torch

from polysteer import Intervention, Plan, PolysteerError, stack_plans, steer, steer_rows
from polysteer.modalities.text.generation import generate

HP = "text.blocks.1.resid_post"


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def vec(model, seed=0):
    torch.manual_seed(seed)
    return torch.randn(model.config.hidden_size)


def logits(model, ids, plan=None, **kw):
    with torch.no_grad():
        if plan is None:
            return model(input_ids=ids, **kw).logits
        with steer(model, plan):
            return model(input_ids=ids, **kw).logits


def test_hooks_removed_after_exit_and_on_exception(llama):
    before = n_hooks(llama)
    plan = Plan([Intervention(vec(llama), HP, 2.0), Intervention(vec(llama), "text.blocks.0.resid_pre", 1.0)])
    with steer(llama, plan):
        assert n_hooks(llama) > before
    assert n_hooks(llama) == before
    with pytest.raises(RuntimeError, match="boom"):
        with steer(llama, plan):
            raise RuntimeError("boom")
    assert n_hooks(llama) == before


def test_bad_plan_leaves_no_hooks(llama):
    before = n_hooks(llama)
    bad = Plan([Intervention(vec(llama), HP, 1.0), Intervention(torch.zeros(7), "text.blocks.2.resid_post", 1.0)])
    with pytest.raises(PolysteerError, match="d_model"):
        with steer(llama, bad):
            pass
    with pytest.raises(PolysteerError, match="out of range"):
        with steer(llama, Intervention(vec(llama), "text.blocks.9.resid_post", 1.0)):
            pass
    nan = torch.full((llama.config.hidden_size,), float("nan"))
    with pytest.raises(PolysteerError, match="NaN"):
        with steer(llama, Intervention(nan, HP, 1.0)):
            pass
    assert n_hooks(llama) == before


def test_zero_coefficient_is_bit_identical(llama):
    ids = torch.randint(4, 100, (2, 7))
    base = logits(llama, ids)
    assert torch.equal(base, logits(llama, ids, Intervention(vec(llama), HP, 0.0)))
    assert torch.equal(base, logits(llama, ids, Intervention(vec(llama), HP, 0.0, schedule="generated-only")))
    assert not torch.equal(base, logits(llama, ids, Intervention(vec(llama), HP, 1.0)))


def test_all_sites_change_the_output(llama):
    ids = torch.randint(4, 100, (1, 5))
    base = logits(llama, ids)
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        assert not torch.allclose(base, logits(llama, ids, Intervention(vec(llama), f"text.blocks.1.{site}", 3.0)))


class _Recorder:
    """Records (step, positions, prompt_length) the schedule sees at one layer."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, step, position, layer, prompt_length):
        self.calls.append((step, position.clone(), prompt_length.clone()))
        return 1.0


def test_step_counting_with_kv_cache_and_left_padding(llama, tokenizer):
    rec = _Recorder()
    plan = Intervention(vec(llama), HP, 0.5, schedule=rec)
    generate(llama, tokenizer, ["tell me about the ocean today", "hello"], plan, max_new_tokens=4, chat=False)
    steps = [c[0] for c in rec.calls]
    assert steps == [0, 1, 2, 3]
    # prompt pass: rows have 6 and 1 real tokens (left padded); decode steps see one new position each
    assert rec.calls[0][2].flatten().tolist() == [6, 1]
    assert rec.calls[0][1][0].tolist() == [0, 1, 2, 3, 4, 5]
    assert rec.calls[0][1][1, -1].item() == 0
    for step, positions, prompt in rec.calls[1:]:
        assert positions.shape == (2, 1)
        assert positions.flatten().tolist() == [5 + step, step]


def test_generated_only_schedule_leaves_prompt_logits_untouched(llama):
    ids = torch.randint(4, 100, (2, 6))
    base = logits(llama, ids)
    assert torch.equal(base, logits(llama, ids, Intervention(vec(llama), HP, 4.0, schedule="generated-only")))
    assert not torch.equal(base, logits(llama, ids, Intervention(vec(llama), HP, 4.0, schedule="prompt-only")))


def test_left_padding_matches_unpadded_rows(llama, tokenizer):
    plan = Intervention(vec(llama), HP, 3.0, schedule="window:1-3")
    prompts = ["tell me about the ocean", "hello"]
    together = generate(llama, tokenizer, prompts, plan, max_new_tokens=5, chat=False)
    alone = [generate(llama, tokenizer, [p], plan, max_new_tokens=5, chat=False)[0] for p in prompts]
    assert together == alone


def test_per_row_plans(llama, tokenizer):
    v = vec(llama)
    prompts = ["tell me about the ocean", "tell me about the ocean", "tell me about the ocean"]
    rows = generate(llama, tokenizer, prompts, Intervention(v, HP, [0.0, 6.0, -6.0]), max_new_tokens=6, chat=False)
    plain = generate(llama, tokenizer, prompts[:1], max_new_tokens=6, chat=False)[0]
    pos = generate(llama, tokenizer, prompts[:1], Intervention(v, HP, 6.0), max_new_tokens=6, chat=False)[0]
    neg = generate(llama, tokenizer, prompts[:1], Intervention(v, HP, -6.0), max_new_tokens=6, chat=False)[0]
    assert rows == [plain, pos, neg]
    assert pos != plain
    only_row_1 = generate(llama, tokenizer, prompts, Intervention(v, HP, 6.0, rows=[1]), max_new_tokens=6, chat=False)
    assert only_row_1 == [plain, pos, plain]


def test_stacked_plans_steer_each_row_with_its_own_direction(llama, tokenizer):
    a, b = vec(llama, 1), vec(llama, 2)
    prompts = ["tell me about the ocean"] * 4
    row_plans = [Intervention(a, HP, 6.0), None, Intervention(b, HP, -6.0), [Intervention(b, HP, 6.0)]]
    plan = stack_plans(row_plans)
    assert len(plan) == 2  # rows 2 and 3 share direction b: one intervention with per-row coefficients
    together = generate(llama, tokenizer, prompts, plan, max_new_tokens=6, chat=False)
    alone = [generate(llama, tokenizer, prompts[:1], p, max_new_tokens=6, chat=False)[0] for p in row_plans]
    assert together == alone
    assert len(set(alone)) == 4


def test_steer_rows_follows_the_rows_a_decoding_loop_keeps(llama):
    """Drop the middle row after the prompt pass: the next step's logits of the kept rows equal their solo runs."""
    a, b = vec(llama, 1), vec(llama, 2)
    row_plans = [Intervention(a, HP, 6.0, schedule="generated-only"), Intervention(b, HP, 6.0), None]
    ids = torch.tensor([[5, 6, 7, 8]] * 3)
    with torch.no_grad(), steer_rows(llama, row_plans) as rows:
        first = llama(input_ids=ids, use_cache=True)
        cache, keep = first.cache, torch.tensor([0, 2])
        cache.batch_select_indices(keep)
        rows.keep(keep)
        step = llama(input_ids=torch.tensor([[9], [9]]), cache=cache).logits[:, -1]
    for i, plan in zip((0, 1), (row_plans[0], None)):
        with torch.no_grad(), steer_rows(llama, [plan]):
            solo = llama(input_ids=ids[:1], use_cache=True)
            expected = llama(input_ids=torch.tensor([[9]]), cache=solo.cache).logits[0, -1]
        torch.testing.assert_close(step[i], expected)
    assert not torch.allclose(step[0], step[1])


def test_stack_plans_refuses_per_row_inputs(llama):
    with pytest.raises(PolysteerError, match="one plan per row"):
        stack_plans([Intervention(vec(llama), HP, [1.0, 2.0])])


def test_nested_plans_compose(llama):
    ids = torch.randint(4, 100, (1, 6))
    a, b = vec(llama, 1), vec(llama, 2)
    with torch.no_grad(), steer(llama, Intervention(a, HP, 1.0)), steer(llama, Intervention(b, HP, 2.0)):
        nested = llama(input_ids=ids).logits
    combined = logits(llama, ids, Intervention(a + 2 * b, HP, 1.0))
    assert torch.allclose(nested, combined, atol=1e-5)
    summed = Plan([Intervention(a, HP, 1.0)]) + Plan([Intervention(b, HP, 2.0)])
    assert torch.allclose(combined, logits(llama, ids, summed), atol=1e-5)


@pytest.mark.parametrize("direction, coefficient, message", [
    (torch.zeros(32), 1.0, "all zeros"),
    (torch.ones(32, dtype=torch.long), 1.0, "dtype torch.int64"),
    (torch.full((32,), float("nan")), 1.0, "NaN or inf"),
    (torch.ones(32), float("nan"), "finite numbers"),
    (torch.ones(32), float("inf"), "finite numbers"),
    (torch.ones(32), [1.0, float("nan")], "finite numbers"),
])
def test_bad_vectors_and_coefficients_are_refused_before_any_hook(llama, direction, coefficient, message):
    before = n_hooks(llama)
    with pytest.raises(PolysteerError, match=message):
        with steer(llama, Intervention(direction, HP, coefficient)):
            pass
    assert n_hooks(llama) == before


def test_a_vector_far_larger_than_the_activations_warns_once(llama):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.warns(UserWarning, match="typical activation norm") as caught:
        with torch.no_grad(), steer(llama, Intervention(vec(llama), HP, 1e4)):
            llama(input_ids=ids)
            llama(input_ids=ids)
    assert len([w for w in caught if "typical activation norm" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad(), steer(llama, Intervention(vec(llama), HP, 1e-3)):
            llama(input_ids=ids)


def test_the_vector_is_cast_at_hook_time_when_the_model_changes_dtype_inside_the_block(llama):
    import copy

    model = copy.deepcopy(llama)
    ids = torch.randint(4, 100, (1, 5))
    plan = Intervention(vec(model), HP, 0.5)
    with steer(model, plan):
        model.to(torch.bfloat16)  # compiled for float32 weights; the hook must follow the activations
        with torch.no_grad():
            out = model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert not torch.equal(out, plain)
