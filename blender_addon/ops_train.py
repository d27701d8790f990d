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
Settings live in ``scene.splatbridge_train``.
"""
from __future__ import annotations

import math
import time

import bpy
from bpy.props import (BoolProperty, EnumProperty, IntProperty, PointerProperty,
                       StringProperty)

from . import connection
from .capture import CaptureJob, CaptureResult
from .rig import find_rig

try:  # H5b's splat object module; absent in a partial build
    from . import splat_object
except ImportError:  # pragma: no cover
    splat_object = None

KIND = "train"

# Capture progress of the running Train operator (for the panel; not saved).
CAPTURE_PROGRESS = {"active": False, "done": 0, "total": 0, "eta_s": math.nan, "rig": ""}
_preview_applied: dict[str, int] = {}     # job id -> id() of the last preview map applied


def _eevee_id() -> str:
    items = bpy.types.RenderSettings.bl_rna.properties["engine"].enum_items.keys()
    for name in ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"):
        if name in items:
            return name
    return "BLENDER_EEVEE"


class SplatBridgeTrainSettings(bpy.types.PropertyGroup):
    steps: IntProperty(name="Steps", default=3000, min=1, max=1_000_000,
                       description="Optimisation steps")
    strategy: EnumProperty(name="Strategy", default="default", items=[
        ("default", "Default", "3DGS densification (clone, split, prune)"),
        ("mcmc", "MCMC", "3DGS-MCMC: relocation with a fixed Gaussian budget")])
    sh_degree: IntProperty(name="SH Degree", default=3, min=0, max=3,
                           description="Spherical-harmonic degree of the view-dependent colour")
    max_gaussians: IntProperty(name="Max Gaussians", default=1_000_000, min=1000,
                               description="Cap on the number of Gaussians")
    holdout_every: IntProperty(name="Hold Out Every", default=0, min=0,
                               description="Keep every n-th view for evaluation (0: train on all)")
    seed: IntProperty(name="Seed", default=0, min=0)
    preview_every: IntProperty(name="Preview Every", default=100, min=0,
                               description="Send a live preview every n steps (0: none)")
    engine: EnumProperty(name="Engine", default="SCENE", items=[
        ("SCENE", "Scene's Engine", "Capture with the scene's render engine"),
        ("CYCLES", "Cycles", "Capture with Cycles"),
        ("EEVEE", "EEVEE", "Capture with EEVEE")])
    samples: IntProperty(name="Samples", default=0, min=0,
                         description="Render samples per view (0: the scene's setting)")
    num_points: IntProperty(name="Initial Points", default=20000, min=0,
                            description="Points sampled on the target meshes to start from")
    standard_view: BoolProperty(name="Standard View", default=True,
                                description="Capture with the Standard view transform (no tone "
                                            "curve) so splat colours are plain sRGB")
    output_name: StringProperty(name="Output", default="",
                                description="Name of the splat object (empty: <rig>_splats)")
    dataset_path: StringProperty(name="Dataset", subtype="DIR_PATH", default="",
                                 description="Folder with transforms.json or a COLMAP model")


def get_settings(context) -> SplatBridgeTrainSettings:
    return context.scene.splatbridge_train


def train_params(settings) -> dict:
    """The ``train`` job params (docs/INTERFACES.md) from the settings."""
    return {"steps": int(settings.steps), "strategy": str(settings.strategy),
            "sh_degree": int(settings.sh_degree), "max_gaussians": int(settings.max_gaussians),
            "holdout_every": int(settings.holdout_every), "seed": int(settings.seed),
            "preview_every": int(settings.preview_every)}


def unique_object_name(base: str) -> str:
    """``base`` if no object has it, else ``base.001``, ``base.002``..."""
    if base not in bpy.data.objects:
        return base
    i = 1
    while f"{base}.{i:03d}" in bpy.data.objects:
        i += 1
    return f"{base}.{i:03d}"


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
                      standard_view=settings.standard_view)


def submit_capture(context, capture: CaptureResult, settings=None, name: str = "",
                   params: dict | None = None):
    """Submit a ``train`` job for captured views; returns its record in ``scene.splatbridge_jobs``.

    ``params`` overrides single entries of the settings' params."""
    settings = settings or get_settings(context)
    client = connection.get_client(context)
    p = train_params(settings)
    p.update(params or {})
    target = unique_object_name(name or settings.output_name or "Splats")
    job_id = client.submit(KIND, p, capture.payload())
    return connection.track_job(context.scene, job_id, KIND, target, label=f"Train {target}")


