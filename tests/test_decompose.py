"""Decomposing steering vectors into SAE features (Mayne et al.) and `polysteer explain --decompose`."""

import json

import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_model, tiny_tokenizer

from polysteer import Direction, PolysteerError
from polysteer.modalities.text.cli.sae import explain
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.sae.decompose import applied_vector, token_activations
from polysteer.plugins.sae.decompose import (
    contrast_decomposition,
    decoder_cosine,
    measure_typical_norm,
    norm_warning,
    reconstruction_cosine,
    typical_norm,
)
from polysteer.plugins.sae.model import SAE

HP = "text.blocks.1.resid_post"


def planted_sae(d_in: int = 64, d_sae: int = 128, **metadata) -> SAE:
    sae = SAE(d_in, d_sae, "topk", k=8, metadata={"hook_name": HP, **metadata})
    sae.reset_parameters(seed=1)
    return sae


def test_decoder_cosine_recovers_planted_rows_with_their_signs():
    sae = planted_sae()
    rows = sae.W_dec.detach()
    vector = 2 * rows[3] - 1.5 * rows[7]
    for scale in (1e-3, 1.0, 1e4):  # the cosine ignores the norm
        parts = decoder_cosine(sae, scale * vector)
        assert parts.positive(1)[0].feature == 3 and parts.positive(1)[0].score > 0.7
        assert parts.negative(1)[0].feature == 7 and parts.negative(1)[0].score < -0.45
    assert all(c.score > 0 for c in parts.positive(200)) and all(c.score < 0 for c in parts.negative(200))
    assert sae.encode(vector)[7] == 0  # why the vector is never encoded: its negative part vanishes
    with pytest.raises(PolysteerError, match="d_in 64"):
        decoder_cosine(sae, torch.ones(32))
    with pytest.raises(PolysteerError, match="zero"):
        decoder_cosine(sae, torch.zeros(64))


def test_contrast_decomposition_recovers_a_planted_feature():
    sae = planted_sae(max_norm=100.0)
    rows = sae.W_dec.detach()
    g = torch.Generator().manual_seed(0)
    X_neg = torch.randn(300, 64, generator=g) + 3 * rows[9]  # feature 9 marks the negatives
    X_pos = torch.randn(300, 64, generator=g) + 3 * rows[5]
    parts = contrast_decomposition(sae, X_pos, X_neg)
    assert parts.positive(1)[0].feature == 5 and parts.negative(1)[0].feature == 9
    assert reconstruction_cosine(sae, parts, rows[5] - rows[9]) > 0.8
    sink = torch.cat([X_pos, 1e4 * torch.ones(1, 64)])  # an attention sink above max_norm changes nothing
    assert torch.allclose(contrast_decomposition(sae, sink, X_neg).scores, parts.scores)
    assert not torch.allclose(contrast_decomposition(sae, sink, X_neg, skip_outliers=False).scores, parts.scores)


def test_norm_rule():
    sae = planted_sae(max_norm=1440.0, training={"max_norm_ratio": 10.0})
    assert typical_norm(sae) == pytest.approx(144.0) and typical_norm(planted_sae()) is None
    assert measure_typical_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 9.0]])) == 5.0
    assert norm_warning(144.0, 144.0) is None and norm_warning(20.0, 144.0) is None
    assert "larger" in norm_warning(1e5, 144.0) and "smaller" in norm_warning(1.0, 144.0)
    assert norm_warning(1440.0, 144.0) is None and norm_warning(1441.0, 144.0) is not None


def test_applied_vector_uses_coefficient_scale_and_weight():
    v = torch.nn.functional.normalize(torch.ones(32), dim=0)
    direction = Direction({HP: v}, "text", {}, 32, coefficient=2.0, scales={HP: 3.0}, weights={HP: 0.5})
    assert applied_vector(direction, HP).norm() == pytest.approx(3.0)
    assert applied_vector(direction, HP, 10.0).norm() == pytest.approx(15.0)
    with pytest.raises(PolysteerError, match="no vector at text.blocks.2"):
        applied_vector(direction, "text.blocks.2.resid_post")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model on disk, a 32-wide SAE for its block 1, a planted direction, texts and contrastive data."""
    root = tmp_path_factory.mktemp("decompose")
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    texts = ["the ocean is big and the sea is blue", "tell me about the city", "my friend likes coffee and cake"]
    (root / "texts.txt").write_text("\n".join(texts))
    typical = measure_typical_norm(token_activations(model, tokenizer, texts, HP, chat=False))
    sae = planted_sae(32, 64, max_norm=10 * typical, training={"max_norm_ratio": 10.0})
    sae.save(root / "sae")
    rows = sae.W_dec.detach()
    vector = 2 * rows[3] - 2 * rows[7]
    identity = TextModality().identity(model)
    Direction({HP: vector / vector.norm()}, "text", identity, 32, scales={HP: typical}).save(root / "d.safetensors")
    pairs = [{"positive": f"the ocean and the sea {w}", "negative": f"the city and the train {w}"}
             for w in ("today", "is big", "was old")]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs))
    return root


def run_explain(files, *extra):
    args = ["--model", files / "model", "--sae", files / "sae", "--direction", files / "d.safetensors",
            "--decompose", "-n", "2", *extra]
    return CliRunner().invoke(explain, [str(a) for a in args], catch_exceptions=False)


def test_explain_decompose_lists_signed_features_with_vocabproj(files):
    result = run_explain(files, "--data", files / "pairs.jsonl")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "decoder cosine" in out and "contrast (mean SAE code" in out and "rebuilds the vector with cosine" in out
    cosine_lines = out.split("decoder cosine")[1].split("contrast")[0].splitlines()[1:]
    assert cosine_lines[0].split()[:2] == ["+", "3"] and "VocabProj: [" in cosine_lines[0]
    assert [line.split()[:2] for line in cosine_lines if line.lstrip().startswith("-")][0] == ["-", "7"]
    assert "Warning" not in result.stderr  # norm = the typical norm at coefficient 1


@pytest.mark.parametrize("extra, warns", [
    ([], False), (["--coef", "1000"], True), (["--coef", "0.001"], True),
    (["--coef", "1000", "--text", "{texts}"], True), (["--text", "{texts}"], False),
])
def test_norm_warning_fires_only_far_from_the_typical_norm(files, extra, warns):
    result = run_explain(files, *[e.format(texts=files / "texts.txt") for e in extra])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == (1 if warns else 0) and all("typical activation norm" in w for w in warnings)
    assert "Warning" not in result.stdout


def test_explain_decompose_errors(files):
    runner = CliRunner()
    result = runner.invoke(explain, ["--model", str(files / "model"), "--sae", str(files / "sae"), "--feature", "3",
                                     "--decompose"])
    assert result.exit_code != 0 and "--decompose takes --direction" in str(result.exception)
    result = runner.invoke(explain, ["--model", str(files / "model"), "--direction", str(files / "d.safetensors"),
                                     "--data", str(files / "pairs.jsonl")])
    assert result.exit_code != 0 and "go with --decompose" in str(result.exception)
