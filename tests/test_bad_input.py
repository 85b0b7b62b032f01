"""Issue 18, no bad input without a one-line error: every row below exits 1 with exactly one ``Error:`` line on
stderr, before any model loads (the loaders are patched to fail loudly) and without writing anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import fuzz_settings

from polysteer import Direction, Example, PolysteerError, read_contrastive, read_json, read_jsonl, read_lines
from polysteer.cli import get_cli, main
from polysteer.modalities.text.detect import read_texts
from polysteer.option_types import CheckedInt, check_input_path, check_output_path

TEXT = "--model {model}"
MUSIC = "--model tiny:transformers"
VLM = "--model tiny-llava"
OUT = "{out}/x.safetensors"

# (id, command line, text the one error line must hold). {model}: the tiny text model, {d}: a text direction file,
# {in}: folder of input files (see `inputs`), {out}: a folder that does not exist yet, {tmp}: the test's own folder,
# {file}: an existing file in it, {locked}: a folder nobody may write to.
ROWS = [
    # counts and sizes
    ("generate --batch-size 0", f"generate {TEXT} --batch-size 0 hi", "--batch-size must be an integer >= 1, got '0'"),
    ("generate --batch-size -4", f"generate {TEXT} --batch-size -4 hi", "--batch-size must be an integer >= 1"),
    ("generate --max-new-tokens 0", f"generate {TEXT} --max-new-tokens 0 hi", "--max-new-tokens must be an integer"),
    ("generate --max-new-tokens -1", f"generate {TEXT} --max-new-tokens -1 hi", "--max-new-tokens must be an integer"),
    ("generate --batch-size 1.5", f"generate {TEXT} --batch-size 1.5 hi", "--batch-size must be an integer >= 1"),
    ("generate --seed -1", f"generate {TEXT} --seed -1 hi", "--seed must be an integer in [0, 4294967295]"),
    ("sweep --max-new-tokens 0", f"sweep {TEXT} -d {{d}} --keywords sea --max-new-tokens 0 -o {{out}}",
     "--max-new-tokens must be an integer >= 1"),
    ("sweep --top-layers 0", f"sweep {TEXT} -d {{d}} --keywords sea --top-layers 0 -o {{out}}", "--top-layers must"),
    ("demo --prompts 0", f"demo {TEXT} --prompts 0", "--prompts must be an integer in [1, 20]"),
    ("demo --layer -1", f"demo {TEXT} --layer -1", "--layer must be an integer >= 0"),
    ("train-vector --steps 0", f"train-vector {TEXT} --persona ocean --steps 0 -o {OUT}", "--steps must be an integer"),
    ("train-vector --lr 0", f"train-vector {TEXT} --persona ocean --lr 0 -o {OUT}", "--lr must be a number > 0"),
    ("train-vector --lr nan", f"train-vector {TEXT} --persona ocean --lr nan -o {OUT}", "--lr must be a number > 0"),
    ("train-vector --l2 -1", f"train-vector {TEXT} --persona ocean --l2 -1 -o {OUT}", "--l2 must be a number >= 0"),
    ("train-vector --max-norm inf", f"train-vector {TEXT} --persona ocean --max-norm inf -o {OUT}", "--max-norm must"),
    ("train-vector --patience 0", f"train-vector {TEXT} --persona ocean --patience 0 -o {OUT}", "--patience must"),
    ("train-vector --num-samples 0", f"train-vector {TEXT} --persona ocean --num-samples 0 -o {OUT}", "--num-samples"),
    ("attribute -n 0", f"attribute {TEXT} --keywords sea -n 0", "--top must be an integer >= 1"),
    ("detect --feature -1", f"detect {TEXT} --texts {{in}}/prompts.txt --feature -1", "--feature must be an integer"),
    ("detect --threshold nan", f"detect {TEXT} --texts {{in}}/prompts.txt -d {{d}} --threshold nan",
     "--threshold must be a finite number, got 'nan'"),
    ("explain -n 0", f"explain {TEXT} --feature 1 -n 0", "--top must be an integer >= 1"),
    ("explain --value inf", f"explain {TEXT} --feature 1 --value inf", "--value must be a finite number"),
    ("sae train --batch-size 0", f"sae train {TEXT} --batch-size 0 -o {{out}}", "--batch-size must be an integer"),
    ("sae train --d-sae 0", f"sae train {TEXT} --d-sae 0 -o {{out}}", "--d-sae must be an integer >= 1"),
    ("sae train --context 1", f"sae train {TEXT} --context 1 -o {{out}}", "--context must be an integer >= 2"),
    ("sae train -k > --d-sae", f"sae train {TEXT} --d-sae 8 -k 9 -o {{out}}", "-k 9 is more than --d-sae 8"),
    ("sae lf --top-k 0", f"sae lf {TEXT} --groups {{in}}/groups.json --top-k 0 -o {OUT}", "--top-k must be"),
    ("sae lf --agree-threshold 2", f"sae lf {TEXT} --groups {{in}}/groups.json --agree-threshold 2 -o {OUT}",
     "--agree-threshold must be a number in [0, 1] or 'median'"),
    ("sae saif --min-fraction 1.5", f"sae saif {TEXT} --data {{in}}/instructions.json --instruction french "
     f"--min-fraction 1.5 -o {OUT}", "--min-fraction must be a number in [0, 1]"),
    ("music find --variants 0", f"music find --concept note:E {MUSIC} --variants 0 -o {OUT}", "--variants must"),
    ("music find --val-fraction 1", f"music find --concept note:E {MUSIC} --val-fraction 1 -o {OUT}",
     "--val-fraction must be a number in (0, 1)"),
    ("music find --seconds 0", f"music find --concept note:E {MUSIC} --seconds 0 -o {OUT}", "--seconds must be"),
    ("music find --octaves 3,x", f"music find --concept note:E {MUSIC} --octaves 3,x -o {OUT}", "bad --octaves"),
    ("music find --concept note:H", f"music find --concept note:H {MUSIC} -o {OUT}",
     "bad --concept 'note:H': unknown pitch class 'H'"),
    ("music generate --seconds 0", f"music generate hi {MUSIC} --seconds 0 -o {{out}}/x.wav", "--seconds must be"),
    ("music generate --guidance nan", f"music generate hi {MUSIC} --guidance nan -o {{out}}/x.wav", "--guidance must"),
    ("vlm find-vti --trials 0", f"vlm find-vti {VLM} --trials 0 -o {OUT}", "--trials must be an integer >= 1"),
    ("vlm find-vti --mask-ratio 1.5", f"vlm find-vti {VLM} --mask-ratio 1.5 -o {OUT}", "--mask-ratio must be"),
    ("vlm find-vti --alpha-text nan", f"vlm find-vti {VLM} --alpha-text nan -o {OUT}", "--alpha-text must be"),
    ("vlm find-vti --demos scenes:0", f"vlm find-vti {VLM} --demos scenes:0 -o {OUT}", "bad data spec 'scenes:0'"),
    ("vlm describe --max-new-tokens 0", f"vlm describe {{in}}/prompts.txt {VLM} --max-new-tokens 0", "--max-new"),
    ("vlm eval --n 0", f"vlm eval --metric chair {VLM} --n 0", "--n must be an integer >= 1"),
    ("vlm eval --metric bogus", f"vlm eval --metric bogus {VLM}", "unknown --metric 'bogus'"),
    # coefficients, layers and schedules (already one line before this change; now all before the model)
    ("generate --coef nan", f"generate {TEXT} -d {{d}} --coef nan hi", "bad --coef 'nan'"),
    ("generate --coef inf", f"generate {TEXT} -d {{d}} --coef inf hi", "bad --coef 'inf'"),
    ("generate -d w@nan", f"generate {TEXT} -d {{d}}@nan hi", "is not a finite coefficient"),
    ("generate -d w@abc", f"generate {TEXT} -d {{d}}@abc hi", "is not a finite coefficient"),
    ("sweep --coefs 0,nan", f"sweep {TEXT} -d {{d}} --coefs 0,nan --keywords sea -o {{out}}", "'nan' is not a finite"),
    ("sweep --coefs abc", f"sweep {TEXT} -d {{d}} --coefs abc --keywords sea -o {{out}}", "bad --coefs 'abc'"),
    ("find --layers 5-2", f"find {TEXT} --layers 5-2 --persona ocean -o {OUT}", "runs backwards"),
    ("find --layers ''", f"find {TEXT} --layers= --persona ocean -o {OUT}", "--layers: bad layer spec ''"),
    ("sweep -d w@2", f"sweep {TEXT} -d {{d}}@2 --keywords sea -o {{out}}", "sweep coefficients with --coefs"),
    ("generate --device gpu0", f"generate {TEXT} --device gpu0 hi", "unknown device 'gpu0'"),
    ("vlm eval --dtype fp8", f"vlm eval --metric chair {VLM} --dtype fp8", "unknown --dtype 'fp8'"),
    ("music find --layers abc", f"music find --concept note:E {MUSIC} --layers abc -o {OUT}", "--layers: bad layer"),
    ("music generate -d w@x", f"music generate hi -d {{d}}@x {MUSIC} -o {{out}}/x.wav", "'x' is not a finite coef"),
    ("vlm find-vti --text-layers 3-1", f"vlm find-vti {VLM} --text-layers 3-1 -o {OUT}", "--text-layers: bad layer"),
    ("vlm find-vti --vision-layers 3-1", f"vlm find-vti {VLM} --vision-layers 3-1 -o {OUT}",
     "--vision-layers: bad layer spec '3-1'"),
    ("vlm find --layers x", f"vlm find {VLM} --layers x -o {OUT}", "--layers: bad layer spec 'x'"),
    ("vlm describe -d w@2", f"vlm describe {{in}}/prompts.txt {VLM} -d {{d}}@2",
     "set the strengths with --alpha-text and --alpha-vision"),
    ("generate --schedule exp-decay:-0.5", f"generate {TEXT} -d {{d}} --schedule exp-decay:-0.5 hi",
     "exp-decay rate must be in (0, 1], got -0.5"),
    ("generate --schedule wobble", f"generate {TEXT} -d {{d}} --schedule wobble hi", "unknown schedule 'wobble'"),
    ("demo --schedule wobble", f"demo {TEXT} --schedule wobble", "unknown schedule 'wobble'"),
    ("music generate --schedule ramp:5-2", f"music generate hi -d {{d}} {MUSIC} --schedule ramp:5-2 -o {{out}}/x.wav",
     "ramp needs start < end"),
    # names checked against the plugin registry
    ("find --finder diffmena", f"find {TEXT} --finder diffmena --persona ocean -o {OUT}",
     "unknown --finder 'diffmena': did you mean 'diffmean'?"),
    ("detect --finder diffmena", f"detect {TEXT} --texts {{in}}/labelled.jsonl --finder diffmena --train "
     "{in}/labelled.jsonl", "unknown --finder 'diffmena'"),
    ("music find --finder diffmena", f"music find --concept note:E {MUSIC} --finder diffmena -o {OUT}",
     "unknown --finder 'diffmena'"),
    ("vlm find --finder diffmena", f"vlm find {VLM} --finder diffmena -o {OUT}", "unknown --finder 'diffmena'"),
    ("generate --operator addd", f"generate {TEXT} -d {{d}} --operator addd hi", "did you mean 'add'?"),
    ("vlm find --operator nope", f"vlm find {VLM} --operator nope -o {OUT}", "unknown --operator 'nope'"),
    ("find --site resid", f"find {TEXT} --site resid --persona ocean -o {OUT}", "unknown --site 'resid'"),
    ("detect --hook-point bogus", f"detect {TEXT} --texts {{in}}/prompts.txt -d {{d}} --hook-point bogus",
     "--hook-point: bad hook point 'bogus'"),
    # options that would be silently ignored
    ("generate --schedule without -d", f"generate {TEXT} --schedule constant hi", "--schedule applies to steering"),
    ("generate --operator without -d", f"generate {TEXT} --operator add hi", "--operator applies to steering"),
    ("music generate --schedule without -d", f"music generate hi {MUSIC} --schedule constant -o {{out}}/x.wav",
     "--schedule applies to steering directions"),
    ("music generate 2 schedules, 1 -d", f"music generate hi -d {{d}} {MUSIC} --schedule constant --schedule "
     "constant -o {out}/x.wav", "got 2 --schedule values for 1 directions"),
    ("vlm describe --alpha-text without -d", f"vlm describe {{in}}/prompts.txt {VLM} --alpha-text 2",
     "--alpha-vision and --alpha-text set a direction's strengths"),
    ("detect --finder-param without --finder", f"detect {TEXT} --texts {{in}}/prompts.txt -d {{d}} --finder-param k=1",
     "--finder-param sets --finder parameters"),
    ("find --questions with --data", f"find {TEXT} --data {{in}}/pairs.jsonl --questions {{in}}/prompts.txt -o {OUT}",
     "--questions goes with --persona"),
    ("find --persona 'sea|'", f"find {TEXT} --persona sea| -o {OUT}", "unknown persona 'sea|'"),
    ("train-vector --reward-keywords, supervised", f"train-vector {TEXT} --persona ocean --reward-keywords sea "
     f"-o {OUT}", "--reward-keywords goes with --objective reward"),
    ("sweep --keywords ' , '", f"sweep {TEXT} -d {{d}} --keywords , -o {{out}}", "--keywords ',' names nothing"),
    ("convert --model on export", "convert {d} --model {model} -o {out}/x.gguf", "--model is for importing"),
    ("convert --coef on import", "convert {in}/prompts.txt --coef 2 -o " + OUT, "--coef is for exporting"),
    # output paths
    ("find -o existing folder", f"find {TEXT} --persona ocean -o {{tmp}}", "is a folder; give a file path"),
    ("find -o under a file", f"find {TEXT} --persona ocean -o {{file}}/x.safetensors", "is a file, not a folder"),
    ("find -o unwritable folder", f"find {TEXT} --persona ocean -o {{locked}}/x.safetensors", "no write permission"),
    ("find --cache-dir a file", f"find {TEXT} --persona ocean --cache-dir {{file}} -o {OUT}", "--cache-dir"),
    ("sweep -o existing file", f"sweep {TEXT} -d {{d}} --keywords sea -o {{file}}", "is a file, but a folder"),
    ("train-vector -o folder", f"train-vector {TEXT} --persona ocean -o {{tmp}}", "is a folder"),
    ("demo -o folder", f"demo {TEXT} -o {{tmp}}", "is a folder"),
    ("attribute -o folder", f"attribute {TEXT} --keywords sea -o {{tmp}}", "is a folder"),
    ("detect -o folder", f"detect {TEXT} --texts {{in}}/prompts.txt -d {{d}} -o {{tmp}}", "is a folder"),
    ("convert -o folder", "convert {d} -o {tmp}", "is a folder"),
    ("sae train -o file", f"sae train {TEXT} -o {{file}}", "is a file, but a folder"),
    ("sae feature -o folder", "sae feature 1 -o {tmp}", "is a folder"),
    ("sae lf -o unwritable", f"sae lf {TEXT} --groups {{in}}/groups.json -o {{locked}}/sub/x.safetensors",
     "no write permission"),
    ("music find -o folder, 1 concept", f"music find --concept note:E {MUSIC} -o {{tmp}}", "is a folder"),
    ("music find -o file, 2 concepts", f"music find --concept note:E --concept chord:minor {MUSIC} -o {{file}}",
     "is a file, but a folder"),
    ("music generate -o folder", f"music generate hi {MUSIC} -o {{tmp}}", "is a folder"),
    ("vlm find-vti -o folder", f"vlm find-vti {VLM} -o {{tmp}}", "is a folder"),
    ("vlm eval -o under a file", f"vlm eval --metric chair {VLM} -o {{file}}/r.json", "is a file, not a folder"),
    # input files
    ("find --data missing", f"find {TEXT} --data {{in}}/missing.jsonl -o {OUT}", "--data '{in}/missing.jsonl' does"),
    ("find --data a folder", f"find {TEXT} --data {{in}} -o {OUT}", "is a folder; give a file"),
    ("find --data array rows", f"find {TEXT} --data {{in}}/array.jsonl -o {OUT}", "array.jsonl:1: expected a JSON"),
    ("find --data non-string text", f"find {TEXT} --data {{in}}/number.jsonl -o {OUT}",
     "number.jsonl:2: 'positive' must be a non-empty string, got 3"),
    ("find --data empty text", f"find {TEXT} --data {{in}}/blank.jsonl -o {OUT}", "'negative' must be a non-empty"),
    ("find --data non-UTF-8", f"find {TEXT} --data {{in}}/latin1.jsonl -o {OUT}", "latin1.jsonl:2: not UTF-8"),
    ("find --data invalid JSON", f"find {TEXT} --data {{in}}/broken.jsonl -o {OUT}", "broken.jsonl:1: not valid JSON"),
    ("find --data label [1]", f"find {TEXT} --data {{in}}/label_list.jsonl -o {OUT}", "label must be 1/0"),
    ("find --questions empty", f"find {TEXT} --persona ocean --questions {{in}}/empty.txt -o {OUT}", "is empty"),
    ("generate --prompts-file non-UTF-8", f"generate {TEXT} --prompts-file {{in}}/latin1.txt", "not UTF-8"),
    ("sweep --prompts-file empty", f"sweep {TEXT} -d {{d}} --keywords sea --prompts-file {{in}}/empty.txt -o {{out}}",
     "is empty"),
    ("train-vector --data array rows", f"train-vector {TEXT} --data {{in}}/array.jsonl -o {OUT}", "expected a JSON"),
    ("detect --texts label [1]", f"detect {TEXT} --texts {{in}}/label_list.jsonl -d {{d}}", "label must be 0 or 1"),
    ("detect --texts array rows", f"detect {TEXT} --texts {{in}}/array.jsonl -d {{d}}", "expected a JSON object"),
    ("detect --train unlabelled", f"detect {TEXT} --texts {{in}}/prompts.txt --finder diffmean --train "
     "{in}/prompts.txt", "must be labelled JSONL rows"),
    ("explain --text missing", f"explain {TEXT} --feature 1 --text {{in}}/missing.txt", "does not exist"),
    ("explain --data array rows", f"explain {TEXT} -d {{d}} --decompose --data {{in}}/array.jsonl",
     "expected a JSON object"),
    ("sae lf --groups not a list", f"sae lf {TEXT} --groups {{in}}/instructions.json -o {OUT}",
     "must hold a non-empty list of groups"),
    ("sae saif --data bad check", f"sae saif {TEXT} --data {{in}}/bad_check.json --instruction x -o {OUT}",
     "instruction 'x' has check ['french']"),
    ("vlm find --demos array rows", f"vlm find {VLM} --demos {{in}}/array.jsonl -o {OUT}", "expected a JSON object"),
    ("vlm find-vti --demos objects str", f"vlm find-vti {VLM} --demos {{in}}/demos.jsonl -o {OUT}",
     "'objects' must be a list of object names"),
    ("vlm describe not an image", f"vlm describe {{in}}/prompts.txt {VLM}", "not an image format"),
    ("vlm eval --coco-annotations a list", f"vlm eval --metric chair {VLM} --coco-annotations {{in}}/array.jsonl "
     "--coco-images {in}", "is not a COCO instances file"),
    ("vlm eval --coco-annotations non-UTF-8", f"vlm eval --metric chair {VLM} --coco-annotations "
     "{in}/latin1.jsonl --coco-images {in}", "not UTF-8"),
    ("music eval missing file", "music eval {in}/missing.wav --tempo", "does not exist"),
]
LOADERS = [  # every name a command calls to load a model, where it is looked up
    "polysteer.modalities.text.models.load_text_model", "polysteer.modalities.text.cli.main.load_text_model",
    "polysteer.modalities.text.cli.sweep.load_text_model", "polysteer.modalities.text.cli.trained.load_text_model",
    "polysteer.modalities.text.cli.demo.load_text_model", "polysteer.modalities.music.models.load_music_model",
    "polysteer.modalities.vision_language.workflow.load_vlm",
]


def _write(folder: Path, name: str, content: str | bytes) -> None:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def write_inputs(folder: Path) -> Path:
    """Good and bad input files, one of each kind the rows read, and a text direction file ``d.safetensors``."""
    pair = json.dumps({"positive": "the sea", "negative": "the city"})
    files = {
        "pairs.jsonl": pair, "prompts.txt": "tell me about the day\n", "empty.txt": "\n  \n",
        "array.jsonl": "[1, 2]\n", "number.jsonl": pair + '\n{"positive": 3, "negative": "x"}\n',
        "blank.jsonl": '{"positive": "the sea", "negative": "   "}\n', "broken.jsonl": '{"positive": \n',
        "latin1.jsonl": pair.encode() + b'\n{"positive": "caf\xe9", "negative": "x"}\n',
        "latin1.txt": b"caf\xe9\n", "label_list.jsonl": '{"text": "the sea", "label": [1]}\n',
        "labelled.jsonl": '{"text": "the sea", "label": 1}\n{"text": "the city", "label": 0}\n',
        "groups.json": json.dumps([{"answer": "paris", "paraphrases": ["capital of france?", "france's capital?"]}]),
        "instructions.json": json.dumps({"contents": ["tell me"], "instructions": {"french": {"wordings": ["fr"]}}}),
        "bad_check.json": json.dumps({"contents": ["a"], "instructions": {"x": {"wordings": ["w"],
                                                                                "check": ["french"]}}}),
        "demos.jsonl": json.dumps({"image": "prompts.txt", "objects": "cat"}) + "\n",
    }
    for name, content in files.items():
        _write(folder, name, content)
    vector = torch.nn.functional.normalize(torch.randn(32), dim=0)
    Direction(vectors={"text.blocks.1.resid_post": vector}, modality="text", model={"name": "tiny"},
              d_model=32).save(folder / "d.safetensors")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails with 'model loaded', which no row may print."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded")

    for target in LOADERS:
        module, name = target.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(module), name, refuse)


@pytest.fixture
def places(inputs, model_dir, tmp_path, monkeypatch):
    """The row placeholders; {locked} refuses writes, also to root (for whom permission bits do not count)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    (tmp_path / "existing.txt").write_text("keep me\n")
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: real(p, mode, **kw) and (
            not mode & os.W_OK or not str(p).startswith(str(locked))))
    yield {"model": model_dir, "d": inputs / "d.safetensors", "in": inputs, "out": tmp_path / "out",
           "tmp": tmp_path, "file": tmp_path / "existing.txt", "locked": locked}
    locked.chmod(0o700)


