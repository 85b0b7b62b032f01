"""Schedules are pure functions of (step, position, layer, prompt_length): property tests."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import fuzz_settings

from polysteer import PolysteerError, parse_schedule

steps = st.integers(0, 5000)
layers = st.integers(0, 40)


@given(steps, st.integers(0, 100), layers, st.integers(1, 100))
def test_prompt_and_generated_partition_positions(step, position, layer, prompt):
    p = parse_schedule("prompt-only")(step, position, layer, prompt)
    g = parse_schedule("generated-only")(step, position, layer, prompt)
    assert float(p) + float(g) == 1.0
    assert bool(p) == (position < prompt)


@given(steps, st.integers(0, 200), st.integers(1, 200), layers)
def test_window_is_half_open(step, start, length, layer):
    w = parse_schedule(f"window:{start}-{start + length}")(step, 0, layer, 1)
    assert w == float(start <= step < start + length)


@given(steps, st.integers(0, 100), st.integers(1, 100))
def test_ramp_and_decay_are_complementary_and_monotone(step, start, length):
    ramp = parse_schedule(f"ramp:{start}-{start + length}")
    decay = parse_schedule(f"decay:{start}-{start + length}")
    assert ramp(step, 0, 0, 1) + decay(step, 0, 0, 1) == pytest.approx(1.0)
    assert 0.0 <= ramp(step, 0, 0, 1) <= 1.0
    assert ramp(step + 1, 0, 0, 1) >= ramp(step, 0, 0, 1)


def test_ramp_endpoints():
    ramp = parse_schedule("ramp:10-20")
    assert [ramp(t, 0, 0, 1) for t in (0, 10, 15, 20, 30)] == [0.0, 0.0, 0.5, 1.0, 1.0]


@given(steps)
def test_exponential_decay(step):
    assert parse_schedule("exp-decay:0.998")(step, 0, 0, 1) == pytest.approx(0.998**step)


def test_inject_chance_is_seeded_and_has_the_right_rate():
    a = parse_schedule("inject-chance:0.3,7")
    b = parse_schedule("inject-chance:0.3,7")
    draws = [a(t, 0, layer, 1) for t in range(200) for layer in range(10)]
    assert draws == [b(t, 0, layer, 1) for t in range(200) for layer in range(10)]
    assert set(draws) == {0.0, 1.0}
    assert 0.25 < sum(draws) / len(draws) < 0.35
    other_seed = parse_schedule("inject-chance:0.3,8")
    assert draws != [other_seed(t, 0, layer, 1) for t in range(200) for layer in range(10)]


@given(steps, layers)
def test_layer_weights(step, layer):
    s = parse_schedule("layer-weights:3=0.5,7=1")
    assert s(step, 0, layer, 1) == {3: 0.5, 7: 1.0}.get(layer, 0.0)


def test_seconds_convert_with_the_frame_rate():
    window = parse_schedule("window:0.5s-1s", steps_per_second=50)
    touched = [t for t in range(100) if window(t, 0, 0, 1)]
    assert touched == list(range(25, 50))
    with pytest.raises(PolysteerError, match="frame rate"):
        parse_schedule("window:0.5s-1s")


def test_products_multiply():
    s = parse_schedule("generated-only*window:0-5")
    positions = torch.tensor([[0, 1, 2, 3]])
    out = s(2, positions, 0, torch.tensor([[2]]))
    assert out.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert s(9, positions, 0, torch.tensor([[2]])).tolist() == [[0.0] * 4]


@pytest.mark.parametrize("spec", ["window:5", "window:9-3", "exp-decay:2", "inject-chance:1.5", "layer-weights:x",
                                  "nope"])
def test_bad_specs_are_clear_errors(spec):
    with pytest.raises(PolysteerError):
        parse_schedule(spec)


@pytest.mark.parametrize("spec, attrs", [
    ("inject-chance:0.5,-7", {"p": 0.5, "seed": -7}),
    ("window:-5-3", {"start": -5, "end": 3}),
    ("window:10--5", None),
    ("exp-decay:-0.5", None),
    ("exp-decay:nan", None),
    ("ramp:0-inf", None),
    ("layer-weights:12=nan", None),
    ("layer-weights:x=1", None),
])
def test_specs_keep_their_signs_and_refuse_non_finite_numbers(spec, attrs):
    if attrs is None:
        with pytest.raises(PolysteerError):
            parse_schedule(spec)
    else:
        assert parse_schedule(spec).__dict__ == attrs


@fuzz_settings(400)
@given(st.text(alphabet="abcdegilnoprstuwx-:,.*=0123456789se+ ", max_size=40)
       | st.sampled_from(["window:", "ramp:1s-2s", "exp-decay:", "inject-chance:,", "layer-weights:=", "*"])
       .flatmap(lambda head: st.text(alphabet="-0123456789.,es=:*nai", max_size=12).map(lambda tail: head + tail)))
def test_fuzzed_specs_parse_or_raise_only_polysteer_errors(spec):
    try:
        schedule = parse_schedule(spec, steps_per_second=50.0)
    except PolysteerError:
        return
    value = schedule(3, 4, 1, 2)
    assert value == value  # a parsed schedule yields a number, never NaN
