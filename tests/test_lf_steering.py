"""LF-Steering: latent selection, the sae_bias operator, the artifact, the consistency evaluator and the workflow."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import axis_sae, random_sae

from polysteer import Direction, PolysteerError, registry, steer
from polysteer.modalities.text.cli.sae_guided import lf
from polysteer.modalities.text.evaluators import judges
from polysteer.modalities.text.evaluators.consistency import (
    Consistency,
    ParaphraseGroup,
    is_correct,
    normalize_answer,
    read_paraphrase_groups,
)
from polysteer.modalities.text.sae.guided import (
    ConsistencyResult,
    agreeing_groups,
    fit_lf_steering,
    paraphrase_prompts,
)
from polysteer.plugins.sae.lf_steering import LFSteering, SAEBias, lf_direction, lf_plan

HP = "text.blocks.1.resid_post"
D = 32
GROUPS_FILE = Path(__file__).parent.parent / "benchmarks" / "data" / "paraphrase_groups.json"


def planted_groups(n_groups=24, per_group=4, latent=5, seed=0):
    """Every coordinate varies within groups alike, except ``latent``: it varies only where answers disagree."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_groups, D, generator=g).abs() + 1.0
    X = centres.repeat_interleave(per_group, 0) + 0.3 * torch.randn(n_groups * per_group, D, generator=g)
    groups = torch.arange(n_groups).repeat_interleave(per_group)
    consistent = (groups % 2 == 0)
    wobble = 2.0 * torch.rand(n_groups * per_group, generator=g) - 1.0
    X[:, latent] = 3.0 + torch.where(consistent, torch.zeros_like(wobble), 2.0 * wobble)
    return X, groups, consistent


def test_spread_score_picks_the_latent_that_varies_within_disagreeing_groups():
    X, groups, consistent = planted_groups()
    finder = LFSteering(axis_sae(D), top_k=3, score="spread").fit(X, groups, consistent)
    assert int(finder.latents_[0]) == 5 and finder.scores_[5] > 0.5
    assert (finder.scores_[finder.latents_] > 0).all() and len(finder.latents_) <= 3
    assert torch.isclose(finder.bias_[0], torch.tensor(3.0)) and (finder.pull_ == 1).all()
    shift = LFSteering(axis_sae(D), top_k=1, mode="shift", score="spread").fit(X, groups, consistent)
    z = axis_sae(D).encode(X)[:, 5]
    assert torch.isclose(shift.bias_[0], z[consistent].mean() - z[~consistent].mean()) and (shift.pull_ == 0).all()


def test_contrast_score_picks_the_latent_active_when_answers_agree():
    X, groups, consistent = planted_groups()
    X[:, 11] = 1.0 + 1.5 * consistent.float()  # latent 11 fires harder in agreeing groups; latent 5 only wobbles
    finder = LFSteering(axis_sae(D), top_k=2).fit(X, groups, consistent)
    assert finder.score == "contrast" and int(finder.latents_[0]) == 11 and 5 not in finder.latents_.tolist()
    z = axis_sae(D).encode(X)
    assert torch.isclose(finder.scores_[11], (z[consistent, 11].mean() - z[~consistent, 11].mean()) / z[:, 11].std(
        unbiased=False))
    spread = LFSteering(axis_sae(D), top_k=2, score="spread").fit(X, groups, consistent)
    assert int(spread.latents_[0]) == 5
    with pytest.raises(PolysteerError, match="score must be one of"):
        LFSteering(axis_sae(D), score="variance").fit(X, groups, consistent)


