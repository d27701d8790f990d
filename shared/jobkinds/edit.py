"""The ``edit`` job kind: text-instructed editing of splats (Instruct-NeRF2NeRF's Iterative Dataset
Update with an InstructPix2Pix editor; backend: ``backend.edit``). The result is in world space."""
from __future__ import annotations

from ..jobspec import JobError, JobSpec, PayloadItem, Setting, Settings, register
from ._common import lr_settings, seed_setting

MAX_VIEWS = 512     # the originals and the dataset are held as float images: 2 x 512 x 3 MiB at 512 px
DEFAULT_EDIT_MODEL = "timbrooks/instruct-pix2pix"


SETTINGS = (
    Setting("prompt", "", "The instruction: what to change, e.g. 'make it look like bronze'",
            label="Instruction"),
    seed_setting(),
    Setting("steps", 1500, "Fine-tuning steps", min=1, max=100_000, unit="steps"),
    Setting("text_guidance", 7.5, "How strongly the instruction is followed", min=0.0, max=100.0),
    Setting("image_guidance", 1.5, "How closely the edit keeps the original views", min=0.0, max=100.0),
    Setting("num_views", 24, "Views around the object that are edited and trained on", min=1, max=MAX_VIEWS,
            unit="views", advanced=True, label="Views"),
    Setting("resolution", 512, "Size of the square edited views", min=16, max=2048, unit="px", advanced=True,
            label="Render Size"),
    Setting("preview_every", 0, "Steps between live previews (0: about one per second)", min=0, max=100_000,
            unit="steps", advanced=True),
    Setting("low_memory", False, "Attention slicing and model CPU offload, for 4-8 GB graphics cards",
            advanced=True, label="Low GPU Memory"),
    Setting("edit_model", DEFAULT_EDIT_MODEL, "InstructPix2Pix model: a Hugging Face id (org/name) or a "
            "folder on the backend's disk (an absolute path, or ./relative)", advanced=True,
            server_path=True, path_or_id="hub"),
    Setting("edit_every", 10, "Re-edit one dataset view every this many steps", min=1, max=100_000,
            unit="steps", advanced=True),
    Setting("initial_edits", -1, "Views edited before the steps start (-1: all, 0: none)", min=-1,
            max=MAX_VIEWS, unit="views", advanced=True),
    Setting("diffusion_steps", 20, "DDIM steps over the full schedule (an edit runs those below its "
            "timestep)", min=1, max=1000, unit="steps", advanced=True),
    Setting("t_min", 0.02, "Smallest noise level of the current render, fraction of the schedule", min=0.0,
            max=1.0, advanced=True, label="T Min"),
    Setting("t_max", 0.98, "Largest noise level of the current render, fraction of the schedule", min=0.0,
            max=1.0, advanced=True, label="T Max"),
    Setting("elevation_range", (-10.0, 45.0), "Elevations of the views (low, high)", min=-89.0, max=89.0,
            unit="deg", advanced=True),
    Setting("azimuth_range", (-180.0, 180.0), "Azimuths of the views (low, high)", min=-360.0, max=360.0,
            unit="deg", advanced=True),
    Setting("fovy", 50.0, "Vertical field of view of the views", min=1.0, max=170.0, unit="deg",
            advanced=True, label="FOV Y"),
    Setting("frame_margin", 1.1, "Camera distance, times the distance that just frames the object", min=1.0,
            max=100.0, advanced=True),
    Setting("background", (1.0, 1.0, 1.0), "Background colour of the views (linear RGB)", min=0.0, max=1.0,
            advanced=True),
    *lr_settings(1.6e-5, 5e-3, 1e-3, 1e-2, 5e-3, 2.5e-4, "times the bounding radius, decayed x0.1 over the run"),
)

PAYLOAD = (
    PayloadItem("splats", "the splats to edit: a splat map (means, quats, scales, opacities, sh0, shN?)",
                kind="splats", required=True),
    PayloadItem("mask", "the splats the edit may change, one flag per splat (absent: all)",
                dtypes=("bool", "uint8"), shape=("N",)),
)


def check(s: Settings) -> None:
    """An instruction; initial_edits <= num_views; t_min <= t_max; increasing angle ranges."""
    if not s.prompt.strip():
        raise JobError("bad_params", "edit setting prompt is empty: say how to change the splats, e.g. "
                                     "'make it look like bronze'")
    if s.initial_edits > s.num_views:
        raise JobError("bad_params", f"edit setting initial_edits={s.initial_edits} is more than "
                                     f"num_views={s.num_views}")
    if s.t_min > s.t_max:
        raise JobError("bad_params", f"edit settings t_min={s.t_min}, t_max={s.t_max}: need t_min <= t_max")
    for name in ("elevation_range", "azimuth_range"):
        lo, hi = s[name]
        if lo > hi:
            raise JobError("bad_params", f"edit setting {name}={[lo, hi]} must be increasing")


SPEC = register(JobSpec(
    "edit", "Edit", "Change splats by a text instruction (Instruct-NeRF2NeRF with InstructPix2Pix)",
    SETTINGS, PAYLOAD, runner="backend.edit:run_edit_job", check=check))
