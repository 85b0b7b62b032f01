"""SAELens folders are read defensively: schema-checked cfg.json, header-checked shapes, translated hook names."""

import json
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from tiny import fuzz_settings, random_sae

from polysteer import PolysteerError
from polysteer.plugins.sae import SAE
from polysteer.plugins.sae.formats import parse_config, to_hook_point, to_saelens_hook_name
from polysteer.plugins.sae.pretrained import check_sae


@pytest.mark.parametrize("name, expected", [
    ("blocks.3.hook_resid_post", "text.blocks.3.resid_post"),
    ("blocks.0.hook_resid_pre", "text.blocks.0.resid_pre"),
    ("blocks.11.hook_mlp_out", "text.blocks.11.mlp_out"),
    ("blocks.7.hook_attn_out", "text.blocks.7.attn_out"),
    ("model.layers.12", "text.blocks.12.resid_post"),
    ("layers.4.mlp", "text.blocks.4.mlp_out"),
    ("text.blocks.2.resid_post", "text.blocks.2.resid_post"),
])
def test_hook_names_translate_to_hook_points(name, expected):
    assert to_hook_point(name) == expected


@pytest.mark.parametrize("name", ["blocks.3.attn.hook_z", "blocks.x.hook_resid_post", "embed", ""])
def test_hook_names_polysteer_cannot_steer_are_refused(name):
    with pytest.raises(PolysteerError, match="hook_name"):
        to_hook_point(name)


def test_saving_writes_the_transformerlens_name_and_loading_reads_it_back(tmp_path):
    sae = random_sae(hook_point="text.blocks.5.mlp_out")
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (cfg["hook_name"], cfg["hook_layer"]) == ("blocks.5.hook_mlp_out", 5)
    assert to_saelens_hook_name("text.blocks.5.mlp_out") == "blocks.5.hook_mlp_out"
    loaded = SAE.load(tmp_path / "sae")
    assert loaded.hook_point == "text.blocks.5.mlp_out"
    assert torch.equal(loaded.W_enc, sae.W_enc) and loaded.k == sae.k