def tree(*folders: Path) -> dict:
    """Every file and folder under ``folders`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(f.rglob("*"))}


def command_line(row: str, places: dict) -> list[str]:
    return [part.format(**places) for part in row.split(" ")]


@pytest.mark.parametrize("name, row, message", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_before_any_model_loads(name, row, message, places, no_model, capsys):
    before = tree(places["tmp"], places["in"])
    with pytest.raises(SystemExit) as exit_info:
        main(command_line(row, places))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    assert message.format(**places) in err, err
    assert "model loaded" not in err
    assert tree(places["tmp"], places["in"]) == before, "a file was written"


@pytest.mark.parametrize("row", ["generate --batch-size 0 hi", "find --finder diffmena --persona ocean -o {out}/x"])
def test_the_installed_command_prints_one_line(row, places):
    argv = [sys.executable, "-c", "from polysteer.cli import main; main()", *command_line(row, places)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not places["out"].exists()


def walk(group: click.Group, prefix: tuple = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from walk(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), command


def test_every_option_is_checked_while_parsing():
    """No command takes a bare int, float, path or choice: those fail later, or as a multi-line usage error."""
    bare = (click.types.IntParamType, click.types.FloatParamType, click.IntRange, click.FloatRange, click.Path,
            click.File, click.Choice)
    for name, command in walk(get_cli()):
        for param in command.params:
            kind = type(param.type)
            if name == "inspect":  # the core's own command: Direction.load checks its file
                continue
            assert kind not in bare, f"{name} {param.opts}: use a type from polysteer.option_types, not {kind.__name__}"
            if "-o" in param.opts or param.name in ("cache_dir", "store_dir"):
                assert param.type.name.startswith("output"), f"{name} {param.opts}: use polysteer.options.output_option"


def test_help_shows_ranges_and_the_overwrite_rule():
    result = click.testing.CliRunner().invoke(get_cli(), ["generate", "--help"])
    assert "integer >= 1]" in result.output and "None" not in result.output
    result = click.testing.CliRunner().invoke(get_cli(), ["vlm", "describe", "--help"])
    assert "[finite number]" in result.output and "x<=None" not in result.output
    result = click.testing.CliRunner().invoke(get_cli(), ["find", "--help"])
    assert "replaced" in result.output and "atomically" in result.output


@pytest.mark.parametrize("path, kind, message", [
    ("", "file", "empty -o"), ("{tmp}", "file", "is a folder"), ("{file}", "dir", "is a file, but a folder"),
    ("{file}/a/b.txt", "file", "is a file, not a folder"), ("/dev/null", "file", "not a regular file"),
    ("{locked}/new/deeper/x", "dir", "no write permission in"),
])
def test_output_paths_refused(path, kind, message, places):
    with pytest.raises(PolysteerError, match=message):
        check_output_path(path.format(**places), kind)
    assert not (places["locked"] / "new").exists()


def test_output_paths_accepted(places):
    assert check_output_path(str(places["file"]), "file") == str(places["file"])  # replaced atomically
    assert check_output_path(str(places["out"] / "a" / "b.safetensors"), "file")
    assert check_output_path(str(places["tmp"]), "dir") and check_output_path(str(places["tmp"]), "file-or-dir")
    assert not places["out"].exists()  # checking creates nothing


def test_input_paths(places):
    assert check_input_path(str(places["file"])) == str(places["file"])
    assert check_input_path(str(places["tmp"]), "dir") and check_input_path(str(places["file"]), "any")
    for path, kind, message in [("{tmp}/nope", "file", "does not exist"), ("{tmp}", "file", "is a folder"),
                                ("{file}", "dir", "is a file; give a folder")]:
        with pytest.raises(PolysteerError, match=message):
            check_input_path(path.format(**places), kind)


def test_checked_int_names_option_and_range():
    param = click.Option(["--steps"])
    assert CheckedInt(1).convert("3", param, None) == 3 and CheckedInt(1).convert(3, param, None) == 3
    for bad in ("0", "-2", "1.5", "x", "", True):
        with pytest.raises(PolysteerError, match=r"--steps must be an integer >= 1, got "):
            CheckedInt(1).convert(bad, param, None)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["text", "label", "positive", "negative", "prompt", "x"]), inner,
                               max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_all(path: Path) -> None:
    """Every reader on one file: each returns or raises PolysteerError, nothing else."""
    for reader in (lambda p: list(read_jsonl(p)), read_contrastive, read_texts, read_lines,
                   lambda p: read_json(p, "data", "example.json")):
        try:
            reader(path)
        except PolysteerError as exc:
            assert "\n" not in str(exc)


@fuzz_settings(300)
@given(data=st.binary(max_size=200))
def test_fuzzed_bytes_raise_only_polysteer_errors(data, fuzz_folder):
    for name in ("bytes.jsonl", "bytes.txt"):
        (fuzz_folder / name).write_bytes(data)
        read_all(fuzz_folder / name)


@fuzz_settings(300)
@given(rows=st.lists(json_values, max_size=4))
def test_fuzzed_json_rows_raise_only_polysteer_errors(rows, fuzz_folder):
    path = fuzz_folder / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    read_all(path)


def test_readers_keep_valid_rows(fuzz_folder):
    path = fuzz_folder / "valid.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a\xe2\x80\xa8b", "label": "positive"}\r\n\n{"text": "c", "label": 0}\n')
    assert read_texts(path) == (["a\u2028b", "c"], [1, 0])  # a BOM, CRLF and a raw U+2028 inside a string
    assert read_contrastive(path) == ([Example("a\u2028b")], [Example("c")])
