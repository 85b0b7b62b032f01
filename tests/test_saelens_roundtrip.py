"""SAEs move between sae-lens and polysteer: saved by one, loaded by the other, encode and decode agree."""

import json
import shutil

import pytest
import sae_lens as saelens  # in the dev extra
import torch
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from polysteer import PolysteerError
from polysteer.plugins.sae import SAE

ATOL = 1e-5
D_IN, D_SAE = 16, 48
CASES = [(arch, norm, b_dec) for arch in ("standard", "topk", "jumprelu")
         for norm in ("none", "constant_norm_rescale", "layer_norm") for b_dec in (True, False)]


def saelens_sae(arch: str, seed: int = 0, dtype: str = "float32", **cfg):
    """A sae-lens inference SAE with random weights, biases and (JumpReLU) thresholds of both signs."""
    classes = {"standard": ("StandardSAE", {}), "topk": ("TopKSAE", {"k": 6}), "jumprelu": ("JumpReLUSAE", {})}
    name, extra = classes[arch]
    config = getattr(saelens, f"{name}Config")(
        d_in=D_IN, d_sae=D_SAE, dtype=dtype, metadata=SAEMetadata(hook_name="blocks.2.hook_resid_post",
                                                                          model_name="tiny"), **extra, **cfg)
    sae = getattr(saelens, name)(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if param.ndim == 1 else 1.0))
    return sae.eval()


def inputs(seed: int = 1, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(5, 7, D_IN, generator=generator) * scale + 0.5


def differences(ours: SAE, theirs, x: torch.Tensor, theirs_x: torch.Tensor | None = None) -> dict[str, float]:
    """Max abs differences of encode, decode (of the same latents) and forward; sae-lens' decode is stateful
    (it undoes the normalisation of the last encode), so it runs right after its encode."""
    with torch.no_grad():
        z_theirs = theirs.encode(x if theirs_x is None else theirs_x)
        decoded_theirs = theirs.decode(z_theirs)
        z = ours.encode(x)
        return {"encode": float((z - z_theirs).abs().max()),
                "decode": float((ours.decode(z_theirs, x) - decoded_theirs).abs().max()),
                "forward": float((ours(x) - theirs(x if theirs_x is None else theirs_x)).abs().max())}


@pytest.mark.parametrize("arch, norm, apply_b_dec", CASES)
def test_an_sae_saved_by_saelens_encodes_and_decodes_as_saelens_does(tmp_path, arch, norm, apply_b_dec):
    theirs = saelens_sae(arch, normalize_activations=norm, apply_b_dec_to_input=apply_b_dec)
    theirs.save_model(tmp_path / "sae")
    ours = SAE.load(tmp_path / "sae")
    assert (ours.architecture, ours.normalize_activations, ours.apply_b_dec_to_input) == (arch, norm, apply_b_dec)
    assert ours.hook_point == "text.blocks.2.resid_post"
    diffs = differences(ours, theirs, inputs())
    assert max(diffs.values()) < ATOL, diffs
    assert ours.encode(inputs()).count_nonzero() > 0


@pytest.mark.parametrize("arch, norm, apply_b_dec", CASES)
def test_an_sae_saved_by_polysteer_loads_in_saelens_with_the_same_numbers(tmp_path, arch, norm, apply_b_dec):
    ours = polysteer_sae(arch, norm, apply_b_dec)
    ours.save(tmp_path / "ours")
    theirs = saelens.SAE.load_from_disk(tmp_path / "ours")
    assert type(theirs).__name__ == {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}[arch]
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert (theirs.cfg.normalize_activations, theirs.cfg.apply_b_dec_to_input) == (norm, apply_b_dec)
    diffs = differences(ours, theirs, inputs())
    assert max(diffs.values()) < ATOL, diffs


def polysteer_sae(arch: str, norm: str = "none", apply_b_dec: bool = True, seed: int = 3) -> SAE:
    """A polysteer SAE with random weights, biases and (JumpReLU) thresholds of both signs."""
    sae = SAE(D_IN, D_SAE, arch, 6 if arch == "topk" else None, apply_b_dec, {"hook_name": "text.blocks.2.resid_post"},
              normalize_activations=norm)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if param.ndim == 1 else 1.0))
    return sae.eval()


