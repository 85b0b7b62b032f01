"""open_clip towers as hook targets, the CLIP-score evaluator, and safetensors-only weight loading."""

import json
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import save_file

from polysteer import Intervention, PolysteerError, modality_for, steer
from polysteer.hookpoints import HookPoint
from polysteer.modalities.vision_language.openclip import CLIPScore, OpenCLIPModality, load_openclip, tiny_openclip
from polysteer.modalities.vision_language.scenes import make_scenes

SUFFIX = {"resid_post": "", "resid_pre": "", "attn_out": ".attn", "mlp_out": ".mlp"}
PREFIX = {"vision": "visual.transformer.resblocks", "text": "transformer.resblocks"}


@pytest.fixture(scope="module")
def clip():
    return tiny_openclip()


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(3, seed=7)


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_resblocks_are_the_hook_points(clip):
    model, _, _ = clip
    modality = modality_for(model)
    assert isinstance(modality, OpenCLIPModality)
    names = {id(module): name for name, module in model.named_modules()}
    points = modality.hook_points(model)
    assert len(points) == 2 * 2 * 4
    for name in points:
        hp = HookPoint.parse(name)
        target = modality.resolve(model, hp)
        assert names[id(target.module)] == f"{PREFIX[hp.tower]}.{hp.layer}{SUFFIX[hp.site]}"
    assert modality.d_model(model, "vision.blocks.0.mlp_out") == 32
    with pytest.raises(PolysteerError, match="out of range"):
        modality.resolve(model, "vision.blocks.2.mlp_out")


def image_embedding(model, preprocess, scenes, plan=None):
    pixels = torch.stack([preprocess(s.image) for s in scenes])
    with torch.no_grad(), (steer(model, plan) if plan is not None else nullcontext()):
        return model.encode_image(pixels)


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "resid_post"])
def test_steering_the_vision_tower_changes_the_image_embedding(clip, scenes, site):
    model, preprocess, _ = clip
    before = n_hooks(model)
    base = image_embedding(model, preprocess, scenes)
    plan = Intervention(torch.randn(32), f"vision.blocks.0.{site}", 3.0, "rotate")
    steered = image_embedding(model, preprocess, scenes, plan)
    assert not torch.allclose(base, steered) and n_hooks(model) == before


def test_clip_score_is_the_weighted_clipped_cosine(clip, scenes):
    model, preprocess, tokenizer = clip
    captions = [s.caption for s in scenes]
    scores = CLIPScore(model, preprocess, tokenizer).evaluate(captions, images=[s.image for s in scenes])
    with torch.no_grad():
        image = torch.nn.functional.normalize(image_embedding(model, preprocess, scenes), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    expected = (100 * (image * text).sum(-1).clamp_min(0)).tolist()
    assert scores == pytest.approx(expected, abs=1e-4)
    plan = Intervention(torch.randn(32), "vision.blocks.1.mlp_out", 8.0, "rotate")
    steered = CLIPScore(model, preprocess, tokenizer).evaluate(captions, images=[s.image for s in scenes], plan=plan)
    assert steered != pytest.approx(scores, abs=1e-4)
    with pytest.raises(PolysteerError, match="one image per caption"):
        CLIPScore(model, preprocess, tokenizer).evaluate(captions, images=[])


def test_weights_load_from_safetensors_only(clip, tmp_path):
    import open_clip

    model, _, _ = clip
    config = {"embed_dim": 16, "vision_cfg": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                                              "image_size": 32},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "polysteer-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "polysteer-tiny-clip.json")
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    loaded, _, _ = load_openclip("polysteer-tiny-clip", weights)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(PolysteerError, match="never unpickles"):
        load_openclip("polysteer-tiny-clip", tmp_path / "clip.pt")
