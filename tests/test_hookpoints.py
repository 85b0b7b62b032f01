"""Canonical hook points resolve on every supported architecture; the guesser is a pure function."""

import pytest
import torch
from tiny import TINY_CONFIGS, tiny_model
from torch import nn

from polysteer import HookPoint, PolysteerError, modality_for
from polysteer.hookpoints import guess_layer_prefix
from polysteer.modalities.text.modality import TextModality, layer_prefix

EXPECTED_PREFIX = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
                   "gemma2": "model.layers", "phi3": "model.layers", "gpt2": "transformer.h",
                   "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers", "bloom": "transformer.h",
                   "falcon": "transformer.h", "gptj": "transformer.h"}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_hook_points_resolve_per_architecture(family):
    model = tiny_model(family)
    modality = modality_for(model)
    assert modality.name == "text"
    assert layer_prefix(model) == EXPECTED_PREFIX[family]
    names = {module: name for name, module in model.named_modules()}
    prefix = EXPECTED_PREFIX[family]
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        target = modality.resolve(model, HookPoint.parse(f"text.blocks.2.{site}"))
        assert names[target.module].startswith(f"{prefix}.2")
        assert target.edit == ("input" if site == "resid_pre" else "output")
    assert len(modality.hook_points(model)) == 3 * 4


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_steering_changes_logits_on_every_architecture(family):
    from polysteer import Intervention, steer

    model = tiny_model(family)
    ids = torch.randint(4, 50, (1, 5))
    d = TextModality().d_model(model, None)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with steer(model, Intervention(torch.ones(d), "text.blocks.1.resid_post", 5.0)):
            steered = model(input_ids=ids).logits
    assert not torch.allclose(base, steered)


class GuessedLM(nn.Module):
    """A model family no table knows: blocks at ``backbone.stack``."""

    def __init__(self):
        super().__init__()
        self.config = type("Cfg", (), {"hidden_size": 8})()
        self.backbone = nn.Module()
        self.backbone.stack = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.ModuleList([nn.Linear(8, 8)])

    def generate(self):  # the text modality accepts anything that generates
        raise NotImplementedError


def test_guesser_fallback_on_unknown_model():
    model = GuessedLM()
    assert layer_prefix(model) == "backbone.stack"
    target = TextModality().resolve(model, HookPoint.parse("text.blocks.3.resid_post"))
    assert target.module is model.backbone.stack[3]


def test_guess_layer_prefix_on_name_lists():
    assert guess_layer_prefix(["h", "h.0", "h.1", "h.0.attn", "ln_f"]) == "h"
    assert guess_layer_prefix(["model.layers.0", "model.layers.1", "model.layers.2", "lm_head.0"]) == "model.layers"
    assert guess_layer_prefix(["a.0", "a.1", "b.c.0", "b.c.1"]) == "b.c"  # tie: the deeper path
    assert guess_layer_prefix(["embed", "norm"]) is None


@pytest.mark.parametrize("name", ["text.blocks.x.resid_post", "text.layers.1.resid_post", "audio.blocks.1.resid_post",
                                  "text.blocks.1.mlp"])
def test_bad_hook_point_names(name):
    with pytest.raises(PolysteerError, match="tower"):
        HookPoint.parse(name)


def test_out_of_range_layer_and_wrong_tower(llama):
    with pytest.raises(PolysteerError, match=r"out of range.*3 blocks"):
        TextModality().resolve(llama, HookPoint.parse("text.blocks.3.resid_post"))
    with pytest.raises(PolysteerError, match="vision"):
        TextModality().resolve(llama, HookPoint.parse("vision.blocks.0.resid_post"))


def test_no_modality_for_unknown_model():
    with pytest.raises(PolysteerError, match="no installed modality accepts a Linear"):
        modality_for(nn.Linear(2, 2))


def test_parse_layers():
    from polysteer.hookpoints import parse_layers

    assert parse_layers("12", 30) == [12]
    assert parse_layers("8,12,16", 30) == [8, 12, 16]
    assert parse_layers("8-10", 30) == [8, 9, 10]
    assert parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(PolysteerError, match=r"layers \[30\] out of range: there are 30 blocks"):
        parse_layers("29-30", 30)
    with pytest.raises(PolysteerError, match="bad layer spec"):
        parse_layers("twelve", 30)
