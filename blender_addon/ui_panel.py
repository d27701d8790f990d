"""The "SplatBridge" tab of the 3D View sidebar (N panel): connection, rig, training, jobs.

Panels only read state (``connection.STATE``, ``scene.splatbridge_train`` drawn from the train spec,
``scene.splatbridge_jobs``, ``ops_train.CAPTURE_PROGRESS``) and call operators; they never talk
to the backend themselves. Other modules may add panels to the same tab with
``bl_category = CATEGORY``.
"""
from __future__ import annotations

import math

import bpy

from . import connection, ops_train, spec_props
from .rig import find_rig, rig_cameras, rig_resolution

CATEGORY = "SplatBridge"


class _Base:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class SPLATBRIDGE_PT_connection(_Base, bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_connection"
    bl_label = "Backend"

    def draw(self, context):
        layout = self.layout
        text, icon = connection.status_summary()
        layout.label(text=text, icon=icon)
        st = connection.STATE
        if st.lost and st.last_error:
            col = layout.column(align=True)
            col.alert = True
            col.label(text=st.last_error[:120], icon="ERROR")
        row = layout.row(align=True)
        if st.client is None:
            row.operator("splatbridge.connect", text="Connect", icon="LINKED")
        else:
            row.operator("splatbridge.connect", text="Reconnect", icon="FILE_REFRESH")
            row.operator("splatbridge.disconnect", text="", icon="UNLINKED")
        row = layout.row(align=True)
        row.operator("splatbridge.backend_start", text="Start Local Backend", icon="PLAY")
        row.operator("splatbridge.backend_stop", text="", icon="CANCEL")


class SPLATBRIDGE_PT_rig(_Base, bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_rig"
    bl_label = "Camera Rig"

    def draw(self, context):
        layout = self.layout
        layout.operator("splatbridge.add_camera_rig", icon="OUTLINER_OB_CAMERA")
        rig = find_rig(context)
        if rig is None:
            layout.label(text="No rig: select the subject and add one", icon="INFO")
            return
        cams = rig_cameras(rig)
        try:
            w, h = rig_resolution(rig)
            res = f"{w}x{h}"
        except ValueError:
            res = "?"
        box = layout.box()
        box.label(text=f"{rig.name}: {len(cams)} cameras, {res} px", icon="EMPTY_DATA")


class SPLATBRIDGE_PT_train(_Base, bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_train"
    bl_label = "Train"

    def draw(self, context):
        layout = self.layout
        s = ops_train.get_settings(context)
        col = layout.column(align=True)
        col.label(text="Capture")
        col.prop(s, "engine", text="")
        col.prop(s, "samples")
        col.prop(s, "num_points")
        col.prop(s, "standard_view")
        col.prop(s, "object_index")
        col = layout.column(align=True)
        col.label(text="Training")
        # the train spec's settings: the basic ones, then "Advanced" (collapsed); the dataset folder below
        spec_props.draw(col, s, ops_train.UI.spec(), skip=("dataset_path",))
        layout.prop(s, "output_name")
        row = layout.row()
        row.scale_y = 1.4
        row.enabled = find_rig(context) is not None
        row.operator("splatbridge.train", icon="PLAY")
        layout.separator()
        layout.prop(s, "dataset_path")
        layout.operator("splatbridge.train_dataset", icon="FILE_FOLDER")


class SPLATBRIDGE_PT_jobs(_Base, bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_jobs"
    bl_label = "Progress"

    def draw(self, context):
        layout = self.layout
        cap = ops_train.CAPTURE_PROGRESS
        if cap.get("active"):
            box = layout.box()
            eta = cap.get("eta_s", math.nan)
            box.label(text=f"Capturing {cap['rig']}: view {cap['done']}/{cap['total']}"
                           + ("" if math.isnan(eta) else f", {eta:.0f} s left"), icon="RENDER_STILL")
            box.progress(factor=cap["done"] / max(cap["total"], 1), text="Capture")
        jobs = getattr(context.scene, "splatbridge_jobs", None)
        if jobs is None or len(jobs) == 0:
            if not cap.get("active"):
                layout.label(text="No jobs")
            return
        for rec in reversed(list(jobs)[-8:]):
            box = layout.box()
            row = box.row()
            icon = {"done": "CHECKMARK", "cancelled": "CANCEL", "failed": "ERROR"}.get(rec.state, "TIME")
            row.label(text=rec.label, icon=icon)
            if not rec.handled:
                op = row.operator("splatbridge.cancel_job", text="", icon="X")
                op.job_id = rec.job_id
            if rec.kind == ops_train.KIND:
                box.label(text=ops_train.status_text(rec).split(": ", 1)[-1])
            if rec.total and not rec.handled:
                box.progress(factor=rec.step / rec.total, text=f"{rec.step}/{rec.total}")
            if rec.message:
                sub = box.row()
                sub.alert = rec.state == "failed"
                sub.label(text=rec.message[:120])
        layout.operator("splatbridge.clear_jobs", icon="TRASH")


class SPLATBRIDGE_PT_render(_Base, bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_render"
    bl_label = "Render"

    def draw(self, context):
        col = self.layout.column(align=True)
        col.operator("splatbridge.render_image", icon="RENDER_STILL")
        col.operator("splatbridge.render_animation", icon="RENDER_ANIMATION")


CLASSES = (SPLATBRIDGE_PT_connection, SPLATBRIDGE_PT_rig, SPLATBRIDGE_PT_train, SPLATBRIDGE_PT_jobs,
           SPLATBRIDGE_PT_render)
register, unregister = bpy.utils.register_classes_factory(CLASSES)
