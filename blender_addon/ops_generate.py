"""Generate a splat asset from a text prompt: the "Generate" panel, its operator and plain functions.

Stages, each a plain function so the modal operator, ``execute`` (no window), tests and the demo all
drive the same code:

1. ``submit_generate(context)`` builds the ``generate`` job (docs/INTERFACES.md) from
   ``scene.splatbridge_generate``; with init "Selected Mesh" it sends area-weighted surface samples of
   the selected meshes (``capture.sample_surface``) as ``points``/``colors``. The 3D cursor's location
   at submit time is kept in the job record (saved with the .blend): the preview and the final object
   are placed there, also after a restart of Blender.
2. ``connection.poll_once`` hands progress to ``apply_generate_update`` (live preview object) and the
   end to ``apply_generate_finished`` (final object, named after the prompt; a cancelled job still
   yields its partial splats).
3. ``cancel_generate(context, job_id)``.

The backend returns the object centred on its origin (``backend/generate.py``), so placing it is
setting the object's location.
"""
from __future__ import annotations

import re

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import connection, job_objects
from .job_objects import unique_object_name

KIND = "generate"
INIT_ITEMS = [
    ("shap-e", "Shap-E", "Start from Shap-E's text-to-3D shape for the prompt"),
    ("mesh", "Selected Mesh", "Start from surface samples of the selected mesh objects"),
    ("sphere", "Sphere", "Start from a grey ball of Gaussians"),
]
NAME_MAX = 48


class SplatBridgeGenerateSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="", description="What to generate, e.g. 'a ceramic teapot'")
    negative_prompt: StringProperty(name="Negative Prompt", default="",
                                    description="What to steer away from (the unconditional prompt)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed and settings = same result")
    steps: IntProperty(name="Steps", default=1200, min=1, max=100_000, description="Score-distillation steps")
    guidance_scale: FloatProperty(name="Guidance", default=100.0, min=0.0, max=1000.0,
                                  description="Classifier-free guidance scale (score distillation wants ~100)")
    init: EnumProperty(name="Start From", items=INIT_ITEMS, default="shap-e")
    resolution: IntProperty(name="Render Size", default=512, min=16, max=2048,
                            description="Size of the views rendered for the diffusion model (pixels)")
    batch_size: IntProperty(name="Views per Step", default=4, min=1, max=64)
    num_points: IntProperty(name="Initial Gaussians", default=4096, min=16, max=2_000_000)
    mesh_samples: IntProperty(name="Mesh Samples", default=20000, min=16, max=2_000_000,
                              description="Points sampled on the selected meshes (init: Selected Mesh)")
    sh_degree: IntProperty(name="SH Degree", default=0, min=0, max=3)
    low_memory: BoolProperty(name="Low GPU Memory", default=False,
                             description="Attention slicing and CPU offload for 4-8 GB graphics cards")
    guidance_model: StringProperty(name="Diffusion Model", default="",
                                   description="Hugging Face id or local folder (empty: Stable Diffusion 2.1 base)")
    prior_model: StringProperty(name="Shap-E Model", default="",
                                description="Hugging Face id or local folder (empty: openai/shap-e)")
    preview_every: IntProperty(name="Preview Every", default=0, min=0,
                               description="Steps between live previews (0: about one per second)")
    show_advanced: BoolProperty(name="Advanced", default=False)


def get_settings(context) -> SplatBridgeGenerateSettings:
    return context.scene.splatbridge_generate


def generate_params(settings) -> dict:
    """The ``generate`` job params from the settings (empty model fields: the backend's defaults)."""
    p = {"prompt": settings.prompt.strip(), "negative_prompt": settings.negative_prompt, "seed": int(settings.seed),
         "steps": int(settings.steps), "guidance_scale": float(settings.guidance_scale),
         "resolution": int(settings.resolution), "batch_size": int(settings.batch_size), "init": settings.init,
         "num_points": int(settings.num_points), "sh_degree": int(settings.sh_degree),
         "low_memory": bool(settings.low_memory), "preview_every": int(settings.preview_every)}
    for key in ("guidance_model", "prior_model"):
        ref = getattr(settings, key).strip()
        if ref:   # a Hugging Face id, or a folder (a "//" path is relative to the .blend)
            p[key] = bpy.path.abspath(ref) if ref.startswith("//") else ref
    return p


def name_from_prompt(prompt: str) -> str:
    """Object name for a prompt: its words, single-spaced, at most NAME_MAX characters ("Generated" if empty)."""
    words = re.sub(r"\s+", " ", re.sub(r"[^\w\s\-']", " ", prompt)).strip()
    if len(words) > NAME_MAX:
        words = words[:NAME_MAX].rsplit(" ", 1)[0] or words[:NAME_MAX]
    return words or "Generated"


def selected_meshes(context) -> list:
    return [o for o in getattr(context, "selected_objects", []) or [] if o.type == "MESH"]


