"""The ``train`` job kind: fit 3D Gaussians to posed RGBA images (backend: ``backend.trainer``).

Two ways to give the views: payload arrays (images, viewmats, Ks, optional points/colors), or
``dataset_path``, a transforms.json / COLMAP folder on the backend's disk, with an empty payload.
Defaults are gsplat simple_trainer's (compressed for short runs, see ``schedule``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..jobspec import JobError, JobSpec, PayloadItem, Setting, Settings, register
from ._common import RASTER_BACKENDS, lr_settings, seed_setting

MAX_STEPS = 1_000_000      # gsplat's long runs are 30k
STRATEGIES = ("default", "mcmc")
ARRAY_ITEMS = ("images", "viewmats", "Ks")


SETTINGS = (
    Setting("steps", None, "Optimisation steps, one image per step (null: per device, 7000 on a CUDA GPU, "
            "3000 on the CPU)", type="int", optional=True, min=1, max=MAX_STEPS, unit="steps"),
    Setting("strategy", "default", "Densification: 'default' clones, splits and prunes (3DGS); 'mcmc' "
            "relocates a fixed budget (3DGS-MCMC)", choices=STRATEGIES),
    Setting("sh_degree", 3, "Spherical-harmonic degree of the view-dependent colour", min=0, max=3,
            label="SH Degree"),
    Setting("max_gaussians", 1_000_000, "Cap on the number of Gaussians", min=1, max=20_000_000),
    Setting("holdout_every", 8, "Hold out every n-th view (0, n, 2n, ...) for evaluation; 0 or 1: train "
            "on all", min=0, max=100_000, unit="views"),
    seed_setting(),
    Setting("preview_every", 500, "Steps between live previews (0: none)", min=0, max=MAX_STEPS, unit="steps"),
    Setting("dataset_path", "", "A transforms.json or COLMAP folder on the backend's disk (empty: the "
            "views come in the payload)", server_path=True, label="Dataset"),
    Setting("images_dir", "", "The dataset's image folder (empty: <dataset>/images)", server_path=True,
            advanced=True, label="Images Folder"),
    Setting("downscale", 1, "Load the dataset's images at 1/n size (intrinsics follow)", min=1, max=64,
            advanced=True),
    Setting("init_points", None, "Random initial Gaussians when no points are given (null: per device, "
            "50,000 on a CUDA GPU, 2,000 on the CPU)", type="int", optional=True, min=1, max=20_000_000,
            advanced=True),
    Setting("background_points", None, "Gaussians added for the background on the rays of random "
            "pixels, beyond the volume the cameras look at (null: half the initial points when every view is "
            "opaque, else none)", type="int", optional=True, min=0, max=20_000_000, advanced=True),
    Setting("init_opacity", None, "Initial opacity (null: 0.1 for 'default', 0.5 for 'mcmc')", type="float",
            optional=True, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True, advanced=True),
    Setting("init_scale", 1.0, "Initial size, times the RMS distance to the 3 nearest points", min=1e-3,
            max=100.0, advanced=True),
    Setting("ssim_lambda", 0.2, "Weight of D-SSIM in the loss (the rest is L1)", min=0.0, max=1.0,
            advanced=True, label="SSIM Lambda"),
    Setting("random_background", True, "Compose each target over a random background colour (objects "
            "learn transparency)", advanced=True),
    *lr_settings(1.6e-4, 5e-3, 1e-3, 5e-2, 2.5e-3, 2.5e-3 / 20,
                 "times the scene scale, decayed to 1 % over the run or 7000 steps, the longer"),
    Setting("sh_degree_interval", None, "Steps per added SH band (null: from steps, at most 1000)",
            type="int", optional=True, min=1, max=MAX_STEPS, unit="steps", advanced=True),
    Setting("refine_start", None, "First densification step (null: min(500, steps/4); MCMC steps/10)", type="int",
            optional=True, min=0, max=MAX_STEPS, unit="steps", advanced=True),
    Setting("refine_stop", None, "Last densification step (null: from steps and strategy)", type="int",
            optional=True, min=0, max=MAX_STEPS, unit="steps", advanced=True),
    Setting("refine_every", None, "Steps between densifications (null: from steps and strategy, 25..100)", type="int",
            optional=True, min=1, max=MAX_STEPS, unit="steps", advanced=True),
    Setting("grow_grad2d", 0.0002, "View-space gradient above which a Gaussian is cloned or split",
            min=0.0, max=1.0, min_exclusive=True, advanced=True, label="Grow Grad 2D"),
    Setting("mcmc_opacity_reg", 0.01, "MCMC: weight of the mean-opacity regulariser", min=0.0, max=10.0,
            advanced=True, label="MCMC Opacity Reg"),
    Setting("mcmc_scale_reg", 0.01, "MCMC: weight of the mean-scale regulariser", min=0.0, max=10.0,
            advanced=True, label="MCMC Scale Reg"),
    Setting("report_interval_s", 0.5, "Seconds between progress reports", min=0.0, max=3600.0, unit="s",
            advanced=True),
    Setting("backend", "auto", "Rasterizer: 'auto' (gsplat on CUDA, else the fast CPU one), 'gsplat', "
            "'fast', 'reference'", choices=RASTER_BACKENDS, advanced=True),
)

PAYLOAD = (
    PayloadItem("images", "the views, straight alpha (RGB means opaque)", dtypes=("uint8",),
                shape=("C", "H", "W", (3, 4))),
    PayloadItem("viewmats", "OpenCV world-to-camera matrices, one per image", dtypes=("float32", "float64"),
                shape=("C", 4, 4)),
    PayloadItem("Ks", "pixel intrinsics, one per image", dtypes=("float32", "float64"), shape=("C", 3, 3)),
    PayloadItem("points", "initial points, world space, metres", dtypes=("float32", "float64"),
                shape=("P", 3)),
    PayloadItem("colors", "colours of the initial points", dtypes=("uint8",), shape=("P", 3)),
)


def check(s: Settings) -> None:
    """Relations between settings: dataset options need a dataset; refine window in order."""
    if not s.dataset_path and (s.images_dir or s.downscale != 1):
        raise JobError("bad_params", "train settings images_dir and downscale apply to a dataset: set "
                                     "dataset_path too")
    if s.refine_start is not None and s.refine_stop is not None and s.refine_start > s.refine_stop:
        raise JobError("bad_params", f"train settings refine_start={s.refine_start} is after "
                                     f"refine_stop={s.refine_stop}")


def check_payload(s: Settings, payload: Mapping[str, Any]) -> None:
    """Either a dataset on the backend's disk and no arrays, or the arrays (points before colors)."""
    given = [k for k in payload if payload[k] is not None]
    if s.dataset_path:
        if given:
            raise JobError("bad_input", f"train with dataset_path takes an empty payload, got {sorted(given)}")
        return
    missing = [k for k in ARRAY_ITEMS if k not in given]
    if missing:
        raise JobError("bad_input", f"train payload is missing {missing} (or set dataset_path)")
    if "colors" in given and "points" not in given:
        raise JobError("bad_input", "train payload has colors without points")


