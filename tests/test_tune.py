"""``polysteer tune``: candidates chosen on the selection half by the AxBench judges, reported on the other half,
and written into the direction file as its defaults."""

import json

import pytest
from click.testing import CliRunner

from polysteer import Direction
from polysteer.cli import get_cli, main
from polysteer.modalities import text
from polysteer.modalities.text.tune import ALL, Candidate, candidates, split_instructions, tune_direction, tuned

pytestmark = pytest.mark.filterwarnings("ignore:coefficient .* is in units of the typical activation norm")
PROMPTS = ["tell me about your day", "what is a good meal", "describe a town", "write about a trip",
           "what do you like", "say something kind"]


@pytest.fixture(scope="module")
def direction(llama, tokenizer):
    pos = [text.Example(f"the sea and the waves {w}") for w in ("today", "at night", "so blue")]
    neg = [text.Example(f"the city and the train {w}") for w in ("today", "at night", "so grey")]
    return text.find_direction(llama, tokenizer, pos, neg, layers=[1, 2])


def test_instructions_alternate_between_choosing_and_reporting():
    select, report = split_instructions(PROMPTS)
    assert select == PROMPTS[0::2] and report == PROMPTS[1::2] and not set(select) & set(report)


def test_pareto_front_keeps_undominated_points_and_survives_ties():
    from polysteer.modalities.text.cli.tune import pareto_front

    # two candidates often score alike on 10 prompts; the front once sorted the candidates themselves and crashed
    points = [(1.5, 0.2), (1.5, 0.2), (1.0, 0.8), (1.2, 0.1), (0.5, 0.8), (2.0, 0.0)]
    assert pareto_front(points) == [(1.0, 0.8), (1.5, 0.2), (2.0, 0.0)]


def test_candidates_cover_each_layer_and_all_layers(direction):
    cands = candidates(direction, [0, 0.5, 2.0], ["constant", "generated-only"])
    assert len(cands) == 3 * 2 * 2 and Candidate(ALL, 2.0, "generated-only") in cands
    assert all(c.coefficient != 0 for c in cands)


def test_tune_picks_the_best_selection_score_and_writes_it_in(llama, tokenizer, direction):
    result = tune_direction(llama, tokenizer, direction, "the sea", PROMPTS, coefs=(0.5, 4.0),
                            schedules=("constant", "generated-only"), max_new_tokens=6)
    best = max(m["score"] for m in result.selection.values())
    assert result.selection[result.chosen]["score"] == best
    assert set(result.report) == {"chosen", "file defaults", "unsteered"}
    assert all(len(texts) == 3 for texts in result.samples.values())
    assert result.samples["chosen"] != result.samples["unsteered"]
    out = tuned(direction, result)
    assert (out.coefficient, out.schedule) == (result.chosen.coefficient, result.chosen.schedule)
    expected = direction.hook_points if result.chosen.hook_points == ALL else [result.chosen.hook_points]
    assert out.hook_points == expected and out.provenance["tune"]["report"] == result.report


def test_tune_command_writes_the_direction_table_and_plot(model_dir, direction, tmp_path):
    source = direction.save(tmp_path / "d.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "tuned.safetensors"
    result = CliRunner().invoke(get_cli(), [
        "tune", "--model", str(model_dir), "-d", str(source), "--concept", "the sea", "--prompts-file", str(prompts),
        "--coefs", "0.5,4", "--schedules", "constant", "--max-new-tokens", "6", "-o", str(out)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "tuned.tune.json").read_text())
    loaded = Direction.load(out)
    assert loaded.coefficient == record["chosen"]["coefficient"] and loaded.schedule == "constant"
    assert (tmp_path / "tuned.tune.png").stat().st_size > 0
    assert "## Report half" in (tmp_path / "tuned.tune.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--prompts-file", "{few}"], "at least 4 instructions"),
    (["--schedules", "sometimes"], "schedule"),
    (["-o", "{tmp}/tuned.txt"], "is a .safetensors file"),
])
def test_bad_input_is_refused_before_the_model_loads(tmp_path, direction, args, message, capsys):
    source = direction.save(tmp_path / "d.safetensors")
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    args = [a.format(few=tmp_path / "few.txt", tmp=tmp_path) for a in args]
    base = ["tune", "--model", "/nonexistent", "-d", str(source), "--concept", "the sea"]
    if "-o" not in args:
        base += ["-o", str(tmp_path / "t.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        main(base + args)
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and message in err and "nonexistent" not in err and "Traceback" not in err
