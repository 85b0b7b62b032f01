"""The benchmark statistics helpers (benchmarks/power_stats.py): bootstrap intervals and judge agreement."""

import importlib.util
import math
from pathlib import Path

import pytest

from polysteer import PolysteerError

PATH = Path(__file__).parents[1] / "benchmarks" / "power_stats.py"
spec = importlib.util.spec_from_file_location("power_stats", PATH)
stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stats)


def test_bootstrap_interval_matches_the_normal_approximation():
    values = [0.0, 1.0] * 50  # mean 0.5, standard error 0.05
    mean, low, high = stats.bootstrap_ci(values)
    assert mean == 0.5
    assert 0.38 < low < 0.42 and 0.58 < high < 0.62


def test_bootstrap_is_seeded_and_narrows_with_more_samples():
    few = [0.0, 2.0, 1.0, 0.4, 1.6] * 4
    assert stats.bootstrap_ci(few) == stats.bootstrap_ci(few)
    assert stats.bootstrap_ci(few, seed=1) != stats.bootstrap_ci(few)
    _, low, high = stats.bootstrap_ci(few)
    _, low_many, high_many = stats.bootstrap_ci(few * 10)
    assert high_many - low_many < (high - low) / 2


def test_constant_values_give_a_zero_width_interval():
    assert stats.bootstrap_ci([0.4, 0.4, 0.4]) == (0.4, 0.4, 0.4)


@pytest.mark.parametrize("values, resamples, match", [
    ([1.0], 2000, ">= 2 finite numbers"), ([1.0, float("nan")], 2000, "finite"), ([0.0, 1.0], 100, ">= 1000")])
def test_bootstrap_refuses_bad_input(values, resamples, match):
    with pytest.raises(PolysteerError, match=match):
        stats.bootstrap_ci(values, resamples=resamples)


def test_paired_interval_cancels_shared_variation():
    b = {("c", i): float(i % 5) / 2 for i in range(40)}  # widely spread scores
    a = {k: v + 0.1 for k, v in b.items()}  # the same plus 0.1 on every sample
    diff, low, high = stats.paired_bootstrap_ci(a, b)
    assert diff == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    _, low_a, high_a = stats.bootstrap_ci(list(a.values()))
    assert high_a - low_a > 0.3  # unpaired, the spread would swamp the difference


def test_paired_interval_needs_the_same_samples():
    with pytest.raises(PolysteerError, match="share keys"):
        stats.paired_bootstrap_ci({("c", "x"): 1.0, ("c", "y"): 0.0}, {("c", "x"): 1.0, ("c", "z"): 0.0})


def test_judge_agreement_counts_accuracy_and_kappa():
    judge = [0, 0, 1, 2, 2, 0, 1, 2]
    hits = [False, False, True, True, False, True, True, True]
    result = stats.judge_agreement(judge, hits)
    assert result["confusion"] == {0: {"yes": 1, "no": 2}, 1: {"yes": 2, "no": 0}, 2: {"yes": 2, "no": 1}}
    assert result["accuracy"] == 6 / 8 and result["n"] == 8
    # called yes 5/8, keyword yes 5/8: expected agreement 34/64, observed 48/64
    assert result["kappa"] == pytest.approx((48 / 64 - 34 / 64) / (1 - 34 / 64))


def test_judge_agreement_perfect_and_undefined():
    assert stats.judge_agreement([0, 1, 2, 0], [False, True, True, False])["kappa"] == pytest.approx(1.0)
    assert math.isnan(stats.judge_agreement([2, 1], [True, True])["kappa"])


@pytest.mark.parametrize("judge, hits, match", [([0, 1], [True], "one keyword label"), ([3], [True], "0, 1 or 2")])
def test_judge_agreement_refuses_bad_input(judge, hits, match):
    with pytest.raises(PolysteerError, match=match):
        stats.judge_agreement(judge, hits)


def test_cells_are_formatted_with_their_interval():
    assert stats.with_ci(0.2851, 0.2149, 0.3612) == "0.285 [0.21, 0.36]"
    assert stats.signed_ci(0.041, -0.031, 0.112) == "+0.041 [-0.03, +0.11]"
