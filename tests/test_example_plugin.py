"""A third-party plugin distribution (tests/fixtures/polysteer-example) installed with pip and used from outside."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polysteer import Direction

FIXTURE = Path(__file__).parent / "fixtures" / "polysteer-example"

SCRIPT = textwrap.dedent("""
    import torch, polysteer
    from polysteer import manager, registry, modality_for, make_finder, steer, Intervention
    from polysteer.capture import capture
    from polysteer_example import TinyGRULM

    assert registry("direction_finders").owners["trimmed-mean-diff"] == "example"
    assert registry("modalities").owners["gru-lm"] == "example"
    torch.manual_seed(0)
    model = TinyGRULM().eval()
    modality = modality_for(model)
    assert modality.name == "gru-lm"

    hp = "text.blocks.1.resid_post"
    def acts(token):
        ids = torch.full((6, 5), token) + torch.arange(6)[:, None] % 2
        batch = {"inputs": {"input_ids": ids}, "mask": torch.ones(6, 5, dtype=torch.bool)}
        return capture(model, modality, [hp], [batch], forward=lambda m, x: m(**x))[hp]
    finder = make_finder("trimmed-mean-diff").fit(acts(10), acts(30))
    v = finder.direction_

    seen = []
    probe = model.layers[1].register_forward_hook(lambda m, a, out: seen.append(out[0][:, -1] @ v))
    prompt = torch.tensor([[1, 2, 3]])
    base = model.generate(prompt, max_new_tokens=6)
    base_proj = torch.cat(seen); seen.clear()
    with steer(model, Intervention(v, hp, 3.0, schedule="generated-only")):
        steered = model.generate(prompt, max_new_tokens=6)
    probe.remove()
    steered_proj = torch.cat(seen)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    # the probe was registered first, so it sees the unsteered layer output; the steered run differs from step 1 on
    print("RESULT", torch.equal(base, steered), hooks, float(base_proj[0] - steered_proj[0]))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(FIXTURE)], check=True, capture_output=True)
    return target


def run(code, target, **env_vars):
    env = {"PYTHONPATH": str(target), "PATH": "", **env_vars}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_example_plugin_is_discovered_and_steers_its_model(installed):
    result = run(SCRIPT, installed)
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")][0]
    same, hooks, first_step_gap = line.split()[1:]
    assert same == "False"  # steering changed the generated tokens
    assert hooks == "0"  # and left no hook behind
    assert float(first_step_gap) == 0.0  # generated-only: the prompt pass was untouched


def test_example_plugin_listed_by_cli(installed):
    result = run("from polysteer.cli import main; main(['plugins'])", installed)
    assert result.returncode == 0, result.stderr
    assert "example\n  direction_finders: trimmed-mean-diff\n  modalities: gru-lm" in result.stdout


LOADED = ("from polysteer import manager; manager.load_plugins(); "
          "print(sorted(manager.pm.get_name(p) for p in manager.pm.get_plugins()))")
BUILTINS = ["polysteer.modalities.music", "polysteer.modalities.text", "polysteer.modalities.vision_language",
            "polysteer.plugins.finders", "polysteer.plugins.operators", "polysteer.plugins.rfm",
            "polysteer.plugins.sae", "polysteer.plugins.schedules"]


@pytest.mark.parametrize("env, expected", [
    ({}, sorted(BUILTINS + ["example"])),
    ({"POLYSTEER_LOAD_PLUGINS": ""}, BUILTINS),
    ({"POLYSTEER_LOAD_PLUGINS": "example"}, sorted(BUILTINS + ["example"])),
    ({"POLYSTEER_LOAD_PLUGINS": "other-plugin"}, BUILTINS),
    ({"POLYSTEER_EXCLUDE_PLUGINS": "example"}, BUILTINS),
    ({"POLYSTEER_EXCLUDE_PLUGINS": "polysteer.plugins.rfm,other"}, sorted(BUILTINS + ["example"])),
])
def test_load_and_exclude_variables_apply_to_third_party_plugins_only(installed, env, expected):
    result = run(LOADED, installed, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(expected)


def test_a_plugin_finder_takes_its_parameters_from_the_command_line(installed, model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"positive": f"the sea and the ocean {i}", "negative": f"the city {i}"})
                              for i in range(6)))
    out = tmp_path / "trimmed.safetensors"
    find = ["find", "--model", str(model_dir), "--data", str(data), "--layers", "1", "--finder", "trimmed-mean-diff",
            "--no-cache"]
    result = run(f"from polysteer.cli import main; main({[*find, '--finder-param', 'trim=0.25', '-o', str(out)]!r})",
                 installed)
    assert result.returncode == 0, result.stderr
    finder = Direction.load(out).finder
    assert finder["name"] == "trimmed-mean-diff" and finder["params"] == {"trim": 0.25}
    bad = run(f"from polysteer.cli import main; main({[*find, '--finder-param', 'cut=1', '-o', str(out)]!r})",
              installed)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "Error: finder 'trimmed-mean-diff' has no parameter 'cut'; its parameters: trim")