def mesh_payload(context, objects, count: int, seed: int = 0) -> dict:
    """Surface samples (world space) of ``objects`` as the ``mesh`` init payload."""
    from .capture import sample_surface
    if not objects:
        raise ValueError("Start From 'Selected Mesh' needs at least one selected mesh object")
    points, colors = sample_surface(context, objects, count, seed)
    if len(points) == 0:
        raise ValueError("the selected objects have no surface to sample")
    return {"points": points, "colors": colors}


# --------------------------------------------------------------------------- stages

def submit_generate(context, settings=None, params: dict | None = None, name: str = "", objects=None):
    """Submit a ``generate`` job; returns its record in ``scene.splatbridge_jobs``.

    ``params`` overrides single entries; ``objects`` the meshes used by init "mesh" (default: the
    selected meshes)."""
    settings = settings or get_settings(context)
    p = generate_params(settings)
    p.update(params or {})
    if not p["prompt"].strip():
        raise ValueError("enter a prompt describing the object to generate")
    payload = {}
    if p["init"] == "mesh":
        payload = mesh_payload(context, objects if objects is not None else selected_meshes(context),
                               int(settings.mesh_samples), int(p["seed"]))
    client = connection.get_client(context)
    target = unique_object_name(name or name_from_prompt(p["prompt"]))
    job_id = client.submit(KIND, p, payload)
    rec = connection.track_job(context.scene, job_id, KIND, target, label=f"Generate {target}")
    # in the record, not in memory: a result fetched after a restart of Blender goes there too
    rec.place_at, rec.use_place_at = context.scene.cursor.location, True
    return rec


def cancel_generate(context, job_id: str) -> None:
    """Ask the backend to stop; the partial result arrives as a ``cancelled`` result."""
    job_objects.cancel(context, job_id)


def _location(context, rec) -> tuple[float, float, float]:
    """Where a new object for the job goes: the 3D cursor's location at submit."""
    return tuple(rec.place_at if rec.use_place_at else context.scene.cursor.location)


def apply_generate_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the object's contents (live preview)."""
    job_objects.apply_preview(context, rec, job, _location(context, rec))


def apply_generate_finished(context, rec, job) -> None:
    """Handler for the end: the final (or partial, if cancelled) splats, or the error."""
    obj = job_objects.apply_result(context, rec, job, _location(context, rec))
    if obj is not None:
        job_objects.tag_seed_and_prompt(obj, job.meta)


# --------------------------------------------------------------------------- operators

class SPLATBRIDGE_OT_generate(job_objects.SubmitJobModal, bpy.types.Operator):
    """Generate a Gaussian-splat object from the prompt on the backend (Esc cancels)"""
    bl_idname = "splatbridge.generate"
    bl_label = "Generate"
    job_label = "Generate"

    @classmethod
    def poll(cls, context):
        return bool(get_settings(context).prompt.strip())

    def _submit_job(self, context):
        return submit_generate(context)


class SPLATBRIDGE_OT_cancel_generate(job_objects.CancelJob, bpy.types.Operator):
    """Stop a generation job; it keeps what it has made so far"""
    bl_idname = "splatbridge.cancel_generate"
    bl_label = "Cancel Generation"

    job_id: StringProperty()


class SPLATBRIDGE_PT_generate(bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_generate"
    bl_label = "Generate"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SplatBridge"
    bl_order = 1          # after the tab's connection / rig / train panels (order 0)

    def draw(self, context):
        layout = self.layout
        s = get_settings(context)
        layout.prop(s, "prompt", text="")
        layout.prop(s, "negative_prompt", text="Avoid")
        col = layout.column(align=True)
        col.prop(s, "init")
        if s.init == "mesh":
            n = len(selected_meshes(context))
            col.label(text=f"{n} selected mesh{'es' if n != 1 else ''}" if n else "Select a mesh object",
                      icon="MESH_DATA" if n else "ERROR")
        col = layout.column(align=True)
        col.prop(s, "seed")
        col.prop(s, "steps")
        col.prop(s, "guidance_scale")
        layout.prop(s, "show_advanced", icon="TRIA_DOWN" if s.show_advanced else "TRIA_RIGHT", emboss=False)
        if s.show_advanced:
            box = layout.box().column(align=True)
            for name in ("resolution", "batch_size", "num_points", "mesh_samples", "sh_degree", "preview_every",
                         "low_memory", "guidance_model", "prior_model"):
                box.prop(s, name)
        layout.operator(SPLATBRIDGE_OT_generate.bl_idname, icon="SHADERFX")
        job_objects.draw_job_rows(layout, context.scene, KIND, SPLATBRIDGE_OT_cancel_generate.bl_idname)


CLASSES = (SplatBridgeGenerateSettings, SPLATBRIDGE_OT_generate, SPLATBRIDGE_OT_cancel_generate,
           SPLATBRIDGE_PT_generate)


register, unregister = job_objects.job_kind_registration(
    KIND, CLASSES, "splatbridge_generate", SplatBridgeGenerateSettings,
    apply_generate_update, apply_generate_finished)
