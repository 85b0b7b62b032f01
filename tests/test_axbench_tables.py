"""AxBench-lite's tables on hand-made judged rows: paired differences, judge agreement, intervals, prompt_steer's
source. The rows look as they do after judging: ``instruction`` holds the instruction score, ``task`` its text."""

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCHMARKS)  # the benchmark scripts import their siblings (common, power_stats) by name
    try:
        return SimpleNamespace(report=importlib.import_module("axbench_report"),
                               lite=importlib.import_module("axbench_lite"),
                               labels=importlib.import_module("judge_hand_labels"))
    finally:
        sys.path.remove(BENCHMARKS)


def judged(method, hp, scores, texts=None, concepts=None):
    """One row per (concept, task): ``scores`` and ``concepts`` in the order c0/t0, c0/t1, c1/t0, c1/t1."""
    keys = [(c, t) for c in ("ocean", "dogs") for t in ("Name a fruit.", "Plan a trip.")]
    return [{"name": c, "task": t, "method": method, "hook_point": hp, "factor": 1.0, "score": s, "instruction": 1.0,
             "fluency": 2.0, "concept": (concepts or [1.0] * 4)[i], "text": (texts or ["x"] * 4)[i]}
            for i, ((c, t), s) in enumerate(zip(keys, scores))]


def test_differences_pair_rows_on_concept_and_task(bench):
    hp = "text.blocks.12.resid_post"
    report = (judged("prompt_appended", "-", [1.0, 0.5, 0.0, 1.0]) + judged("diffmean", hp, [0.5, 0.5, 0.5, 0.5])
              + judged("prompt_steer", hp, [1.5, 1.0, 0.5, 1.5]))
    report[5]["task"], report[4]["task"] = report[4]["task"], report[5]["task"]  # order must not matter
    diffs = bench.report.differences(report, ["prompt_steer@L12", "diffmean@L12"])
    assert list(diffs) == ["prompt_steer@L12", "diffmean@L12"]
    assert diffs["prompt_steer@L12"] == (0.5, 0.5, 0.5)  # +0.5 on every pair: no spread at all
    assert diffs["diffmean@L12"][0] == pytest.approx(-0.125)
    assert bench.report.differences(report[4:], []) == {}  # no prompt_appended rows, no differences


def test_agreement_labels_outputs_with_their_own_concepts_keywords(bench):
    suite = SimpleNamespace(concepts=[SimpleNamespace(name="ocean", keywords=("ocean", "wave")),
                                      SimpleNamespace(name="dogs", keywords=("dog", "puppy"))])
    texts = ["Waves at sea.", "Nothing here.", "The ocean is calm.", "Two dogs played."]
    report = judged("diffmean", "text.blocks.12.resid_post", [0.0] * 4, texts, [2.0, 0.0, 0.0, 1.0])
    overall, per_row = bench.report.agreement(report, suite)
    assert [r["keyword"] for r in report] == [True, False, False, True]  # "ocean" is not a dogs keyword
    assert overall["confusion"] == {0: {"yes": 0, "no": 2}, 1: {"yes": 1, "no": 0}, 2: {"yes": 1, "no": 0}}
    assert overall["accuracy"] == 1.0 and per_row[0]["row"] == "diffmean@L12" and per_row[0]["judge > 0"] == 0.5


def test_interval_table_writes_each_score_with_its_interval(bench):
    report = judged("prompt_appended", "-", [1.0, 0.5, 0.0, 1.0])
    table = bench.report.summary(report, {}, {})
    rows = bench.report.interval_table(table, bench.report.intervals(report))
    assert rows[0]["method"] == "prompt_appended" and rows[0]["n"] == 4
    assert rows[0]["score"].startswith("0.625 [") and rows[0]["fluency"] == "2.000 [2.00, 2.00]"


