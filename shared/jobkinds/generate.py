"""The ``generate`` job kind: text to Gaussian splats by score distillation (backend: ``backend.generate``).

Defaults follow DreamFusion/GaussianDreamer: 1200 steps, guidance scale 100, t ~ U[0.02, t_max] with
t_max annealed 0.98 -> 0.5, render 512 px, 4 views per step. Results are centred at the origin.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..jobspec import JobError, JobSpec, PayloadItem, Setting, Settings, register
from ._common import lr_settings, seed_setting

INIT_MODES = ("shap-e", "mesh", "sphere")
DEFAULT_GUIDANCE_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_PRIOR_MODEL = "openai/shap-e"


SETTINGS = (
    Setting("prompt", "", "What to generate, e.g. 'a ceramic teapot'"),
    Setting("negative_prompt", "", "What to steer away from (the unconditional prompt)"),
    Setting("init", "shap-e", "Start from: 'shap-e' (Shap-E's shape for the prompt), 'mesh' (surface samples "
            "of a mesh, payload points), 'sphere' (a grey ball)", choices=INIT_MODES, label="Start From"),
    seed_setting(),
    Setting("steps", 1200, "Score-distillation steps", min=1, max=100_000, unit="steps"),
    Setting("guidance_scale", 100.0, "Classifier-free guidance scale (score distillation wants ~100)",
            min=0.0, max=1000.0, label="Guidance"),
    Setting("resolution", 512, "Size of the square views rendered for the diffusion model", min=16, max=2048,
            unit="px", advanced=True, label="Render Size"),
    Setting("batch_size", 4, "Views per score-distillation step", min=1, max=64, unit="views", advanced=True,
            label="Views per Step"),
    Setting("num_points", 4096, "Initial Gaussians", min=16, max=2_000_000, advanced=True,
            label="Initial Gaussians"),
    Setting("sh_degree", 0, "Spherical-harmonic degree of the view-dependent colour", min=0, max=3,
            advanced=True, label="SH Degree"),
    Setting("preview_every", 0, "Steps between live previews (0: about one per second)", min=0, max=100_000,
            unit="steps", advanced=True),
    Setting("low_memory", False, "Attention slicing and model CPU offload, for 4-8 GB graphics cards",
            advanced=True, label="Low GPU Memory"),
    Setting("guidance_model", DEFAULT_GUIDANCE_MODEL, "Stable Diffusion model: a Hugging Face id (org/name) "
            "or a folder on the backend's disk (an absolute path, or ./relative)", advanced=True,
            label="Diffusion Model", server_path=True, path_or_id="hub"),
    Setting("prior_model", DEFAULT_PRIOR_MODEL, "Shap-E model: a Hugging Face id (org/name) or a folder on "
            "the backend's disk (an absolute path, or ./relative)", advanced=True, label="Shap-E Model",
            server_path=True, path_or_id="hub"),
    Setting("view_dependent", True, "Add ', front view' / ', side view' / ', back view' to the prompt",
            advanced=True),
    Setting("encode_resolution", 0, "Size the renders are encoded at (0: the model's native size; smaller is "
            "cheaper)", min=0, max=4096, unit="px", advanced=True),
    Setting("densify", True, "Clone, split and prune Gaussians in the middle of the run", advanced=True),
    Setting("densify_grad_quantile", 0.95, "The first refinement grows the Gaussians above this quantile of "
            "view-space gradient", min=0.0, max=1.0, min_exclusive=True, max_exclusive=True, advanced=True),
    Setting("max_gaussians", 300_000, "Cap on the number of Gaussians", min=1, max=20_000_000, advanced=True),
    Setting("t_min", 0.02, "Smallest diffusion timestep, as a fraction of the schedule", min=0.0, max=1.0,
            advanced=True, label="T Min"),
    Setting("t_max_start", 0.98, "Largest diffusion timestep at the start (annealed to t_max_end)", min=0.0,
            max=1.0, advanced=True, label="T Max Start"),
    Setting("t_max_end", 0.50, "Largest diffusion timestep at the end", min=0.0, max=1.0, advanced=True,
            label="T Max End"),
    Setting("elevation_range", (-10.0, 45.0), "Camera elevation range (low, high)", min=-90.0, max=90.0,
            unit="deg", advanced=True),
    Setting("azimuth_range", (-180.0, 180.0), "Camera azimuth range (low, high)", min=-360.0, max=360.0,
            unit="deg", advanced=True),
    Setting("distance_range", (2.5, 3.5), "Camera distance range (low, high), in object radii", min=1e-6,
            max=1000.0, advanced=True),
    Setting("fovy_range", (40.0, 70.0), "Vertical field-of-view range (low, high)", min=1.0, max=170.0,
            unit="deg", advanced=True, label="FOV Y Range"),
    Setting("prior_steps", 64, "Shap-E sampling steps", min=1, max=1000, unit="steps", advanced=True),
    Setting("prior_guidance_scale", 15.0, "Shap-E classifier-free guidance scale", min=0.0, max=1000.0,
            advanced=True),
    Setting("prior_grid_size", 128, "Shap-E signed-distance grid for surface extraction (cells per side)",
            min=8, max=512, advanced=True),
    *lr_settings(1e-3, 5e-3, 5e-3, 5e-2, 1e-2, 5e-4, "times the bounding radius, decayed x0.02 over the run"),
)

PAYLOAD = (
    PayloadItem("points", "surface samples of the mesh (init 'mesh'), world space, metres",
                dtypes=("float32", "float64"), shape=("P", 3)),
    PayloadItem("colors", "colours of the points (default grey)", dtypes=("uint8",), shape=("P", 3)),
)


def check(s: Settings) -> None:
    """A prompt; ranges increasing; 0 <= t_min < t_max_end <= t_max_start <= 1."""
    if not s.prompt.strip():
        raise JobError("bad_params", "generate setting prompt is empty: describe the object to generate")
    if not s.t_min < s.t_max_end <= s.t_max_start:
        raise JobError("bad_params", f"generate settings need t_min < t_max_end <= t_max_start, got "
                                     f"{s.t_min}, {s.t_max_end}, {s.t_max_start}")
    for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
        lo, hi = s[name]
        if lo > hi:
            raise JobError("bad_params", f"generate setting {name}={[lo, hi]} must be increasing")


def check_payload(s: Settings, payload: Mapping[str, Any]) -> None:
    """Points exactly with init 'mesh'; colors only with points."""
    has_points = payload.get("points") is not None
    if s.init == "mesh" and not has_points:
        raise JobError("bad_input", "init 'mesh' needs payload 'points' f32[P,3] (surface samples of the mesh)")
    if s.init != "mesh" and has_points:
        raise JobError("bad_input", f"payload 'points' given but init is {s.init!r}; use init 'mesh'")
    if payload.get("colors") is not None and not has_points:
        raise JobError("bad_input", "payload 'colors' given without 'points'")


SPEC = register(JobSpec(
    "generate", "Generate", "A Gaussian-splat object from a text prompt (score distillation, DreamFusion)",
    SETTINGS, PAYLOAD, runner="backend.generate:run_generate_job", check=check, check_payload=check_payload))
