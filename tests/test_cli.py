"""The command tree: shared options spelled one way everywhere, one-line errors before any model loads, and the
text commands end to end on a tiny model saved to disk."""

import json

import click
import pytest
import torch
from click.testing import CliRunner

from polysteer import Direction, PolysteerError
from polysteer.cli import add_plugin_commands, get_cli, main
from polysteer.hookpoints import parse_layer_spec, parse_layers
from polysteer.options import parse_coefs, parse_direction_spec

# Every command that loads a model (by its path in the tree).
MODEL_COMMANDS = {
    "find", "generate", "sweep", "demo", "convert", "train-vector", "attribute", "detect", "explain", "sae train",
    "sae lf", "sae saif", "music find", "music generate", "music eval", "vlm find-vti", "vlm find", "vlm describe",
    "vlm eval", "tune",
}


def walk(group: click.Group, prefix: tuple = ()):
    """``(path, command)`` for every command and group under ``group``, the group itself first."""
    yield prefix, group
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from walk(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"positive": f"the ocean and the sea {w}", "negative": f"the city and the train {w}"}
            for w in ("today", "is big", "was old", "my friend")]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def direction_file(model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("direction") / "d.safetensors"
    result = CliRunner().invoke(get_cli(), ["find", "--model", str(model_dir), "--data", str(data_file), "--layers",
                                            "1,2", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("spec, layers", [
    ("12", [12]), ("8,12", [8, 12]), ("8-12", [8, 9, 10, 11, 12]), ("8-10,14", [8, 9, 10, 14]), (" 3 , 1", [3, 1]),
])
def test_layer_specs(spec, layers):
    assert parse_layer_spec(spec) == layers and parse_layers(spec, 30) == layers


def test_layer_spec_all_and_errors():
    assert parse_layer_spec("all") is None and parse_layers("all", 3) == [0, 1, 2]
    for spec, message in [("5-2", "runs backwards; write 2-5"), ("", "bad layer spec ''"), ("abc", "bad layer spec"),
                          ("8-", "bad layer spec"), ("1-2-3", "bad layer spec")]:
        with pytest.raises(PolysteerError, match=message):
            parse_layer_spec(spec)
    with pytest.raises(PolysteerError, match=r"layers \[30, 31\] out of range: there are 30 blocks"):
        parse_layers("29-31", 30)


def test_coefficient_parsers(tmp_path):
    assert parse_coefs("0, 1.5,-2") == [0.0, 1.5, -2.0]
    assert parse_direction_spec("v.safetensors@-4") == ("v.safetensors", -4.0)
    assert parse_direction_spec("v.safetensors") == ("v.safetensors", None)
    odd = tmp_path / "v@2.safetensors"
    odd.write_bytes(b"")
    assert parse_direction_spec(str(odd)) == (str(odd), None)  # an existing path is taken whole
    for bad in ("0,nan", "abc", "1,,2", "inf"):
        with pytest.raises(PolysteerError, match="bad --coefs"):
            parse_coefs(bad)
    for bad in ("v.safetensors@nan", "v.safetensors@x", "@4", ""):
        with pytest.raises(PolysteerError, match="--direction"):
            parse_direction_spec(bad)


def test_every_command_and_group_has_help():
    for path, _ in walk(get_cli()):
        result = CliRunner().invoke(get_cli(), [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_shared_options_are_spelled_one_way():
    commands = {" ".join(path): command for path, command in walk(get_cli()) if path}
    assert MODEL_COMMANDS <= set(commands)
    helps: dict[str, set] = {"--device": set(), "--dtype": set(), "--coefs": set()}
    for name, command in commands.items():
        opts = options(command)
        if name in MODEL_COMMANDS or "--model" in opts:
            assert {"--model", "--device", "--dtype"} <= set(opts), name
        assert not [o for o in opts if "coef" in o and o not in ("--coef", "--coefs")], name
        assert ("-d" in opts) == ("--direction" in opts), name
        for opt in helps:
            if opt in opts:
                helps[opt].add(opts[opt].help)
    assert all(len(texts) == 1 for texts in helps.values()), helps
    text_models = {options(commands[n])["--model"].help for n in ("find", "generate", "sweep", "explain", "sae lf")}
    assert len(text_models) == 1


def test_no_command_group_vanishes_when_a_module_fails(monkeypatch):
    from polysteer.modalities.text import cli as text_cli

    fresh = click.Group()
    add_plugin_commands(fresh)
    assert {"find", "generate", "sweep", "sae", "music", "vlm"} <= set(fresh.commands)
    monkeypatch.setitem(text_cli._COMMANDS, "no_such_module", ("nothing",))
    partial = click.Group()
    with pytest.raises(ImportError, match="no_such_module"):
        text_cli.register(partial)
    assert {"find", "generate", "detect", "sae"} <= set(partial.commands)
    assert {"lf", "saif", "train"} <= set(partial.commands["sae"].commands)


def test_main_prints_one_error_line(monkeypatch, capsys):
    @click.command()
    def boom():
        raise PolysteerError("the input is bad; fix it")

    monkeypatch.setitem(get_cli().commands, "boom", boom)
    with pytest.raises(SystemExit) as exit_info:
        main(["boom"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "Error: the input is bad; fix it\n"


def test_device_and_dtype_reach_the_model(model_dir, direction_file, invoke):
    from polysteer.modalities.text.models import load_text_model

    model, _ = load_text_model(str(model_dir), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(load_text_model(str(model_dir), device="cpu")[0].parameters()).dtype == torch.float32  # auto on CPU
    result = invoke("generate", "--model", model_dir, "--device", "cpu", "--dtype", "bfloat16", "-d",
                    f"{direction_file}@8", "--compare", "--max-new-tokens", 6, "tell me about the day")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress bars go to stderr
    assert lines[0] == "### tell me about the day" and lines[1].startswith("[unsteered] ")
    assert lines[2].startswith("[steered] ") and len(lines[2]) > len("[steered] ")


def test_find_inspect_generate(model_dir, direction_file, invoke):
    direction = Direction.load(direction_file)
    assert direction.hook_points == ["text.blocks.1.resid_post", "text.blocks.2.resid_post"]
    assert direction.finder["name"] == "diffmean" and direction.provenance["n_positive"] == 4

    manifest = invoke("inspect", direction_file).output
    assert '"d_model": 32' in manifest and "2 tensors:" in manifest
    assert "vector text.blocks.2.resid_post: shape (32,) float32 norm 1.0000" in manifest

    result = invoke("generate", "--model", model_dir, "-d", f"{direction_file}@8", "--compare", "--max-new-tokens", 6,
                    "tell me about the day")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    base = [ln for ln in lines if ln.startswith("[unsteered]")][0].split("]", 1)[1].strip()
    steered = [ln for ln in lines if ln.startswith("[steered]")][0].split("]", 1)[1].strip()
    assert base != steered


def test_sweep_writes_table_and_plot(model_dir, direction_file, tmp_path, invoke):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the day\nwhat is the weather\n")
    result = invoke("sweep", "--model", model_dir, "-d", direction_file, "--prompts-file", prompts, "--coefs", "0,4",
                    "--layers", "1", "--keywords", "ocean,sea", "--max-new-tokens", 5, "-o", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| text.blocks.1.resid_post | 0.000 | 2 |" in table and "| text.blocks.1.resid_post | 4.000 | 2 |" in table
    assert "text.blocks.2" not in table
    assert "- `perplexity`: **median**" in table and "- `distinct`: " in table and "- `keyword`: " in table
    assert "### text.blocks.1.resid_post, coef 4\n\n- *tell me about the day* -> " in table
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(rows) == 4 and {r["coef"] for r in rows} == {0.0, 4.0}


@pytest.mark.parametrize("args, message", [
    (["find", "--layers", "9", "--data", "{data}", "-o", "{tmp}/x.safetensors"], "layers [9] out of range"),
    (["generate", "-d", "{tmp}/missing.safetensors", "hi"], "does not exist"),
    (["find", "-o", "{tmp}/x.safetensors"], "exactly one of --data"),
    (["sweep", "-d", "{d}", "--layers", "0-1", "--keywords", "sea", "-o", "{tmp}"], "layers [0] are not in"),
    (["inspect", "{data}"], "truncated or not a safetensors"),
])
def test_errors_are_one_line(args, message, model_dir, data_file, direction_file, tmp_path, capsys):
    args = [a.format(data=data_file, tmp=tmp_path, d=direction_file) for a in args]
    if args[0] != "inspect":
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


def test_convert_to_gguf_and_back(model_dir, data_file, tmp_path, invoke):
    out = tmp_path / "d.safetensors"
    invoke("find", "--model", model_dir, "--data", data_file, "--layers", "2", "-o", out)
    assert invoke("convert", out, "-o", tmp_path / "d.gguf", "--coef", 3).exit_code == 0
    assert invoke("convert", tmp_path / "d.gguf", "-o", tmp_path / "back.safetensors", "--model", model_dir,
                  "--device", "cpu").exit_code == 0
    original, back = Direction.load(out), Direction.load(tmp_path / "back.safetensors")
    hp = "text.blocks.2.resid_post"
    assert torch.allclose(back.vectors[hp] * back.scales[hp], original.vectors[hp] * original.scales[hp] * 3, atol=1e-5)
    assert back.model["config_hash"] == original.model["config_hash"]


def test_click_usage_errors_are_one_line_too(capsys):
    for argv in (["find", "--nope"], ["sweep"], ["no-such-command"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1, err
        assert "--help" in err
