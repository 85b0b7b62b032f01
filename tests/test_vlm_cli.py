"""``polysteer vlm`` end to end on a tiny random LLaVA, and the VTI CHAIR benchmark on synthetic scenes."""

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from polysteer import Direction, PolysteerError
from polysteer.cli import get_cli
from polysteer.modalities.vision_language.dataset import scene_samples

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "vti_chair.py"


def run(*args):
    result = CliRunner().invoke(get_cli(), ["vlm", *args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def vti_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vlm") / "vti.safetensors"
    result = run("find-vti", "--model", "tiny-llava", "--demos", "scenes:3", "--trials", "4", "-o", str(path))
    assert result.exit_code == 0, result.output
    return path


def test_find_vti_writes_a_direction_file(vti_file):
    direction = Direction.load(vti_file)
    assert direction.modality == "vision_language" and direction.provenance["demos"] == "scenes:3"
    assert len(direction.vectors) == 3 and len(direction.extras) == 3
    assert direction.provenance["pca"] == "joint"


def test_find_vti_per_token_pca_and_a_bad_mode(tmp_path):
    out = tmp_path / "per_token.safetensors"
    result = run("find-vti", "--model", "tiny-llava", "--demos", "scenes:2", "--trials", "2", "--pca", "per-token",
                 "--vision-layers", "1", "--text-layers", "1", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert Direction.load(out).provenance["pca"] == "per-token"
    with pytest.raises(PolysteerError, match="unknown --pca 'global'"):
        run("find-vti", "--model", "tiny-llava", "--pca", "global", "-o", str(out))


def test_describe_and_refuse_a_foreign_direction(vti_file, tmp_path):
    image = tmp_path / "scene.png"
    scene_samples(1)[0].image.save(image)
    result = run("describe", str(image), "--model", "tiny-llava", "--direction", str(vti_file),
                 "--max-new-tokens", "4")
    assert result.exit_code == 0 and result.stdout.startswith(f"{image}: ")
    from polysteer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["vlm", "describe", str(image), "--model", "tiny-idefics3", "--direction", str(vti_file)])
    assert exit_info.value.code == 1


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    sample = scene_samples(1)[0]  # a car, a tree and a sun
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    sample.image.save(path)
    return path, sample.objects


def _compare(image, vti_file, *extra):
    result = run("describe", str(image), "--model", "tiny-llava", "-d", str(vti_file), "--max-new-tokens", "8",
                 "--compare", *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_describe_compare_prints_both_captions_and_where_they_diverge(vti_file, scene_png):
    from polysteer.modalities.vision_language.evaluation import vocabulary_for

    image, objects = scene_png
    lines = _compare(image, vti_file, "--alpha-text", "0", "--alpha-vision", "0", "--objects", ",".join(objects))
    assert lines[0] == f"{image}:" and lines[3] == "  tokens: identical at every step"
    assert lines[1].split("] ", 1)[1] == lines[2].split("] ", 1)[1].strip()

    lines = _compare(image, vti_file, "--alpha-text", "100", "--alpha-vision", "100", "--objects",
                     ",".join(objects))
    base, steered = (line.split("] ", 1)[1].strip() for line in lines[1:3])
    assert base != steered
    assert lines[3].startswith("  tokens: first differ at step ") and 0 <= int(lines[3].split()[5]) < 8
    words = vocabulary_for("scenes")
    for name, caption, line in (("unsteered", base, lines[4]), ("steered", steered, lines[5])):
        inside = [m for m in dict.fromkeys(words.mentions(caption)) if m in objects]
        outside = [m for m in dict.fromkeys(words.mentions(caption)) if m not in objects]
        assert line == (f"  objects ({name}): in the scene: {', '.join(inside) or 'none'}; "
                        f"not in the scene: {', '.join(outside) or 'none'}")


def test_describe_compare_without_objects_lists_mentions(vti_file, scene_png):
    lines = _compare(scene_png[0], vti_file, "--alpha-text", "100")
    assert lines[4].startswith("  objects (unsteered): ") and "give --objects" in lines[4]


def test_describe_compare_needs_a_direction(scene_png, capsys):
    from polysteer.cli import main

    with pytest.raises(SystemExit):
        main(["vlm", "describe", str(scene_png[0]), "--model", "tiny-llava", "--compare"])
    assert "--compare sets steered against unsteered captions" in capsys.readouterr().err


def test_first_divergence():
    from polysteer.modalities.vision_language.generation import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_describe_in_bfloat16_on_cpu(vti_file, tmp_path):
    image = tmp_path / "scene.png"
    scene_samples(1)[0].image.save(image)
    result = run("describe", str(image), "--model", "tiny-llava", "--device", "cpu", "--dtype", "bfloat16", "-d",
                 str(vti_file), "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{image}: ") and len(result.stdout.strip()) > len(f"{image}:")


@pytest.mark.parametrize("metric", ["chair", "pope"])
def test_eval_reports_unsteered_and_steered(vti_file, tmp_path, metric):
    out = tmp_path / "eval.json"
    result = run("eval", "--metric", metric, "--model", "tiny-llava", "--data", "scenes:3:9", "--direction",
                 str(vti_file), "--max-new-tokens", "8", "--output", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()  # progress bars go to stderr
    assert [line.split(":")[0] for line in lines] == ["unsteered", "steered"]
    data = json.loads(out.read_text())
    key = "chair_s" if metric == "chair" else "accuracy"
    assert set(data) == {"unsteered", "steered"} and 0.0 <= data["steered"][key] <= 1.0


def test_find_with_diffmean(tmp_path):
    out = tmp_path / "diffmean.safetensors"
    result = run("find", "--model", "tiny-llava", "--demos", "scenes:3", "--layers", "1", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert Direction.load(out).hook_points == ["text.blocks.1.resid_post"]


def test_find_takes_finder_parameters(tmp_path):
    out = tmp_path / "probe.safetensors"
    result = run("find", "--model", "tiny-llava", "--demos", "scenes:3", "--layers", "1", "--finder", "probe",
                 "--finder-param", "C=0.01", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert Direction.load(out).finder["params"]["C"] == 0.01
    with pytest.raises(PolysteerError, match="'probe' has no parameter 'k'"):
        run("find", "--model", "tiny-llava", "--demos", "scenes:3", "--finder", "probe", "--finder-param", "k=3",
            "-o", str(out))


def test_vti_chair_benchmark_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("vti_chair", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--n-images", "3", "--n-demos", "2", "--trials", "3", "--max-new-tokens", "6",
                           "--train-steps", "2", "--no-ablation", "--out", str(tmp_path)])
    assert set(results) == {"unsteered", "VTI joint PCA", "VTI per-token PCA"}
    assert set(results["unsteered"]["chair"]) == {"data", "coco-legacy", "coco"}
    table = (tmp_path / "README.md").read_text()
    assert "| VTI joint PCA |" in table and "| VTI per-token PCA |" in table and "What it cannot show" in table
    assert "coco reference (after)" in table and "load average" in table
    assert (tmp_path / "chair.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())["results"]["VTI joint PCA"]
    assert saved["chair_s"] == results["VTI joint PCA"]["chair_s"]
