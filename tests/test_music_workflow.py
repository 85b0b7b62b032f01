"""Music concept directions (synthetic data -> per-layer probes -> AUC-weighted Direction), plans and the
``polysteer music`` commands, on tiny random MusicGens."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from polysteer import Direction, PolysteerError
from polysteer.cli import main
from polysteer.modalities.music import synth
from polysteer.modalities.music.audio import read_audio
from polysteer.modalities.music.generation import build_plan, generate_audio, token_divergence
from polysteer.modalities.music.models import tiny_musicgen
from polysteer.modalities.music.workflow import Concept, balanced_split, find_concepts, fit_concept
from polysteer.plugins.rfm import MUSICRFM_POWER, layer_weights
from polysteer.schedule import parse_schedule

POINTS = [f"decoder.blocks.{i}.resid_post" for i in range(3)]


@pytest.fixture(scope="module")
def hf():
    return tiny_musicgen("transformers")


@pytest.fixture(scope="module")
def fits(hf):
    model, _ = hf
    return find_concepts(model, ["note:E", "chord:minor"], finder="diffmean", seconds=0.3, variants=1, octaves=[4])


@pytest.fixture(scope="module")
def model_dir(hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-musicgen")
    model, tokenizer = hf
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_concepts_parse_and_label():
    assert Concept.parse("note:Bb") == Concept("note", "A#") and Concept.parse("note:F#").slug == "note_Fs"
    assert str(Concept.parse("chord:minor")) == "chord:minor"
    for bad in ("note:H", "chord:power", "tempo:120"):
        with pytest.raises(PolysteerError, match="bad concept|unknown pitch class"):
            Concept.parse(bad)
    clips = synth.notes(8000, seconds=0.05, octaves=(4,), timbres=("sine",))
    assert Concept.parse("note:E").labels(clips).tolist() == [pc == "E" for pc in synth.PITCH_CLASSES]


def test_balanced_split_is_one_vs_rest_with_equal_classes():
    labels = np.array([True] * 8 + [False] * 80)
    train, val = balanced_split(labels, 0.25, seed=1)
    assert not set(train) & set(val)
    assert labels[train].sum() == 6 and (~labels[train]).sum() == 6
    assert labels[val].sum() == 2 and (~labels[val]).sum() == 2
    assert set(np.flatnonzero(labels)) <= set(train) | set(val)


def test_auc_weights_follow_musicrfm():
    aucs = {"a": 0.6, "b": 0.8, "c": 1.0}
    assert layer_weights(aucs) == pytest.approx({"a": 0.0, "b": 0.5 ** MUSICRFM_POWER, "c": 1.0})
    assert layer_weights(aucs, top_k=1) == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert layer_weights({"a": 0.7, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_layer_ranking_recovers_a_planted_concept_layer(hf):
    """One layer's activations carry the label along a planted direction; the others are noise."""
    model, _ = hf
    clips = synth.notes(8000, seconds=0.05, octaves=(3, 4), timbres=("sine", "saw"))
    labels = Concept.parse("note:E").labels(clips)
    gen = torch.Generator().manual_seed(0)
    planted = torch.randn(16, generator=gen)
    acts = {hp: torch.randn(len(clips), 16, generator=gen) for hp in POINTS}
    acts[POINTS[1]] += 3.0 * torch.as_tensor(labels, dtype=torch.float32)[:, None] * planted
    fit = fit_concept(model, Concept.parse("note:E"), acts, clips, finder="diffmean", val_fraction=0.5)
    assert fit.aucs[POINTS[1]] == 1.0 and max(fit.aucs[POINTS[0]], fit.aucs[POINTS[2]]) < 1.0
    assert fit.direction.weights[POINTS[1]] == 1.0
    assert torch.nn.functional.cosine_similarity(fit.direction.vectors[POINTS[1]], planted, dim=0) > 0.9


def test_found_directions_hold_every_layer_with_layer_weights(fits, tmp_path):
    note = fits["note:E"].direction
    assert note.hook_points == POINTS and note.modality == "music" and note.finder["name"] == "diffmean"
    assert note.weights == pytest.approx(layer_weights(fits["note:E"].aucs))
    assert all(0.0 <= auc <= 1.0 for auc in fits["chord:minor"].aucs.values())
    loaded = Direction.load(note.save(tmp_path / "note_E.safetensors"))
    assert loaded.weights == pytest.approx(note.weights)
    assert loaded.provenance["val_auc"] == pytest.approx(fits["note:E"].aucs)
    plan = loaded.to_plan(coefficient=2.0)
    for iv in plan:
        assert iv.coefficient == pytest.approx(2.0 * loaded.scales[iv.hook_point] * loaded.weights[iv.hook_point])


