"""--device map: a model spread by accelerate (device_map="auto") loads, steers and captures like a placed one."""

import pytest
import torch

from polysteer import Intervention, PolysteerError, steer
from polysteer.device import device_map
from polysteer.modalities.music.models import load_music_model
from polysteer.modalities.text.generation import generate
from polysteer.modalities.text.models import load_text_model

HP = "text.blocks.1.resid_post"


def test_a_mapped_text_model_steers_exactly_like_a_placed_one(model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    asked = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **kw: asked.append(kw.get("device_map")) or real(cls, *a, **kw)))
    mapped, tokenizer = load_text_model(str(model_dir), device="map", dtype="float32")
    placed, _ = load_text_model(str(model_dir), device="cpu", dtype="float32")
    assert asked == ["auto", None]  # accelerate places the mapped one (all on CPU on a machine without GPUs)
    torch.manual_seed(0)
    plan = Intervention(torch.randn(placed.config.hidden_size), HP, 0.5)
    prompts = ["tell me about the ocean", "describe a good day"]
    steered = [generate(m, tokenizer, prompts, plan, max_new_tokens=6, progress=False) for m in (mapped, placed)]
    assert steered[0] == steered[1] != generate(placed, tokenizer, prompts, max_new_tokens=6, progress=False)
    ids = tokenizer(prompts[:1], return_tensors="pt").input_ids
    with torch.no_grad(), steer(mapped, plan):
        out = mapped(input_ids=ids).logits
    assert torch.isfinite(out).all()


def test_device_map_only_for_map_and_music_refuses_it():
    assert device_map("map") == "auto" and device_map("cpu") is None and device_map("auto") is None
    with pytest.raises(PolysteerError, match="MusicGen .* fits one: use --device cuda"):
        load_music_model("tiny:transformers", device="map")
