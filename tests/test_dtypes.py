"""Steering in float32, bfloat16 and float16 on CPU: text, music and VLM agree across precisions.

Every modality's tiny random model is built in each dtype and steered with a float32 vector (the engine casts it
to the steered module's dtype). Against float32 we compare teacher-forced logits over a fixed sequence (the robust
measure), the steered-minus-unsteered logit shift (shows the vector is cast and applied alike), and free-running
greedy tokens. Greedy decoding can only be expected to agree while float32's top-2 logit margin is wider than
twice the dtype's logit error, so the agreement asserted is "up to the first step whose margin is that narrow",
and each fixture is checked to keep that margin for at least ``MIN_STEPS`` steps (else the check would be empty).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from polysteer import Direction, Intervention, steer

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# max |logit - float32 logit| / max |float32 logit|, after 3-4 blocks: bfloat16 keeps 8 mantissa bits, float16 11
RTOL = {torch.float32: 0.0, torch.bfloat16: 0.02, torch.float16: 0.003}
STEPS = 12
MIN_STEPS = {"text": 12, "music": 4, "vlm": 12}  # greedy steps the fixtures' margins guarantee
PROMPTS = ["write a short note to a friend", "the train was late"]
GPU_SCRIPT = Path(__file__).parent / "gpu" / "run_gpu_checks.py"


@dataclass
class Case:
    """One modality's tiny model in one dtype: logits over a fixed sequence, and greedy decoding."""

    model: Any
    plan: list[Intervention]
    logits: Callable[[], torch.Tensor]  # [rows, positions, vocab]
    greedy: Callable[[int], torch.Tensor]  # processed scores [rows, steps, vocab]; greedy takes their argmax
    run: Callable[[], Any]  # the modality's own generate function under the active plan (texts or audio)
    capture: Callable[[list[str]], dict[str, torch.Tensor]]  # the modality's own activation collector
    free: Callable[[int], torch.Tensor] | None = None  # [rows, steps]: False where the token is forced


def _vector(d_model: int, norm: float, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    v = torch.randn(d_model)
    return v / v.norm() * norm  # float32 on purpose: the engine casts it at hook time


def _scores(model, inputs: dict, steps: int, **kwargs) -> torch.Tensor:
    out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, temperature=None, top_p=None, top_k=None, **kwargs)
    return torch.stack(out.scores, 1).float()


def text_case(dtype: torch.dtype) -> Case:
    from polysteer.modalities import text

    model, tokenizer = tiny_model("llama").to(dtype), tiny_tokenizer()
    # prompts whose float32 greedy path keeps a top-2 margin of 0.02+ (bfloat16's logit error here is ~0.002)
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    plan = [Intervention(_vector(32, 0.5), "text.blocks.1.resid_post", 1.0)]
    return Case(model, plan, lambda: model(**ids).logits.float(),
                lambda steps: _scores(model, ids, steps, pad_token_id=tokenizer.pad_token_id),
                lambda: text.generate(model, tokenizer, PROMPTS, max_new_tokens=6, chat=False, progress=False),
                lambda hps: text.collect(model, tokenizer, PROMPTS, hps, chat=False))


def music_case(dtype: torch.dtype) -> Case:
    from polysteer.modalities.music.capture import collect_audio
    from polysteer.modalities.music.generation import generate_audio
    from polysteer.modalities.music.models import _place, tiny_musicgen
    from polysteer.modalities.music.synth import render

    # tiny MusicGens are flat (top-2 margins often below bfloat16's 0.003 logit error); seed 25's greedy path keeps
    # margins above 0.008 for 5+ steps. Placed as load_music_model places it (the EnCodec codec stays float32).
    model, tokenizer = tiny_musicgen(seed=25)
    _place(model, torch.device("cpu"), dtype)
    prompts = tokenizer(["lofi piano", "rock drums with bass"], return_tensors="pt", padding=True)
    codes = torch.randint(0, 64, (2 * 4, 10), generator=torch.Generator().manual_seed(3))
    plan = [Intervention(_vector(16, 2.0), "decoder.blocks.1.resid_post", 1.0)]
    rng = np.random.default_rng(0)
    clips = [render([m], 0.2, 16000, "saw", rng) for m in (52, 59, 64)]
    # greedy codes are the argmax of the CFG-combined scores, [prompts * codebooks, steps, card]
    return Case(model, plan, lambda: model(**prompts, decoder_input_ids=codes).logits.float(),
                lambda steps: _scores(model, prompts, steps, guidance_scale=3.0),
                lambda: generate_audio(model, ["lofi piano"], seconds=0.2, tokenizer=tokenizer, sample=False),
                lambda hps: collect_audio(model, clips, hps, 16000),
                lambda steps: _delay_free(model.decoder, 2, steps))


def _delay_free(decoder, prompts: int, steps: int) -> torch.Tensor:
    """Where MusicGen's delay pattern lets codebook k choose (steps k on; the rest are forced padding)."""
    start = torch.full((prompts * decoder.num_codebooks, 1), decoder.config.bos_token_id)
    _, pattern = decoder.build_delay_pattern_mask(start, decoder.config.pad_token_id, max_length=steps + 1)
    return pattern[:, 1:] == -1


