"""Attribution of a concept score to layers and SAE features, checked against finite differences."""

import json
import re

import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model

from polysteer import Direction, Intervention, Operator, PolysteerError, steer
from polysteer.cli import get_cli
from polysteer.modalities.text.attribution import (
    _left_padded,
    concept_score,
    concept_token_ids,
    feature_attribution,
    layer_attribution,
    rank_by_attribution,
    rank_direction_layers,
)
from polysteer.modalities.text.modality import TextModality
from polysteer.plugins.sae.model import SAE

PROMPTS = ["tell me about the day", "what is the", "describe a park in the city", "my friend"]
KEYWORDS = ["ocean", "sea", "fish"]
POINTS = ["text.blocks.0.resid_post", "text.blocks.1.resid_pre", "text.blocks.1.mlp_out", "text.blocks.2.resid_post"]


class Scale(Operator):
    """``h (1 + c)``: scaling the residual stream, whose first-order effect is grad x act."""

    def __call__(self, h, v, coef):
        return h + coef * h


@pytest.fixture(scope="module")
def double():
    """float64 (RMSNorm still runs in float32 inside) and a peaked head, so finite differences are accurate."""
    model = tiny_model("llama", seed=2).double()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    return model


def mean_score(model, tokenizer, plan=None, prompts=PROMPTS, batch_size=3):
    ids = concept_token_ids(tokenizer, KEYWORDS)
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        inputs = _left_padded(tokenizer, prompts[start : start + batch_size], True)
        with torch.no_grad(), steer(model, plan or []):
            total += float(concept_score(model(**inputs).logits, ids).sum())
    return total / len(prompts)


def central_difference(model, tokenizer, make_plan, eps=1e-2, prompts=PROMPTS):
    up, down = (mean_score(model, tokenizer, make_plan(e), prompts) for e in (eps, -eps))
    return (up - down) / (2 * eps)


def test_grad_x_act_matches_finite_differences(double, tokenizer):
    result = layer_attribution(double, tokenizer, PROMPTS, KEYWORDS, POINTS, batch_size=3)
    assert result.score == pytest.approx(mean_score(double, tokenizer), abs=1e-9)
    zero = torch.zeros(32)
    for hp in POINTS:
        fd = central_difference(double, tokenizer, lambda e: Intervention(zero, hp, e, Scale()))
        assert result.act[hp] == pytest.approx(fd, rel=2e-2, abs=1e-5), hp


def test_projection_on_a_direction_matches_finite_differences(double, tokenizer):
    result = layer_attribution(double, tokenizer, PROMPTS, KEYWORDS, POINTS, batch_size=3)
    # small next to the hidden states (norm ~0.1): the float32 RMSNorm inside limits how small eps can go
    v = 0.01 * torch.randn(32, generator=torch.Generator().manual_seed(0))
    along = result.along({hp: v for hp in POINTS})
    for hp in POINTS:
        fd = central_difference(double, tokenizer, lambda e: Intervention(v, hp, e))
        assert along[hp] == pytest.approx(fd, rel=1e-2), hp


def test_batching_does_not_change_attribution(double, tokenizer):
    one = layer_attribution(double, tokenizer, PROMPTS, KEYWORDS, POINTS, batch_size=1)
    many = layer_attribution(double, tokenizer, PROMPTS, KEYWORDS, POINTS, batch_size=4)
    for hp in POINTS:
        assert one.act[hp] == pytest.approx(many.act[hp], rel=1e-4, abs=1e-9)


def test_layer_ranking_returns_every_layer(llama, tokenizer):
    points = TextModality().hook_points(llama)
    result = layer_attribution(llama, tokenizer, PROMPTS, KEYWORDS, points)
    ranking = rank_by_attribution(result.act, absolute=True)
    assert set(ranking) == set(points)
    values = [abs(v) for v in ranking.values()]
    assert values == sorted(values, reverse=True)
    direction = Direction({hp: torch.randn(32) for hp in points if hp.endswith("resid_post")}, "text",
                          TextModality().identity(llama), 32)
    ranked = rank_direction_layers(llama, tokenizer, direction, PROMPTS, KEYWORDS)
    assert set(ranked) == set(direction.hook_points) and list(ranked.values()) == sorted(ranked.values(), reverse=True)