def test_localization_picks_the_layer_that_encodes_agreement():
    from polysteer.plugins.sae.lf_layers import localize_layers, paraphrase_pairs

    g = torch.Generator().manual_seed(3)
    groups = torch.arange(20).repeat_interleave(4)
    agree_group = groups % 2 == 0
    X = {f"text.blocks.{i}.resid_post": torch.randn(80, 12, generator=g) for i in range(4)}
    X["text.blocks.2.resid_post"][:, 0] += 2.5 * agree_group.float()  # only layer 2 knows the answers will agree
    pairs = paraphrase_pairs(groups.tolist())
    assert len(pairs) == 20 * 6 and pairs[0] == (0, 1)
    agree = [bool(agree_group[i]) for i, _ in pairs]
    found = localize_layers(X, groups.tolist(), pairs, agree)
    assert found.best == "text.blocks.2.resid_post" and found.accuracy[found.best] > 0.9
    assert max(a for hp, a in found.accuracy.items() if hp != found.best) < 0.75 and found.chance == 0.5
    with pytest.raises(PolysteerError, match="all 120 pairs agree"):
        localize_layers(X, groups.tolist(), pairs, [True] * len(pairs))


def test_selection_refuses_bad_inputs():
    X, groups, consistent = planted_groups()
    with pytest.raises(PolysteerError, match="all 24 groups agree"):
        LFSteering(axis_sae(D)).fit(X, groups, torch.ones_like(consistent))
    mixed = consistent.clone()
    mixed[0] = ~mixed[0]
    with pytest.raises(PolysteerError, match="differs between paraphrases"):
        LFSteering(axis_sae(D)).fit(X, groups, mixed)
    with pytest.raises(PolysteerError, match="one group id"):
        LFSteering(axis_sae(D)).fit(X, groups[:-1], consistent)
    with pytest.raises(PolysteerError, match="needs an SAE"):
        LFSteering().fit(X, groups, consistent)
    with pytest.raises(PolysteerError, match="d_in 32"):
        LFSteering(axis_sae(D)).fit(torch.randn(96, 16), groups, consistent)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_sae_bias_is_encode_bias_decode_plus_error(architecture):
    sae = random_sae(D, 64, architecture)
    h = torch.randn(2, 5, D) * 2
    latents, bias = torch.tensor([3, 17, 40]), torch.tensor([1.5, -0.5, 2.0])
    assert torch.equal(SAEBias(sae, latents, torch.zeros(3))(h, torch.zeros(D), 1.0), h)
    for coef in (1.0, 2.5):
        z = sae.encode(h)
        z[..., latents] += coef * bias
        out = SAEBias(sae, latents, bias)(h, torch.zeros(D), coef)
        assert torch.allclose(out, sae.decode(z) + sae.error(h), atol=1e-4)


def test_sae_bias_moves_the_latent_code_by_the_bias_and_pulls_to_a_target():
    sae = axis_sae(D)
    h = torch.rand(2, 3, D) + 0.5  # every +axis latent active
    latents = torch.tensor([2, 9])
    out = SAEBias(sae, latents, torch.tensor([1.0, 4.0]))(h, torch.zeros(D), 1.0)
    assert torch.allclose(sae.encode(out)[..., latents] - sae.encode(h)[..., latents], torch.tensor([1.0, 4.0]))
    pulled = SAEBias(sae, latents, torch.tensor([2.0, 2.0]), torch.ones(2))(h, torch.zeros(D), 1.0)
    assert torch.allclose(sae.encode(pulled)[..., latents], torch.full((2, 3, 2), 2.0), atol=1e-6)
    half = SAEBias(sae, latents, torch.tensor([2.0, 2.0]), torch.ones(2))(h, torch.zeros(D), 0.5)
    assert torch.allclose(sae.encode(half)[..., latents], (sae.encode(h)[..., latents] + 2.0) / 2, atol=1e-6)


def test_sae_bias_leaves_attention_sinks_alone():
    sae = axis_sae(D)
    sae.metadata["max_norm"] = 50.0
    h = torch.rand(1, 3, D)
    h[0, 0] *= 1000
    out = SAEBias(sae, [1], [5.0])(h, torch.zeros(D), 1.0)
    assert torch.equal(out[0, 0], h[0, 0]) and torch.allclose(out[0, 1:, 1], h[0, 1:, 1] + 5.0)


def test_sae_bias_without_its_sae_says_how_to_build_it():
    assert registry("operators")["sae_bias"] is SAEBias
    with pytest.raises(PolysteerError, match="to_plan"):
        SAEBias()(torch.randn(1, 2, D), torch.randn(D), 1.0)
    with pytest.raises(PolysteerError, match="one bias and one pull per latent"):
        SAEBias(axis_sae(D), [1, 2], [1.0])