def vlm_case(dtype: torch.dtype) -> Case:
    from polysteer.modalities.vision_language.dataset import scene_samples
    from polysteer.modalities.vision_language.generation import describe, encode, format_prompt
    from polysteer.modalities.vision_language.tiny import tiny_vlm

    model, processor = tiny_vlm("llava")
    model.to(dtype)
    images = [s.load_image() for s in scene_samples(2, seed=1)]  # greedy margins 0.014+ (bfloat16 error ~0.003)
    batch = encode(processor, images, [format_prompt(processor, "Describe the image.")] * 2, "cpu", dtype)
    plan = [Intervention(_vector(32, 1.0), "vision.blocks.1.resid_post", 1.0),
            Intervention(_vector(48, 0.5, seed=2), "text.blocks.1.resid_post", 1.0)]
    answers = ["a red house", "two white birds"]
    return Case(model, plan, lambda: model(**batch).logits.float(),
                lambda steps: _scores(model, batch, steps, pad_token_id=processor.tokenizer.pad_token_id),
                lambda: describe(model, processor, images, max_new_tokens=6, progress=False),
                lambda hps: _vlm_capture(model, processor, images, answers, hps))


def _vlm_capture(model, processor, images, answers, hook_points) -> dict[str, torch.Tensor]:
    """Text-tower points pooled over the answers, vision-tower points at every patch."""
    from polysteer.modalities.vision_language.generation import collect, pixel_inputs, vision_states

    text_points = [hp for hp in hook_points if hp.startswith("text.")]
    vision_points = [hp for hp in hook_points if hp.startswith("vision.")]
    acts = collect(model, processor, images, ["Describe the image."] * len(images), answers, text_points)
    return {**acts, **vision_states(model, vision_points, pixel_inputs(model, processor, images))}


CASES = {"text": text_case, "music": music_case, "vlm": vlm_case}


@lru_cache(maxsize=None)
def case_for(modality: str, dtype: torch.dtype) -> Case:
    """One tiny model per modality and dtype for the whole module."""
    return CASES[modality](dtype)


@lru_cache(maxsize=None)
def measure(modality: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Unsteered and steered logits and greedy scores of one modality in one dtype (cached: each runs once)."""
    case = case_for(modality, dtype)
    with torch.no_grad():
        out = {"unsteered": case.logits(), "greedy_unsteered": case.greedy(STEPS)}
        with steer(case.model, case.plan):
            out["steered"], out["greedy"] = case.logits(), case.greedy(STEPS)
    free = case.free(STEPS) if case.free else torch.ones(out["greedy"].shape[:2], dtype=torch.bool)
    return {**out, "free": free}


def leading(flags: torch.Tensor) -> int:
    """How many leading steps hold in every row (``flags [rows, steps]``)."""
    return int(flags.all(0).int().cumprod(0).sum())


def margins(scores: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Top-2 logit margin per row and step; infinite where the token is forced."""
    top2 = scores.topk(2, dim=-1).values
    return torch.where(free, top2[..., 0] - top2[..., 1], torch.inf)


def comparison(modality: str, dtype: torch.dtype) -> dict[str, float]:
    """The numbers reported for one modality and dtype against float32."""
    ref, got = measure(modality, torch.float32), measure(modality, dtype)
    scale = float(ref["steered"].abs().max())
    shift_ref, shift = ref["steered"] - ref["unsteered"], got["steered"] - got["unsteered"]
    error = float((got["steered"] - ref["steered"]).abs().max())
    return {
        "logit_scale": scale, "tolerance": RTOL[dtype] * scale,
        "max_diff_unsteered": float((got["unsteered"] - ref["unsteered"]).abs().max()), "max_diff_steered": error,
        "shift_size": float(shift_ref.abs().max()), "max_diff_shift": float((shift - shift_ref).abs().max()),
        # forced tokens are the same in every dtype whatever the scores say
        "greedy_agree": leading((ref["greedy"].argmax(-1) == got["greedy"].argmax(-1)) | ~ref["free"]),
        "greedy_safe": leading(margins(ref["greedy"], ref["free"]) > 2 * error),
    }


@pytest.mark.parametrize("modality", list(CASES))
def test_steering_moves_the_logits_in_float32(modality):
    ref = measure(modality, torch.float32)
    shift = (ref["steered"] - ref["unsteered"]).abs().max()
    assert shift > 0.2 * ref["unsteered"].abs().max()
    assert not torch.equal(ref["greedy"].argmax(-1), ref["greedy_unsteered"].argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("modality", list(CASES))
def test_steered_logits_agree_with_float32(modality, dtype):
    numbers = comparison(modality, dtype)
    assert numbers["max_diff_unsteered"] <= numbers["tolerance"]
    assert numbers["max_diff_steered"] <= numbers["tolerance"]
    # the shift the vector causes is reproduced to the same relative precision: the cast vector is applied alike
    assert numbers["max_diff_shift"] <= RTOL[dtype] * numbers["shift_size"]


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("modality", list(CASES))
def test_greedy_tokens_agree_while_the_margin_allows(modality, dtype):
    numbers = comparison(modality, dtype)
    assert numbers["greedy_safe"] >= MIN_STEPS[modality], "fixture too flat: float32 top-2 margins near the dtype error"
    assert numbers["greedy_agree"] >= numbers["greedy_safe"]


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("modality", list(CASES))
def test_a_float32_direction_file_steers_a_half_precision_model(modality, dtype, tmp_path):
    case = case_for(modality, dtype)
    hp = case.plan[-1].hook_point  # the language tower's: a Direction has one width
    name = "vision_language" if modality == "vlm" else modality
    made = Direction.from_fitted({hp: case.plan[-1].direction}, model=case.model, modality=name,
                                 finder={"name": "random"})
    direction = Direction.load(made.save(tmp_path / "d.safetensors"))
    assert direction.vectors[hp].dtype == torch.float32
    seen: list[torch.dtype] = []
    with torch.no_grad():
        plain = case.run()
        with direction.apply(case.model, coefficient=1.0):
            # registered after the steering hook, so it sees the steered output
            handle = _block(case, hp).register_forward_hook(
                lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).dtype))
            try:
                steered = case.run()
            finally:
                handle.remove()
    assert set(seen) == {dtype}  # the steered block kept the model's dtype: the vector was cast, not promoted
    assert direction.vectors[hp].dtype == torch.float32  # and the Direction itself is untouched
    assert not np.array_equal(np.asarray(plain), np.asarray(steered))


