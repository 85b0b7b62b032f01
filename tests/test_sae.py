"""The SAE module, the SAELens on-disk format, the sae_clamp operator, contrast selection and feature flow."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import random_sae

from polysteer import Direction, Intervention, PolysteerError, make_finder, registry, steer
from polysteer.plugins.sae.model import SAE
from polysteer.plugins.sae.steer import (
    FEATURE_KEY,
    SAEClamp,
    feature_activation,
    feature_direction,
    feature_plan,
)

HP = "text.blocks.1.resid_post"


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_encode_decode_error_identity(architecture):
    sae = random_sae(architecture=architecture)
    h = torch.randn(5, 7, 32)
    z = sae.encode(h)
    assert z.shape == (5, 7, 64) and (z >= 0).all()
    assert torch.allclose(sae.decode(z) + sae.error(h), h, atol=1e-5)
    if architecture == "topk":
        assert ((z > 0).sum(-1) <= 4).all() and (z > 0).sum(-1).float().mean() > 2
    if architecture == "jumprelu":
        assert ((z == 0) | (z > 0.2)).all()


def test_topk_keeps_the_k_largest_preactivations():
    sae = random_sae(k=3)
    h = torch.randn(10, 32)
    pre = sae.pre_activations(h)
    z = sae.encode(h)
    expected = pre.topk(3, dim=-1).indices.sort(-1).values
    for row in range(10):
        kept = z[row].nonzero().flatten()
        assert set(kept.tolist()) <= set(expected[row].tolist())


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_save_load_roundtrip(tmp_path, architecture):
    sae = random_sae(architecture=architecture)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg["d_in"] == 32 and cfg["d_sae"] == 64
    keys = set(load_file(str(tmp_path / "sae" / "sae_weights.safetensors")))
    assert {"W_enc", "W_dec", "b_enc", "b_dec"} <= keys and ("threshold" in keys) == (architecture == "jumprelu")
    loaded = SAE.load(tmp_path / "sae")
    h = torch.randn(4, 32)
    assert torch.allclose(loaded.encode(h), sae.encode(h)) and loaded.metadata["hook_name"] == HP
    assert not list((tmp_path / "sae").glob("*.tmp"))


def test_loads_legacy_saelens_config(tmp_path):
    sae = random_sae()
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for key in ("architecture", "k"):
        cfg.pop(key)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = SAE.load(tmp_path)
    assert loaded.architecture == "topk" and loaded.k == 4


def test_fp16_save_is_half_the_size(tmp_path):
    sae = random_sae()
    sae.save(tmp_path / "a")
    sae.save(tmp_path / "b", dtype=torch.float16)
    assert load_file(str(tmp_path / "b" / "sae_weights.safetensors"))["W_enc"].dtype == torch.float16
    assert torch.allclose(SAE.load(tmp_path / "b").W_dec, sae.W_dec, atol=1e-3)


def test_clear_errors_for_bad_directories(tmp_path):
    with pytest.raises(PolysteerError, match="cfg.json"):
        SAE.load(tmp_path)
    sae = random_sae()
    sae.save(tmp_path)
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "b_enc"}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(PolysteerError, match="lacks.*b_enc"):
        SAE.load(tmp_path)
    weights["b_enc"] = torch.zeros(63)
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(PolysteerError, match="b_enc has shape"):
        SAE.load(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(PolysteerError, match="truncated"):
        SAE.load(tmp_path)


def test_d_in_mismatch_is_refused(llama):
    sae = random_sae(d_in=48)
    with pytest.raises(PolysteerError, match="d_in 48.*d_model 32"):
        sae.encode(torch.randn(3, 32))
    with pytest.raises(PolysteerError, match="d_in 48"):
        make_finder("sae_contrast", sae=sae).fit(torch.randn(4, 32), torch.randn(4, 32))


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_sae_clamp_equals_encode_set_decode_plus_error(architecture):
    sae = random_sae(architecture=architecture)
    h = torch.randn(2, 5, 32) * 2
    j = int(sae.encode(h).sum((0, 1)).argmax())
    z = sae.encode(h)
    z[..., j] = 7.0
    expected = sae.decode(z) + sae.error(h)
    assert torch.allclose(SAEClamp(sae, j)(h, sae.W_dec[j], 7.0), expected, atol=1e-4)
    assert torch.allclose(feature_activation(sae, h, j), sae.encode(h)[..., j], atol=1e-6)


def test_sae_clamp_is_registered_and_needs_its_sae():
    assert registry("operators")["sae_clamp"] is SAEClamp
    with pytest.raises(PolysteerError, match="SAEClamp\\(sae, feature\\)"):
        SAEClamp()(torch.randn(1, 2, 32), torch.randn(32), 1.0)


def test_feature_direction_save_load_and_plans(tmp_path, llama):
    sae = random_sae()
    sae.save(tmp_path / "sae")
    ids = torch.randint(4, 100, (1, 6))
    add = feature_direction(sae, 5, HP)
    clamp = feature_direction(sae, 5, HP, operator="sae_clamp", sae_path=str(tmp_path / "sae"))
    clamp.save(tmp_path / "f5.safetensors")
    loaded = Direction.load(tmp_path / "f5.safetensors")
    assert int(loaded.extras[FEATURE_KEY][0]) == 5 and loaded.provenance["sae"] == "sae"  # no absolute path
    seen = []
    record = lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
    with torch.no_grad():
        handle = llama.model.layers[1].register_forward_hook(record)
        llama(input_ids=ids)
        handle.remove()
        with steer(llama, feature_plan(loaded, coefficient=9.0)):
            handle = llama.model.layers[1].register_forward_hook(record)  # after steer's hook: sees its edit
            llama(input_ids=ids)
            handle.remove()
    clean, steered = seen
    z = sae.encode(clean)
    z[..., 5] = 9.0
    assert torch.allclose(steered, sae.decode(z) + sae.error(clean), atol=1e-4)
    with torch.no_grad():
        base = llama(input_ids=ids).logits
        with steer(llama, add.to_plan(3.0)):
            added = llama(input_ids=ids).logits
        with steer(llama, Intervention(3.0 * sae.W_dec[5].detach(), HP, 1.0)):
            manual = llama(input_ids=ids).logits
    assert torch.allclose(added, manual, atol=1e-5) and not torch.allclose(base, added)


def test_a_saved_clamp_direction_rebuilds_its_operator_in_to_plan(tmp_path, llama):
    sae = random_sae()
    sae.save(tmp_path / "sae")
    direction = feature_direction(sae, 5, HP, operator="sae_clamp", sae_path=str(tmp_path / "sae"))
    direction.save(tmp_path / "f5.safetensors")
    loaded = Direction.load(tmp_path / "f5.safetensors")
    (iv,) = loaded.to_plan(9.0)
    assert isinstance(iv.operator, SAEClamp) and iv.operator.feature == 5  # TopK keeps every encoder column
    ids = torch.randint(4, 100, (1, 6))
    with torch.no_grad():
        with steer(llama, loaded.to_plan(9.0)):
            rebuilt = llama(input_ids=ids).logits
        with steer(llama, feature_plan(loaded, sae, coefficient=9.0)):
            explicit = llama(input_ids=ids).logits
    assert torch.allclose(rebuilt, explicit, atol=1e-6) and not torch.allclose(rebuilt, llama(input_ids=ids).logits)


def test_contrast_finds_the_planted_feature():
    sae = random_sae(d_sae=64, k=6)
    torch.manual_seed(1)
    X_neg = torch.randn(200, 32)
    X_pos = torch.randn(200, 32) + 3.0 * sae.W_dec[17].detach()
    finder = make_finder("sae_contrast", sae=sae).fit(X_pos, X_neg)
    assert int(finder.features_[0]) == 17
    assert torch.cosine_similarity(finder.direction_, sae.W_dec[17].detach(), dim=0) > 0.99
    assert finder.scale_ > 0 and torch.isclose(finder.direction_.norm(), torch.tensor(1.0))
    assert finder.score(X_pos).mean() > finder.score(X_neg).mean() + 1.0


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu"])
def test_a_clamp_direction_steers_from_its_own_file_once_the_sae_is_gone(tmp_path, llama, architecture):
    import shutil

    sae = random_sae(architecture=architecture)
    sae.save(tmp_path / "sae")
    feature_direction(sae, 7, HP, operator="sae_clamp", sae_path=str(tmp_path / "sae")).save(tmp_path / "f.safetensors")
    shutil.rmtree(tmp_path / "sae")
    loaded = Direction.load(tmp_path / "f.safetensors")
    h = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(3))
    (iv,) = loaded.to_plan(4.0)
    assert torch.allclose(iv.operator(h, iv.direction, 4.0), SAEClamp(sae, 7)(h, iv.direction, 4.0), atol=1e-6)
