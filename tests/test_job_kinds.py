"""The built-in job kinds' specs (shared/jobkinds): every setting bounded, relations checked, payload
schemas, and the derived train schedule. Pure Python: no torch, no bpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.jobkinds import load_builtin
from shared.jobkinds.train import schedule
from shared.jobspec import JobError, get_spec

pytestmark = pytest.mark.bpy_only

INT32_MAX = 2 ** 31 - 1
SPECS = {s.kind: s for s in load_builtin()}

# What each kind's Blender panel shows without opening "Advanced" (the rest is advanced).
BASIC = {
    "train": {"steps", "strategy", "sh_degree", "max_gaussians", "holdout_every", "seed", "preview_every",
              "dataset_path"},
    "generate": {"prompt", "negative_prompt", "init", "seed", "steps", "guidance_scale"},
    "edit": {"prompt", "seed", "steps", "text_guidance", "image_guidance"},
    "reconstruct": {"source", "model", "from_job", "frames", "max_image_size", "quality", "steps", "seed"},
}


def test_the_builtin_kinds_are_registered_with_runners():
    assert {"train", "generate", "edit"} <= set(SPECS)
    assert SPECS["train"].runner == "backend.trainer:run_train_job"
    assert SPECS["generate"].runner == "backend.generate:run_generate_job"
    assert SPECS["edit"].runner == "backend.edit:run_edit_job"
    assert SPECS["reconstruct"].runner == "backend.reconstruct:run_reconstruct_job"


@pytest.mark.parametrize("kind", ["train", "generate", "edit", "reconstruct"])
def test_every_number_is_bounded_and_fits_blender(kind):
    """Every int has a min and max inside Blender's IntProperty (C int); every float has finite bounds;
    every setting says what it is; choices include the default."""
    for s in SPECS[kind].settings:
        assert s.description and not s.description.endswith("."), s.name
        if s.type == "int":
            assert s.min is not None and s.max is not None, s.name
            assert -INT32_MAX - 1 <= s.min <= s.max <= INT32_MAX, s.name
        if s.type in ("float", "floats"):
            assert s.min is not None and s.max is not None and math.isfinite(s.min) and math.isfinite(s.max), s.name
        if s.choices:
            assert s.default in s.choices, s.name
        if s.default is not None:
            assert s.coerce(s.default, kind) == s.default, s.name


@pytest.mark.parametrize("kind", ["train", "generate", "edit", "reconstruct"])
def test_advanced_marks_what_the_panels_hide(kind):
    assert {s.name for s in SPECS[kind].settings if not s.advanced} == BASIC[kind]


@pytest.mark.parametrize("kind, params, words", [
    ("train", {"init_scale": 5e-324}, "init_scale=5e-324: out of range: allowed [0.001, 100]"),
    ("train", {"seed": -1}, f"seed=-1: out of range: allowed [0, {INT32_MAX}]"),
    ("train", {"max_gaussians": 2 ** 40}, "max_gaussians=1099511627776: out of range: allowed [1, 20000000]"),
    ("train", {"refine_start": 10, "refine_stop": 5}, "refine_start=10 is after refine_stop=5"),
    ("train", {"images_dir": "imgs"}, "images_dir and downscale apply to a dataset: set dataset_path too"),
    ("generate", {"prompt": "x", "resolution": 8}, "resolution=8: out of range: allowed [16, 2048]"),
    ("generate", {"prompt": " "}, "prompt is empty"),
    ("generate", {"prompt": "x", "t_min": 0.6}, "need t_min < t_max_end <= t_max_start, got 0.6, 0.5, 0.98"),
    ("generate", {"prompt": "x", "elevation_range": [50, 10]}, "elevation_range=[50.0, 10.0] must be increasing"),
    ("generate", {"prompt": "x", "densify_grad_quantile": 1.0}, "densify_grad_quantile=1.0: out of range"),
    ("edit", {"prompt": "x", "num_views": 513}, "num_views=513: out of range: allowed [1, 512]"),
    ("edit", {"prompt": "x", "num_views": 4, "initial_edits": 5}, "initial_edits=5 is more than num_views=4"),
    ("edit", {"prompt": "x", "background": [1, 1, 2]}, "background=[1, 1, 2]: out of range"),
    ("edit", {"prompt": "x", "resolution": 8}, "resolution=8: out of range: allowed [16, 2048]"),
])
def test_bad_params_name_the_field(kind, params, words):
    with pytest.raises(JobError) as info:
        get_spec(kind).validate_params(params)
    assert info.value.code == "bad_params" and words in info.value.message, info.value.message


IMAGES = np.zeros((3, 8, 8, 4), np.uint8)
POSES = np.tile(np.eye(4, dtype=np.float32), (3, 1, 1))
KS = np.tile(np.eye(3, dtype=np.float32), (3, 1, 1))


@pytest.mark.parametrize("kind, params, payload, words", [
    ("train", {}, {"images": IMAGES}, "train payload is missing ['viewmats', 'Ks']"),
    ("train", {"dataset_path": "/data/x"}, {"images": IMAGES}, "with dataset_path takes an empty payload"),
    ("train", {}, {"images": IMAGES, "viewmats": POSES[:2], "Ks": KS}, "'viewmats' has C=2 but 'images' has C=3"),
    ("train", {}, {"images": IMAGES, "viewmats": POSES, "Ks": KS, "colors": np.zeros((4, 3), np.uint8)},
     "colors without points"),
    ("generate", {"prompt": "x", "init": "mesh"}, {}, "init 'mesh' needs payload 'points'"),
    ("generate", {"prompt": "x", "init": "sphere"}, {"points": np.zeros((4, 3), np.float32)},
     "payload 'points' given but init is 'sphere'"),
    ("edit", {"prompt": "x"}, {}, "edit payload needs 'splats'"),
    ("edit", {"prompt": "x"}, {"splats": {}, "mask": np.zeros(3, np.float32)}, "'mask' must be bool/uint8[N]"),
])
def test_bad_payload_names_the_item(kind, params, payload, words):
    with pytest.raises(JobError) as info:
        get_spec(kind).validate(params, payload)
    assert info.value.code == "bad_input" and words in info.value.message, info.value.message


def test_good_requests_pass():
    assert get_spec("train").validate({"steps": 10}, {"images": IMAGES, "viewmats": POSES, "Ks": KS}).steps == 10
    assert get_spec("train").validate({"dataset_path": "/d", "downscale": 2}, {}).downscale == 2
    assert get_spec("generate").validate({"prompt": "a teapot"}, {}).init == "shap-e"
    assert get_spec("edit").validate({"prompt": "bronze"}, {"splats": {}}).num_views == 24


def test_train_schedule_is_gsplats_for_long_runs_and_compressed_for_short():
    spec = get_spec("train")
    assert schedule(spec.make(steps=30_000)) == {"sh_degree_interval": 1000, "refine_start": 500,
                                                 "refine_stop": 15_000, "refine_every": 100,
                                                 "lr_decay_steps": 30_000}
    # (the positions' learning rate is not compressed: a short run decays as a 7000-step one)
    assert schedule(spec.make(steps=400, sh_degree=1)) == {"sh_degree_interval": 100, "refine_start": 100,
                                                           "refine_stop": 200, "refine_every": 25,
                                                           "lr_decay_steps": 7000}
    assert schedule(spec.make(steps=1000, strategy="mcmc", refine_every=7))["refine_stop"] == 800
    # MCMC's short runs start earlier and refine more often (its budget grows 5 % per refinement) ...
    assert schedule(spec.make(steps=1000, strategy="mcmc")) == {"sh_degree_interval": 125, "refine_start": 100,
                                                                "refine_stop": 800, "refine_every": 25,
                                                                "lr_decay_steps": 7000}
    # ... and from 5000 steps on run gsplat's (refine every 100 steps from step 500)
    for n in (5000, 30_000):
        sch = schedule(spec.make(steps=n, strategy="mcmc"))
        assert (sch["refine_start"], sch["refine_every"]) == (500, 100)
    assert schedule(spec.make(steps=1000, refine_every=7))["refine_every"] == 7