def submit_dataset(context, path: str, settings=None, name: str = "", params: dict | None = None):
    """Submit a ``train`` job on a dataset folder that the backend loads itself."""
    settings = settings or get_settings(context)
    path = bpy.path.abspath(path)
    if not path:
        raise ValueError("no dataset folder given")
    client = connection.get_client(context)
    p = train_params(settings)
    p["dataset_path"] = path
    p.update(params or {})
    base = name or settings.output_name or (bpy.path.basename(path.rstrip("/\\")) or "Dataset") + "_splats"
    target = unique_object_name(base)
    job_id = client.submit(KIND, p, {})
    return connection.track_job(context.scene, job_id, KIND, target, label=f"Train {target}")


def cancel_train(context, job_id: str) -> None:
    """Ask the backend to stop the job; its partial result arrives as a ``cancelled`` result."""
    connection.cancel_job(job_id)
    rec = connection.find_record(context.scene, job_id)
    if rec is not None:
        rec.message = "cancelling..."


def _put_splats(context, rec, splats):
    """Create or update the record's splat object with ``splats`` (world space)."""
    if splat_object is None:
        raise RuntimeError("the splat object module is missing from this build")
    obj = bpy.data.objects.get(rec.target)
    if obj is not None and splat_object.is_splat_object(obj):
        splat_object.update_splat_object(obj, splats)
    else:
        obj = splat_object.create_splat_object(context, unique_object_name(rec.target), splats)
        rec.target = obj.name
    return obj


def apply_train_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the splat object's contents."""
    if job.preview is not None and _preview_applied.get(rec.job_id) != id(job.preview):
        _preview_applied[rec.job_id] = id(job.preview)
        _put_splats(context, rec, job.preview_splats())


def apply_train_finished(context, rec, job) -> None:
    """Handler for the end: the final (or partial, if cancelled) splats, or the error."""
    _preview_applied.pop(rec.job_id, None)
    if job.result is not None:
        obj = _put_splats(context, rec, job.result_splats())
        m = job.result_metrics or {}
        rec.message = ("cancelled: partial result" if job.state == "cancelled" else "done") + \
            (f", eval PSNR {m['eval_psnr']:.2f} dB" if "eval_psnr" in m else "")
        obj["sb_job_id"] = rec.job_id
    elif job.error is not None:
        rec.message = f"{job.error[0]}: {job.error[1]}"


def status_text(rec) -> str:
    """'Train Splats: step 1200/3000, PSNR 27.1 dB, 154k Gaussians, 1m 20s left'."""
    parts = [f"step {rec.step}/{rec.total}" if rec.total else rec.state]
    if not math.isnan(rec.psnr):
        parts.append(f"PSNR {rec.psnr:.1f} dB")
    if rec.num_gaussians:
        parts.append(f"{rec.num_gaussians / 1000:.0f}k Gaussians" if rec.num_gaussians >= 1000
                     else f"{rec.num_gaussians:.0f} Gaussians")
    if not math.isnan(rec.eta_s) and rec.total and rec.step < rec.total:
        parts.append(f"{format_duration(rec.eta_s)} left")
    return f"{rec.label}: " + ", ".join(parts)


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


# --------------------------------------------------------------------------- operators

