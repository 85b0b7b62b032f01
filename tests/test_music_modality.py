"""The music modality on tiny random MusicGens of both implementations (transformers and audiocraft):
selection, hook points, step counting in seconds, classifier-free-guidance halves, hook lifetime, capture."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from polysteer import Intervention, PolysteerError, modality_for, steer
from polysteer.modalities.music import synth
from polysteer.modalities.music.capture import collect_audio
from polysteer.modalities.music.generation import generate_audio
from polysteer.modalities.music.modality import MusicModality
from polysteer.modalities.music.models import load_music_model, tiny_musicgen
from polysteer.operator import Operator

HP = "decoder.blocks.1.resid_post"
PROMPTS = ["lofi piano", "rock drums"]


@pytest.fixture(scope="module", params=["transformers", "audiocraft"])
def tiny(request):
    if request.param == "audiocraft":
        pytest.importorskip("audiocraft")
    return tiny_musicgen(request.param)


def n_hooks(model):
    target = MusicModality().backend(model).root()  # audiocraft's MusicGen is not an nn.Module
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in target.modules())


def greedy(model, tokenizer, plan=None, seconds=0.3, guidance=3.0, prompts=PROMPTS):
    return generate_audio(model, prompts, plan, seconds, tokenizer, sample=False, guidance=guidance)


class Recorder(Operator):
    """``add``, recording the step and the per-row coefficient of every call."""

    name = "recorder"

    def __init__(self):
        self.tracker, self.calls = None, []

    def __call__(self, h, v, coef):
        rows = coef[:, 0, 0].tolist() if torch.is_tensor(coef) else [coef] * h.shape[0]
        self.calls.append((self.tracker.state.step, rows))
        return h + coef * v


def recorded(model, tokenizer, intervention, seconds=0.3, guidance=3.0, prompts=PROMPTS):
    op = intervention.operator
    with torch.no_grad(), steer(model, intervention) as tracker:
        op.tracker = tracker
        torch.manual_seed(0)
        MusicModality().backend(model).generate(prompts, seconds, tokenizer, sample=False, top_k=0, temperature=1.0,
                                                guidance=guidance)
    return op.calls


def vec(seed=0):
    torch.manual_seed(seed)
    return torch.randn(16) * 4


def test_music_modality_is_chosen_for_both_implementations(tiny):
    model, _ = tiny
    modality = modality_for(model)
    assert isinstance(modality, MusicModality) and modality.priority > 0
    if not isinstance(model, torch.nn.Module):  # audiocraft: its bare LMModel is accepted too
        assert isinstance(modality_for(MusicModality().backend(model).root()), MusicModality)
    assert modality.hook_points(model)[:2] == ["decoder.blocks.0.resid_pre", "decoder.blocks.0.resid_post"]
    assert modality.d_model(model, HP) == 16 and modality.n_layers(model) == 3


def test_bad_hook_points_name_the_fix(tiny):
    model, _ = tiny
    with pytest.raises(PolysteerError, match="out of range"):
        MusicModality().resolve(model, "decoder.blocks.7.resid_post")
    with pytest.raises(PolysteerError, match="'decoder.blocks"):
        MusicModality().resolve(model, "text.blocks.0.resid_post")


def test_steering_changes_output_only_when_coefficient_is_nonzero(tiny):
    model, tokenizer = tiny
    base = greedy(model, tokenizer)
    assert np.array_equal(base, greedy(model, tokenizer, Intervention(vec(), HP, 0.0)))
    assert np.array_equal(base, greedy(model, tokenizer, Intervention(vec(), HP, 0.0, schedule="window:0.1s-0.2s")))
    assert not np.array_equal(base, greedy(model, tokenizer, Intervention(vec(), HP, 8.0)))


def test_every_site_steers(tiny):
    model, tokenizer = tiny
    base = greedy(model, tokenizer)
    for site in ("resid_pre", "attn_out", "mlp_out"):
        assert not np.array_equal(base, greedy(model, tokenizer, Intervention(vec(), f"decoder.blocks.1.{site}", 8.0)))


def test_window_in_seconds_touches_exactly_steps_25_to_49(tiny):
    model, tokenizer = tiny
    calls = recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder(), schedule="window:0.5s-1.0s"),
                     seconds=1.2)
    assert sorted(step for step, _ in calls) == list(range(25, 50))


def test_steps_count_one_per_frame(tiny):
    model, tokenizer = tiny
    modality = MusicModality()
    modality.tracker(model)
    assert modality.steps_per_second == 50.0
    calls = recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder()), seconds=0.2)
    steps = sorted({step for step, _ in calls})
    assert steps == list(range(10 + 4 - 1))  # 10 frames at 50/s, plus the delay of the 3 extra codebooks


@pytest.mark.parametrize("branch, expected", [("cond", [1.0, 1.0, 0.0, 0.0]), ("uncond", [0.0, 0.0, 1.0, 1.0]),
                                              ("both", [1.0, 1.0, 1.0, 1.0])])
def test_cfg_branch_touches_exactly_the_chosen_half(tiny, branch, expected):
    model, tokenizer = tiny
    calls = recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder(), branch=branch))
    assert calls and all(rows == expected for _, rows in calls)  # batch is [cond; uncond], 2 prompts each


def test_per_row_coefficients_tile_over_the_cfg_halves(tiny):
    model, tokenizer = tiny
    calls = recorded(model, tokenizer, Intervention(vec(), HP, [0.0, 2.0], operator=Recorder(), branch="cond"))
    assert all(rows == [0.0, 2.0, 0.0, 0.0] for _, rows in calls)
    calls = recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder(), rows=[1]))
    assert all(rows == [0.0, 1.0, 0.0, 1.0] for _, rows in calls)


def test_cond_branch_leaves_the_unconditional_half_untouched(tiny):
    model, tokenizer = tiny
    seen = []
    block = MusicModality().resolve(model, "decoder.blocks.2.resid_post").module
    handle = block.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        greedy(model, tokenizer, seconds=0.1)
        base, seen[:] = list(seen), []
        greedy(model, tokenizer, Intervention(vec(), HP, 8.0, branch="cond"), seconds=0.1)
    finally:
        handle.remove()
    # step 0: same inputs, so the uncond rows must be bit-identical and the cond rows must move
    assert torch.equal(base[0][2:], seen[0][2:]) and not torch.equal(base[0][:2], seen[0][:2])


def test_transformers_without_guidance_has_no_uncond_branch():
    model, tokenizer = tiny_musicgen("transformers")
    calls = recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder(), branch="cond"), guidance=1.0)
    assert all(rows == [1.0, 1.0] for _, rows in calls)
    with pytest.raises(PolysteerError, match="needs classifier-free guidance"):
        recorded(model, tokenizer, Intervention(vec(), HP, 1.0, operator=Recorder(), branch="uncond"), guidance=1.0)


def test_hooks_are_removed_after_generation_and_on_error(tiny):
    model, tokenizer = tiny
    before = n_hooks(model)
    with steer(model, Intervention(vec(), HP, 1.0)):
        assert n_hooks(model) > before
    assert n_hooks(model) == before
    greedy(model, tokenizer, Intervention(vec(), HP, 1.0, branch="cond"), seconds=0.1)
    assert n_hooks(model) == before
    with pytest.raises(PolysteerError, match="unknown CFG branch"):
        greedy(model, tokenizer, Intervention(vec(), HP, 1.0, branch="left"), seconds=0.1)
    assert n_hooks(model) == before


def test_capture_is_batch_invariant_and_keeps_clip_order(tiny):
    model, _ = tiny
    rate = MusicModality().backend(model).sample_rate
    clips = synth.notes(rate, seconds=0.3, octaves=(4,), timbres=("saw",))[:5]
    audios = [c.audio for c in clips] + [synth.tone(60, 0.2, rate, "sine")]  # one shorter clip
    points = [f"decoder.blocks.{i}.resid_post" for i in range(3)]
    together = collect_audio(model, audios, points, rate, batch_size=16)
    alone = collect_audio(model, audios[3:4], points, rate, batch_size=1)
    assert together[points[0]].shape == (6, 16)
    assert torch.allclose(together[points[2]][3], alone[points[2]][0], atol=1e-5)
    assert not torch.allclose(together[points[2]][0], together[points[2]][1])
    with pytest.raises(PolysteerError, match="expects"):
        collect_audio(model, audios, points, rate * 2)


class _RunsCode:
    """A pickle that would call a function when unpickled without weights_only."""

    def __reduce__(self):
        import os

        return (os.makedirs, ("/tmp/polysteer-pickle-ran",))


@pytest.mark.parametrize("content", [lambda: pickle.dumps({"xp.cfg": _RunsCode()}), lambda: b"junk"])
def test_a_pickled_or_corrupt_audiocraft_checkpoint_is_one_clear_error(tmp_path, content):
    shutil.rmtree("/tmp/polysteer-pickle-ran", ignore_errors=True)
    (tmp_path / "state_dict.bin").write_bytes(content())
    with pytest.raises(PolysteerError) as info:
        load_music_model(str(tmp_path), backend="audiocraft", device="cpu")
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    assert not os.path.exists("/tmp/polysteer-pickle-ran")
