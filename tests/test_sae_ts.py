"""SAE-TS end to end on a planted tiny model: training set, effect model, targeted vectors, finder and CLI.

The planted model generates only 16 words, each with its own random unembedding row, and the SAE at the last
block detects those words (its rows are their mean activations, which are unrelated to the unembedding rows).
Steering along a feature's decoder row therefore rarely makes the model write that word; the direction that does
is what SAE-TS must learn from random feature-space vectors.
"""

import json
import random

import pytest
import torch
from click.testing import CliRunner
from tiny import WORDS, tiny_model, tiny_tokenizer

from polysteer import PolysteerError, make_finder
from polysteer.cli import get_cli
from polysteer.direction import Direction
from polysteer.modalities.text.sae.ts import (
    RIDGES,
    EffectModel,
    fit_effects,
    measure_effects,
    random_feature_vectors,
)
from polysteer.plugins.sae import SAE

HP = "text.blocks.2.resid_post"
WORD_IDS = torch.arange(4, 4 + 16 * 6, 6)
PROMPTS = ["tell me about the ocean", "describe a good day", "what is your favorite food", "write a short note"]
HELDOUT = ["what is important in life", "tell me about the park", "describe the weather", "write a good book"]
SETTINGS = {"n_vectors": 96, "max_new_tokens": 3, "relative_norms": (1.0, 4.0), "vectors_per_batch": 32}


@pytest.fixture(scope="module")
def planted():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[WORD_IDS] = torch.randn(len(WORD_IDS), 32, generator=torch.Generator().manual_seed(1))
    rng = random.Random(0)
    ids = torch.tensor([[rng.randrange(4, len(WORDS) + 4) for _ in range(24)] for _ in range(64)])
    seen = []
    handle = model.model.layers[2].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple)
                                                                                      else o))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    acts, flat = seen[0].detach().reshape(-1, 32), ids.reshape(-1)
    mean = acts.mean(0)
    rows = torch.nn.functional.normalize(torch.stack([acts[flat == t].mean(0) - mean for t in WORD_IDS]), dim=1)
    sae = SAE(32, len(WORD_IDS), "topk", k=1, metadata={"hook_name": HP})
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean)
    return model, tiny_tokenizer(), sae


@pytest.fixture(scope="module")
def effects(planted):
    model, tokenizer, sae = planted
    return fit_effects(model, tokenizer, sae, PROMPTS, **SETTINGS)


def test_random_feature_vectors_are_sparse_seeded_and_in_range(planted):
    sae = planted[2]
    a = random_feature_vectors(sae, 20, (2.0, 3.0), max_features=2, seed=5)
    assert torch.equal(a, random_feature_vectors(sae, 20, (2.0, 3.0), max_features=2, seed=5))
    assert not torch.equal(a, random_feature_vectors(sae, 20, (2.0, 3.0), max_features=2, seed=6))
    assert ((a.norm(dim=1) >= 2.0 - 1e-4) & (a.norm(dim=1) <= 3.0 + 1e-4)).all()
    codes = torch.linalg.lstsq(sae.W_dec.detach().T, a.T).solution.T  # the rows are independent: exact codes
    assert ((codes.abs() > 1e-3).sum(1) <= 2).all() and (codes > -1e-3).all()
    pooled = random_feature_vectors(sae, 10, (1.0, 1.0), pool=[3], seed=0)
    assert torch.allclose(pooled, torch.nn.functional.normalize(sae.W_dec[3].detach(), dim=0).expand(10, -1), atol=1e-5)
    with pytest.raises(PolysteerError, match="non-empty pool"):
        random_feature_vectors(sae, 4, (3.0, 1.0))


def test_effect_model_predicts_heldout_effects_better_than_zero_and_the_bias(effects):
    assert effects.info["n_heldout"] == 19 and effects.info["ridge"] in RIDGES
    assert effects.info["heldout_explained"] > 0.2
    assert effects.info["heldout_explained"] > effects.info["heldout_bias_only"] + 0.1


def test_targeted_vector_raises_the_target_more_per_side_effect_than_the_decoder_row(planted, effects):
    model, tokenizer, sae = planted
    norm = 3 * effects.info["typical_norm"]
    totals = {"targeted": [0.0, 0.0], "decoder": [0.0, 0.0]}
    for f in range(sae.d_sae):
        onehot = torch.zeros(sae.d_sae)
        onehot[f] = 1.0
        units = torch.stack([effects.targeted_vector(onehot), sae.W_dec[f].detach()])
        measured = measure_effects(model, tokenizer, sae, HP, units * norm, HELDOUT, max_new_tokens=3)
        for name, e in zip(totals, measured):
            totals[name][0] += float(e[f])
            totals[name][1] += float(e.abs().sum() - e[f].abs())
    ratio = {name: target / side for name, (target, side) in totals.items()}
    assert totals["targeted"][0] > 0.3 and ratio["targeted"] > 3 * max(ratio["decoder"], 0.01), totals