def test_prompt_steer_source_is_the_best_row_at_its_chosen_factors(bench):
    a, b = ("diffmean", "text.blocks.12.resid_post"), ("pca", "text.blocks.12.resid_post")
    selection = [{"name": name, "method": m, "hook_point": hp, "factor": f, "score": s}
                 for name, (m, hp), f, s in [("ocean", a, 1.0, 2.0), ("ocean", a, 4.0, 0.0), ("dogs", a, 1.0, 0.0),
                                             ("ocean", b, 1.0, 1.0), ("dogs", b, 4.0, 1.5), ("dogs", b, 1.0, 0.0)]]
    chosen = bench.lite.choose_factors(selection)
    assert bench.lite.best_steering(selection, chosen) == b  # (1.0 + 1.5) / 2 beats (2.0 + 0.0) / 2
    args = SimpleNamespace(no_prompting=False, prompt_steer_method=None, sae_hook_point="x")
    assert bench.lite.prompt_steer_source(args, b) == b
    args.prompt_steer_method = "diffmean@12"
    assert bench.lite.prompt_steer_source(args, b) == a
    args.prompt_steer_method = "none"
    assert bench.lite.prompt_steer_source(args, b) is None


def test_prompt_steer_method_must_be_a_fitted_row(bench):
    with pytest.raises(SystemExit):
        bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--prompt-steer-method", "pca@12"])
    with pytest.raises(SystemExit):
        bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--prompt-steer-method", "diffmean@20"])
    args = bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--prompt-steer-method", "diffmean@L12"])
    assert args.prompt_steer_method == "diffmean@12"


def test_variants_apply_the_rows_vector_as_named(bench):
    import torch

    from polysteer import Intervention

    hp = "text.blocks.12.resid_post"
    iv = Intervention(torch.tensor([1.0, 0.0]), hp, 6.0)
    assert bench.lite.apply_variant("diffmean", iv, {}) is iv
    spread = bench.lite.apply_variant("diffmean+spread", iv, {}).interventions
    assert [x.hook_point.split(".")[2] for x in spread] == ["10", "11", "12", "13", "14"]
    assert sum(x.coefficient for x in spread) == pytest.approx(6.0)  # the same total, a fifth at each layer
    (rotate,) = bench.lite.apply_variant("diffmean+rotate", iv, {hp: 120.0}).interventions
    assert rotate.operator == "rotate" and rotate.coefficient * 0.1 == pytest.approx(6.0 / 120.0)
    both = bench.lite.apply_variant("diffmean+spread-decay", iv, {}).interventions
    assert [x.hook_point.split(".")[2] for x in both] == ["10", "12", "14"]
    assert {x.schedule for x in both} == {"decay:0-20"} and sum(x.coefficient for x in both) == pytest.approx(6.0)
    (decay,) = bench.lite.apply_variant("pca+decay", iv, {}).interventions
    assert decay.schedule == "decay:0-32" and decay.coefficient == 6.0 and decay.direction is iv.direction


def test_variants_and_their_source_are_checked_when_parsed(bench):
    with pytest.raises(SystemExit):
        bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--variants", "rotate,wobble"])
    with pytest.raises(SystemExit):
        bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--variant-source", "pca@12"])
    args = bench.lite.parse_args(["--methods", "diffmean", "--layers", "12", "--variants", "rotate,spread",
                                  "--variant-source", "diffmean@12"])
    assert args.variants == ["rotate", "spread"] and args.variant_source == ("diffmean", "text.blocks.12.resid_post")


def test_hand_label_agreement_counts_exact_and_present_calls(bench):
    labels = bench.labels
    rows = [{"label": a, "judge": b, "keyword": k} for a, b, k in [(0, 0, False), (0, 1, False), (2, 2, True),
                                                                   (1, 2, False), (2, 0, True)]]
    stats = labels.agreement(rows)
    assert stats["exact"] == pytest.approx(2 / 5)
    assert stats["judge > 0 vs label > 0"]["accuracy"] == pytest.approx(3 / 5)  # wrong on rows 2 and 5
    assert stats["keyword vs label > 0"]["accuracy"] == pytest.approx(4 / 5)  # misses the label-1 row only
    assert labels.confusion(rows)[0] == {"label": 0, "judge 0": 1, "judge 1": 1, "judge 2": 0}