def test_sae_feature_attribution(double, tokenizer):
    sae = SAE(32, 64, architecture="standard").double()
    hp = "text.blocks.1.resid_post"
    result = feature_attribution(double, tokenizer, PROMPTS, KEYWORDS, hp, sae, skip_first=False)
    layer = layer_attribution(double, tokenizer, PROMPTS, KEYWORDS, [hp])
    for j in range(5):  # a feature's steering effect is the layer gradient along its decoder row
        assert float(result.effect[j]) == pytest.approx(layer.along({hp: sae.W_dec[j].detach()})[hp], rel=1e-6)
    top = result.top(3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
    assert result.top(2, by="effect")[0][0] == int(result.effect.argmax())
    with pytest.raises(PolysteerError, match="d_in"):
        feature_attribution(double, tokenizer, PROMPTS, KEYWORDS, hp, SAE(16, 8, architecture="standard"))


def test_sae_attribution_is_latent_grad_times_activation(double, tokenizer):
    sae = SAE(32, 16, architecture="standard").double()
    hp = "text.blocks.2.resid_post"
    result = feature_attribution(double, tokenizer, PROMPTS, KEYWORDS, hp, sae, skip_first=False)
    j = int(result.attribution.abs().argmax())

    class ScaleLatent(Operator):
        """Scales latent j's contribution ``z_j W_dec[j]`` by ``1 + c``: first-order change ``c * attribution_j``."""

        def __call__(self, h, v, coef):
            return h + coef * sae.encode(h)[..., j : j + 1] * sae.W_dec[j]

    fd = central_difference(double, tokenizer, lambda e: Intervention(torch.zeros(32), hp, e, ScaleLatent()))
    assert float(result.attribution[j]) == pytest.approx(fd, rel=2e-2, abs=1e-6)


def test_concept_tokens_skip_unknown_words(tokenizer):
    ids = concept_token_ids(tokenizer, ["ocean", "zzzunknown"])
    assert ids == [tokenizer.convert_tokens_to_ids("ocean")]
    with pytest.raises(PolysteerError, match="known token"):
        concept_token_ids(tokenizer, ["qqq"])


def test_no_hooks_left(llama, tokenizer):
    count = lambda m: sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())  # noqa: E731
    before = count(llama)
    layer_attribution(llama, tokenizer, PROMPTS, KEYWORDS, POINTS)
    assert count(llama) == before
    assert all(p.requires_grad and p.grad is None for p in llama.parameters())


def test_sweep_rank_layers_attribution(model_dir, tmp_path, invoke):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"positive": f"the ocean and the sea {w}", "negative": f"the city {w}"})
                              for w in ("today", "is big", "was old")))
    direction = tmp_path / "d.safetensors"
    assert invoke("find", "--model", model_dir, "--data", data, "--layers", "all", "-o", direction).exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the day\nwhat is the weather\n")
    result = invoke("sweep", "--model", model_dir, "-d", direction, "--prompts-file", prompts, "--coefs", "0,4",
                    "--keywords", "ocean,sea", "--max-new-tokens", 4, "--rank-layers", "attribution",
                    "--top-layers", 1, "-o", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    ranking = re.findall(r"^\s*\d+\. (\S+)", result.output, re.M)
    assert sorted(ranking) == [f"text.blocks.{i}.resid_post" for i in range(3)]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert {r["hook_point"] for r in rows} == {ranking[0]}
    result = CliRunner().invoke(get_cli(), ["sweep", "--model", str(model_dir), "-d", str(direction), "--concept",
                                            "sea", "--rank-layers", "attribution", "-o", str(tmp_path / "s2")])
    assert isinstance(result.exception, PolysteerError) and "--keywords" in str(result.exception)


def test_attribute_command(model_dir, tmp_path, invoke):
    sae = SAE(32, 16, architecture="standard", metadata={"hook_name": "text.blocks.1.resid_post"})
    sae.save(tmp_path / "sae")
    result = invoke("attribute", "--model", model_dir, "--keywords", "ocean,sea", "--sae", tmp_path / "sae", "-n", 4,
                    "-o", tmp_path / "attr.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "attr.json").read_text())
    assert len(report["layers"]) == 3 and len(report["features"]) == 4
    assert "top SAE features at text.blocks.1.resid_post" in result.output
