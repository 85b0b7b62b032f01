"""The Direction artifact: round trip, model checks, corrupt files, atomic writes."""

import json
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from tiny import fuzz_settings, tiny_model

from polysteer import Direction, PolysteerError
from polysteer.modalities.text.modality import TextModality


def make(model, d=None):
    modality = TextModality()
    d = d or modality.d_model(model, None)
    torch.manual_seed(0)
    return Direction(
        vectors={"text.blocks.1.resid_post": torch.randn(d), "text.blocks.2.resid_post": torch.randn(d)},
        modality="text", model=modality.identity(model), d_model=d, scales={"text.blocks.1.resid_post": 2.0},
        finder={"name": "diffmean", "params": {}}, extras={"gate.w": torch.arange(4.0)},
    )


def test_round_trip_is_exact(tmp_path, llama):
    original = make(llama)
    path = original.save(tmp_path / "d.safetensors")
    loaded = Direction.load(path)
    for hp, v in original.vectors.items():
        assert torch.equal(loaded.vectors[hp], v)
    assert torch.equal(loaded.extras["gate.w"], original.extras["gate.w"])
    assert loaded.manifest() == original.manifest()
    assert not list(tmp_path.glob("*.tmp"))


def test_manifest_fields(tmp_path, llama):
    path = make(llama).save(tmp_path / "d.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["polysteer"])
    for key in ("format_version", "modality", "model", "d_model", "hook_points", "operator", "schedule",
                "coefficient", "finder", "provenance", "created", "polysteer_version"):
        assert key in manifest
    assert manifest["model"]["config_hash"]


def test_plan_scales_coefficients(llama):
    plan = make(llama).to_plan(3.0)
    coefs = {iv.hook_point: iv.coefficient for iv in plan}
    assert coefs == {"text.blocks.1.resid_post": 6.0, "text.blocks.2.resid_post": 3.0}


def test_found_directions_count_in_fractions_of_the_typical_activation_norm(llama, tokenizer):
    from polysteer import hook_point
    from polysteer.modalities import text

    pos = [text.Example("the sea is wide and blue"), text.Example("waves roll on the beach")]
    neg = [text.Example("I cooked dinner at home"), text.Example("we went to the shop")]
    direction = text.find_direction(llama, tokenizer, pos, neg, layers=[1, 2])
    for layer in (1, 2):
        hp = hook_point(layer, "resid_post")
        tokens = TextModality().capture(llama, tokenizer, pos + neg, [hp], pooling="tokens")[hp]
        assert direction.scales[hp] == pytest.approx(float(tokens.norm(dim=-1).median()), rel=1e-5)
        assert direction.separations[hp] > 0 and direction.separations[hp] != direction.scales[hp]
    assert direction.unit == "activation-norm" and direction.coefficient == 0.2  # a fluent default strength
    assert {iv.hook_point: iv.coefficient for iv in direction.to_plan(0.25)} == pytest.approx(
        {hp: 0.25 * direction.scales[hp] for hp in direction.hook_points})


def test_a_coefficient_past_the_activation_norm_warns(llama):
    direction = Direction.from_fitted({"text.blocks.1.resid_post": torch.ones(32)}, model=llama, modality="text",
                                      finder={"name": "raw"}, norms={"text.blocks.1.resid_post": 3.0})
    with pytest.warns(UserWarning, match="coefficient 1.5 is in units of the typical activation norm"):
        direction.to_plan(1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        direction.to_plan(0.5)
        make(llama).to_plan(3.0)  # a file in the class-separation unit keeps its meaning and warns nothing
    assert make(llama).unit == "separation"
    with pytest.raises(PolysteerError, match="activation norms missing or not positive"):
        Direction.from_fitted({"text.blocks.1.resid_post": torch.ones(32)}, model=llama, modality="text",
                              finder={"name": "raw"}, norms={"text.blocks.1.resid_post": float("nan")})


def test_other_d_model_is_refused(llama):
    gpt2 = tiny_model("gpt2")
    direction = make(llama)
    with pytest.raises(PolysteerError, match="d_model 32"):
        direction.check_model(TextModality().identity(gpt2), 64)


def test_other_architecture_is_refused_unless_forced(llama):
    direction = make(llama)
    mistral = tiny_model("mistral")
    identity = TextModality().identity(mistral)
    with pytest.raises(PolysteerError, match="force"):
        direction.check_model(identity, 32)
    direction.check_model(identity, 32, force=True)
    direction.check_model(TextModality().identity(llama), 32)


def test_truncated_file_gives_clear_error(tmp_path, llama):
    path = make(llama).save(tmp_path / "d.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PolysteerError, match="truncated or not a safetensors"):
        Direction.load(path)


def test_foreign_and_missing_files(tmp_path):
    with pytest.raises(PolysteerError, match="does not exist"):
        Direction.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_text("hello")
    with pytest.raises(PolysteerError, match="truncated or not a safetensors"):
        Direction.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(PolysteerError, match="without a polysteer manifest"):
        Direction.load(tmp_path / "plain.safetensors")


def test_nan_vector_refused(llama):
    with pytest.raises(PolysteerError, match="NaN"):
        Direction(vectors={"text.blocks.0.resid_post": torch.full((32,), float("nan"))}, modality="text",
                  model={}, d_model=32)


def test_failed_save_leaves_no_partial_file(tmp_path, llama, monkeypatch):
    import polysteer.capture as capture

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(capture, "save_file", boom)
    with pytest.raises(OSError):
        make(llama).save(tmp_path / "d.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_gguf_control_vector_round_trip(tmp_path, llama):
    from polysteer.modalities.text.gguf_control import export_gguf, import_gguf

    direction = make(llama)
    export_gguf(direction, tmp_path / "cv.gguf", coefficient=2.0)
    back = import_gguf(tmp_path / "cv.gguf", TextModality().identity(llama))
    for plan_iv, back_iv in zip(direction.to_plan(2.0), back.to_plan(1.0)):
        assert plan_iv.hook_point == back_iv.hook_point
        assert torch.allclose(back_iv.direction * back_iv.coefficient, plan_iv.direction * plan_iv.coefficient,
                              atol=1e-5)
    with pytest.raises(PolysteerError, match="not a control-vector GGUF|cannot read"):
        import_gguf(tmp_path / "cv.gguf.missing")


def write_raw(path, manifest, tensors):
    save_file(tensors, str(path), metadata={"polysteer": json.dumps(manifest)})
    return path


GOOD = {"format_version": 1, "hook_points": ["text.blocks.0.resid_post"], "modality": "text", "model": {},
        "d_model": 32}


@pytest.mark.parametrize("change, message", [
    ({"coefficient": float("nan")}, "'coefficient' must be a finite number"),
    ({"coefficient": "4"}, "'coefficient' must be a finite number"),
    ({"scales": {"text.blocks.0.resid_post": float("inf")}}, "'scales' must be an object of finite numbers"),
    ({"scales": {"text.blocks.9.resid_post": 1.0}}, "no vector for"),
    ({"d_model": "32"}, "'d_model' must be an integer"),
    ({"d_model": True}, "'d_model' must be an integer"),
    ({"hook_points": "text.blocks.0.resid_post"}, "non-empty list"),
    ({"hook_points": ["text.blocks.0.nowhere"]}, "site"),
    ({"model": ["x"]}, "'model' must be an object of strings"),
    ({"finder": {"name": 3}}, "'finder' must be"),
    ({"provenance": [1, 2]}, "'provenance' must be a JSON object"),
    ({"format_version": 2}, "'format_version' must be 1"),
    ({"backdoor": "x"}, "unknown manifest fields \\['backdoor'\\]"),
    ({"modality": None}, "'modality' must be a string"),
    ({"unit": "volts"}, "'unit' must be 'activation-norm' or 'separation' or 'raw'"),
    ({"separations": {"text.blocks.3.resid_post": 1.0}}, "no vector for"),
])
def test_bad_manifests_are_one_line_errors(tmp_path, change, message):
    path = write_raw(tmp_path / "d.safetensors", {**GOOD, **change}, {"text.blocks.0.resid_post": torch.ones(32)})
    with pytest.raises(PolysteerError, match=message) as info:
        Direction.load(path)
    assert "\n" not in str(info.value)


def test_integer_and_nan_tensors_in_a_file_are_refused(tmp_path):
    hp = "text.blocks.0.resid_post"
    with pytest.raises(PolysteerError, match="dtype torch.int64"):
        Direction.load(write_raw(tmp_path / "a.safetensors", GOOD, {hp: torch.ones(32, dtype=torch.long)}))
    extra = {hp: torch.ones(32), "extra.operator.x.w": torch.full((2,), float("nan"))}
    with pytest.raises(PolysteerError, match="extra tensor"):
        Direction.load(write_raw(tmp_path / "b.safetensors", GOOD, extra))


MANIFEST_VALUES = (st.none() | st.booleans() | st.integers(-5, 2**21) | st.floats() | st.text(max_size=30)
                   | st.lists(st.text(max_size=30), max_size=2)
                   | st.dictionaries(st.text(max_size=30), st.floats() | st.text(), max_size=2))


@fuzz_settings(300)
@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["coefficient", "scales", "weights", "finder", "operator",
                                                        "schedule", "provenance", "created", "extra"]),
                       MANIFEST_VALUES, max_size=6))
def test_fuzzed_manifests_load_or_raise_only_polysteer_errors(tmp_path_factory, change):
    path = write_raw(tmp_path_factory.mktemp("fuzz") / "d.safetensors", {**GOOD, **change},
                     {"text.blocks.0.resid_post": torch.ones(32)})
    try:
        direction = Direction.load(path)
    except PolysteerError:
        return
    assert direction.d_model == 32 and torch.equal(direction.vectors["text.blocks.0.resid_post"], torch.ones(32))
