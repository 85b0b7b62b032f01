"""CorrSteer and SAE-TS on a tiny model, and the `polysteer sae` / `polysteer explain` commands."""

import copy
import random

import pytest
import torch
from click.testing import CliRunner
from tiny import WORDS

from polysteer import Direction, PolysteerError
from polysteer.modalities.text.cli.sae import explain, sae
from polysteer.modalities.text.generation import format_prompt, generate
from polysteer.modalities.text.sae.corrsteer import (
    CorrSteerFeature,
    StreamingPearson,
    _answer_mask,
    _pooled_answers,
    corrsteer,
    corrsteer_plan,
    prune,
    side_effect_ratio,
)
from polysteer.modalities.text.sae.ts import fit_effect_model, measure_effects, scale_for_loss
from polysteer.plugins.sae.model import SAE

HP = "text.blocks.1.resid_post"
PROMPTS = ["tell me about the ocean", "describe a good day", "what is your favorite food", "write a short note"]


@pytest.fixture(scope="module")
def small_sae():
    torch.manual_seed(0)
    sae = SAE(32, 48, "topk", k=4, metadata={"hook_name": HP})
    with torch.no_grad():
        sae.b_enc.uniform_(0.0, 0.2)
    return sae


def test_streaming_pearson_matches_batch_correlation():
    torch.manual_seed(0)
    x, y = torch.randn(50, 6), torch.randn(50)
    x[:, 2] = 3 * y + 0.1 * torch.randn(50)
    x[:, 5] = 1.0  # constant: correlation defined as 0
    stats = StreamingPearson(6)
    for lo in range(0, 50, 7):
        stats.update(x[lo : lo + 7], y[lo : lo + 7])
    expected = torch.corrcoef(torch.cat([x[:, :5], y[:, None]], 1).T)[-1, :5]
    assert torch.allclose(stats.correlation()[:5], expected, atol=1e-5) and stats.correlation()[5] == 0
    assert int(stats.correlation().argmax()) == 2


def test_every_generated_token_is_encoded_the_last_one_too(llama, tokenizer, small_sae):
    answers, pooled = _pooled_answers(llama, tokenizer, [PROMPTS[0]], {HP: small_sae}, max_new_tokens=5)
    text = format_prompt(tokenizer, PROMPTS[0])
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = llama.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
        hidden = llama(out, output_hidden_states=True).hidden_states[2][0]  # block 1 output
    n = enc.input_ids.shape[1]
    assert out.shape[1] == n + 5 and (out[0, n:] != tokenizer.eos_token_id).all()
    assert answers == tokenizer.batch_decode(out[:, n:], skip_special_tokens=True)
    expected = small_sae.encode(hidden[n : n + 5]).max(0).values
    assert torch.allclose(pooled[HP][0], expected, atol=1e-4)
    _, one = _pooled_answers(llama, tokenizer, [PROMPTS[0]], {HP: small_sae}, max_new_tokens=1)
    assert one[HP][0].abs().sum() > 0  # a one-token answer is never fed back during generation, but is encoded
    assert torch.allclose(one[HP][0], small_sae.encode(hidden[n : n + 1]).max(0).values, atol=1e-4)


def test_answer_mask_stops_at_the_first_eos():
    gen = torch.tensor([[5, 6, 2, 7], [2, 5, 5, 5], [5, 5, 5, 5]])
    assert _answer_mask(gen, {2}).tolist() == [[True, True, False, False], [False] * 4, [True] * 4]


def test_corrsteer_selects_features_and_steers_generated_positions(llama, tokenizer, small_sae):
    other = "text.blocks.2.resid_post"
    saes = {HP: small_sae, other: small_sae}
    reward = lambda prompt, answer: float("ocean" in prompt or "food" in prompt)  # noqa: E731
    prompts = [f"{random.Random(i).choice(WORDS)} {p}" for i, p in enumerate(PROMPTS * 2)]
    single = corrsteer(llama, tokenizer, prompts, reward, saes, "S", max_new_tokens=6, batch_size=4)
    every = corrsteer(llama, tokenizer, prompts, reward, saes, "A", max_new_tokens=6, batch_size=4)
    assert len(single) == 1 and [f.hook_point for f in every] == [HP, other]
    assert single[0].correlation == max(f.correlation for f in every)
    assert all(f.coefficient >= 0 and -1 <= f.correlation <= 1 for f in every)
    plan = corrsteer_plan(every, saes)
    assert [iv.schedule for iv in plan] == ["generated-only"] * 2
    assert torch.equal(plan.interventions[0].direction, small_sae.W_dec[every[0].feature].detach())
    with pytest.raises(PolysteerError, match="no answer earned"):
        corrsteer(llama, tokenizer, prompts[:2], lambda p, a: 0.0, saes, max_new_tokens=2)


