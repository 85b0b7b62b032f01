"""Steering inside vLLM (in-process engine): equality with polysteer's HF backend, mixed batches, prefix caching."""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams, TokensPrompt

from polysteer import Direction, PolysteerError, steer
from polysteer.modalities.text.vllm import patches

TOKENS = 16
SPECS = {
    "joy": {"direction": "joy", "coefficient": 6.0, "schedule": "generated-only", "operator": "add", "layers": [12]},
    "calm": {"direction": "calm", "coefficient": 3.0, "schedule": "window:0-8", "operator": "clamp"},
    "mean": {"direction": "mean", "coefficient": 1.0, "schedule": "prompt-only", "operator": "ablate"},
}


def vllm_tokens(llm, prompts, steers, tokens=TOKENS):
    """Greedy tokens of each prompt under vLLM, request ``i`` steered by ``steers[i]`` (None: unsteered)."""
    params = [SamplingParams(temperature=0.0, max_tokens=tokens, extra_args=None if s is None else {"steer": s})
              for s in steers]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def hf_tokens(hf, directions, prompt, spec):
    """The same request through polysteer's HF backend: Direction.to_plan + steer() around generate."""
    model, tokenizer = hf
    direction = Direction.load(directions / f"{spec['direction']}.safetensors")
    points = None if "layers" not in spec else [f"text.blocks.{x}.resid_post" for x in spec["layers"]]
    plan = direction.to_plan(spec["coefficient"], spec["operator"], spec["schedule"], points)
    with torch.no_grad(), steer(model, plan):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=TOKENS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_vllm_equals_hf_backend(llm, hf, directions, prompts, name):
    spec = SPECS[name]
    (plain,) = vllm_tokens(llm, [prompts[0]], [None])
    (steered,) = vllm_tokens(llm, [prompts[0]], [[spec]])
    expected = hf_tokens(hf, directions, prompts[0], spec)
    assert steered == expected
    assert steered != plain, "the steering must change the output for the comparison to mean anything"


def sixteen_plans():
    """16 distinct plans: every direction, operator and schedule mix, with different coefficients."""
    plans = []
    for i in range(16):
        kind = ["joy", "calm", "mean"][i % 3]
        spec = dict(SPECS[kind], coefficient=SPECS[kind]["coefficient"] * (0.5 + 0.25 * i))
        plans.append([spec] if i % 5 else [spec, dict(SPECS["joy"], coefficient=2.0 + i)])
    return plans


def test_mixed_batch_of_16_plans_equals_solo_runs(llm, prompts):
    plans = sixteen_plans()
    batch_prompts = [prompts[i % len(prompts)] for i in range(16)]
    llm.reset_prefix_cache()
    together = vllm_tokens(llm, batch_prompts, plans, tokens=8)  # 8 tokens: 16 solo runs follow
    for i, plan in enumerate(plans):
        llm.reset_prefix_cache()
        assert vllm_tokens(llm, [batch_prompts[i]], [plan], tokens=8)[0] == together[i], f"request {i} bled"
    assert len({tuple(t) for t in together}) > 8, "distinct plans should give mostly distinct outputs"


def test_unsteered_rows_in_a_steered_batch_are_untouched(llm, prompts):
    llm.reset_prefix_cache()
    alone = vllm_tokens(llm, prompts, [None] * 3)
    mixed = vllm_tokens(llm, prompts, [None, [SPECS["joy"]], None])
    assert mixed[0] == alone[0] and mixed[2] == alone[2] and mixed[1] != alone[1]


def prefix_cache_run(llm, prompt):
    """Unsteered greedy tokens after a steered run of the same prompt (its prompt KV steered), and the reference."""
    llm.reset_prefix_cache()
    (reference,) = vllm_tokens(llm, [prompt], [None])
    llm.reset_prefix_cache()
    vllm_tokens(llm, [prompt], [[dict(SPECS["joy"], schedule="constant")]])
    (after,) = vllm_tokens(llm, [prompt], [None])
    return reference, after


def test_prefix_cache_needs_plan_salts(llm, prompts, monkeypatch):
    prompt = prompts[1] * 3  # several whole KV blocks
    monkeypatch.setattr(patches, "salted", lambda salt, plan_salt: salt)  # what vLLM does without the plugin's salt
    reference, after = prefix_cache_run(llm, prompt)
    assert after != reference, "without salts the unsteered request reuses the steered request's KV blocks"
    monkeypatch.undo()
    reference, after = prefix_cache_run(llm, prompt)
    assert after == reference


@pytest.mark.parametrize("steer_value, problem", [
    ([{"direction": "nope"}], "unknown direction 'nope'"),
    ([{"direction": "joy", "operator": "twist"}], "unknown operator 'twist'"),
    ([{"direction": "joy", "layers": [99]}], "layer 99 is out of range"),
    ([{"direction": "calm", "layers": [3]}], "has vectors at layers [8, 16] only"),
    ([{"direction": "joy", "schedule": "window:5-2"}], "window needs start < end"),
    ([{"direction": "joy", "coefficient": "x"}], "bad steer spec"),
    ("[not json", "steer is not valid JSON"),
])
def test_bad_steer_is_refused_alone(llm, prompts, steer_value, problem):
    with pytest.raises(PolysteerError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        llm.generate(TokensPrompt(prompt_token_ids=prompts[0]),
                     SamplingParams(max_tokens=2, extra_args={"steer": steer_value}), use_tqdm=False)
    assert vllm_tokens(llm, [prompts[0]], [[SPECS["joy"]]])[0]  # the engine still serves


def test_json_string_steer_equals_list(llm, prompts):
    import json

    spec = [SPECS["calm"]]
    assert vllm_tokens(llm, [prompts[2]], [json.dumps(spec)]) == vllm_tokens(llm, [prompts[2]], [spec])