def test_rfm_is_the_default_finder(hf):
    model, _ = hf
    fit = find_concepts(model, ["note:C"], layers=[2], seconds=0.3, variants=2, octaves=[4])["note:C"]
    assert fit.direction.finder["name"] == "rfm" and fit.direction.hook_points == [POINTS[2]]


def test_audiocraft_directions_refuse_a_transformers_model(hf):
    pytest.importorskip("audiocraft")
    audiocraft_model, _ = tiny_musicgen("audiocraft")
    fit = find_concepts(audiocraft_model, ["note:E"], finder="diffmean", seconds=0.3, variants=1, octaves=[4])["note:E"]
    assert fit.direction.model["architecture"] == "audiocraft.LMModel"
    assert len(build_plan(audiocraft_model, [fit.direction], [1.0], [None])) == 3
    with pytest.raises(PolysteerError, match="was made for"):
        build_plan(hf[0], [fit.direction], [1.0], [None])


def test_build_plan_crossfades_two_directions(hf, fits):
    model, _ = hf
    note, chord = fits["note:E"].direction, fits["chord:minor"].direction
    plan = build_plan(model, [note, chord], [1.0, 0.5], ["decay:1s-2s", "ramp:1s-2s"], branch="cond")
    assert len(plan) == 6 and all(iv.branch == "cond" for iv in plan)
    fade_out, fade_in = (parse_schedule(plan.interventions[i].schedule, 50) for i in (0, 3))
    assert [fade_out(s, 0, 0, 1) for s in (50, 75, 100)] == [1.0, 0.5, 0.0]
    assert [fade_in(s, 0, 0, 1) for s in (50, 75, 100)] == [0.0, 0.5, 1.0]
    with pytest.raises(PolysteerError, match="one or one each"):
        build_plan(model, [note, chord], [1.0, 2.0, 3.0], [None])


def test_cli_find_generate_eval(model_dir, tmp_path, invoke):
    out = tmp_path / "dirs"
    result = invoke("music", "find", "--concept", "note:E", "--concept", "note:G", "--model", model_dir,
                    "--finder", "diffmean", "--seconds", "0.3", "--variants", "1", "--top-k", "2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "validation AUC by layer" in result.output
    note = Direction.load(out / "note_E.safetensors")
    assert sum(w > 0 for w in note.weights.values()) <= 2 and (out / "note_G.safetensors").exists()

    wavs = {}
    for name, extra in (("base", []), ("steered", ["--direction", f"{out / 'note_E.safetensors'}@50",
                                                   "--schedule", "ramp:0.1s-0.3s"])):
        wavs[name] = tmp_path / f"{name}.wav"
        result = invoke("music", "generate", "lofi piano", "--model", model_dir, "--seconds", "0.4", "--greedy",
                        *extra, "-o", wavs[name])
        assert result.exit_code == 0, result.output
    base, rate = read_audio(wavs["base"])
    assert rate == 16000 and len(base) == int(0.4 * 16000)
    assert not np.array_equal(base, read_audio(wavs["steered"])[0])

    result = invoke("music", "find", "--concept", "note:E", "--model", model_dir, "--finder", "rfm",
                    "--finder-param", "bandwidth=median", "--finder-param", "iters=2", "--seconds", "0.3",
                    "--variants", "1", "--layers", "1", "-o", tmp_path / "rfm.safetensors")
    assert result.exit_code == 0, result.output
    assert Direction.load(tmp_path / "rfm.safetensors").finder["params"]["bandwidth"] == "median"

    result = invoke("music", "eval", wavs["steered"], wavs["base"], "--target-note", "E", "--tempo",
                    "--reference", wavs["base"], "--model", model_dir)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line[line.index("{"):]) for line in result.output.splitlines() if "{" in line]
    assert rows[0]["note-accuracy"] in (0.0, 1.0) and rows[1]["frechet-audio"] == rows[0]["frechet-audio"] >= 0
    assert set(rows[-1]["mean"]) == {"note-accuracy", "tempo", "frechet-audio"}


def test_cli_generate_defaults_to_the_direction_model(fits, tmp_path, invoke):
    path = fits["note:E"].direction.save(tmp_path / "d.safetensors")  # made on tiny:transformers
    result = invoke("music", "generate", "rock", "--direction", path, "--seconds", "0.2", "--greedy",
                    "-o", tmp_path / "x.wav")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.wav").exists()


