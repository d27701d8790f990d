"""Edit a splat object with a text instruction ("make it look like bronze"): the "Edit" panel, its
operator and plain functions, from the ``edit`` spec (``shared/jobkinds/edit.py``) plus what only the
add-on knows (this module's ``UI``). The backend's ``edit`` job (``backend/edit.py``: Instruct-NeRF2NeRF /
GaussianEditor-style iterative dataset update with InstructPix2Pix) does the work.

Non-destructive, as Blender users expect: the result goes into a new splat object
"<source> (edited)" with the source's transform, previews update it live, and the source object is
hidden (not deleted) when the result arrives. The splats travel in world space (the edit's orbit
cameras need the world's "up"); the source's world matrix at submit time is kept with the job
(``job_kinds.set_job_data``: ``scene["splatbridge_edit_jobs"]``, saved with the .blend), so the result
lands where the source was even after a restart of Blender, and moving the source meanwhile does not
shift it.

Stages (plain functions the modal operator, ``execute``, tests and scripts share):
``submit_edit(context, obj)``, then ``connection.poll_once`` calls ``apply_edit_update`` /
``apply_edit_finished``; ``job_objects.cancel(context, job_id)`` stops it (partial result kept).
"""
from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty

from . import job_kinds, job_objects, splat_object

KIND = "edit"


def selected_splats(obj) -> np.ndarray:
    """bool[N]: which splats of splat object ``obj`` are selected (Edit Mode's selection)."""
    return splat_object.selected_splats(obj)


# --------------------------------------------------------------------------- the kind's hooks

def _prepare(sub: job_kinds.Submission) -> None:
    """The object to edit (``source``, default: the active object) and an instruction."""
    obj = sub.source if sub.source is not None else getattr(sub.context, "active_object", None)
    if obj is None or not splat_object.is_splat_object(obj):
        raise ValueError("select the splat object to edit (make it the active object)")
    if not str(sub.params.get("prompt", "")).strip():
        raise ValueError("enter an instruction describing the edit, e.g. 'make it look like bronze'")
    sub.source = obj


def _payload(sub: job_kinds.Submission) -> dict:
    obj = sub.source
    splats = splat_object.read_splats_from_object(obj)            # world space
    if len(splats) == 0:
        raise ValueError(f"{obj.name!r} has no splats to edit")
    payload = {"splats": splats.to_arrays()}
    if sub.group.only_selected:
        mask = selected_splats(obj)
        if not mask.any():
            raise ValueError(f"no splats of {obj.name!r} are selected: select some in Edit Mode, or turn off "
                             f"Only Selected Splats")
        payload["mask"] = mask
    return payload


def _submitted(sub: job_kinds.Submission, rec) -> None:
    obj = sub.source
    job_kinds.set_job_data(sub.context.scene, KIND, rec.job_id, {
        "source": obj.name, "matrix": [float(v) for row in obj.matrix_world for v in row]})


def _source(scene, job_id: str) -> tuple[str, np.ndarray]:
    """The source object's name and its world matrix at submit (identity if unknown)."""
    info = job_kinds.job_data(scene, KIND, job_id)
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
    job_kinds.pop_job_data(scene, KIND, rec.job_id)


def _poll(context) -> bool:
    obj = getattr(context, "active_object", None)
    return obj is not None and splat_object.is_splat_object(obj) and bool(get_settings(context).prompt.strip())


def _draw_top(layout, context, s) -> None:
    obj = getattr(context, "active_object", None)
    if obj is None or not splat_object.is_splat_object(obj):
        layout.label(text="Select a splat object to edit", icon="INFO")
    else:
        layout.label(text=obj.name, icon="POINTCLOUD_DATA")
    layout.prop(s, "prompt", text="")
    layout.prop(s, "only_selected")


UI = job_kinds.KindUI(
    KIND, operator_idname="splatbridge.edit", operator_label="Edit Splats", icon="BRUSH_DATA", panel_order=2,
    description="Edit the active splat object with the instruction on the backend (Esc cancels; the original "
                "is kept, hidden)",
    extra={"only_selected": BoolProperty(name="Only Selected Splats", default=False,
                                         description="Change only the splats selected in Edit Mode; the others "
                                                     "keep their exact values")},
    prepare=_prepare, payload=_payload, target=lambda sub: f"{sub.source.name} (edited)",
    record_label=lambda sub, target: f"Edit {sub.source.name}", submitted=_submitted,
    on_update=apply_edit_update, on_finished=apply_edit_finished, poll=_poll,
    draw_top=_draw_top, drawn=("prompt",))


def get_settings(context):
    return job_kinds.settings(context, UI)


def submit_edit(context, obj=None, settings=None, params: dict | None = None):
    """Submit an ``edit`` job for splat object ``obj`` (default: the active object); returns its record
    in ``scene.splatbridge_jobs``. ``params`` overrides single settings."""
    return job_kinds.submit(context, UI, settings, params, source=obj)


register, unregister = job_kinds.kind_registration(UI)
