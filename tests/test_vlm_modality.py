"""The vision-language modality: hook points per architecture, spans, hook lifetime, norm-preserving rotate."""

from contextlib import nullcontext

import pytest
import torch

from polysteer import Intervention, Plan, PolysteerError, modality_for, steer
from polysteer.hookpoints import HookPoint
from polysteer.modalities.vision_language import modality as vl
from polysteer.modalities.vision_language.dataset import scene_samples
from polysteer.modalities.vision_language.generation import describe, encode, format_prompt
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.modalities.vision_language.tiny import tiny_vlm
from polysteer.modalities.vision_language.vti import TokenRotate
from polysteer.operator import Operator

SITE_SUFFIX = {"resid_post": "", "resid_pre": "", "attn_out": ".self_attn", "mlp_out": ".mlp"}


@pytest.fixture(scope="module")
def llava():
    return tiny_vlm("llava")


@pytest.fixture(scope="module")
def idefics3():
    return tiny_vlm("idefics3")


@pytest.fixture(scope="module")
def images():
    return [s.load_image() for s in scene_samples(3, seed=5)]


def tiny_smolvlm():
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

    vision = SmolVLMVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=64)
    return SmolVLMForConditionalGeneration(SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=63))


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def prompt_batch(model, processor, images):
    return encode(processor, images, [format_prompt(processor, "Describe the image.")] * len(images))


@pytest.mark.parametrize("family", ["llava", "idefics3", "smolvlm"])
def test_every_hook_point_resolves_to_the_named_module(family, request):
    model = tiny_smolvlm() if family == "smolvlm" else request.getfixturevalue(family)[0]
    modality = VisionLanguageModality()
    assert modality.accepts(model) and type(modality_for(model)) is VisionLanguageModality
    names = {id(module): name for name, module in model.named_modules()}
    layout = vl.LAYOUTS[type(model.config).__name__]
    points = modality.hook_points(model)
    n_vision, n_text = model.config.vision_config.num_hidden_layers, model.config.get_text_config().num_hidden_layers
    assert len(points) == 4 * (n_vision + n_text)
    for name in points:
        hp = HookPoint.parse(name)
        target = modality.resolve(model, hp)
        expected = f"{getattr(layout, hp.tower)}.{hp.layer}{SITE_SUFFIX[hp.site]}"
        assert names[id(target.module)] == expected, name
        assert target.edit == ("input" if hp.site == "resid_pre" else "output")
    assert modality.d_model(model, "vision.blocks.0.mlp_out") == model.config.vision_config.hidden_size
    assert modality.d_model(model, "text.blocks.0.mlp_out") == model.config.get_text_config().hidden_size


def test_guesser_finds_the_same_blocks_without_the_table(llava, monkeypatch):
    model, _ = llava
    monkeypatch.setattr(vl, "LAYOUTS", {})
    assert vl.tower_prefix(model, "vision") == "model.vision_tower.encoder.layers"
    assert vl.tower_prefix(model, "text") == "model.language_model.layers"


def test_vlm_outranks_the_text_modality_and_rejects_bad_points(llava):
    from polysteer.modalities.text.modality import TextModality

    model, _ = llava
    assert VisionLanguageModality.priority > TextModality.priority
    assert not TextModality().accepts(model)
    with pytest.raises(PolysteerError, match="out of range"):
        VisionLanguageModality().resolve(model, "vision.blocks.3.mlp_out")
    with pytest.raises(PolysteerError, match="tower"):
        VisionLanguageModality().resolve(model, "decoder.blocks.0.mlp_out")


class Recorder(Operator):
    """An add operator that records the coefficient mask it was given, per call."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, h, v, coef):
        self.calls.append(coef.squeeze(-1).cpu() if torch.is_tensor(coef) else coef)
        return h + coef * v


def record(model, processor, images, hook_point, span, width, generate=False):
    op = Recorder()
    plan = Intervention(torch.ones(width), hook_point, 1.0, op, span=span)
    if generate:
        describe(model, processor, images, plan=plan, max_new_tokens=3, progress=False)
    else:
        with torch.no_grad(), steer(model, plan):
            model(**prompt_batch(model, processor, images))
    return op.calls


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_image_and_text_spans_select_the_image_tokens(family, request, images):
    model, processor = request.getfixturevalue(family)
    batch = prompt_batch(model, processor, images)
    image = batch["input_ids"] == vl.image_token_id(model)
    assert image.any() and (~image).any()
    text_width = model.config.get_text_config().hidden_size
    (mask,) = record(model, processor, images, "text.blocks.1.resid_post", "image", text_width)
    assert torch.equal(mask.bool(), image)
    (mask,) = record(model, processor, images, "text.blocks.1.resid_post", "text", text_width)
    assert torch.equal(mask.bool(), ~image)
    vision_width = model.config.vision_config.hidden_size
    (mask,) = record(model, processor, images, "vision.blocks.0.resid_post", "image", vision_width)
    assert mask.bool().all()


def test_generated_span_steers_only_new_tokens(llava, images):
    model, processor = llava
    calls = record(model, processor, images[:2], "text.blocks.0.mlp_out", "generated", 48, generate=True)
    assert len(calls) == 2  # the prompt pass has no generated token, so only the two decode steps are steered
    assert all(c.shape == (2, 1) and c.bool().all() for c in calls)


def test_plan_is_removed_after_generation_and_on_error(llava, images):
    model, processor = llava
    describe(model, processor, images[:1], max_new_tokens=2, progress=False)  # transformers adds its own hooks once
    before = n_hooks(model)
    plan = Plan([Intervention(torch.randn(48), "text.blocks.1.mlp_out", 0.9, "rotate"),
                 Intervention(torch.randn(32), "vision.blocks.0.mlp_out", 0.9, TokenRotate(torch.randn(17, 32)))])
    steered = describe(model, processor, images, plan=plan, max_new_tokens=4, progress=False)
    assert len(steered) == len(images) and n_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, plan):
            assert n_hooks(model) > before
            raise RuntimeError("boom")
    assert n_hooks(model) == before


def mlp_outputs(model, processor, images, module, plan=None):
    seen = []
    with torch.no_grad(), (steer(model, plan) if plan is not None else nullcontext()):
        handle = module.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
        try:
            model(**prompt_batch(model, processor, images))
        finally:
            handle.remove()
    return seen[0]


@pytest.mark.parametrize("hook_point,operator", [
    ("text.blocks.1.mlp_out", "rotate"),
    ("vision.blocks.0.mlp_out", "tokens"),
])
def test_rotate_preserves_every_positions_mlp_output_norm(llava, images, hook_point, operator):
    model, processor = llava
    modality = VisionLanguageModality()
    module = modality.resolve(model, hook_point).module
    width = modality.d_model(model, hook_point)
    torch.manual_seed(0)
    op = TokenRotate(torch.randn(17, width)) if operator == "tokens" else operator
    plan = Intervention(torch.randn(width), hook_point, 5.0, op)
    base = mlp_outputs(model, processor, images, module)
    steered = mlp_outputs(model, processor, images, module, plan)
    torch.testing.assert_close(steered.norm(dim=-1), base.norm(dim=-1), rtol=1e-5, atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(steered, base, dim=-1)
    assert (cosine < 0.999).all()  # every position was rotated, none rescaled