def write(path, cfg, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def weights(d_in=8, d_sae=16, **extra):
    torch.manual_seed(0)
    return {"W_enc": torch.randn(d_in, d_sae), "W_dec": torch.randn(d_sae, d_in), "b_enc": torch.zeros(d_sae),
            "b_dec": torch.zeros(d_in), **extra}


@pytest.mark.parametrize("cfg, tensors, message", [
    ({"d_in": 10**6, "d_sae": 10**6}, {"b_dec": torch.zeros(8)}, "lacks a 2-D W_enc"),
    ({"d_in": 10**6, "d_sae": 10**6}, weights(), "different SAEs"),
    ({"d_in": "8"}, weights(), "d_in must be an integer"),
    ({"apply_b_dec_to_input": "false"}, weights(), "apply_b_dec_to_input must be true or false"),
    ({"architecture": "gated"}, weights(), "not supported"),
    ({"architecture": "topk"}, weights(), "needs 'k'"),
    ({"architecture": "topk", "k": 99}, weights(), "k must be an integer in 1..16"),
    ({"normalize_activations": "batch_norm"}, weights(), "normalize_activations='batch_norm' is not one of"),
    ({"dtype": "int8"}, weights(), "dtype must be one of"),
    ({"reshape_activations": "hook_z"}, weights(), "reshape_activations='hook_z'"),
    ({"rescale_acts_by_decoder_norm": 1}, weights(), "rescale_acts_by_decoder_norm must be true or false"),
    ({}, weights(scaling_factor=torch.full((16,), 2.0)), "finetuning scaling_factor"),
    ({"hook_name": 3}, weights(), "hook_name must be a string"),
    ({"hook_name": "blocks.1.attn.hook_z"}, weights(), "hook_name"),
    ({"polysteer": {"max_norm": "big"}}, weights(), "max_norm must be a finite number"),
    ({}, {**weights(), "W_dec": torch.full((16, 8), float("nan"))}, "NaN"),
    ({"architecture": "jumprelu"}, weights(), "lacks \\['threshold'\\]"),
    ({}, {**weights(), "b_enc": torch.zeros(3)}, "b_enc has shape"),
])
def test_bad_folders_get_one_line_errors_before_allocating(tmp_path, cfg, tensors, message):
    path = write(tmp_path / "sae", cfg, tensors)
    with pytest.raises(PolysteerError, match=message) as info:
        SAE.load(path)
    assert "\n" not in str(info.value)


def test_a_missing_architecture_is_inferred_from_k_or_a_threshold(tmp_path):
    topk = SAE.load(write(tmp_path / "a", {"k": 4}, weights()))
    jump = SAE.load(write(tmp_path / "b", {}, weights(threshold=torch.full((16,), 0.1))))
    plain = SAE.load(write(tmp_path / "c", {}, weights()))
    assert (topk.architecture, topk.k, jump.architecture, plain.architecture) == ("topk", 4, "jumprelu", "standard")
    assert torch.equal(jump.threshold, torch.full((16,), 0.1))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
KEYS = st.sampled_from(["d_in", "d_sae", "architecture", "k", "activation_fn_str", "activation_fn_kwargs",
                        "apply_b_dec_to_input", "normalize_activations", "hook_name", "model_name", "polysteer",
                        "metadata", "dtype", "reshape_activations", "rescale_acts_by_decoder_norm"])


@fuzz_settings(500)
@given(st.dictionaries(KEYS, JSON, max_size=8),
       st.dictionaries(st.sampled_from(["W_enc", "W_dec", "threshold"]),
                       st.lists(st.integers(0, 40), min_size=1, max_size=3).map(tuple), max_size=3))
def test_fuzzed_configs_parse_or_raise_only_polysteer_errors(cfg, shapes):
    try:
        fields = parse_config(cfg, shapes, "fuzz")
    except PolysteerError:
        return
    assert fields.architecture in ("standard", "topk", "jumprelu") and fields.d_in > 0 and fields.d_sae > 0


def gemma_scope_arrays(d_in=8, d_sae=16):
    gen = np.random.default_rng(0)
    return {"W_enc": gen.normal(size=(d_in, d_sae)).astype(np.float32),
            "W_dec": gen.normal(size=(d_sae, d_in)).astype(np.float32),
            "b_enc": gen.normal(size=d_sae).astype(np.float32), "b_dec": gen.normal(size=d_in).astype(np.float32),
            "threshold": np.full(d_sae, 0.3, dtype=np.float32)}


def test_a_gemma_scope_params_npz_loads_as_its_jumprelu_sae(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_5" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    arrays = gemma_scope_arrays()
    np.savez(folder / "params.npz", **arrays)
    for path in (folder, folder / "params.npz"):
        sae = SAE.load(path)
        assert (sae.architecture, sae.apply_b_dec_to_input) == ("jumprelu", False)
        assert sae.hook_point == "text.blocks.5.mlp_out"
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
        pre = x @ torch.from_numpy(arrays["W_enc"]) + torch.from_numpy(arrays["b_enc"])
        assert torch.allclose(sae.encode(x), pre * (pre > 0.3), atol=1e-6)
    assert SAE.load(folder, hook_point="blocks.9.hook_resid_post").hook_point == "text.blocks.9.resid_post"


def test_a_gemma_scope_file_with_objects_or_missing_arrays_is_refused(tmp_path):
    arrays = gemma_scope_arrays()
    np.savez(tmp_path / "objects.npz", **{**arrays, "W_dec": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(PolysteerError, match="Python objects"):
        SAE.load(tmp_path / "objects.npz")
    np.savez(tmp_path / "partial.npz", **{k: v for k, v in arrays.items() if k != "threshold"})
    with pytest.raises(PolysteerError, match="threshold"):
        SAE.load(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PolysteerError, match="not a numpy .npz"):
        SAE.load(tmp_path / "junk.npz")


GEMMA = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"


def hub_snapshot(cache, repo_id: str):
    """The snapshot folder of ``repo_id`` in a Hugging Face cache laid out as huggingface_hub writes it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return repo / "snapshots" / ("0" * 40)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_a_release_id_offline_and_uncached_fails_at_once_naming_the_release_and_the_fix(offline_cache):
    start = time.monotonic()
    with pytest.raises(PolysteerError) as info:
        SAE.load(GEMMA)
    message = str(info.value)
    assert time.monotonic() - start < 15 and "\n" not in message
    assert GEMMA in message and "google/gemma-scope-2b-pt-res" in message
    assert "HF_HUB_OFFLINE is set" in message and "run once online" in message


@pytest.mark.parametrize("sae, message", [
    ("gemma-scope-2b-pt-res-canonicall/layer_20/width_16k/canonical",
     "'gemma-scope-2b-pt-res-canonicall' is not a SAELens release \\(did you mean 'gemma-scope-2b-pt-res-canonical'"),
    ("gemma-scope-2b-pt-res-canonical/layer_99/width_16k/canonical", "has no SAE 'layer_99/width_16k/canonical'"),
    ("llama_scope_lxa_32x/l0a_32x", "stored in SAELens' 'llama_scope' layout"),
    ("gemma-scope-2b-pt-att-canonical/layer_3/width_16k/canonical", "attn.hook_z"),
    ("no-such-folder", "does not exist; give an SAE folder"),
])
def test_unknown_or_unreadable_release_ids_get_one_line_errors(offline_cache, sae, message):
    with pytest.raises(PolysteerError, match=message) as info:
        SAE.load(sae)
    assert "\n" not in str(info.value)


def test_without_sae_lens_a_release_id_says_to_install_it(offline_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # how Python marks a package that cannot be imported
    with pytest.raises(PolysteerError, match="need sae-lens: pip install sae-lens"):
        SAE.load(GEMMA)


def test_a_cached_gemma_scope_release_loads_offline_at_its_hook_point(offline_cache):
    folder = hub_snapshot(offline_cache, "google/gemma-scope-2b-pt-res") / "layer_20" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemma_scope_arrays())
    sae = SAE.load(GEMMA)
    assert (sae.architecture, sae.hook_point, sae.apply_b_dec_to_input) == ("jumprelu", "text.blocks.20.resid_post",
                                                                             False)
    assert sae.metadata["sae_lens_release"] == GEMMA


def test_a_cached_saelens_release_folds_its_norm_scaling_factor(offline_cache):
    snapshot = hub_snapshot(offline_cache, "tommmcgrath/gpt2-small-mlp-out-saes")
    cfg = {"d_in": 8, "d_sae": 16, "hook_point": "blocks.0.hook_mlp_out", "normalize_activations": True,
           "activation_fn_str": "relu"}  # a pre-6.0 SAELens cfg
    write(snapshot / "sae_group_gpt2_blocks.0.hook_mlp_out_24576:v1", cfg, weights())
    sae = SAE.load("gpt2-small-mlp-tm/blocks.0.hook_mlp_out")
    assert (sae.hook_point, sae.normalize_activations) == ("text.blocks.0.mlp_out", "none")
    assert torch.allclose(sae.W_enc, weights()["W_enc"] * 1.049317316132615)
    assert torch.allclose(sae.W_dec, weights()["W_dec"] / 1.049317316132615)


def test_local_folders_still_load_and_the_cli_type_checks_them(tmp_path):
    path = write(tmp_path / "sae", {"hook_name": "blocks.1.hook_resid_pre"}, weights())
    assert SAE.load(str(path)).hook_point == "text.blocks.1.resid_pre"
    assert check_sae(str(path)) == str(path)
    with pytest.raises(PolysteerError, match="^--sae: SAE 'missing' does not exist"):
        check_sae("missing")