def test_effect_model_file_round_trip_and_bad_files(effects, tmp_path):
    path = effects.save(tmp_path / "effects.safetensors")
    loaded = EffectModel.load(path)
    assert torch.equal(loaded.W, effects.W) and torch.equal(loaded.b, effects.b)
    assert loaded.info["heldout_explained"] == pytest.approx(effects.info["heldout_explained"])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PolysteerError, match="cannot read the effect model"):
        EffectModel.load(tmp_path / "junk.safetensors")


def test_sae_ts_finder_targets_the_contrast_feature(planted, effects):
    sae = planted[2]
    g = torch.Generator().manual_seed(0)
    X_neg = sae.b_dec.detach() + 0.01 * torch.randn(40, 32, generator=g)
    X_pos = X_neg + 0.5 * sae.W_dec[5].detach()
    finder = make_finder("sae_ts", sae=sae, effects=effects).fit(X_pos, X_neg)
    onehot = torch.zeros(sae.d_sae)
    onehot[5] = 1.0
    assert finder.feature_ == 5 and torch.allclose(finder.direction_, effects.targeted_vector(onehot))
    assert finder.scale_ == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(PolysteerError, match="maps"):
        make_finder("sae_ts", sae=sae, effects=EffectModel(torch.zeros(32, 3), torch.zeros(3))).fit(X_pos, X_neg)


@pytest.fixture(scope="module")
def folders(planted, tmp_path_factory):
    model, tokenizer, sae = planted
    root = tmp_path_factory.mktemp("sae-ts")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    sae.save(root / "sae")
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    (root / "pairs.jsonl").write_text("\n".join(json.dumps({"positive": "ocean sea wave ship", "negative": n})
                                                for n in ("the park is big", "my job is good")))
    return root


def _run(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_a_direction_that_loads_and_reuses_the_cache(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSTEER_CACHE", str(tmp_path / "cache"))
    common = ["sae", "ts", "--model", folders / "model", "--sae", folders / "sae", "--prompts", folders / "prompts.txt",
              "--vectors", 24, "--max-new-tokens", 2, "--ridge", 0.1]
    result = _run(*common, "--feature", 3, "-o", tmp_path / "a.safetensors")
    assert result.exit_code == 0, result.output
    direction = Direction.load(tmp_path / "a.safetensors")
    assert direction.hook_points == [HP] and direction.provenance["target_feature"] == 3
    assert direction.finder["name"] == "sae_ts" and direction.provenance["effect_model"]["n_vectors"] == 24
    assert "held-out effects explained" in result.output
    result = _run(*common, "--data", folders / "pairs.jsonl", "-o", tmp_path / "b.safetensors",
                  "--effects", tmp_path / "effects.safetensors")
    assert result.exit_code == 0 and "using cached SAE-TS effect model" in result.stderr
    assert (tmp_path / "effects.safetensors").is_file() and Direction.load(tmp_path / "b.safetensors").vectors[HP].any()


def test_find_with_the_sae_ts_finder(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSTEER_CACHE", str(tmp_path / "cache"))
    sae = SAE.load(folders / "sae")
    EffectModel(sae.W_dec.detach().T.clone(), torch.zeros(sae.d_sae)).save(tmp_path / "e.safetensors")
    result = _run("find", "--model", folders / "model", "--data", folders / "pairs.jsonl", "--layers", 2,
                  "--finder", "sae_ts", "--finder-param", f"sae={folders / 'sae'}",
                  "--finder-param", f"effects={tmp_path / 'e.safetensors'}", "-o", tmp_path / "f.safetensors")
    assert result.exit_code == 0, result.output
    direction = Direction.load(tmp_path / "f.safetensors")
    assert direction.finder["name"] == "sae_ts" and direction.hook_points == [HP]


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --feature N or --data FILE"),
    (["--feature", 1, "--data", "PAIRS"], "exactly one of"),
    (["--feature", 99], "--feature 99 out of range: the SAE has 16 latents"),
    (["--feature", 1, "--norm-low", 2, "--norm-high", 1], "--norm-low 2.0 is above --norm-high 1.0"),
    (["--feature", 1, "--effects", "BAD"], "the effect model BAD maps (32, 3)"),
])
def test_bad_input_is_one_line_before_the_model_loads(folders, tmp_path, args, message):
    EffectModel(torch.zeros(32, 3), torch.zeros(3)).save(tmp_path / "bad.safetensors")
    args = [{"PAIRS": folders / "pairs.jsonl", "BAD": tmp_path / "bad.safetensors"}.get(a, a) for a in args]
    message = message.replace("BAD", str(tmp_path / "bad.safetensors"))
    result = CliRunner().invoke(get_cli(), [str(a) for a in ["sae", "ts", "--model", tmp_path / "no-model",
                                                             "--sae", folders / "sae", *args, "-o",
                                                             tmp_path / "o.safetensors"]])
    assert result.exit_code != 0 and isinstance(result.exception, PolysteerError)
    assert message in str(result.exception) and "\n" not in str(result.exception)
