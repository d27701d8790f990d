"""The ``reconstruct`` job kind: photos or a video -> solved cameras (COLMAP, via pycolmap) -> splats.

The backend module is ``backend.reconstruct`` (``run_reconstruct_job``). The job reads its input from
the backend's disk (``source``: a folder of photos or a video file), or reuses the solved model of an
earlier reconstruct job (``from_job``: that job's id; ``model``: a folder holding its
``transforms.json``), so a retrain with other training settings needs no new solve. Files it
leaves in the job store and the result's ``meta`` are described in ``backend/reconstruct.py``'s
docstring.
"""
from __future__ import annotations

import re

from ..jobspec import JobError, JobSpec, Setting, Settings, register
from ._common import seed_setting

QUALITY_PRESETS = ("fast", "balanced", "best")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")      # lower case; what a photo folder may hold
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mts", ".m2ts")
MATCHERS = ("auto", "sequential", "exhaustive")


def _check(s: Settings) -> None:
    given = [name for name in ("source", "upload", "model", "from_job") if s[name] is not None]
    if len(given) != 1:
        raise JobError("bad_params", "reconstruct needs exactly one of 'source' (photos folder or video "
                                     "file to solve), 'upload' (the id of an upload of photos or a video), "
                                     "'model' (a solved model folder to retrain on) and "
                                     f"'from_job' (a previous reconstruct job's id); got {given or 'none'}")
    if s.upload is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s.upload):
        raise JobError("bad_params", f"reconstruct setting upload={s.upload!r}: expected an upload id")
    if s.from_job is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s.from_job):
        raise JobError("bad_params", f"reconstruct setting from_job={s.from_job!r}: expected a job id")


SPEC = register(JobSpec(
    kind="reconstruct",
    title="Photos or Video to Splats",
    description="Solve the cameras of a set of photos or of a video (SIFT features, matching, "
                "COLMAP mapping, undistortion), put the scene Z-up, centred and a few metres "
                "across, and train splats on the solved cameras.",
    settings=(
        Setting("source", None, "A folder of photos (JPEG/PNG) or a video file on the backend's disk",
                type="str", optional=True, server_path=True),
        Setting("upload", None, "The id of a complete upload (the 'upload' message) of photos or one "
                "video, sent by this client: for a backend on another machine (the add-on fills it in)",
                type="str", optional=True, advanced=True),
        Setting("model", None, "Retrain without solving again: a solved model folder with its "
                "transforms.json (<job folder>/reconstruct/model, or the CLI's --colmap-out)",
                type="str", optional=True, server_path=True),
        Setting("from_job", None, "Retrain without solving again: the id of a previous reconstruct job "
                "on this backend", type="str", optional=True, label="From Job", job_ref=True),
        Setting("frames", 150, "Video: how many frames to use, spread over the video (the sharpest "
                "frame of each stretch)", min=3, max=2000, unit="frames"),
        Setting("max_image_size", 1600, "Longest image side used for features and training "
                "(larger photos and frames are scaled down)", min=64, max=8192, unit="px"),
        Setting("quality", "balanced", "Preset: 'fast' (fewer features, lighter matching), "
                "'balanced', or 'best' (more features, more matching)", choices=QUALITY_PRESETS),
        Setting("steps", 7000, "Training steps on the solved cameras (0: solve only)", min=0,
                max=1_000_000, unit="steps"),
        Setting("matcher", "auto", "Feature matching: 'sequential' (neighbouring frames plus "
                "appearance-based loop pairs; for video), 'exhaustive' (every pair; small photo "
                "sets), 'auto' (sequential for video and large photo sets, exhaustive up to "
                "120 photos)", choices=MATCHERS, advanced=True),
        Setting("mapper", "auto", "Mapping: 'global' (COLMAP's global mapper), 'incremental', or "
                "'auto' (global, falling back to incremental when it registers < 90 % of the images)",
                choices=("auto", "global", "incremental"), advanced=True),
        Setting("train_downscale", 1, "Train on the solved images at 1/n of their size (the solve "
                "uses them at max_image_size)", min=1, max=16, advanced=True),
        Setting("holdout_every", 8, "Every n-th registered view is held out of training and scored "
                "(eval PSNR); 0 trains on all", min=0, max=1000, advanced=True),
        Setting("preview_every", 500, "Training steps between live previews of the splats (0: none)",
                min=0, max=1_000_000, unit="steps", advanced=True),
        Setting("sh_degree", 3, "Spherical-harmonics degree of the splats", min=0, max=3, advanced=True),
        Setting("max_gaussians", 1_000_000, "Cap on the number of splats", min=1, max=50_000_000,
                advanced=True),
        Setting("scene_size", 4.0, "The solved scene is scaled so that the cameras and the bulk of "
                "the points fit this size", min=0.01, max=10000.0, unit="m", advanced=True),
        seed_setting(),
    ),
    runner="backend.reconstruct:run_reconstruct_job",
    check=_check,
))
