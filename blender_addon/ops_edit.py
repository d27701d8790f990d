"""Edit a splat object with a text instruction ("make it look like bronze"): the "Edit" panel, its
operator and plain functions. The backend's ``edit`` job (``backend/edit.py``: Instruct-NeRF2NeRF /
GaussianEditor-style iterative dataset update with InstructPix2Pix) does the work.

Non-destructive, as Blender users expect: the result goes into a new splat object
"<source> (edited)" with the source's transform, previews update it live, and the source object is
hidden (not deleted) when the result arrives. The splats travel in world space (the edit's orbit
cameras need the world's "up"); the source's world matrix at submit time is kept in the scene
(``scene["splatbridge_edit_jobs"]``, saved with the .blend), so the result lands where the source was
even after a restart of Blender, and moving the source meanwhile does not shift it.

Stages (plain functions the modal operator, ``execute``, tests and scripts share):
``submit_edit(context, obj)``, then ``connection.poll_once`` calls ``apply_edit_update`` /
``apply_edit_finished``; ``job_objects.cancel(context, job_id)`` stops it (partial result kept).
"""
from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from . import connection, job_objects, splat_object
from .job_objects import unique_object_name

KIND = "edit"
JOBS_PROP = "splatbridge_edit_jobs"     # scene custom property: job id -> {source, matrix}


class SplatBridgeEditSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Instruction", default="",
                           description="What to change, e.g. 'make it look like bronze'")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed and settings = same result")
    steps: IntProperty(name="Steps", default=1500, min=1, max=100_000, description="Fine-tuning steps")
    num_views: IntProperty(name="Views", default=24, min=1, max=512,
                           description="Views around the object that are edited and trained on")
    resolution: IntProperty(name="Render Size", default=512, min=16, max=2048,
                            description="Size of the edited views (pixels)")
    text_guidance: FloatProperty(name="Text Guidance", default=7.5, min=0.0, max=100.0,
                                 description="How strongly the instruction is followed")
    image_guidance: FloatProperty(name="Image Guidance", default=1.5, min=0.0, max=100.0,
                                  description="How closely the edit keeps the original views")
    low_memory: BoolProperty(name="Low GPU Memory", default=False,
                             description="Attention slicing and CPU offload for 4-8 GB graphics cards")
    edit_model: StringProperty(name="Edit Model", default="",
                               description="Hugging Face id or local folder (empty: timbrooks/instruct-pix2pix)")
    preview_every: IntProperty(name="Preview Every", default=0, min=0,
                               description="Steps between live previews (0: about one per second)")
    only_selected: BoolProperty(name="Only Selected Splats", default=False,
                                description="Change only the splats selected in Edit Mode; the others keep "
                                            "their exact values")
    show_advanced: BoolProperty(name="Advanced", default=False)


def get_settings(context) -> SplatBridgeEditSettings:
    return context.scene.splatbridge_edit


def edit_params(settings) -> dict:
    """The ``edit`` job params from the settings (an empty model field: the backend's default)."""
    p = {"prompt": settings.prompt.strip(), "seed": int(settings.seed), "steps": int(settings.steps),
         "num_views": int(settings.num_views), "resolution": int(settings.resolution),
         "text_guidance": float(settings.text_guidance), "image_guidance": float(settings.image_guidance),
         "low_memory": bool(settings.low_memory), "preview_every": int(settings.preview_every)}
    ref = settings.edit_model.strip()
    if ref:     # a Hugging Face id, or a folder (a "//" path is relative to the .blend)
        p["edit_model"] = bpy.path.abspath(ref) if ref.startswith("//") else ref
    return p


def selected_splats(obj) -> np.ndarray:
    """bool[N]: which splats of splat object ``obj`` are selected (Edit Mode's selection)."""
    return splat_object.selected_splats(obj)


def _jobs(scene) -> dict:
    return scene.get(JOBS_PROP) or {}


def submit_edit(context, obj=None, settings=None, params: dict | None = None):
    """Submit an ``edit`` job for splat object ``obj`` (default: the active object); returns its record
    in ``scene.splatbridge_jobs``. ``params`` overrides single entries of the settings."""
    obj = obj if obj is not None else getattr(context, "active_object", None)
    if obj is None or not splat_object.is_splat_object(obj):
        raise ValueError("select the splat object to edit (make it the active object)")
    settings = settings or get_settings(context)
    p = edit_params(settings)
    p.update(params or {})
    if not p["prompt"].strip():
        raise ValueError("enter an instruction describing the edit, e.g. 'make it look like bronze'")
    splats = splat_object.read_splats_from_object(obj)            # world space
    if len(splats) == 0:
        raise ValueError(f"{obj.name!r} has no splats to edit")
    payload = {"splats": splats.to_arrays()}
    if settings.only_selected:
        mask = selected_splats(obj)
        if not mask.any():
            raise ValueError(f"no splats of {obj.name!r} are selected: select some in Edit Mode, or turn off "
                             f"Only Selected Splats")
        payload["mask"] = mask
    client = connection.get_client(context)
    job_id = client.submit(KIND, p, payload)
    scene = context.scene
    jobs = dict(_jobs(scene))
    jobs[job_id] = {"source": obj.name, "matrix": [float(v) for row in obj.matrix_world for v in row]}
    scene[JOBS_PROP] = jobs
    target = unique_object_name(f"{obj.name} (edited)")
    return connection.track_job(scene, job_id, KIND, target, label=f"Edit {obj.name}")


