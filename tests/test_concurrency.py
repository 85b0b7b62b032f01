"""Steering contexts are isolated: concurrent blocks on one shared model, from threads or asyncio tasks, each
see only their own plan, and an unsteered call sees none."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from polysteer import Intervention, Plan, steer

PROMPT = torch.tensor([[5, 9, 14, 3, 22, 7]])
N_TOKENS = 8


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def plans(model, n=8):
    """Plan ``i`` steers a different layer with a different vector; plan 0 is no steering at all."""
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    out = [None]
    for i in range(1, n):
        layer = i % model.config.num_hidden_layers
        out.append(Plan([Intervention(torch.randn(d, generator=gen), f"text.blocks.{layer}.resid_post", 4.0,
                                      schedule="generated-only" if i % 2 else "constant")]))
    return out


def generate(model, plan, barrier=None):
    with torch.no_grad():
        if plan is None:
            if barrier is not None:
                barrier.wait()
            return model.generate(PROMPT, max_new_tokens=N_TOKENS, do_sample=False)
        with steer(model, plan):
            if barrier is not None:
                barrier.wait()  # every thread is inside its block before any generates
            return model.generate(PROMPT, max_new_tokens=N_TOKENS, do_sample=False)


def test_threads_each_see_only_their_own_plan(llama):
    before = n_hooks(llama)  # transformers may keep its own output-recording hooks
    all_plans = plans(llama)
    solo = [generate(llama, p) for p in all_plans]
    assert len({tuple(s[0].tolist()) for s in solo}) == len(all_plans)  # the plans do steer, each differently
    for _ in range(3):
        barrier = threading.Barrier(len(all_plans))
        with ThreadPoolExecutor(len(all_plans)) as pool:
            outputs = list(pool.map(lambda p: generate(llama, p, barrier), all_plans))
        mismatches = [i for i, (a, b) in enumerate(zip(outputs, solo)) if not torch.equal(a, b)]
        assert mismatches == []
    assert n_hooks(llama) == before


def test_asyncio_tasks_each_see_only_their_own_plan(llama):
    before = n_hooks(llama)
    all_plans = plans(llama, 4)
    solo = [generate(llama, p) for p in all_plans]

    async def one(plan):
        ctx = steer(llama, plan) if plan is not None else None
        if ctx is not None:
            ctx.__enter__()
        try:
            await asyncio.sleep(0.01)  # every task enters its block before any generates
            return await asyncio.to_thread(generate, llama, None) if plan is None else generate(llama, None)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    async def main():
        return await asyncio.gather(*(one(p) for p in all_plans))

    outputs = asyncio.run(main())
    assert [torch.equal(a, b) for a, b in zip(outputs, solo)] == [True] * len(all_plans)
    assert n_hooks(llama) == before


def test_a_thread_spawned_inside_a_block_is_not_steered(llama):
    plan = plans(llama, 2)[1]
    unsteered = generate(llama, None)
    result = {}
    with steer(llama, plan):
        steered = llama.generate(PROMPT, max_new_tokens=N_TOKENS, do_sample=False)
        worker = threading.Thread(target=lambda: result.update(out=generate(llama, None)))
        worker.start()
        worker.join()
    assert not torch.equal(steered, unsteered)
    assert torch.equal(result["out"], unsteered)


def test_nested_blocks_in_one_thread_still_compose(llama):
    a, b = plans(llama, 3)[1:]
    with torch.no_grad():
        with steer(llama, a + b):
            both = llama(PROMPT).logits
        with steer(llama, a), steer(llama, b):
            nested = llama(PROMPT).logits
    assert torch.allclose(both, nested, atol=1e-5)


def test_generate_never_touches_the_shared_tokenizer(llama, tokenizer, monkeypatch):
    from polysteer.modalities.text.generation import generate as generate_text

    writes = []
    monkeypatch.setattr(type(tokenizer), "padding_side", property(
        lambda self: "right", lambda self, value: writes.append(value)), raising=False)
    prompts = ["tell me about the ocean", "a day"]
    batched = generate_text(llama, tokenizer, prompts, max_new_tokens=5, chat=False, progress=False)
    alone = [generate_text(llama, tokenizer, [p], max_new_tokens=5, chat=False, progress=False)[0] for p in prompts]
    assert writes == [] and batched == alone  # left padding per call, so batching changes nothing
