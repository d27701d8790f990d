"""Train splats from the scene: capture the rig, submit a ``train`` job, preview, final object.

Stages, each a plain function so the modal operator, ``execute`` (no window), tests and the demo
all drive the same code:

1. ``start_capture(context, rig)`` -> ``capture.CaptureJob`` (``step()`` per view);
2. ``submit_capture(context, capture_result)`` -> the tracked job record (``connection``);
3. ``connection.poll_once`` hands progress to ``apply_train_update`` (record metrics, live
   preview splat object) and the end to ``apply_train_finished`` (final splat object; a
   cancelled job still yields its partial splats);
4. ``cancel_train(context, job_id)``.

"Train from Dataset" submits the same job with ``params.dataset_path`` (a folder with
``transforms.json`` or a COLMAP ``sparse/0``) and no images: the backend loads the dataset.
Settings live in ``scene.splatbridge_train``: one property per setting of the train spec
(``shared/jobkinds/train.py``) plus the add-on's ``CAPTURE_SETTINGS``.
"""
from __future__ import annotations

import math

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import connection, job_kinds, job_objects, ops_split
from .capture import CaptureJob, CaptureResult
from .job_objects import status_text  # noqa: F401 (status_text: ui_panel, demo)
from .rig import find_rig

KIND = "train"
DATASET_ONLY = ("dataset_path", "images_dir", "downscale")   # settings that apply to a dataset folder only

# Capture progress of the running Train operator (for the panel; not saved).
CAPTURE_PROGRESS = {"active": False, "done": 0, "total": 0, "eta_s": math.nan, "rig": ""}


def _eevee_id() -> str:
    items = bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items.keys()
    for name in ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"):
        if name in items:
            return name
    return "BLENDER_EEVEE"


# The add-on's own settings of a training run (how the rig is captured, what the result is called); the
# job's settings come from the train spec (shared/jobkinds/train.py).
CAPTURE_SETTINGS = {
    "engine": EnumProperty(name="Engine", default="SCENE", items=[
        ("SCENE", "Scene's Engine", "Capture with the scene's render engine"),
        ("CYCLES", "Cycles", "Capture with Cycles"),
        ("EEVEE", "EEVEE", "Capture with EEVEE")]),
    "samples": IntProperty(name="Samples", default=0, min=0,
                           description="Render samples per view (0: the scene's setting)"),
    "num_points": IntProperty(name="Initial Points", default=20000, min=0,
                              description="Points sampled on the target meshes to start from"),
    "standard_view": BoolProperty(name="Standard View", default=True,
                                  description="Capture with the Standard view transform (no tone curve) so "
                                              "splat colours are plain sRGB"),
    "object_index": BoolProperty(name="Object Index Pass", default=True,
                                 description="Also render which object each pixel shows, so the trained "
                                             "splats can be split by object (Split by Object)"),
    "include_splats": BoolProperty(name="Capture Splats", default=False,
                                   description="Let splat objects show in the captured views (off: they are "
                                               "hidden while capturing, so baking a scene again does not bake "
                                               "its earlier splats into the new ones)"),
    "output_name": StringProperty(name="Output", default="",
                                  description="Name of the splat object (empty: <rig>_splats)"),
}


def get_settings(context):
    """``scene.splatbridge_train``: the train spec's settings plus ``CAPTURE_SETTINGS``."""
    return job_kinds.settings(context, UI)


# --------------------------------------------------------------------------- stages

def start_capture(context, rig=None, settings=None) -> CaptureJob:
    """A capture of ``rig`` (default: the active rig) with the train settings."""
    settings = settings or get_settings(context)
    rig = rig or find_rig(context)
    if rig is None:
        raise ValueError("no camera rig: add one with Add Camera Rig first")
    engine = {"SCENE": None, "CYCLES": "CYCLES", "EEVEE": _eevee_id()}[settings.engine]
    return CaptureJob(context, rig, engine=engine, samples=settings.samples or None,
                      num_points=settings.num_points, seed=settings.seed,
                      standard_view=settings.standard_view, object_index=settings.object_index,
                      include_splats=settings.include_splats)


def _prepare(sub: job_kinds.Submission) -> None:
    if isinstance(sub.source, CaptureResult):       # the views come in the payload, not from a dataset
        for name in DATASET_ONLY:
            sub.params.pop(name, None)
    elif not sub.params.get("dataset_path"):
        raise ValueError("no dataset folder given")


def _target(sub: job_kinds.Submission) -> str:
    s = sub.group
    if s.output_name:
        return s.output_name
    if isinstance(sub.source, CaptureResult):
        return "Splats"
    path = str(sub.params["dataset_path"])
    return (bpy.path.basename(path.rstrip("/\\")) or "Dataset") + "_splats"


def submit_capture(context, capture: CaptureResult, settings=None, name: str = "",
                   params: dict | None = None):
    """Submit a ``train`` job for captured views; returns its record in ``scene.splatbridge_jobs``.

    ``params`` overrides single settings."""
    return job_kinds.submit(context, UI, settings, params, name, source=capture)


def submit_dataset(context, path: str, settings=None, name: str = "", params: dict | None = None):
    """Submit a ``train`` job on a dataset folder that the backend loads itself."""
    return job_kinds.submit(context, UI, settings, {"dataset_path": bpy.path.abspath(path) if path else "",
                                                    **(params or {})}, name)


def cancel_train(context, job_id: str) -> None:
    """Ask the backend to stop the job; its partial result arrives as a ``cancelled`` result."""
    job_objects.cancel(context, job_id)


def apply_train_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the splat object's contents."""
    job_objects.apply_preview(context, rec, job)