def _source(scene, job_id: str) -> tuple[str, np.ndarray]:
    """The source object's name and its world matrix at submit (identity if unknown)."""
    info = _jobs(scene).get(job_id)
    if info is None:
        return "", np.eye(4)
    return str(info["source"]), np.array(list(info["matrix"]), dtype=np.float64).reshape(4, 4)


def _put_world_splats(context, rec, world_splats):
    """The record's object holds ``world_splats`` in the source's frame (created with the source's
    transform on first use)."""
    source_name, matrix = _source(context.scene, rec.job_id)
    created = bpy.data.objects.get(rec.target) is None
    obj = job_objects.put_splats(context, rec, world_splats.transform(np.linalg.inv(matrix)))
    if created:
        from mathutils import Matrix
        obj.matrix_world = Matrix(matrix.tolist())
        obj["sb_edit_source"] = source_name
    return obj


def apply_edit_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the edited object's contents (live preview)."""
    job_objects.apply_preview(context, rec, job, put=lambda splats: _put_world_splats(context, rec, splats))


def apply_edit_finished(context, rec, job) -> None:
    """Handler for the end: the edited (or partial, if cancelled) splats; the source is hidden."""
    scene = context.scene
    obj = job_objects.apply_result(context, rec, job, put=lambda splats: _put_world_splats(context, rec, splats))
    if obj is not None:
        job_objects.tag_seed_and_prompt(obj, job.meta)
        source = bpy.data.objects.get(_source(scene, rec.job_id)[0])
        if source is not None and source is not obj:
            source.hide_set(True)
            source.hide_render = True
    jobs = dict(_jobs(scene))
    jobs.pop(rec.job_id, None)
    scene[JOBS_PROP] = jobs


class SPLATBRIDGE_OT_edit(job_objects.SubmitJobModal, bpy.types.Operator):
    """Edit the active splat object with the instruction on the backend (Esc cancels; the original is
    kept, hidden)"""
    bl_idname = "splatbridge.edit"
    bl_label = "Edit Splats"
    job_label = "Edit"

    @classmethod
    def poll(cls, context):
        obj = getattr(context, "active_object", None)
        return obj is not None and splat_object.is_splat_object(obj) and bool(get_settings(context).prompt.strip())

    def _submit_job(self, context):
        return submit_edit(context)


class SPLATBRIDGE_OT_cancel_edit(job_objects.CancelJob, bpy.types.Operator):
    """Stop an edit job; it keeps what it has done so far"""
    bl_idname = "splatbridge.cancel_edit"
    bl_label = "Cancel Edit"

    job_id: StringProperty()


class SPLATBRIDGE_PT_edit(bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_edit"
    bl_label = "Edit"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "SplatBridge"
    bl_order = 2          # after Generate

    def draw(self, context):
        layout = self.layout
        s = get_settings(context)
        obj = getattr(context, "active_object", None)
        if obj is None or not splat_object.is_splat_object(obj):
            layout.label(text="Select a splat object to edit", icon="INFO")
        else:
            layout.label(text=obj.name, icon="POINTCLOUD_DATA")
        layout.prop(s, "prompt", text="")
        layout.prop(s, "only_selected")
        col = layout.column(align=True)
        col.prop(s, "seed")
        col.prop(s, "steps")
        col.prop(s, "text_guidance")
        col.prop(s, "image_guidance")
        layout.prop(s, "show_advanced", icon="TRIA_DOWN" if s.show_advanced else "TRIA_RIGHT", emboss=False)
        if s.show_advanced:
            box = layout.box().column(align=True)
            for name in ("num_views", "resolution", "preview_every", "low_memory", "edit_model"):
                box.prop(s, name)
        layout.operator(SPLATBRIDGE_OT_edit.bl_idname, icon="BRUSH_DATA")
        job_objects.draw_job_rows(layout, context.scene, KIND, SPLATBRIDGE_OT_cancel_edit.bl_idname)


CLASSES = (SplatBridgeEditSettings, SPLATBRIDGE_OT_edit, SPLATBRIDGE_OT_cancel_edit, SPLATBRIDGE_PT_edit)


register, unregister = job_objects.job_kind_registration(
    KIND, CLASSES, "splatbridge_edit", SplatBridgeEditSettings, apply_edit_update, apply_edit_finished)
