"""The text commands on a tiny model saved to disk: find, generate, inspect, sweep, and one-line errors."""

import json

import torch

import pytest
from click.testing import CliRunner

from polysteer import Direction
from polysteer.cli import get_cli, main


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"positive": f"the ocean and the sea {w}", "negative": f"the city and the train {w}"}
            for w in ("today", "is big", "was old", "my friend")]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def invoke(*args):
    return CliRunner().invoke(get_cli(), [str(a) for a in args], catch_exceptions=False)


def test_find_inspect_generate(model_dir, data_file, tmp_path):
    out = tmp_path / "d.safetensors"
    result = invoke("find", "--model", model_dir, "--data", data_file, "--layers", "1,2", "-o", out)
    assert result.exit_code == 0, result.output
    direction = Direction.load(out)
    assert direction.hook_points == ["text.blocks.1.resid_post", "text.blocks.2.resid_post"]
    assert direction.finder["name"] == "diffmean" and direction.provenance["n_positive"] == 4

    manifest = invoke("inspect", out).output
    assert '"d_model": 32' in manifest and "text.blocks.2.resid_post: norm 1.0000" in manifest

    result = invoke("generate", "--model", model_dir, "-d", f"{out}@8", "--compare", "--max-new-tokens", 6,
                    "tell me about the day")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    base = [ln for ln in lines if ln.startswith("[unsteered]")][0].split("]", 1)[1].strip()
    steered = [ln for ln in lines if ln.startswith("[steered]")][0].split("]", 1)[1].strip()
    assert base != steered


def test_sweep_writes_table_and_plot(model_dir, data_file, tmp_path):
    out = tmp_path / "d.safetensors"
    invoke("find", "--model", model_dir, "--data", data_file, "--layers", "1", "-o", out)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the day\nwhat is the weather\n")
    result = invoke("sweep", "--model", model_dir, "-d", out, "--prompts-file", prompts, "--coefs", "0,4",
                    "--keywords", "ocean,sea", "--max-new-tokens", 5, "-o", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| text.blocks.1.resid_post | 0.000 | 2 |" in table and "| text.blocks.1.resid_post | 4.000 | 2 |" in table
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(rows) == 4 and {r["coef"] for r in rows} == {0.0, 4.0}


@pytest.mark.parametrize("args, message", [
    (["find", "--layers", "9", "--data", "{data}", "-o", "{tmp}/x.safetensors"], "layers [9] out of range"),
    (["generate", "-d", "{tmp}/missing.safetensors", "hi"], "does not exist"),
    (["find", "-o", "{tmp}/x.safetensors"], "exactly one of --data"),
    (["inspect", "{data}"], "truncated or not a safetensors"),
])
def test_errors_are_one_line(args, message, model_dir, data_file, tmp_path, capsys):
    args = [a.format(data=data_file, tmp=tmp_path) for a in args]
    if args[0] in ("find", "generate"):
        args[1:1] = ["--model", str(model_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and message in errors[0]
    assert "Traceback" not in err


def test_main_is_the_console_entry_point():
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["polysteer"] == "polysteer.cli:main"
    assert main.__module__ == "polysteer.cli"


def test_convert_to_gguf_and_back(model_dir, data_file, tmp_path):
    out = tmp_path / "d.safetensors"
    invoke("find", "--model", model_dir, "--data", data_file, "--layers", "2", "-o", out)
    assert invoke("convert", out, "-o", tmp_path / "d.gguf", "--coef", 3).exit_code == 0
    assert invoke("convert", tmp_path / "d.gguf", "-o", tmp_path / "back.safetensors", "--model", model_dir).exit_code == 0
    original, back = Direction.load(out), Direction.load(tmp_path / "back.safetensors")
    hp = "text.blocks.2.resid_post"
    assert torch.allclose(back.vectors[hp] * back.scales[hp], original.vectors[hp] * original.scales[hp] * 3, atol=1e-5)
    assert back.model["config_hash"] == original.model["config_hash"]