def test_corrsteer_p_keeps_only_features_whose_steering_raises_the_validation_reward(llama, tokenizer, small_sae):
    saes = {HP: small_sae}
    base = dict(zip(PROMPTS, generate(llama, tokenizer, PROMPTS, max_new_tokens=4, progress=False)))
    changed = lambda prompt, answer: float(answer != base[prompt])  # noqa: E731  unsteered reward: 0
    strong, idle = CorrSteerFeature(HP, 3, 0.5, 50.0), CorrSteerFeature(HP, 5, 0.4, 0.0)
    assert prune(llama, tokenizer, [strong, idle], saes, PROMPTS, changed, max_new_tokens=4) == [strong]
    with pytest.raises(PolysteerError, match="needs validation_prompts"):
        corrsteer(llama, tokenizer, PROMPTS, changed, saes, "P")
    with pytest.raises(PolysteerError, match="overlap"):
        corrsteer(llama, tokenizer, PROMPTS, changed, saes, "P", validation_prompts=PROMPTS[:1])


def test_side_effect_ratio():
    before, after = ["4", "7", "9", "2"], ["4", "8", "9", "3"]
    assert side_effect_ratio([True, True, False, False], [True, False, False, True], before, after) == 0.5
    assert side_effect_ratio([True], [True], ["a"], ["a"]) == 0.0


def test_effect_model_recovers_a_linear_map_and_targets():
    torch.manual_seed(0)
    W, b = torch.randn(32, 48), torch.randn(48)
    vectors = torch.randn(200, 32)
    model = fit_effect_model(vectors, vectors @ W + b, ridge=1e-6)
    assert torch.allclose(model.W, W, atol=1e-3) and torch.allclose(model.b, b, atol=1e-3)
    target = torch.zeros(48)
    target[7] = 1.0
    v = model.targeted_vector(target)
    unit = torch.nn.functional.normalize
    expected = unit(unit(W @ target, dim=0) - unit(W @ b, dim=0), dim=0)
    assert torch.allclose(v, expected, atol=1e-3) and torch.isclose(v.norm(), torch.tensor(1.0))


def test_measured_effect_is_zero_without_steering_and_grows_with_it(llama, tokenizer, small_sae):
    vectors = torch.stack([torch.zeros(32), 8 * small_sae.W_dec[3].detach()])
    effects = measure_effects(llama, tokenizer, small_sae, HP, vectors, PROMPTS[:2], max_new_tokens=4)
    assert effects.shape == (2, 48) and effects[0].abs().max() < 1e-5 and effects[1].abs().sum() > 1e-3


def test_scale_for_loss_hits_the_target(llama):
    from polysteer.engine import Intervention
    from polysteer.modalities.text.sae.lm_loss import lm_loss

    sharp = copy.deepcopy(llama)  # peaked predictions, read on its own greedy text: steering raises the loss
    with torch.no_grad():
        sharp.lm_head.weight.mul_(50)
        windows = sharp.generate(torch.randint(4, 100, (4, 2), generator=torch.Generator().manual_seed(0)),
                                 max_new_tokens=10, do_sample=False, pad_token_id=0)
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    scale = scale_for_loss(sharp, windows, v, HP, 1.0, high=10.0, iterations=14)
    rise = lm_loss(sharp, windows, intervention=Intervention(v / v.norm(), HP, scale)) - lm_loss(sharp, windows)
    assert rise == pytest.approx(1.0, abs=0.05)
    with pytest.raises(PolysteerError, match="raise `high`"):
        scale_for_loss(sharp, windows, v, HP, 100.0, high=1.0)


@pytest.fixture(scope="module")
def tiny_dir(llama, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_train_feature_and_explain(tiny_dir, tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(300)))
    runner = CliRunner()
    args = ["train", "--model", str(tiny_dir), "--layer", "1", "--text", str(corpus), "--tokens", "4000",
            "--d-sae", "64", "-k", "4", "--batch-size", "100", "--context", "16", "--shard-tokens", "1000",
            "--epochs", "3", "--store", str(tmp_path / "store"), "-o", str(tmp_path / "sae")]
    result = runner.invoke(sae, args, catch_exceptions=False)
    assert '"explained_variance"' in result.output and '"loss_increase"' in result.output
    trained = SAE.load(tmp_path / "sae")
    assert trained.W_enc.dtype == torch.float32 and trained.metadata["hook_name"] == HP
    assert (tmp_path / "sae" / "feature_stats.safetensors").is_file()
    result = runner.invoke(sae, ["feature", "5", "--sae", str(tmp_path / "sae"), "-o", str(tmp_path / "f.safetensors")])
    assert result.exit_code == 0 and int(Direction.load(tmp_path / "f.safetensors").extras["sae_feature"][0]) == 5
    (tmp_path / "t.txt").write_text("the ocean is big\ntell me about the park\n")
    for how in (["--sae", str(tmp_path / "sae"), "--feature", "5"], ["--direction", str(tmp_path / "f.safetensors")]):
        result = runner.invoke(explain, ["--model", str(tiny_dir), *how, "--text", str(tmp_path / "t.txt"), "-n", "3"],
                               catch_exceptions=False)
        assert "VocabProj top:" in result.output and "TokenChange +10" in result.output and "[[" in result.output
    result = runner.invoke(explain, ["--model", str(tiny_dir)])
    assert result.exit_code != 0 and "exactly one of" in str(result.exception)