def test_artifact_round_trips_and_to_plan_rebuilds_the_operator(tmp_path, llama):
    sae = axis_sae(D)
    sae.save(tmp_path / "sae")
    X, groups, consistent = planted_groups()
    finder = LFSteering(sae, top_k=2).fit(X, groups, consistent)
    lf_direction(finder, HP, tmp_path / "sae", coefficient=0.5).save(tmp_path / "lf.safetensors")
    shutil.rmtree(tmp_path / "sae")  # the file carries the SAE tensors it needs
    loaded = Direction.load(tmp_path / "lf.safetensors")
    assert loaded.operator == "sae_bias"
    assert loaded.finder["params"] == {"top_k": 2, "mode": "pull", "score": "contrast"}
    op = loaded.to_plan().interventions[0].operator
    assert isinstance(op, SAEBias) and torch.equal(op.sae.W_dec[op.latents], sae.W_dec[finder.latents_])
    assert torch.equal(op.bias, finder.bias_) and torch.equal(op.pull, finder.pull_)
    assert loaded.to_plan().interventions[0].coefficient == 0.5
    assert loaded.to_plan(operator="add").interventions[0].operator == "add"
    ids = torch.randint(4, 100, (1, 6))
    seen = []
    record = lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
    with torch.no_grad():
        for plan in (None, loaded.to_plan(1.0), lf_plan(loaded, sae, 1.0)):
            with steer(llama, plan or []):
                handle = llama.model.layers[1].register_forward_hook(record)
                llama(input_ids=ids)
                handle.remove()
    clean, rebuilt, overridden = seen
    assert torch.allclose(rebuilt, op(clean, torch.zeros(D), 1.0), atol=1e-5) and not torch.allclose(rebuilt, clean)
    assert torch.equal(rebuilt, overridden)


def test_a_direction_without_its_sae_tensors_or_path_names_the_fix(tmp_path):
    X, groups, consistent = planted_groups()
    direction = lf_direction(LFSteering(axis_sae(D)).fit(X, groups, consistent), HP, "")
    direction.extras = {k: v for k, v in direction.extras.items() if ".sae." not in k}
    with pytest.raises(PolysteerError, match="lf_plan"):
        direction.to_plan()


def test_consistency_is_one_for_identical_answers_and_lower_otherwise():
    judge = registry("evaluators")["consistency"]()
    same = ["Paris.", "paris", "The Paris!", "PARIS"]
    assert judge.evaluate(same, groups=[0] * 4) == [1.0] * 4
    mixed = ["Paris", "Paris", "Lyon", "Paris"]
    assert judge.group_agreement(mixed, [0] * 4) == {0: 0.5}
    scores = judge.evaluate(mixed + same, groups=[0] * 4 + [1] * 4)
    assert sum(scores[:4]) / 4 == pytest.approx(0.5) and scores[2] == 0.0 and scores[4:] == [1.0] * 4
    with pytest.raises(PolysteerError, match="groups="):
        judge.evaluate(same)
    with pytest.raises(PolysteerError, match="mode"):
        Consistency("fuzzy")


def test_contains_agreement_accepts_a_restated_answer():
    answers = ["Paris", "The capital of France is Paris.", "Lyon", "Parisian food"]
    agree = Consistency("contains").agreement(answers)
    assert agree[0, 1] == 1 and agree[1, 0] == 1 and agree[0, 2] == 0 and agree[0, 3] == 0
    assert Consistency("exact").agreement(answers)[0, 1] == 0


def test_agreeing_groups_by_threshold_or_median():
    agreement = {0: 1.0, 1: 0.5, 2: 0.0, 3: 0.5}
    assert agreeing_groups(agreement, 1.0) == {0} and agreeing_groups(agreement, 0.5) == {0, 1, 3}
    assert agreeing_groups(agreement, None) == {0}
    assert agreeing_groups({0: 0.0, 1: 0.0, 2: 1 / 6}, None) == {2}
    assert agreeing_groups({0: 1.0, 1: 1.0, 2: 0.0}, None) == {0, 1}


