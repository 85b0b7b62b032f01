"""Preference-trained steering vectors (RePS, BiPO): the losses, the bidirectional effect, bad rows, the CLI."""

import json
import math

import pytest
import torch
from tiny import peaked_llama, tiny_tokenizer

from polysteer import Direction, PolysteerError, steer
from polysteer.cli import main
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.trained import Preference, Supervised, TrainedVector, TrainRow
from polysteer.modalities.text.trained.data import completion_ids
from polysteer.modalities.text.trained.preference import SteeringSign

PROMPTS = ["tell me about the day", "what is the weather", "describe a park", "write a note", "my friend is",
           "the book was"]
OCEAN, CITY = "the ocean and the sea", "the city and the train"
ROWS = [TrainRow(p, OCEAN, CITY) for p in PROMPTS]
VARIANTS = ("reps", "bipo")


@pytest.fixture(scope="module")
def peaked():
    return peaked_llama()


def train(model, tokenizer, variant, **params):
    settings = {"layers": 1, "steps": 20, "lr": 0.05, "eval_every": 5, "patience": None, "progress": False}
    finder = TrainedVector(objective="preference", preference=variant, **{**settings, **params})
    return finder.fit_model(model, tokenizer, ROWS)


def margin(model, tokenizer, direction=None, coefficient=1.0):
    """Mean per-token log p(target) - log p(contrast) over the rows, steered by ``direction`` when given."""
    scorer = Supervised(model, tokenizer)
    with torch.no_grad():
        if direction is None:
            target, contrast = scorer.terms(ROWS)
        else:
            with steer(model, direction.to_plan(coefficient=coefficient)):
                target, contrast = scorer.terms(ROWS)
    return float(target.mean() - contrast.mean())


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_decreases(variant, peaked, tokenizer):
    finder = train(peaked, tokenizer, variant)
    assert finder.best_monitor_ < finder.baseline_ - 0.2
    losses = [h["loss"] for h in finder.history_ if "loss" in h]
    assert min(losses[-5:]) < losses[0]


@pytest.mark.filterwarnings("ignore:steering at")  # the tiny model's activations are far smaller than |v|
@pytest.mark.parametrize("variant", VARIANTS)
def test_plus_v_prefers_the_target_and_minus_v_the_contrast(variant, peaked, tokenizer):
    direction = train(peaked, tokenizer, variant).to_direction(peaked, TextModality())
    base = margin(peaked, tokenizer)
    plus, minus = margin(peaked, tokenizer, direction, 1.0), margin(peaked, tokenizer, direction, -1.0)
    assert plus > base + 1.0 and minus < base - 1.0


def test_bipo_at_zero_is_log_2_and_reps_matches_its_formula(peaked, tokenizer):
    bipo = Preference(peaked, tokenizer, SteeringSign(), "bipo")
    with torch.no_grad():
        for step in range(4):  # both drawn directions
            assert float(bipo.loss(ROWS, step)) == pytest.approx(math.log(2), abs=1e-5)
    assert bipo.monitor(ROWS) == pytest.approx(math.log(2), abs=1e-5)
    assert train(peaked, tokenizer, "bipo", steps=1).baseline_ == pytest.approx(math.log(2), abs=1e-5)
    # RePS with no vector, from the per-token means of the supervised scorer and the completions' lengths
    with torch.no_grad():
        target, contrast = (t.mean() for t in Supervised(peaked, tokenizer).terms(ROWS[:1]))
    n_target, n_contrast = len(completion_ids(tokenizer, OCEAN)), len(completion_ids(tokenizer, CITY))
    gap = float(contrast * n_contrast - target * n_target)  # log p(contrast) - log p(target), summed
    up, down = max(gap, 1) * target - contrast, max(-gap, 1) * contrast - target
    expected = -(torch.nn.functional.logsigmoid(up) + torch.nn.functional.logsigmoid(down))
    reps = Preference(peaked, tokenizer, SteeringSign(), "reps", margin=0.0)
    assert reps.monitor(ROWS[:1]) == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_vector(variant, peaked, tokenizer):
    a = train(peaked, tokenizer, variant, steps=6, seed=4).vectors_["text.blocks.1.resid_post"]
    b = train(peaked, tokenizer, variant, steps=6, seed=4).vectors_["text.blocks.1.resid_post"]
    assert torch.equal(a, b) and a.norm() > 0


def test_bipo_draws_both_directions():
    sign = SteeringSign()
    draws = {float(torch.rand(1, generator=torch.Generator().manual_seed(s * 1_000_003 + 1))) < 0.5 for s in range(8)}
    assert draws == {True, False}  # the seeds above give both signs, so BiPO really trains -v too
    with sign(-1.0):
        assert sign.value == -1.0
    assert sign.value == 1.0


@pytest.mark.parametrize(("rows", "params", "message"), [
    ([TrainRow("tell me", OCEAN, "")], {}, "row 0 .* has no contrast"),
    ([TrainRow("tell me", OCEAN, CITY), TrainRow("hi", "", CITY)], {}, "row 1 .* has no target"),
    (["tell me"], {}, "has no"),
    (ROWS, {"preference": "dpo"}, "unknown preference 'dpo'"),
    (ROWS, {"beta": 0.0}, "beta must be"),
    (ROWS, {"margin": -1.0}, "margin must be"),
])
def test_bad_input_is_refused_before_any_forward_pass(rows, params, message, peaked, tokenizer):
    calls = []
    handle = peaked.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(PolysteerError, match=message) as error:
            TrainedVector(objective="preference", layers=1, steps=2, progress=False, **params).fit_model(
                peaked, tokenizer, rows)
    finally:
        handle.remove()
    assert "\n" not in str(error.value) and not calls


def test_train_vector_command_with_preference(tmp_path, peaked, invoke, capsys):
    model_dir = tmp_path / "model"
    peaked.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "target": OCEAN, "contrast": CITY}) for p in PROMPTS))
    out = tmp_path / "b.safetensors"
    result = invoke("train-vector", "--model", model_dir, "--data", data, "--objective", "preference",
                    "--preference", "bipo", "--beta", 0.2, "--layers", 1, "--steps", 4, "-o", out)
    assert result.exit_code == 0, result.output
    assert "trained (bipo)" in result.output and "held-out loss 0.6931" in result.output
    direction = Direction.load(out)
    assert direction.finder["params"]["preference"] == "bipo" and direction.finder["params"]["beta"] == 0.2
    with pytest.raises(SystemExit):
        main(["train-vector", "--model", str(model_dir), "--data", str(data), "--beta", "0.2", "-o", str(out)])
    assert "Error: --beta goes with --objective preference" in capsys.readouterr().err
