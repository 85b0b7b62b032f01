"""polysteer.attach: a plan that stays on across notebook cells, with steer's isolation and clean-up."""

import asyncio
import contextvars
import threading

import pytest
import torch

from polysteer import Intervention, PolysteerError, attach, steer

HP = "text.blocks.1.resid_post"


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def setup(llama):
    torch.manual_seed(0)
    plan = Intervention(torch.randn(llama.config.hidden_size), HP, 0.02)
    ids = torch.randint(4, 100, (1, 6))
    with steer(llama, plan):
        steered = logits(llama, ids)
    plain = logits(llama, ids)
    assert not torch.allclose(steered, plain)
    return llama, plan, ids, steered, plain


def test_attached_plan_steers_until_removed_and_leaves_no_hooks(setup):
    model, plan, ids, steered, plain = setup
    before = n_hooks(model)
    handle = attach(model, plan)
    assert torch.equal(logits(model, ids), steered)
    assert torch.equal(logits(model, ids), steered)  # still on for the next "cell"
    handle.remove()
    handle.remove()  # idempotent
    assert n_hooks(model) == before
    assert torch.equal(logits(model, ids), plain)


def test_attach_survives_a_fresh_context_like_a_new_notebook_cell(setup):
    model, plan, ids, steered, _ = setup
    with attach(model, plan):
        assert torch.equal(contextvars.Context().run(logits, model, ids), steered)


def test_attached_plan_does_not_reach_other_threads_and_reaches_this_threads_tasks(setup):
    model, plan, ids, steered, plain = setup
    seen = {}
    with attach(model, plan):
        thread = threading.Thread(target=lambda: seen.update(other=logits(model, ids)))
        thread.start()
        thread.join()

        async def task():
            return logits(model, ids)

        seen["task"] = asyncio.run(task())
    assert torch.equal(seen["other"], plain)
    assert torch.equal(seen["task"], steered)


def test_attach_composes_with_steer_like_nested_blocks(setup):
    model, plan, ids, _, _ = setup
    with steer(model, plan):
        with steer(model, plan):
            nested = logits(model, ids)
    with attach(model, plan), steer(model, plan):
        assert torch.equal(logits(model, ids), nested)


def test_bad_plan_is_refused_before_any_hook(setup):
    model, _, _, _, _ = setup
    before = n_hooks(model)
    with pytest.raises(PolysteerError, match="d_model"):
        attach(model, Intervention(torch.zeros(7), HP, 1.0))
    assert n_hooks(model) == before
