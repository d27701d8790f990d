"""Generate a splat asset from a text prompt: the "Generate" panel and operator, from the ``generate``
spec (``shared/jobkinds/generate.py``) plus what only the add-on knows (this module's ``UI``).

Stages, each a plain function so the modal operator, ``execute`` (no window), tests and the demo all
drive the same code:

1. ``submit_generate(context)`` builds the ``generate`` job from ``scene.splatbridge_generate`` (one
   property per setting of the spec, plus the add-on's ``mesh_samples``); with init "Selected Mesh" it
   sends area-weighted surface samples of the selected meshes (``capture.sample_surface``) as
   ``points``/``colors``. The 3D cursor's location at submit time is kept with the job
   (``job_kinds.set_job_data``, saved with the .blend): the preview and the final object are placed
   there, also after a restart of Blender.
2. ``connection.poll_once`` hands progress to ``apply_generate_update`` (live preview object) and the
   end to ``apply_generate_finished`` (final object, named after the prompt; a cancelled job still
   yields its partial splats).
3. ``job_objects.cancel(context, job_id)``.

The backend returns the object centred on its origin (``backend/generate.py``), so placing it is
setting the object's location.
"""
from __future__ import annotations

import re

from bpy.props import IntProperty

from . import job_kinds, job_objects

KIND = "generate"
INIT_ITEMS = [      # names and tooltips of the spec's init choices
    ("shap-e", "Shap-E", "Start from Shap-E's text-to-3D shape for the prompt"),
    ("mesh", "Selected Mesh", "Start from surface samples of the selected mesh objects"),
    ("sphere", "Sphere", "Start from a grey ball of Gaussians"),
]
NAME_MAX = 48


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


# --------------------------------------------------------------------------- the kind's hooks

def _payload(sub: job_kinds.Submission) -> dict:
    s = sub.settings
    if s.init != "mesh":
        return {}
    objects = sub.source if sub.source is not None else selected_meshes(sub.context)
    return mesh_payload(sub.context, objects, int(sub.group.mesh_samples), int(s.seed))


def _submitted(sub: job_kinds.Submission, rec) -> None:
    # with the job, not in memory: a result fetched after a restart of Blender goes there too
    job_kinds.set_job_data(sub.context.scene, KIND, rec.job_id,
                           {"place_at": [float(v) for v in sub.context.scene.cursor.location]})


def _location(context, rec) -> tuple[float, float, float]:
    """Where a new object for the job goes: the 3D cursor's location at submit."""
    data = job_kinds.job_data(context.scene, KIND, rec.job_id)
    return tuple(data["place_at"]) if data else tuple(context.scene.cursor.location)


def apply_generate_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the object's contents (live preview)."""
    job_objects.apply_preview(context, rec, job, _location(context, rec))


def apply_generate_finished(context, rec, job) -> None:
    """Handler for the end: the final (or partial, if cancelled) splats, or the error."""
    obj = job_objects.apply_result(context, rec, job, _location(context, rec))
    if obj is not None:
        job_objects.tag_seed_and_prompt(obj, job.meta)
    job_kinds.pop_job_data(context.scene, KIND, rec.job_id)


def _draw_top(layout, context, s) -> None:
    layout.prop(s, "prompt", text="")
    layout.prop(s, "negative_prompt", text="Avoid")
    col = layout.column(align=True)
    col.prop(s, "init")
    if s.init == "mesh":
        n = len(selected_meshes(context))
        col.label(text=f"{n} selected mesh{'es' if n != 1 else ''}" if n else "Select a mesh object",
                  icon="MESH_DATA" if n else "ERROR")
        col.prop(s, "mesh_samples")


UI = job_kinds.KindUI(
    KIND, operator_idname="splatbridge.generate", icon="SHADERFX", panel_order=1,
    description="Generate a Gaussian-splat object from the prompt on the backend (Esc cancels)",
    extra={"mesh_samples": IntProperty(name="Mesh Samples", default=20000, min=16, max=2_000_000,
                                       description="Points sampled on the selected meshes (Start From: "
                                                   "Selected Mesh)")},
    items={"init": INIT_ITEMS},
    payload=_payload, target=lambda sub: name_from_prompt(sub.settings.prompt), submitted=_submitted,
    on_update=apply_generate_update, on_finished=apply_generate_finished,
    poll=lambda context: bool(job_kinds.settings(context, UI).prompt.strip()),
    draw_top=_draw_top, drawn=("prompt", "negative_prompt", "init"))


def get_settings(context):
    return job_kinds.settings(context, UI)


def submit_generate(context, settings=None, params: dict | None = None, name: str = "", objects=None):
    """Submit a ``generate`` job; returns its record in ``scene.splatbridge_jobs``.

    ``params`` overrides single settings; ``objects`` the meshes used by init "mesh" (default: the
    selected meshes)."""
    return job_kinds.submit(context, UI, settings, params, name, source=objects)


register, unregister = job_kinds.kind_registration(UI)
