"""Note, chord and tempo steered together in one generation of the tiny MusicGen: each property's probe moves
toward its target, each direction acts on its own schedule, and the example script writes the WAVs."""

import importlib.util
import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from polysteer import PolysteerError
from polysteer.engine import steer
from polysteer.hookpoints import HookPoint
from polysteer.modalities.music import MusicModality, build_plan, find_concepts, generate_audio
from polysteer.modalities.music.compose import TEMPO_BPMS, TempoConcept, find_tempo, tempo_clips
from polysteer.modalities.music.models import tiny_musicgen

ROOT = Path(__file__).resolve().parent.parent
#: chord constant, note only in the first 0.2 s (steps 0-9), tempo ramping up over the clip
SCHEDULES = {"chord:minor": "constant", "note:E": "window:0s-0.2s", "tempo:fast": "ramp:0s-0.5s"}
#: the decoding steps where each schedule is on (50 frames a second)
ACTIVE = {"chord:minor": slice(None), "note:E": slice(0, 10), "tempo:fast": slice(None)}


@pytest.fixture(scope="module")
def hf():
    return tiny_musicgen("transformers")


@pytest.fixture(scope="module")
def fits(hf):
    model, _ = hf
    fits = find_concepts(model, ["note:E", "chord:minor"], finder="diffmean", seconds=0.2, variants=1, octaves=[4])
    fits["tempo:fast"] = find_tempo(model, "fast", finder="diffmean", seconds=2.0, variants=1)
    return fits


def record(hf, fits, names) -> dict[str, torch.Tensor]:
    """Generate greedily under the plan made of ``names``; each decoding step's conditional-row residual
    stream ``[steps, d_model]`` per hook point, read after the steering edit."""
    model, tokenizer = hf
    directions = [fits[n].direction for n in names]
    coefs = [unit_coefficient(d) for d in directions]
    plan = build_plan(model, directions, coefs, [SCHEDULES[n] for n in names]) if names else None
    store = {hp: [] for hp in fits["note:E"].direction.hook_points}
    # steering enters first, so the recording hooks below run after the steering edit
    with steer(model, plan) if plan else nullcontext():
        handles = [MusicModality().resolve(model, HookPoint.parse(hp)).module.register_forward_hook(
            lambda m, a, out, hp=hp: store[hp].append((out[0] if isinstance(out, tuple) else out)[0, -1].clone()))
            for hp in store]
        try:
            generate_audio(model, ["lofi piano beat"], None, seconds=0.5, tokenizer=tokenizer, sample=False,
                           progress=False)
        finally:
            for handle in handles:
                handle.remove()
    return {hp: torch.stack(rows) for hp, rows in store.items()}


def unit_coefficient(direction) -> float:
    """Each direction's own coefficient: the one that adds a unit-norm vector at its strongest layer. The tiny
    model's directions differ 15-fold in separation, so one shared coefficient would drown the weakest."""
    return 1.0 / max(direction.scales.get(hp, 1.0) * direction.weights.get(hp, 1.0) for hp in direction.hook_points)


def probe(acts: dict[str, torch.Tensor], direction) -> torch.Tensor:
    """The property's DiffMean probe per step: the AUC-weighted sum over layers of the projection on its unit
    direction."""
    return sum(direction.weights.get(hp, 1.0) * acts[hp] @ (v / v.norm()) for hp, v in direction.vectors.items())


@pytest.fixture(scope="module")
def runs(hf, fits):
    """Unsteered, all three, and each leave-one-out plan."""
    names = list(SCHEDULES)
    out = {"none": record(hf, fits, []), "all": record(hf, fits, names)}
    for name in names:
        out[f"without {name}"] = record(hf, fits, [n for n in names if n != name])
    return out


def test_tempo_concept_labels_and_bad_input(hf):
    clips = tempo_clips(16000, seconds=2.0, variants=2)
    bpm = np.array([c.labels["bpm"] for c in clips])
    assert len(clips) == 2 * len(TEMPO_BPMS)
    assert TempoConcept("fast").labels(clips).tolist() == (bpm > 115).tolist()
    assert TempoConcept("slow").labels(clips).sum() == TempoConcept("fast").labels(clips).sum() == 10
    assert str(TempoConcept("slow")) == "tempo:slow" and TempoConcept().slug == "tempo_fast"
    with pytest.raises(PolysteerError, match="bad tempo 'medium'"):
        TempoConcept("medium")
    with pytest.raises(PolysteerError, match="give at least 2 s"):
        find_tempo(hf[0], seconds=1.0)


def test_the_composed_plan_moves_every_property_toward_its_target(fits, runs):
    """While its schedule is on: once the note's window closes, the other directions may pull its probe anywhere."""
    for name, on in ACTIVE.items():
        mean = lambda run: probe(runs[run], fits[name].direction)[on].mean()  # noqa: E731
        unsteered, steered, without = mean("none"), mean("all"), mean(f"without {name}")
        assert steered > unsteered, name
        assert steered > without, f"{name} adds nothing to the composed plan"


def test_each_direction_acts_on_its_own_schedule(fits, runs):
    """The gain each direction adds over the plan without it follows its schedule, step by step."""
    gain = {n: probe(runs["all"], fits[n].direction) - probe(runs[f"without {n}"], fits[n].direction)
            for n in SCHEDULES}
    chord, note, tempo = gain["chord:minor"], gain["note:E"], gain["tempo:fast"]
    assert (chord[:20] > 0).all()  # constant
    assert note[1:8].min() > 10 * note[14:].abs().max()  # window 0-0.2 s (steps 0-9), then off
    assert tempo[0].abs() < 1e-6 and tempo[20:].mean() > 3 * tempo[2:6].mean() > 0  # ramp from zero


def test_example_script_writes_wavs_and_a_summary(tmp_path):
    out = tmp_path / "multi"
    spec = importlib.util.spec_from_file_location("music_multi_property", ROOT / "examples" / "music_multi_property.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--model", "tiny:transformers", "--seconds", "1", "--concept-seconds", "0.2", "--tempo-seconds", "2",
                  "--variants", "1", "--octaves", "4", "--finder", "diffmean", "--greedy", "--output-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert [p["concept"] for p in summary["properties"]] == ["note:E", "chord:minor", "tempo:fast"]
    assert summary["token_divergence"]["fraction"] > 0
    for name in ("steered.wav", "unsteered.wav", "note_E.safetensors", "chord_minor.safetensors",
                 "tempo_fast.safetensors"):
        assert (out / name).is_file(), name
    for run in ("steered", "unsteered"):
        assert set(summary["scores"][run]) == {"note-accuracy", "chord-accuracy", "tempo"}