def apply_train_finished(context, rec, job) -> None:
    """Handler for the end: the final (or partial, if cancelled) splats, or the error."""
    obj = job_objects.apply_result(context, rec, job)
    if obj is not None:
        m = job.result_metrics or {}
        if "eval_psnr" in m:
            rec.message += f", eval PSNR {m['eval_psnr']:.2f} dB"
        # a capture with an object-index pass: label the splats by source object (Split by Object)
        try:
            if ops_split.after_training(context, rec, obj) is not None:
                rec.message += ", labelling by object"
        except Exception as exc:       # the trained splats are in; only the split is lost
            rec.message += f" (labelling by object failed: {exc})"
    else:
        ops_split.forget_capture(context.scene, rec.job_id)


# --------------------------------------------------------------------------- operators

class SPLATBRIDGE_OT_train(job_objects.JobModal, bpy.types.Operator):
    """Capture the camera rig and train Gaussian splats on the backend (Esc cancels)"""
    bl_idname = "splatbridge.train"
    bl_label = "Train Splats"

    _capture: CaptureJob | None = None
    _phase: str = ""

    @classmethod
    def poll(cls, context):
        return find_rig(context) is not None

    def _prepare(self, context) -> bool:
        try:
            connection.get_client(context)
            self._capture = start_capture(context)
        except Exception as exc:
            self.report({"ERROR"}, f"Train Splats: {exc}")
            return False
        return True

    def _name(self, context) -> str:
        s = get_settings(context)
        return s.output_name or f"{find_rig(context).name}_splats"

    def execute(self, context):
        """Headless path: capture everything now, submit, return (results arrive by polling)."""
        if not self._prepare(context):
            return {"CANCELLED"}
        try:
            result = self._capture.run_all()
            rec = submit_capture(context, result, name=self._name(context))
        except Exception as exc:
            self._end_capture()             # a failed render: its temporary folder goes too
            self.report({"ERROR"}, f"Train Splats: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted training job {rec.job_id} ({len(result.images)} views)")
        return {"FINISHED"}

    def invoke(self, context, event):
        if not self._prepare(context):
            return {"CANCELLED"}
        self._phase = "capture"
        CAPTURE_PROGRESS.update(active=True, done=0, total=self._capture.total, eta_s=math.nan,
                                rig=find_rig(context).name)
        return self._begin(context, 0.02)

    def _finish(self, context, result: set) -> set:
        """Every way out (done, Esc, an error, Blender cancelling the modal) ends a capture still
        in progress (its temporary folder goes) and the panel's capture progress."""
        self._end_capture()
        CAPTURE_PROGRESS["active"] = False
        return job_objects.JobModal._finish(self, context, result)

    def _end_capture(self) -> None:
        if self._capture is not None and not self._capture.finished and not self._capture.cancelled:
            self._capture.cancel()

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            if self._phase == "capture":
                self.report({"WARNING"}, "Capture cancelled")
                return self._finish(context, {"CANCELLED"})
            if self._phase == "train":
                ended = self._request_cancel(context, "Train Splats")
                if ended is not None:
                    return ended
                self._phase = "cancelling"
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            if self._phase == "capture":
                done = self._capture.step()
                CAPTURE_PROGRESS.update(done=self._capture.done, eta_s=self._capture.eta_s)
                context.window_manager.progress_update(int(1000 * self._capture.progress))
                context.workspace.status_text_set(self._capture.status_text())
                if done:
                    rec = submit_capture(context, self._capture.result(), name=self._name(context))
                    self._job_id, self._phase = rec.job_id, "train"
                    CAPTURE_PROGRESS["active"] = False
                    # 50 Hz suits back-to-back renders; following a job for hours it is only load
                    self._set_interval(context, job_objects.FOLLOW_INTERVAL_S)
                return {"RUNNING_MODAL"}
            result = self._follow_job(context)     # _cancel_at is set exactly in phase "cancelling"
        except Exception as exc:
            self.report({"ERROR"}, f"Train Splats: {exc}")
            return self._finish(context, {"CANCELLED"})
        return result or {"RUNNING_MODAL"}


class SPLATBRIDGE_OT_train_dataset(bpy.types.Operator):
    """Train splats from a dataset folder (transforms.json or COLMAP) that the backend reads"""
    bl_idname = "splatbridge.train_dataset"
    bl_label = "Train from Dataset Folder"

    directory: StringProperty(name="Dataset Folder", subtype="DIR_PATH")

    def invoke(self, context, event):
        if get_settings(context).dataset_path and not self.directory:
            self.directory = get_settings(context).dataset_path
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = self.directory or get_settings(context).dataset_path
        try:
            rec = submit_dataset(context, path)
        except Exception as exc:
            self.report({"ERROR"}, f"Train from Dataset: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted training job {rec.job_id} on {path}")
        return {"FINISHED"}


class SPLATBRIDGE_OT_cancel_job(job_objects.CancelJob, bpy.types.Operator):
    """Stop a running job; a training job keeps what it has learnt so far"""
    bl_idname = "splatbridge.cancel_job"
    bl_label = "Cancel Job"

    job_id: StringProperty()


UI = job_kinds.KindUI(
    KIND, extra=CAPTURE_SETTINGS, prepare=_prepare,
    payload=lambda sub: sub.source.payload() if isinstance(sub.source, CaptureResult) else {},
    target=_target, on_update=apply_train_update, on_finished=apply_train_finished,
    submitted=lambda sub, rec: ops_split.remember_capture(sub.context.scene, rec.job_id, sub.source)
    if isinstance(sub.source, CaptureResult) else None,
    operator=False, panel=False,       # its own operators (capture first) and panel (ui_panel)
    classes=(SPLATBRIDGE_OT_train, SPLATBRIDGE_OT_train_dataset, SPLATBRIDGE_OT_cancel_job))


register, unregister = job_kinds.kind_registration(UI)
