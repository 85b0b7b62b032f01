"""The on-disk cache (persona answers, activations, the command index) and a fast `polysteer --help`."""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from polysteer.cache import CacheWarning, cache_root, load_json, make_key, model_fingerprint, store_json
from polysteer.modalities.text.presets import PersonaPair
from polysteer.modalities.text.workflow import find_direction, persona_data

PAIR = PersonaPair("test", "Answer by talking about the sea.", "", "the sea", ("sea",))
QUESTIONS = ["What is your favorite food?", "Describe your day."]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets an empty cache of its own."""
    monkeypatch.setenv("POLYSTEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("POLYSTEER_NO_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def calls(llama, monkeypatch):
    """How many times the tiny Llama's ``generate`` and ``forward`` run."""
    counts = {"generate": 0, "forward": 0}
    original = llama.generate

    def generate(*args, **kwargs):
        counts["generate"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(llama, "generate", generate)
    handle = llama.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    yield counts
    handle.remove()


def persona(llama, tokenizer, **kwargs):
    return persona_data(llama, tokenizer, PAIR, kwargs.pop("questions", QUESTIONS), kwargs.pop("tokens", 4), **kwargs)


def test_a_second_persona_run_reuses_the_answers(llama, tokenizer, calls, capsys):
    first = persona(llama, tokenizer)
    assert calls["generate"] == 2 and len(first[0]) == len(first[1]) == 2  # one batch per persona
    assert persona(llama, tokenizer) == first
    assert calls["generate"] == 2
    assert "using cached persona answers (key " in capsys.readouterr().err


@pytest.mark.parametrize("change", [{"tokens": 5}, {"questions": QUESTIONS[:1]}])
def test_a_changed_setting_misses_the_cache(llama, tokenizer, calls, change):
    persona(llama, tokenizer)
    persona(llama, tokenizer, **change)
    assert calls["generate"] == 4


def test_another_model_or_dtype_misses_the_cache(llama, tokenizer):
    from tiny import tiny_model

    other = tiny_model("llama", seed=1)  # same config, other random weights
    assert model_fingerprint(other) != model_fingerprint(llama)
    assert model_fingerprint(other.to(torch.bfloat16))["dtype"] == "torch.bfloat16"
    assert make_key(model=model_fingerprint(llama)) == make_key(model=model_fingerprint(llama))


def test_a_corrupt_entry_is_regenerated_with_a_warning(llama, tokenizer, calls, cache):
    first = persona(llama, tokenizer)
    [entry] = (cache / "persona-answers").glob("*.json")
    entry.write_text('{"key": "trunc')
    with pytest.warns(CacheWarning, match="unreadable cache entry"):
        assert persona(llama, tokenizer) == first
    assert calls["generate"] == 4
    assert json.loads(entry.read_text())["key"] == entry.stem  # rewritten whole
    persona(llama, tokenizer)
    assert calls["generate"] == 4


def test_no_cache_flag_and_variable(llama, tokenizer, calls, monkeypatch, cache):
    persona(llama, tokenizer, cache=False)
    assert not cache.exists()
    monkeypatch.setenv("POLYSTEER_NO_CACHE", "1")
    persona(llama, tokenizer)
    persona(llama, tokenizer)
    assert calls["generate"] == 6 and not cache.exists()


def test_activations_are_captured_once(llama, tokenizer, calls, cache):
    pos, neg = persona(llama, tokenizer)
    calls["forward"] = 0
    first = find_direction(llama, tokenizer, pos, neg, [1, 2], cache=True)
    # one pass per class, and one over a few examples of each measuring the typical token norm (the coefficient's unit)
    assert calls["forward"] == 3
    second = find_direction(llama, tokenizer, pos, neg, [1, 2], cache=True)
    assert calls["forward"] == 3
    for hp in first.hook_points:
        assert torch.equal(first.vectors[hp], second.vectors[hp])
    [entry] = (cache / "activations").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:50])
    with pytest.warns(CacheWarning):
        find_direction(llama, tokenizer, pos, neg, [1, 2], cache=True)
    assert calls["forward"] == 6 and set(load_file(entry)) == {f"{s}/{hp}" for s in ("pos", "neg", "norm")
                                                               for hp in first.hook_points}
    find_direction(llama, tokenizer, pos, neg, [1], cache=True)  # other layers: another entry
    assert calls["forward"] == 9


def test_writers_racing_on_one_key_leave_a_whole_entry(cache):
    path, key = cache_root() / "race" / "k.json", "k"
    values = [list(range(i, i + 5000)) for i in range(6)]
    threads = [threading.Thread(target=lambda v=v: [store_json(path, key, v) for _ in range(5)]) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found, value = load_json(path, key)
    assert found and value in values
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temporary file left behind


def test_the_find_command_reuses_answers(model_dir, tmp_path, invoke):
    questions = tmp_path / "q.txt"
    questions.write_text("\n".join(QUESTIONS))
    args = ["find", "--model", model_dir, "--persona", "ocean", "--questions", questions, "--max-new-tokens", 4,
            "--layers", "1"]
    first = invoke(*args, "-o", tmp_path / "a.safetensors")
    assert first.exit_code == 0 and "using cached" not in first.output
    second = invoke(*args, "-o", tmp_path / "b.safetensors")
    assert "using cached persona answers" in second.output and "using cached activations" in second.output
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    third = invoke(*args, "--no-cache", "-o", tmp_path / "c.safetensors")
    assert third.exit_code == 0 and "using cached" not in third.output


HELP_SCRIPT = """
import sys
from click.testing import CliRunner
from polysteer.cli import cli
print(CliRunner().invoke(cli, ["--help"]).output)
print("HEAVY", sorted(m for m in ("torch", "sklearn", "transformers") if m in sys.modules))
"""


def test_top_level_help_imports_no_torch(cache):
    """With the command index a full load saved, `polysteer --help` lists the same commands and imports no torch."""
    from click.testing import CliRunner

    from polysteer.cli import _write_index, command_index_key, get_cli

    _write_index(command_index_key(), get_cli())
    live = CliRunner().invoke(get_cli(), ["--help"]).output
    env = {**os.environ, "POLYSTEER_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", HELP_SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.endswith("HEAVY []\n")
    assert out.split("\nHEAVY")[0] == live  # the same help, line for line
    for command in ("find", "generate", "music", "vlm", "plugins", "inspect"):
        assert f"\n  {command} " in out


def test_a_stale_or_broken_index_is_ignored(cache):
    from polysteer.cli import _read_index

    path = cache / "cli-commands.json"
    path.parent.mkdir(parents=True)
    for text in ("{not json", json.dumps({"key": "k", "commands": [{"name": "x"}]}), json.dumps([1])):
        path.write_text(text)
        assert _read_index("k") is None
    path.write_text(json.dumps({"key": "old", "commands": []}))
    assert _read_index("k") is None
    row = {"name": "x", "help": "Do x.", "short_help": None, "hidden": False, "deprecated": False}
    path.write_text(json.dumps({"key": "k", "commands": [row]}))
    assert _read_index("k")["x"].help == "Do x."


@pytest.mark.parametrize("args, message", [
    (["--data", "pairs.jsonl", "--max-new-tokens", "4"], "--max-new-tokens goes with --persona"),
    (["--persona", "ocean", "--no-cache", "--cache-dir", "acts"], "give one"),
])
def test_find_refuses_conflicting_cache_options(args, message, tmp_path, monkeypatch, capsys):
    from polysteer.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text('{"positive": "a sea", "negative": "a city"}\n')
    with pytest.raises(SystemExit):
        main(["find", *args, "-o", "out.safetensors"])
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1