def test_step_tokens_show_steering_that_the_tiny_audio_hides(hf, fits):
    model, tokenizer = hf
    plan = build_plan(model, [fits["note:E"].direction], [50.0], [None])
    runs = {}
    for name, run_plan in (("base", None), ("again", None), ("steered", plan)):
        runs[name] = []
        generate_audio(model, ["lofi piano"], run_plan, 0.2, tokenizer, sample=False, tokens=runs[name],
                       progress=False)
    assert len(runs["base"]) == 10 + 4 - 2  # 10 frames, 3 steps of codebook delay, the last step unseen
    assert all(t.shape == (1, 4) for t in runs["base"])
    same = token_divergence(runs["again"], runs["base"])
    assert same.first is None and same.fraction == 0.0
    steered = token_divergence(runs["steered"], runs["base"])
    assert steered.first is not None and steered.differs[steered.first] and not any(steered.differs[:steered.first])
    assert steered.fraction == sum(steered.differs) / len(steered.differs) > 0


def test_cli_generate_compare_writes_both_wavs_and_a_plot(fits, tmp_path, invoke):
    from PIL import Image

    path = fits["note:E"].direction.save(tmp_path / "e.safetensors")
    result = invoke("music", "generate", "rock", "-d", f"{path}@50", "--schedule", "window:0.1s-0.3s", "--seconds",
                    "0.3", "--greedy", "--compare", "-o", tmp_path / "out.wav")
    assert result.exit_code == 0, result.output
    steered, rate = read_audio(tmp_path / "out.wav")
    unsteered, _ = read_audio(tmp_path / "out.unsteered.wav")
    assert rate == 16000 and len(steered) == len(unsteered) == int(0.3 * 16000)
    with Image.open(tmp_path / "out.compare.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 500
    line = next(ln for ln in result.output.splitlines() if ln.startswith("tokens: "))
    first = int(line.split("step ")[1].split()[0])
    assert 5 <= first <= 15  # the window opens at 0.1 s, step 5; tokens may diverge a little later
    assert "steps differ" in line and "audio: max |steered - unsteered|" in result.output


def test_cli_generate_compare_needs_a_direction(invoke, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["music", "generate", "x", "--model", "tiny:transformers", "--compare", "-o", str(tmp_path / "x.wav")])
    assert "--compare sets steered against unsteered audio" in capsys.readouterr().err


def test_third_party_noise_is_dropped_narrowly(caplog):
    from polysteer.modalities.music.quiet import silence_third_party

    silence_third_party()
    silence_third_party()  # idempotent
    config = logging.getLogger("transformers.configuration_utils")
    assert sum(getattr(f, "polysteer_music", False) for f in config.filters) == 1
    vocab = "Model config: {} must be `None` or an integer within the vocabulary (between 0 and 63), got {}. x"
    xformers = logging.getLogger("xformers")
    # on the loggers themselves, at their own level: once transformers configures its logging its records no longer
    # reach the root, and a library that set transformers' verbosity to errors would hide them
    for logger in (xformers, config):
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, "xformers"), caplog.at_level(logging.WARNING, config.name):
            xformers.warning("WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
                             "    PyTorch 2.10.0")
            xformers.warning("another xformers warning")
            config.warning(vocab.format("pad_token_id", 64))
            config.warning(vocab.format("pad_token_id", 99))
    finally:
        for logger in (xformers, config):
            logger.removeHandler(caplog.handler)
    messages = list(dict.fromkeys(r.getMessage() for r in caplog.records))  # the root may see a record too
    assert messages == ["another xformers warning", vocab.format("pad_token_id", 99)]


def test_music_generate_stderr_has_no_third_party_noise(tmp_path):
    out = tmp_path / "a.wav"
    command = [sys.executable, "-c", "from polysteer.cli import main; main()", "music", "generate", "rock", "--model",
               "tiny:audiocraft", "--seconds", "0.1", "-o", str(out)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.exists() and "XFORMERS" not in run.stderr and "must be `None`" not in run.stderr


def test_load_music_model_errors(tmp_path):
    from polysteer.modalities.music.models import load_music_model

    with pytest.raises(PolysteerError, match="unknown backend"):
        load_music_model("tiny:transformers", backend="jax")
    with pytest.raises(PolysteerError, match="cannot load MusicGen"):
        load_music_model(str(tmp_path))  # a folder without a checkpoint


@pytest.mark.parametrize("args, message", [
    (["music", "eval", "missing.wav", "--tempo"], "does not exist"),
    (["music", "find", "--concept", "note:H", "--model", "tiny:transformers", "-o", "x"], "unknown pitch class"),
    (["music", "generate", "x", "-o", "x.wav"], "give --model"),
])
def test_cli_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error:") and message in err and len(err.strip().splitlines()) == 1
