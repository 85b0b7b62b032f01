"""``polysteer demo`` end to end on the tiny Llama: three blocks around --layer, every built-in prompt scored."""

import pytest
from click.testing import CliRunner

from polysteer import Direction
from polysteer.cli import get_cli
from polysteer.modalities.text.presets import EVAL_PROMPTS


@pytest.mark.filterwarnings("ignore:coefficient .* is in units of the typical activation norm")
def test_demo_steers_three_blocks_and_scores_every_prompt(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYSTEER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ocean.safetensors"
    result = CliRunner().invoke(get_cli(), [
        "demo", "--model", str(model_dir), "--layer", "1", "--prompts", "2", "--max-new-tokens", "3",
        "--schedule", "window:0-2", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # blocks 1-2 and 1+2 clipped to the tiny model's three blocks
    assert Direction.load(out).hook_points == [f"text.blocks.{i}.resid_post" for i in (0, 1, 2)]
    assert result.output.count("### ") == 2 and f"2 of {len(EVAL_PROMPTS)} prompts shown" in result.output
    assert "schedule window:0-2" in result.output and "at 3 blocks" in result.output