class SPLATBRIDGE_OT_train(bpy.types.Operator):
    """Capture the camera rig and train Gaussian splats on the backend (Esc cancels)"""
    bl_idname = "splatbridge.train"
    bl_label = "Train Splats"

    _timer = None
    _capture: CaptureJob | None = None
    _job_id: str = ""
    _phase: str = ""
    _cancel_at: float = 0.0

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
            self.report({"ERROR"}, f"Train Splats: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted training job {rec.job_id} ({len(result.images)} views)")
        return {"FINISHED"}

    def invoke(self, context, event):
        if not self._prepare(context):
            return {"CANCELLED"}
        wm = context.window_manager
        self._phase = "capture"
        self._timer = wm.event_timer_add(0.02, window=context.window)
        wm.progress_begin(0, 1000)
        CAPTURE_PROGRESS.update(active=True, done=0, total=self._capture.total, eta_s=math.nan,
                                rig=find_rig(context).name)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _finish(self, context, result: set) -> set:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        CAPTURE_PROGRESS["active"] = False
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return result

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            if self._phase == "capture":
                self._capture.cancel()
                self.report({"WARNING"}, "Capture cancelled")
                return self._finish(context, {"CANCELLED"})
            if self._phase == "train":
                cancel_train(context, self._job_id)
                self._phase, self._cancel_at = "cancelling", time.monotonic()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        wm = context.window_manager
        try:
            if self._phase == "capture":
                done = self._capture.step()
                CAPTURE_PROGRESS.update(done=self._capture.done, eta_s=self._capture.eta_s)
                wm.progress_update(int(1000 * self._capture.progress))
                context.workspace.status_text_set(self._capture.status_text())
                if done:
                    rec = submit_capture(context, self._capture.result(), name=self._name(context))
                    self._job_id, self._phase = rec.job_id, "train"
                    CAPTURE_PROGRESS["active"] = False
                return {"RUNNING_MODAL"}
            connection.poll_once(context)
            rec = connection.find_record(context.scene, self._job_id)
            if rec is None:
                return self._finish(context, {"CANCELLED"})
            if rec.total:
                wm.progress_update(int(1000 * rec.step / rec.total))
            tail = " (cancelling...)" if self._phase == "cancelling" else " (Esc to cancel)"
            context.workspace.status_text_set(status_text(rec) + tail)
            if rec.handled:
                level = {"ERROR"} if rec.state == "failed" else {"INFO"}
                self.report(level, f"{rec.label}: {rec.message or rec.state}")
                return self._finish(context, {"FINISHED"})
            if self._phase == "cancelling" and time.monotonic() - self._cancel_at > 60.0:
                self.report({"WARNING"}, "The backend did not confirm the cancel within a minute; "
                                         "the job stays in the job list")
                return self._finish(context, {"CANCELLED"})
        except Exception as exc:
            if self._capture is not None and not self._capture.finished:
                self._capture.cancel()
            self.report({"ERROR"}, f"Train Splats: {exc}")
            return self._finish(context, {"CANCELLED"})
        return {"RUNNING_MODAL"}


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


class SPLATBRIDGE_OT_cancel_job(bpy.types.Operator):
    """Stop a running job; a training job keeps what it has learnt so far"""
    bl_idname = "splatbridge.cancel_job"
    bl_label = "Cancel Job"

    job_id: StringProperty()

    def execute(self, context):
        try:
            cancel_train(context, self.job_id)
        except Exception as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


CLASSES = (SplatBridgeTrainSettings, SPLATBRIDGE_OT_train, SPLATBRIDGE_OT_train_dataset,
           SPLATBRIDGE_OT_cancel_job)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.splatbridge_train = PointerProperty(type=SplatBridgeTrainSettings)
    connection.register_job_handler(KIND, apply_train_update, apply_train_finished)


def unregister() -> None:
    connection.unregister_job_handler(KIND)
    del bpy.types.Scene.splatbridge_train
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
