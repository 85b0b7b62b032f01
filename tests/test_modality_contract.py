"""The modality contract (n_layers, load_model, capture, generate), Direction.from_fitted and Direction.apply."""

import numpy as np
import pytest
import torch

from polysteer import Direction, Modality, PolysteerError, fit_layers, make_finder, registry
from polysteer.modalities import music, text
from polysteer.modalities import vision_language as vl

HP = "text.blocks.1.resid_post"
POS = ["the ocean wave and the sea", "a ship on the sea", "fish in the ocean"]
NEG = ["the city train at dinner", "a job in the city", "coffee at the park"]


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def fitted(llama, tokenizer):
    X_pos = text.collect(llama, tokenizer, POS, [HP])
    X_neg = text.collect(llama, tokenizer, NEG, [HP])
    return fit_layers(make_finder("diffmean"), X_pos, X_neg)


def test_every_built_in_modality_implements_the_contract():
    for name in ("text", "music", "vision_language", "open_clip"):
        cls = registry("modalities")[name]
        assert issubclass(cls, Modality) and cls.n_layers is not Modality.n_layers, name
        assert cls.load_model is not Modality.load_model, name


def test_base_methods_name_the_modality_and_the_operation():
    class Bare(Modality):
        name = "bare"

    for call, what in [(lambda m: m.n_layers(None), "count layers"), (lambda m: m.load_model(), "load models"),
                       (lambda m: m.capture(None, None, [], []), "capture"),
                       (lambda m: m.generate(None, None, []), "generate")]:
        with pytest.raises(PolysteerError, match=f"'bare' modality cannot {what}"):
            call(Bare())


def test_open_clip_cannot_generate_and_counts_either_tower():
    model, _, _ = vl.tiny_openclip()
    modality = vl.OpenCLIPModality()
    assert modality.n_layers(model) == modality.n_layers(model, "text") == 2
    with pytest.raises(PolysteerError, match="'open_clip' modality cannot generate"):
        modality.generate(model, None, ["a caption"])


def test_text_contract_delegates_to_the_workflow_functions(llama, tokenizer, model_dir):
    modality = text.TextModality()
    assert modality.n_layers(llama) == 3
    acts = modality.capture(llama, tokenizer, POS, [HP], pooling="last")
    assert torch.equal(acts[HP], text.collect(llama, tokenizer, POS, [HP], pooling="last")[HP])
    assert modality.generate(llama, tokenizer, POS[:1], max_new_tokens=3) == text.generate(
        llama, tokenizer, POS[:1], max_new_tokens=3)
    model, tok = modality.load_model(str(model_dir), device="cpu", dtype="float32")
    assert modality.n_layers(model) == 3 and tok.pad_token is not None


def test_music_contract(tmp_path):
    modality = music.MusicModality()
    with pytest.raises(PolysteerError, match="no default model"):
        modality.load_model()
    model, tokenizer = modality.load_model("tiny:transformers", device="cpu")
    assert modality.n_layers(model) == 3
    rate = modality.backend(model).sample_rate
    clips = [np.sin(np.linspace(0, f, rate // 4)).astype(np.float32) for f in (200, 400)]
    points = ["decoder.blocks.0.resid_post"]
    acts = modality.capture(model, tokenizer, clips, points)
    assert torch.equal(acts[points[0]], music.collect_audio(model, clips, points, rate)[points[0]])
    audio = modality.generate(model, tokenizer, ["lofi piano"], seconds=0.1, guidance=1.0)
    assert audio.shape[0] == 1


def test_vision_language_contract():
    model, processor = vl.load_model("tiny-llava", device="cpu")
    modality = vl.VisionLanguageModality()
    assert modality.n_layers(model) == modality.n_layers(model, "text")
    image = vl.scene_samples(1)[0].load_image()
    point = "text.blocks.0.resid_post"
    acts = modality.capture(model, processor, [(image, "Describe.", "a red ball")], [point])[point]
    assert torch.equal(acts, vl.collect(model, processor, [image], ["Describe."], ["a red ball"], [point])[point])
    assert modality.generate(model, processor, [(image, "Describe.")], max_new_tokens=2) == vl.generate(
        model, processor, [image], ["Describe."], max_new_tokens=2)
    with pytest.raises(PolysteerError, match=r"\(image, prompt\) pairs"):
        modality.generate(model, processor, [image])


def test_from_fitted_matches_a_hand_built_direction(llama, fitted):
    modality = text.TextModality()
    made = Direction.from_fitted(fitted, model=llama, modality=modality, provenance={"n": 3})
    f = fitted[HP]
    by_hand = Direction(vectors={HP: f.direction_}, modality="text", model=modality.identity(llama), d_model=32,
                        scales={HP: float(f.scale_)}, finder={"name": "diffmean", "params": f.get_params()},
                        provenance={"n": 3}, created=made.created)
    assert made.manifest() == by_hand.manifest() and torch.equal(made.vectors[HP], by_hand.vectors[HP])
    by_name = Direction.from_fitted(fitted, model=llama, modality="text")
    assert by_name.model == made.model


def test_from_fitted_without_a_model_takes_an_identity_and_raw_vectors():
    identity = {"name": "m", "architecture": "X", "config_hash": "abc"}
    d = Direction.from_fitted({HP: torch.tensor([3.0, 4.0])}, model=identity, modality="text",
                              finder={"name": "mine", "params": {"k": 1}}, operator="clamp", coefficient=2.0)
    assert torch.allclose(d.vectors[HP], torch.tensor([0.6, 0.8])) and d.scales == {HP: 5.0}
    assert (d.model, d.d_model, d.operator, d.coefficient) == (identity, 2, "clamp", 2.0)
    assert d.finder == {"name": "mine", "params": {"k": 1}}
    assert Direction.from_fitted({HP: torch.ones(2)}, model=identity, modality="text", finder={"name": "x"},
                                 scaled=False).scales == {}
    with pytest.raises(PolysteerError, match="is zero"):
        Direction.from_fitted({HP: torch.zeros(2)}, model=identity, modality="text", finder={"name": "x"})
    with pytest.raises(PolysteerError, match="no fitted hook points"):
        Direction.from_fitted({}, model=identity, modality="text")


def test_from_fitted_round_trips_through_a_file(tmp_path, llama, fitted):
    made = Direction.from_fitted(fitted, model=llama, modality=text.TextModality(), weights={HP: 0.5})
    loaded = Direction.load(made.save(tmp_path / "d.safetensors"))
    assert loaded.manifest() == made.manifest()


def test_apply_steers_inside_the_block_and_leaves_no_hook(llama, tokenizer, fitted):
    direction = Direction.from_fitted(fitted, model=llama, modality=text.TextModality())
    ids = tokenizer(POS[0], return_tensors="pt").input_ids
    hooks = n_hooks(llama)
    with torch.no_grad():
        before = llama(ids).logits
        with direction.apply(llama, coefficient=8.0):
            assert n_hooks(llama) > hooks
            inside = llama(ids).logits
        after = llama(ids).logits
    assert not torch.allclose(before, inside)
    assert torch.equal(before, after) and n_hooks(llama) == hooks
    with pytest.raises(RuntimeError), direction.apply(llama, coefficient=8.0, hook_points=[HP]):
        raise RuntimeError
    assert n_hooks(llama) == hooks
