"""Published checkpoint layouts, offline: every supported family is written as its hub repository holds it
(tests/checkpoints.py) and driven through the CLI from that folder, as a user would from a hub id; hub ids
that are not cached fail at once when offline, and cached ones load from the Hugging Face cache."""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from checkpoints import (
    TEXT_FAMILIES,
    write_idefics3,
    write_llava,
    write_musicgen_audiocraft,
    write_musicgen_transformers,
    write_openclip,
    write_text_checkpoint,
)

from polysteer import Direction, Intervention
from polysteer.cli import main
from polysteer.errors import PolysteerError

OFFLINE_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rows = [{"positive": f"the ocean and the sea {w}", "negative": f"the city and the train {w}"}
            for w in ("today", "is big", "was old", "my friend")]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "prompts.txt").write_text("tell me about the day\nwhat is the weather\n")
    return root


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_text_family_from_its_repository_layout(family, pairs, tmp_path, invoke):
    folder = write_text_checkpoint(tmp_path / family, family)
    direction = tmp_path / "d.safetensors"
    result = invoke("find", "--model", folder, "--data", pairs / "pairs.jsonl", "--layers", "1", "-o", direction)
    assert result.exit_code == 0, result.output
    loaded = Direction.load(direction)
    assert loaded.hook_points == ["text.blocks.1.resid_post"] and loaded.model["name"] == folder.name

    result = invoke("generate", "--model", folder, "-d", f"{direction}@8", "--compare", "--max-new-tokens", 4,
                    "tell me about the day")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "### tell me about the day" and lines[1].startswith("[unsteered] ")
    assert lines[2].startswith("[steered] ")

    result = invoke("sweep", "--model", folder, "-d", direction, "--prompts-file", pairs / "prompts.txt", "--coefs",
                    "0,4", "--keywords", "ocean,sea", "--max-new-tokens", 4, "-o", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert {r["coef"] for r in rows} == {0.0, 4.0} and all(np.isfinite(r["perplexity"]) for r in rows)


@pytest.fixture(scope="module")
def musicgen_small(tmp_path_factory):
    """facebook/musicgen-small holds both layouts side by side: transformers' and audiocraft's."""
    folder = tmp_path_factory.mktemp("musicgen-small")
    write_musicgen_transformers(folder)
    write_musicgen_audiocraft(folder)
    return folder


@pytest.mark.parametrize("backend, architecture", [("auto", "MusicgenForConditionalGeneration"),
                                                   ("audiocraft", "audiocraft.LMModel")])
def test_musicgen_from_its_repository_layout(backend, architecture, musicgen_small, tmp_path, invoke):
    from polysteer.modalities.music.audio import read_audio

    model = ["--model", musicgen_small, "--backend", backend]
    result = invoke("music", "find", "--concept", "note:E", *model, "--finder", "diffmean", "--seconds", "0.3",
                    "--variants", "1", "--top-k", "2", "-o", tmp_path / "note_E.safetensors")
    assert result.exit_code == 0, result.output
    direction = tmp_path / "note_E.safetensors"
    assert Direction.load(direction).model["architecture"] == architecture

    wavs = [tmp_path / "base.wav", tmp_path / "steered.wav"]
    for wav, steer in zip(wavs, ([], ["--direction", f"{direction}@50"])):
        result = invoke("music", "generate", "lofi piano", *model, "--seconds", "0.4", "--greedy", *steer, "-o", wav)
        assert result.exit_code == 0, result.output
    audio = [read_audio(wav) for wav in wavs]
    assert audio[0][1] == 16000 and len(audio[0][0]) == int(0.4 * 16000)
    assert not np.array_equal(audio[0][0], audio[1][0])

    result = invoke("music", "eval", *wavs, "--target-note", "E", "--reference", wavs[0], *model)
    assert result.exit_code == 0, result.output
    assert '"frechet-audio"' in result.output and '"note-accuracy"' in result.output


VLM_LAYOUTS = {"llava-1.5": write_llava, "idefics3": write_idefics3,
               "smolvlm": lambda folder: write_idefics3(folder, scale_factor=4)}


@pytest.mark.parametrize("family", list(VLM_LAYOUTS))
def test_vlm_from_its_repository_layout(family, tmp_path, invoke):
    from polysteer.modalities.vision_language.dataset import scene_samples

    folder = tmp_path / family
    folder.mkdir()
    VLM_LAYOUTS[family](folder)
    direction, image = tmp_path / "vti.safetensors", tmp_path / "scene.png"
    scene_samples(1, seed=5)[0].image.save(image)
    result = invoke("vlm", "find-vti", "--model", folder, "--demos", "scenes:2", "--trials", "2", "-o", direction)
    assert result.exit_code == 0, result.output
    assert len(Direction.load(direction).vectors) == 3

    result = invoke("vlm", "describe", image, "--model", folder, "-d", direction, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{image}: ") and len(result.stdout.strip()) > len(f"{image}:")

    result = invoke("vlm", "eval", "--metric", "chair", "--model", folder, "--data", "scenes:2:3", "-d", direction,
                    "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.strip().splitlines()] == ["unsteered", "steered"]


def test_open_clip_from_its_repository_layout(tmp_path):
    """open_clip has no CLI command: its folder loads through the modality API and scores captions."""
    from polysteer.modalities.vision_language.openclip import CLIPScore, OpenCLIPModality
    from polysteer.modalities.vision_language.scenes import make_scenes

    state = write_openclip(tmp_path)
    model, processor = OpenCLIPModality().load_model(str(tmp_path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    scenes = make_scenes(3, seed=7)
    captions, images = [s.caption for s in scenes], [s.image for s in scenes]
    score = CLIPScore(model, processor.preprocess, processor.tokenizer)
    plan = Intervention(torch.randn(32, generator=torch.Generator().manual_seed(0)), "vision.blocks.1.mlp_out", 8.0,
                        "rotate")
    base, steered = score.evaluate(captions, images), score.evaluate(captions, images, plan=plan)
    assert len(base) == 3 and steered != pytest.approx(base, abs=1e-4)

    (tmp_path / "open_clip_model.safetensors").unlink()  # only the pickle left: refused, never unpickled
    with pytest.raises(PolysteerError, match="never unpickles"):
        OpenCLIPModality().load_model(str(tmp_path))


OFFLINE_COMMANDS = {
    "text": ["generate", "hi"],
    "music": ["music", "generate", "lofi", "-o", "{tmp}/x.wav"],
    "vlm": ["vlm", "describe", "{image}"],
}


def _fails_at_once(command, tmp_path, capsys) -> tuple[str, float]:
    from polysteer.modalities.vision_language.dataset import scene_samples

    image = tmp_path / "scene.png"
    scene_samples(1)[0].image.save(image)
    args = [*(a.format(tmp=tmp_path, image=image) for a in OFFLINE_COMMANDS[command]), "--model",
            "polysteer-test/not-cached"]
    timings = []
    for _ in range(2):  # the first run also imports the command's modules; the second times the lookup alone
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        timings.append(time.perf_counter() - start)
        assert exit_info.value.code == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(errors) == 1, errors
    return errors[0], timings[-1]


@pytest.mark.parametrize("command", list(OFFLINE_COMMANDS))
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_uncached_hub_id_offline_fails_at_once(command, how, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a hub that refuses connections: no retries, no waiting
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    line, elapsed = _fails_at_once(command, tmp_path, capsys)
    assert "model 'polysteer-test/not-cached' is not a local folder and is not in the Hugging Face cache" in line
    assert "run once online or pass a local folder" in line
    assert elapsed < OFFLINE_LIMIT_S, f"{command} took {elapsed:.1f}s to fail offline"


def test_uncached_open_clip_hub_id_offline_fails_at_once(tmp_path, monkeypatch):
    from polysteer.modalities.vision_language.openclip import load_openclip

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PolysteerError, match="'polysteer-test/clip' is not a local folder and is not in the Hugging"):
        load_openclip("hf-hub:polysteer-test/clip")
    assert time.perf_counter() - start < OFFLINE_LIMIT_S


def test_a_missing_folder_or_a_file_is_named_before_any_hub_lookup(tmp_path):
    from polysteer.hub import resolve_model_source

    with pytest.raises(PolysteerError, match="model folder '.*/missing' does not exist"):
        resolve_model_source(tmp_path / "missing")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PolysteerError, match="is a file: pass the folder that holds it"):
        resolve_model_source(tmp_path / "model.safetensors")


def test_cached_hub_id_loads_offline_from_the_cache(pairs, tmp_path, monkeypatch, invoke):
    """A hub id that was fetched once resolves to its snapshot in the Hugging Face cache, and keeps its name."""
    repo = tmp_path / "cache" / "models--polysteer-test--tiny-gpt2"
    write_text_checkpoint(repo / "snapshots" / "0123abcd", "gpt2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    direction = tmp_path / "d.safetensors"
    result = invoke("find", "--model", "polysteer-test/tiny-gpt2", "--data", pairs / "pairs.jsonl", "--layers", "1",
                    "-o", direction)
    assert result.exit_code == 0, result.output
    assert Direction.load(direction).model["name"] == "polysteer-test/tiny-gpt2"
    shutil.rmtree(repo / "snapshots")
    with pytest.raises(PolysteerError, match="not in the Hugging Face cache"):
        from polysteer.modalities.text.models import load_text_model

        load_text_model("polysteer-test/tiny-gpt2")
