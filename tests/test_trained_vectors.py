"""Trained steering vectors: common checks for model finders, both objectives, the gate, the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner
from tiny import peaked_llama, tiny_tokenizer

from polysteer import Direction, Intervention, PolysteerError, make_finder, registry, steer
from polysteer.cli import get_cli, main
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.trained.data import TrainRow
from polysteer.modalities.text.trained.finder import TrainedVector
from polysteer.modalities.text.trained.objectives import Supervised, contrast_penalty
from polysteer.plugins.operators.gated import GatedAdd, LearnedAdd

MODEL_FINDERS = sorted(n for n, item in registry("direction_finders").items.items() if getattr(item, "needs_model", 0))
PROMPTS = ["tell me about the day", "what is the weather", "describe a park", "write a note", "my friend is",
           "the book was"]
OCEAN, CITY = "the ocean and the sea", "the city and the train"
HP = "text.blocks.1.resid_post"


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def rows(target=OCEAN, contrast=CITY):
    return [TrainRow(p, target, contrast) for p in PROMPTS]


@pytest.fixture(scope="module")
def peaked():
    return peaked_llama()


def build(name, **params):
    item = registry("direction_finders")[name]
    return make_finder(name, **{**item.check_params(32), **params})


def margin(model, tokenizer, direction=None):
    """Mean log p(ocean) - log p(city) over the prompts, steered by ``direction`` when given."""
    scorer = Supervised(model, tokenizer)
    with torch.no_grad():
        if direction is None:
            target, contrast = scorer.terms(rows())
        else:
            with steer(model, direction.to_plan()):
                target, contrast = scorer.terms(rows())
    return float(target.mean() - contrast.mean())


def test_trained_is_registered_and_excluded_from_activation_checks():
    assert "trained" in MODEL_FINDERS
    with pytest.raises(PolysteerError, match="train-vector"):
        make_finder("trained").fit(torch.randn(4, 8), torch.randn(4, 8))


@pytest.fixture(params=MODEL_FINDERS)
def name(request):
    return request.param


def test_shape_and_loss_decreases(name, peaked, tokenizer):
    finder = build(name).fit_model(peaked, tokenizer, rows())
    assert list(finder.vectors_) == [HP] and finder.vectors_[HP].shape == (32,)
    assert torch.isclose(finder.direction_.norm(), torch.tensor(1.0)) and finder.scale_ > 0
    assert finder.best_monitor_ < finder.baseline_
    assert not [k for k in vars(make_finder(name)) if k.endswith("_")]


def test_same_seed_same_vectors(name, peaked, tokenizer):
    a = build(name, seed=3).fit_model(peaked, tokenizer, rows()).vectors_[HP]
    b = build(name, seed=3).fit_model(peaked, tokenizer, rows()).vectors_[HP]
    assert torch.equal(a, b)


def test_swapping_target_and_contrast_flips_the_effect(name, peaked, tokenizer):
    modality = TextModality()
    toward = build(name).fit_model(peaked, tokenizer, rows(OCEAN, CITY)).to_direction(peaked, modality)
    away = build(name).fit_model(peaked, tokenizer, rows(CITY, OCEAN)).to_direction(peaked, modality)
    base = margin(peaked, tokenizer)
    # the effect flips; the vectors need not be opposite (both also raise the words the completions share)
    assert margin(peaked, tokenizer, toward) > base > margin(peaked, tokenizer, away)


def test_no_hooks_left_after_training(name, peaked, tokenizer):
    before = n_hooks(peaked)
    build(name).fit_model(peaked, tokenizer, rows())
    assert n_hooks(peaked) == before
    assert all(p.requires_grad and p.grad is None for p in peaked.parameters())  # flags restored, no grads


def test_supervised_raises_target_likelihood(peaked, tokenizer):
    scorer = Supervised(peaked, tokenizer, contrast_weight=0.0)
    before = scorer.monitor(rows())
    finder = TrainedVector(layers=[1, 2], steps=30, lr=0.05, patience=None, progress=False).fit_model(
        peaked, tokenizer, rows())
    with steer(peaked, finder.to_direction(peaked, TextModality()).to_plan()):
        after = scorer.monitor(rows())
    assert after < before - 0.5  # -mean log p(target) fell by more than half a nat per token


def test_contrast_penalty_is_bounded():
    values = contrast_penalty(torch.tensor([-50.0, -5.0, -0.1]))
    assert values[0] >= 0 and values[0] < 1e-6 and values[2] > values[1]


def test_max_norm_is_respected(peaked, tokenizer):
    finder = TrainedVector(layers=1, steps=15, lr=0.2, max_norm=0.3, patience=None, progress=False)
    assert finder.fit_model(peaked, tokenizer, rows()).vectors_[HP].norm() <= 0.3 + 1e-5


def reward(texts):
    """Fraction of words about the sea."""
    words = {"ocean", "sea", "wave", "ship", "fish", "beach"}
    return [sum(w in words for w in t.split()) / max(1, len(t.split())) for t in texts]


def test_reward_objective_raises_reward(peaked, tokenizer):
    finder = TrainedVector(objective="reward", reward=reward, layers=1, steps=20, lr=0.05, eval_every=10,
                           patience=None, num_samples=4, max_new_tokens=6, val_fraction=0, progress=False)
    finder.fit_model(peaked, tokenizer, PROMPTS)
    assert -finder.best_monitor_ > -finder.baseline_ + 0.2
    for baseline in ("running",):
        TrainedVector(objective="reward", reward=reward, baseline=baseline, layers=1, steps=2, eval_every=1,
                      max_new_tokens=3, progress=False).fit_model(peaked, tokenizer, PROMPTS[:2])


def test_no_hooks_left_when_the_reward_raises(peaked, tokenizer):
    def broken(texts):
        raise RuntimeError("reward server down")

    before = n_hooks(peaked)
    finder = TrainedVector(objective="reward", reward=broken, layers=[0, 2], steps=3, max_new_tokens=3,
                           progress=False)
    with pytest.raises(RuntimeError, match="reward server down"):
        finder.fit_model(peaked, tokenizer, PROMPTS)
    assert n_hooks(peaked) == before
    with pytest.raises(PolysteerError, match="one float per completion"):
        TrainedVector(objective="reward", reward=lambda t: [1.0], layers=1, steps=2, max_new_tokens=3,
                      progress=False).fit_model(peaked, tokenizer, PROMPTS)
    assert n_hooks(peaked) == before


def test_gate_round_trip_and_plan(peaked, tokenizer, tmp_path):
    finder = TrainedVector(layers=1, steps=10, lr=0.05, gate=True, patience=None, progress=False)
    direction = finder.fit_model(peaked, tokenizer, rows()).to_direction(peaked, TextModality())
    assert direction.operator == "gated_add"
    loaded = Direction.load(direction.save(tmp_path / "gated.safetensors"))
    saved = finder.operator_params_[HP]
    assert torch.equal(loaded.operator_params(HP)["w"], saved["w"]) and torch.equal(loaded.operator_params(HP)["b"],
                                                                                   saved["b"])
    operator = loaded.to_plan().interventions[0].operator
    assert isinstance(operator, GatedAdd) and torch.equal(operator.w, saved["w"])
    assert loaded.to_plan(operator="add").interventions[0].operator == "add"
    # inference (gated_add from the file) reproduces training (learned_add on the live tensors)
    ids = torch.tensor([[10, 20, 30, 40]])
    trained = LearnedAdd(finder.vectors_[HP], saved["w"], saved["b"][0])
    with torch.no_grad(), steer(peaked, loaded.to_plan()):
        from_file = peaked(input_ids=ids).logits
    with torch.no_grad(), steer(peaked, Intervention(finder.vectors_[HP], HP, 1.0, trained)):
        live = peaked(input_ids=ids).logits
    assert torch.allclose(from_file, live, atol=1e-5)


def test_gated_add_scales_each_position():
    w, b, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0]), torch.tensor([0.0, 1.0])
    h = torch.tensor([[[-20.0, 0.0], [0.0, 0.0], [20.0, 0.0]]])
    out = GatedAdd(w, b)(h, v, 2.0)
    assert torch.allclose(out[0, :, 1], torch.tensor([0.0, 1.0, 2.0]), atol=1e-6)
    assert torch.equal(out[..., 0], h[..., 0])
    with pytest.raises(PolysteerError, match="needs its gate"):
        GatedAdd()(h, v, 1.0)


def test_bad_rows_are_refused(peaked, tokenizer):
    with pytest.raises(PolysteerError, match="prompt"):
        TrainedVector(progress=False).fit_model(peaked, tokenizer, [{"target": "x"}])
    with pytest.raises(PolysteerError, match="empty target"):
        TrainedVector(layers=1, steps=1, progress=False).fit_model(peaked, tokenizer, ["tell me"])
    with pytest.raises(PolysteerError, match="objective"):
        TrainedVector(objective="dpo").fit_model(peaked, tokenizer, rows())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, peaked):
    path = tmp_path_factory.mktemp("tiny-peaked")
    peaked.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_train_vector_command(model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "target": OCEAN, "contrast": CITY}) for p in PROMPTS))
    out = tmp_path / "t.safetensors"
    args = ["train-vector", "--model", model_dir, "--data", data, "--layers", "1", "--steps", 5, "--gate", "-o", out]
    result = CliRunner().invoke(get_cli(), [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    direction = Direction.load(out)
    assert direction.finder["name"] == "trained" and direction.operator == "gated_add"
    assert direction.provenance["n_rows"] == len(PROMPTS) and "held-out loss" in result.output
    args = ["train-vector", "--model", model_dir, "--data", data, "--objective", "reward", "--reward-keywords",
            "ocean,sea", "--layers", "1", "--steps", 2, "--max-new-tokens", 3, "-o", tmp_path / "r.safetensors"]
    assert CliRunner().invoke(get_cli(), [str(a) for a in args], catch_exceptions=False).exit_code == 0


def test_find_with_trained_finder_is_a_one_line_error(model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"positive": OCEAN, "negative": CITY}))
    with pytest.raises(SystemExit):
        main(["find", "--model", str(model_dir), "--finder", "trained", "--data", str(data), "-o", str(tmp_path / "x")])
    assert "Error: " in capsys.readouterr().err


def test_early_stopping_on_a_flat_monitor(peaked, tokenizer):
    finder = TrainedVector(objective="reward", reward=lambda texts: [0.0] * len(texts), layers=1, steps=10,
                           eval_every=1, patience=2, max_new_tokens=3, progress=False)
    finder.fit_model(peaked, tokenizer, PROMPTS[:2])
    assert finder.stopped_early_ and finder.n_steps_ == 3
    with pytest.raises(PolysteerError, match="made no progress"):
        finder.to_direction(peaked, TextModality())


def test_operator_tensors_the_operator_does_not_take_are_refused(llama):
    direction = Direction({HP: torch.ones(32)}, "text", TextModality().identity(llama), 32,
                          extras={f"operator.{HP}.w": torch.ones(32)})
    with pytest.raises(PolysteerError, match="does not take the tensors"):
        direction.to_plan()