def test_topk_rescaled_by_decoder_norm_is_folded_to_the_same_latents(tmp_path):
    theirs = saelens_sae("topk", rescale_acts_by_decoder_norm=True)
    theirs.save_model(tmp_path / "sae")
    ours = SAE.load(tmp_path / "sae")
    assert torch.allclose(ours.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-6)
    diffs = differences(ours, theirs, inputs())
    assert max(diffs.values()) < ATOL * 10, diffs  # folding reorders float32 products of latents ~50


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_a_checkpoint_scaling_factor_is_folded_as_saelens_folds_it(tmp_path, arch):
    theirs = saelens_sae(arch, normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path / "sae")
    (tmp_path / "sae" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    ours = SAE.load(tmp_path / "sae")
    assert ours.normalize_activations == "none"
    x = inputs()
    with torch.no_grad():  # the SAE was trained on activations * 2.5 (sae-lens' ActivationScaler)
        assert float((ours.encode(x) - theirs.encode(x * 2.5)).abs().max()) < ATOL * 10
        assert float((ours(x) - theirs(x * 2.5) / 2.5).abs().max()) < ATOL * 10
    theirs.fold_activation_norm_scaling_factor(2.5)  # what sae-lens' trainer and from_pretrained do
    diffs = differences(ours, theirs, x)
    assert max(diffs.values()) < ATOL, diffs


def test_without_a_scaling_factor_the_sae_runs_unscaled_as_in_saelens(tmp_path):
    theirs = saelens_sae("standard", normalize_activations="expected_average_only_in")
    theirs.save_model(tmp_path / "sae")
    with pytest.warns(UserWarning, match="no scaling factor"):
        ours = SAE.load(tmp_path / "sae")
    diffs = differences(ours, theirs, inputs())
    assert max(diffs.values()) < ATOL, diffs


def test_a_checkpoint_whitening_is_folded_as_saelens_folds_it(tmp_path):
    theirs = saelens_sae("jumprelu", normalize_activations="covariance_whitening", apply_b_dec_to_input=False)
    theirs.save_model(tmp_path / "sae")
    generator = torch.Generator().manual_seed(5)
    matrix = torch.randn(D_IN, D_IN, generator=generator, dtype=torch.float64) + 4 * torch.eye(D_IN)
    stats = {"mean": torch.randn(D_IN, generator=generator, dtype=torch.float64), "matrix": matrix,
             "inverse_matrix": torch.linalg.inv(matrix).contiguous()}
    save_file(stats, str(tmp_path / "sae" / "activation_whitening.safetensors"))
    ours = SAE.load(tmp_path / "sae")
    theirs.fold_activation_whitening(stats["mean"], stats["matrix"], stats["inverse_matrix"])
    diffs = differences(ours, theirs, inputs())
    with torch.no_grad():
        scale = float(theirs(inputs()).abs().max())  # both fold in float64, then round to float32 weights
    assert max(diffs.values()) < 1e-6 * scale, (diffs, scale)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_cfg_dtype_is_kept_both_ways(tmp_path, dtype):
    theirs = saelens_sae("topk", dtype=dtype)
    theirs.save_model(tmp_path / "sae")
    ours = SAE.load(tmp_path / "sae", dtype=None)
    assert ours.W_enc.dtype == getattr(torch, dtype) and SAE.load(tmp_path / "sae").W_enc.dtype == torch.float32
    x = inputs().to(getattr(torch, dtype))
    with torch.no_grad():
        assert torch.equal(ours.encode(x), theirs.encode(x))
    ours.save(tmp_path / "ours")
    back = saelens.SAE.load_from_disk(tmp_path / "ours")
    assert back.cfg.dtype == dtype and back.W_enc.dtype == getattr(torch, dtype)
    assert torch.equal(back.W_dec, ours.W_dec)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """An SAE saved by sae-lens (TransformerLens hook name) for the tiny Llama, and texts to run it on."""
    root = tmp_path_factory.mktemp("saelens-cli")
    config = saelens.JumpReLUSAEConfig(d_in=32, d_sae=64, apply_b_dec_to_input=False,
                                       metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny"))
    sae = saelens.JumpReLUSAE(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, 64, generator=generator))
        sae.W_dec.copy_(sae.W_enc.T / 8)
        sae.threshold.fill_(0.05)
    sae.save_model(root / "sae")
    rows = [{"text": " ".join(["ocean sea wave beach"] * 3 if i % 2 else ["city train school job"] * 3),
             "label": i % 2} for i in range(12)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "plain.txt").write_text("the ocean and the sea\nthe city and the train\nmy good day\n")
    return root


def test_a_saelens_sae_drives_explain_detect_feature_and_sae_contrast(cli_files, model_dir, invoke):
    cfg = json.loads((cli_files / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    sae = ["--sae", cli_files / "sae"]
    result = invoke("explain", "--model", model_dir, *sae, "--feature", 3, "--text", cli_files / "plain.txt", "-n", 2)
    assert result.exit_code == 0 and "VocabProj top:" in result.output and "TokenChange +10" in result.output
    result = invoke("detect", "--model", model_dir, "--feature", 3, *sae, "--texts", cli_files / "plain.txt")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.output
    result = invoke("detect", "--model", model_dir, "--finder", "sae_contrast",
                    "--finder-param", f"sae={cli_files / 'sae'}", "--finder-param", "top_k=4",
                    "--train", cli_files / "train.jsonl", "--texts", cli_files / "train.jsonl",
                    "--hook-point", "text.blocks.1.resid_post")
    assert result.exit_code == 0 and result.stdout.startswith("AUROC"), result.output


def test_a_cached_release_id_works_as_a_cli_sae_and_an_uncached_one_fails_before_loading(cli_files, model_dir, invoke,
                                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(cli_files / "sae", repo / "snapshots" / ("0" * 40) / "blocks.1.hook_resid_pre")
    release_sae = ["--sae", "gpt2-small-res-jb/blocks.1.hook_resid_pre"]
    result = invoke("detect", "--model", model_dir, "--feature", 3, *release_sae, "--texts", cli_files / "plain.txt")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.output
    release = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    with pytest.raises(PolysteerError, match=f"^--sae: SAE {release}: .*HF_HUB_OFFLINE is set"):
        invoke("detect", "--feature", 3, "--sae", release, "--texts", cli_files / "plain.txt")  # default model unused