# Per-device defaults of the settings whose null means "for this device": a CUDA GPU runs gsplat's
# 7k-step recipe in a minute or two; the CPU (and Apple's MPS, which rasterizes on the CPU) gets a
# run that finishes in minutes at 64-256 px (bench/quality.py: the CPU curve flattens after ~3k).
DEVICE_DEFAULTS: dict[str, dict[str, int]] = {
    "cuda": {"steps": 7000, "init_points": 50_000},
    "cpu": {"steps": 3000, "init_points": 2_000},
}


def for_device(s: Settings, device_type: str) -> Settings:
    """``s`` with its per-device nulls (``steps``, ``init_points``) filled in for ``device_type``
    ("cuda"; anything else counts as "cpu")."""
    d = DEVICE_DEFAULTS["cuda" if device_type == "cuda" else "cpu"]
    return s.replace(**{k: v for k, v in d.items() if s[k] is None})


#: the shortest decay of the positions' learning rate (gsplat's 7k-step run), see ``schedule``
LR_DECAY_MIN_STEPS = 7000


def schedule(s: Settings) -> dict[str, int]:
    """The step schedule: gsplat's defaults for long runs (refine every 100 steps from step 500 to
    15k, a new SH band every 1000 steps), compressed for short ones; explicit settings win. The
    positions' learning rate is not compressed: it decays as in a run of at least 7000 steps.
    ``s.steps`` null counts as the CUDA default (use ``for_device`` first)."""
    n = s.steps if s.steps is not None else DEVICE_DEFAULTS["cuda"]["steps"]
    default = s.strategy == "default"
    return {
        "sh_degree_interval": s.sh_degree_interval or max(1, min(1000, n // (2 * (s.sh_degree + 1)))),
        # MCMC's budget grows 5 % per refinement: short runs start earlier and refine more often
        # (1000 steps: 11 -> 31 refinements, 3,252 -> 7,442 Gaussians, 29.7 -> 31.6 dB on
        # bench/quality.py's alpha scene); from 5000 steps on both are gsplat's
        "refine_start": s.refine_start if s.refine_start is not None else min(500, n // (4 if default else 10)),
        "refine_stop": s.refine_stop if s.refine_stop is not None else (
            min(15_000, n // 2) if default else min(25_000, (n * 4) // 5)),
        "refine_every": s.refine_every or min(100, max(25, n // (20 if default else 40))),
        # the positions' learning rate falls to 1 % over this many steps (a shorter run stops on the
        # way): decaying a 500-step run to 1 % froze the positions early, 3-4 dB behind gsplat's
        # 7k-step schedule at 500-2000 steps (bench/quality.py)
        "lr_decay_steps": max(n, LR_DECAY_MIN_STEPS),
    }


SPEC = register(JobSpec(
    "train", "Train", "Fit 3D Gaussians to posed images (from the scene's camera rig or a dataset folder)",
    SETTINGS, PAYLOAD, runner="backend.trainer:run_train_job", check=check, check_payload=check_payload))