def _block(case: Case, hp: str) -> torch.nn.Module:
    from polysteer.hookpoints import HookPoint
    from polysteer.modality import modality_for

    return modality_for(case.model).resolve(case.model, HookPoint.parse(hp)).module


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("operator", ["add", "rotate", "clamp", "ablate", "gated_add"])
def test_every_builtin_operator_runs_in_half_precision(operator, dtype):
    from polysteer.plugins.operators.gated import GatedAdd

    v = _vector(32, 0.5)
    op = GatedAdd(w=_vector(32, 1.0, seed=3), b=torch.zeros(1)) if operator == "gated_add" else operator
    logits = {}
    for precision in (torch.float32, dtype):
        case = case_for("text", precision)
        # per-row coefficients take the tensor path of the engine, a scalar the plain one
        plan = [Intervention(v, "text.blocks.1.resid_post", 2.0, op),
                Intervention(v, "text.blocks.2.resid_post", [1.0, 0.5], op)]
        with torch.no_grad(), steer(case.model, plan):
            logits[precision] = case.logits()
    scale = float(logits[torch.float32].abs().max())
    assert float((logits[dtype] - logits[torch.float32]).abs().max()) <= RTOL[dtype] * scale
    assert not torch.allclose(logits[torch.float32], measure("text", torch.float32)["unsteered"])


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("modality", list(CASES))
def test_capture_returns_float32_on_cpu(modality, dtype):
    hps = [iv.hook_point for iv in case_for(modality, dtype).plan]
    ref, got = case_for(modality, torch.float32).capture(hps), case_for(modality, dtype).capture(hps)
    for hp in hps:
        assert got[hp].dtype == torch.float32 and got[hp].device.type == "cpu"
        assert got[hp].shape == ref[hp].shape
        # music: the codec must stay float32 (rounded codec weights change the codes, 2%+ off in float16)
        assert float((got[hp] - ref[hp]).abs().max()) <= RTOL[dtype] * float(ref[hp].abs().max())


def test_mean_pooling_a_float16_model_does_not_overflow():
    from polysteer.modalities import text

    model, tokenizer = tiny_model("llama").to(torch.float16), tiny_tokenizer()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 3000.0  # float16 holds 3000, but not a sum of 30 of them
    acts = text.collect(model, tokenizer, [" ".join(["the"] * 30)], ["text.blocks.0.resid_pre"], chat=False)
    assert acts["text.blocks.0.resid_pre"].dtype == torch.float32
    assert acts["text.blocks.0.resid_pre"][0, 0] == 3000.0


def test_gpu_script_skips_cleanly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(GPU_SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SKIP: no CUDA device"


def test_a_musicgen_folder_loaded_in_bfloat16_keeps_its_codec_exact(tmp_path):
    from polysteer.modalities.music.models import load_music_model, tiny_musicgen

    saved, _ = tiny_musicgen("transformers")
    saved.save_pretrained(tmp_path)
    model, _ = load_music_model(str(tmp_path), backend="transformers", device="cpu", dtype="bfloat16")
    assert next(model.decoder.parameters()).dtype == torch.bfloat16
    codec = model.audio_encoder.state_dict()
    assert all(torch.equal(codec[k], v) for k, v in saved.audio_encoder.state_dict().items())
