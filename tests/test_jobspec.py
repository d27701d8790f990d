"""shared.jobspec: settings coercion and ranges, payload schema, the registry (pure Python, no bpy/torch)."""
import numpy as np
import pytest

from shared.jobspec import JobError, JobSpec, PayloadItem, Setting, get_spec, register, unregister

pytestmark = pytest.mark.bpy_only

SPEC = JobSpec(
    "spec_test", "Spec test", "a kind for these tests",
    (Setting("steps", 10, "steps to run", min=1, max=100, unit="steps"),
     Setting("mode", "a", "mode", choices=("a", "b")),
     Setting("rng", (0.0, 1.0), "a range", min=0, max=1),
     Setting("rate", None, "derived when null", type="float", optional=True, min=0, min_exclusive=True),
     Setting("flag", False, "a switch", advanced=True)),
    (PayloadItem("images", "views", dtypes=("uint8",), shape=("C", "H", "W", (3, 4)), required=True),
     PayloadItem("viewmats", "poses", dtypes=("float32",), shape=("C", 4, 4))))

IMAGES = np.zeros((2, 4, 4, 4), np.uint8)


def test_defaults_and_coercion():
    s = SPEC.validate({"steps": 5.0, "rng": [0.1, 0.2]}, {"images": IMAGES})
    assert (s.steps, s.mode, s.rng, s.rate, s.flag) == (5, "a", (0.1, 0.2), None, False)
    assert isinstance(s.steps, int)
    assert s.to_meta() == {"steps": 5, "mode": "a", "rng": [0.1, 0.2], "rate": None, "flag": False}
    with pytest.raises(AttributeError, match="read-only"):
        s.steps = 3
    assert s.replace(steps=7).steps == 7


@pytest.mark.parametrize("params, message", [
    ({"steps": 1e300}, r"steps=1e\+300: out of range: allowed \[1, 100\]"),
    ({"steps": 0}, r"steps=0: out of range: allowed \[1, 100\]"),
    ({"steps": 2.5}, "steps=2.5: expected a whole number"),
    ({"steps": True}, "steps=True: expected a whole number"),
    ({"steps": float("nan")}, "steps=nan: not a finite number"),
    ({"mode": "c"}, "mode='c': expected one of 'a', 'b'"),
    ({"rate": 0}, r"rate=0: out of range: allowed \(0, inf\) or null"),
    ({"rate": 5e-324 * 0}, r"rate=0.0: out of range"),
    ({"rng": [2, 0]}, r"rng=\[2, 0\]: out of range: allowed 2 numbers in \[0, 1\]"),
    ({"rng": [0.5]}, r"rng=\[0.5\]: expected 2 numbers"),
    ({"flag": 1}, "flag=1: expected true or false"),
    ({"nope": 1}, r"unknown spec_test setting 'nope'; known: \['flag', 'mode', 'rate', 'rng', 'steps'\]"),
])
def test_bad_params_name_the_field_and_range(params, message):
    with pytest.raises(JobError, match=message) as info:
        SPEC.validate(params, {"images": IMAGES})
    assert info.value.code == "bad_params"


@pytest.mark.parametrize("payload, message", [
    ({}, "payload needs 'images'"),
    ({"images": np.zeros((2, 4, 4, 5), np.uint8)}, r"'images' must have shape \[C,H,W,3\|4\], got \[2, 4, 4, 5\]"),
    ({"images": IMAGES.astype(np.float32)}, r"'images' must be uint8\[C,H,W,3\|4\], got float32"),
    ({"images": IMAGES, "viewmats": np.zeros((3, 4, 4), np.float32)}, "'viewmats' has C=3 but 'images' has C=2"),
    ({"images": IMAGES, "extra": 1}, "unknown spec_test payload item 'extra'"),
    ({"images": [1, 2]}, "'images' must be an array, got list"),
])
def test_bad_payload_names_the_item(payload, message):
    with pytest.raises(JobError, match=message) as info:
        SPEC.validate({}, payload)
    assert info.value.code == "bad_input"


def test_registry():
    register(SPEC)
    try:
        assert get_spec("spec_test") is SPEC
        register(SPEC)       # the same spec again: no-op
        with pytest.raises(ValueError, match="already registered"):
            register(JobSpec("spec_test", "x", "x", ()))
    finally:
        unregister("spec_test")
    with pytest.raises(JobError, match="unknown job kind 'spec_test'") as info:
        get_spec("spec_test")
    assert info.value.code == "unknown_job_kind"


def test_spec_refuses_bad_declarations():
    with pytest.raises(TypeError, match="defined twice"):
        JobSpec("x", "x", "x", (Setting("a", 1, "a"), Setting("a", 2, "a")))
    with pytest.raises(JobError, match="out of range"):
        Setting("a", 0, "a", min=1)
