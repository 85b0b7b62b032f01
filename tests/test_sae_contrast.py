"""Token-level SAE contrast selection: normalised differences, the density filter, token rows by default."""

import json

import pytest
import torch

from polysteer import Direction, PolysteerError, make_finder
from polysteer.plugins.sae.contrast import SAEContrast
from polysteer.plugins.sae.model import SAE

D = 8
GENERIC, CONCEPT, SMALL, LARGE = 0, 1, 2, 3


def identity_sae(**metadata) -> SAE:
    """A ReLU SAE whose latent i reads and writes coordinate i, so planted coordinates are planted latents."""
    sae = SAE(D, D, architecture="standard", metadata=metadata)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D))
        sae.W_dec.copy_(torch.eye(D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def tokens(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows: a generic latent on every token (a bit stronger on positives) and a concept latent on a third
    of the positive tokens only. The generic one has the larger raw difference of means (1.0 vs 0.33)."""
    X_pos, X_neg = torch.zeros(n, D), torch.zeros(n, D)
    X_pos[:, GENERIC], X_neg[:, GENERIC] = 6.0, 5.0
    X_pos[: n // 3, CONCEPT] = 1.0
    return X_pos, X_neg


def test_a_latent_on_the_concepts_tokens_beats_a_dense_generic_latent():
    X_pos, X_neg = tokens()
    finder = SAEContrast(identity_sae()).fit(X_pos, X_neg)
    assert finder.features_.tolist() == [CONCEPT]
    assert torch.cosine_similarity(finder.direction_, torch.eye(D)[CONCEPT], dim=0) > 0.999
    assert finder.score(X_pos).mean() > finder.score(X_neg).mean()
    raw = SAEContrast(identity_sae(), normalize="none", max_density=1.0).fit(X_pos, X_neg)
    assert raw.features_.tolist() == [GENERIC]  # what the plain difference of means picks


def test_the_density_filter_drops_the_always_on_latent():
    X_pos, X_neg = tokens()
    kept = SAEContrast(identity_sae(), max_density=1.0).fit(X_pos, X_neg)
    assert kept.features_.tolist() == [GENERIC]  # always on, and its normalised gap (2.0) is the largest
    dropped = SAEContrast(identity_sae()).fit(X_pos, X_neg)
    assert dropped.density_[GENERIC] == 1.0 and dropped.contrast_[GENERIC] == float("-inf")
    assert dropped.features_.tolist() == [CONCEPT]
    with pytest.raises(PolysteerError, match="raise max_density"):
        SAEContrast(identity_sae()).fit(torch.full((4, D), 2.0), torch.ones(4, D))


def test_normalisation_lets_a_small_specific_latent_beat_a_large_one_with_the_same_firing_rate_gap():
    n = 200
    X_pos, X_neg = torch.zeros(n, D), torch.zeros(n, D)
    X_pos[: n // 2, SMALL] = 1.0  # fires on 50% of positives, never on negatives, at 1
    X_pos[: int(0.6 * n), LARGE] = 10.0  # fires on 60% of positives and 10% of negatives, at 10
    X_neg[: n // 10, LARGE] = 10.0
    assert SAEContrast(identity_sae(), normalize="none").fit(X_pos, X_neg).features_.tolist() == [LARGE]
    finder = SAEContrast(identity_sae()).fit(X_pos, X_neg)
    assert finder.features_.tolist() == [SMALL]
    assert finder.contrast_[SMALL] == pytest.approx(0.5 / 0.1875**0.5, rel=1e-5)  # gap / std over all tokens


def test_attention_sink_rows_are_left_out():
    X_pos, X_neg = tokens()
    X_neg[0, CONCEPT] = 1e4  # one sink-like row would make the concept latent look negative
    sae = identity_sae(max_norm=100.0)
    assert SAEContrast(sae).fit(X_pos, X_neg).features_.tolist() == [CONCEPT]
    assert SAEContrast(identity_sae()).fit(X_pos, X_neg).features_.tolist() != [CONCEPT]


def test_bad_parameters_are_refused():
    with pytest.raises(PolysteerError, match="unknown normalize 'zscore'"):
        make_finder("sae_contrast", sae=identity_sae(), normalize="zscore").fit(*tokens())
    with pytest.raises(PolysteerError, match="max_density must be in"):
        make_finder("sae_contrast", sae=identity_sae(), max_density=0.0).fit(*tokens())


def test_polysteer_find_fits_sae_contrast_on_token_rows_by_default(model_dir, invoke, tmp_path):
    sae = SAE(32, 64, architecture="topk", k=4, metadata={"hook_name": "text.blocks.1.resid_post"})
    sae.save(tmp_path / "sae")
    rows = [{"positive": "the ocean and the sea and the waves", "negative": "the city and the train to work"}] * 3
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    common = ["find", "--model", model_dir, "--data", tmp_path / "data.jsonl", "--layers", "1"]
    result = invoke(*common, "--finder", "sae_contrast", "--finder-param", f"sae={tmp_path / 'sae'}",
                    "-o", tmp_path / "sae_dir.safetensors", "--no-cache")
    assert result.exit_code == 0, result.output
    assert Direction.load(tmp_path / "sae_dir.safetensors").provenance["pooling"] == "tokens"
    result = invoke(*common, "-o", tmp_path / "mean.safetensors", "--no-cache")
    assert result.exit_code == 0, result.output
    assert Direction.load(tmp_path / "mean.safetensors").provenance["pooling"] == "mean"