def test_similarity_agreement_uses_the_threshold(monkeypatch):
    vectors = {"a": [1.0, 0.0], "b": [0.95, 0.312], "c": [0.0, 1.0]}
    fake = lambda texts: torch.nn.functional.normalize(torch.tensor([vectors[t] for t in texts]), dim=1)  # noqa: E731
    monkeypatch.setattr(judges, "embed", fake)
    assert Consistency("similarity").group_agreement(["a", "b", "c"], [0, 0, 0]) == {0: pytest.approx(1 / 3)}
    assert Consistency("similarity", threshold=0.99).group_agreement(["a", "b"], [0, 0]) == {0: 0.0}


def test_answers_are_normalised_and_checked_with_aliases():
    assert normalize_answer("  \nThe Capital: PARIS!\nmore") == "capital paris"
    group = ParaphraseGroup("Seven", ("How many days are in a week?", "A week has how many days?"), ("7",))
    assert is_correct("There are 7 days.", group) and is_correct("Seven days", group)
    assert not is_correct("There are 17 days.", group)


def test_the_paraphrase_file_is_valid_and_bad_files_are_refused(tmp_path):
    groups = read_paraphrase_groups(GROUPS_FILE)
    assert len(groups) >= 40 and all(len(g.paraphrases) == 4 for g in groups)
    assert len({p for g in groups for p in g.paraphrases}) == 4 * len(groups)
    prompts, ids = paraphrase_prompts(groups[:2], "Short answer.")
    assert prompts[0] == "What is the capital of France? Short answer." and ids == [0] * 4 + [1] * 4
    bad = tmp_path / "bad.json"
    for text, match in (("{", "not valid JSON"), ("[]", "non-empty list"), ('[{"paraphrases": ["a", "b"]}]', "answer"),
                        ('[{"answer": "x", "paraphrases": ["a"]}]', "at least 2")):
        bad.write_text(text)
        with pytest.raises(PolysteerError, match=match):
            read_paraphrase_groups(bad)


def test_workflow_fits_on_model_activations(llama, tokenizer, tmp_path):
    sae = random_sae(D, 64, "standard")
    sae.save(tmp_path / "sae")
    groups = [ParaphraseGroup("x", ("tell me about the ocean", "describe the sea", "what is the ocean")),
              ParaphraseGroup("y", ("the best food", "your favorite food", "good food")),
              ParaphraseGroup("z", ("a new book", "an old book", "the book"))]
    baseline = ConsistencyResult(["a"] * 9, [0, 0, 0, 1, 1, 1, 2, 2, 2], {0: 1.0, 1: 0.0, 2: 1 / 3}, [False] * 9)
    direction, finder, _ = fit_lf_steering(llama, tokenizer, groups, tmp_path / "sae", top_k=4, baseline=baseline)
    assert direction.hook_points == [HP] and direction.provenance["n_agreeing"] == 1
    assert isinstance(direction.to_plan().interventions[0].operator, SAEBias) and 1 <= len(finder.latents_) <= 4


def test_cli_writes_an_lf_direction(llama, tokenizer, tmp_path):
    llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    random_sae(D, 64, "standard").save(tmp_path / "sae")
    same = ["tell me about the ocean"] * 3  # identical prompts: identical greedy answers, a group that agrees
    rows = [{"answer": "x", "paraphrases": same}] + [
        {"answer": "y", "paraphrases": [f"{w} the {n}" for w in ("describe", "write", "tell me about")]}
        for n in ("park", "city", "book", "wedding", "music")]
    (tmp_path / "groups.json").write_text(json.dumps(rows))
    args = ["--model", str(tmp_path / "model"), "--sae", str(tmp_path / "sae"),
            "--groups", str(tmp_path / "groups.json"), "--max-new-tokens", "4", "--suffix", "",
            "-o", str(tmp_path / "lf.safetensors")]
    result = CliRunner().invoke(lf, args, catch_exceptions=False)
    assert "unsteered consistency" in result.output and "wrote" in result.output
    assert Direction.load(tmp_path / "lf.safetensors").operator == "sae_bias"
