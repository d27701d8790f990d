"""Split a trained scene into its objects, and select splats from 2D masks: the add-on half of the
``segment`` job (``shared/jobkinds/segment.py``, ``backend/segment.py``: FlashSplat's assignment).

**Split by Object.** Training from a Blender scene with "Object Index Pass" on renders, per view, which
target object each pixel shows (``capture.render_object_index``). The label images (with the views'
cameras) wait beside the job (a file in the temporary folder, named in
``scene["splatbridge_train_jobs"]``); when the training result arrives, ``after_training`` submits a
``segment`` job with the trained splats (world space) and those masks. Its result, one label per splat,
is stored on the splat object (``splat_state``: attribute ``splatbridge:label``, names in
``splatbridge_label_names``, saved with the .blend). "Split by Object" (:func:`split_by_object`) then makes
one splat object per source object, named "<source> splats" (the splats no object claimed go to
"<object> rest"); the source is hidden, not deleted. Every splat lands in exactly one new object with
its values unchanged (bit for bit) and its state.

**Select from Masks** (captured scenes). The user paints a mask in 2-3 views: an image datablock per view
with the custom property ``splatbridge_camera`` naming the camera it was painted for ("New Mask Image"
makes one of the render size; paint white where the object is, in the Image Editor's Paint mode or
from a script). Painted pixels (alpha and brightness above one half) are label 1, the rest background.
:func:`select_from_masks` submits a ``segment`` job; its result selects the splats labelled 1 (with the
selection mode of "Select by"). This path is the headless-testable one: masks from image datablocks.

Plain functions and operators, as elsewhere: ``submit_*`` sends, ``connection.poll_once`` brings the
result to ``apply_segment_finished``.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from . import job_kinds, splat_object, splat_state
from .shared import edit_ops

try:
    import bpy
    from bpy.props import EnumProperty, StringProperty
except ImportError:  # pragma: no cover
    bpy = None

KIND = "segment"
PROP_MASK_CAMERA = "splatbridge_camera"


def _labels_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), "splatbridge_labels")
    os.makedirs(path, exist_ok=True)
    return path


# --------------------------------------------------------------------------- after training

def remember_capture(scene, job_id: str, capture) -> None:
    """Keep a capture's object-index labels and cameras for the training job ``job_id`` (a file in the
    temporary folder; its path and the label names in the scene's train job data)."""
    if getattr(capture, "labels", None) is None or not capture.label_names:
        return
    path = os.path.join(_labels_dir(), f"{job_id}.npz")
    np.savez_compressed(path, labels=capture.labels, viewmats=capture.viewmats, Ks=capture.Ks)
    job_kinds.set_job_data(scene, "train", job_id, {"labels_file": path, "label_names": list(capture.label_names)})


def forget_capture(scene, job_id: str) -> None:
    """Drop what ``remember_capture`` kept for a training job that ended without splats."""
    info = job_kinds.job_data(scene, "train", job_id)
    if info is None:
        return
    job_kinds.pop_job_data(scene, "train", job_id)
    path = str(info.get("labels_file", ""))
    if os.path.isfile(path):
        os.remove(path)


def after_training(context, rec, obj) -> object | None:
    """When the training job ``rec`` came from a capture with an object-index pass: submit the
    ``segment`` job that labels ``obj``'s splats by source object. Returns its record (or None)."""
    info = job_kinds.job_data(context.scene, "train", rec.job_id)
    if info is None or obj is None:
        return None
    job_kinds.pop_job_data(context.scene, "train", rec.job_id)
    path = str(info.get("labels_file", ""))
    if not os.path.isfile(path):
        rec.message += " (object masks gone: Split by Object needs a new training run)"
        return None
    with np.load(path) as f:
        labels, viewmats, Ks = f["labels"], f["viewmats"], f["Ks"]
    os.remove(path)
    names = {i + 1: str(n) for i, n in enumerate(list(info.get("label_names", [])))}
    return submit_segment(context, obj, labels, viewmats, Ks, purpose="labels", names=names)


# --------------------------------------------------------------------------- the segment job

def _payload(sub: job_kinds.Submission) -> dict:
    return sub.source["payload"]


def _submitted(sub: job_kinds.Submission, rec) -> None:
    src = sub.source
    job_kinds.set_job_data(sub.context.scene, KIND, rec.job_id, {
        "object": src["object"], "count": src["count"], "purpose": src["purpose"],
        "names": {str(k): v for k, v in (src.get("names") or {}).items()}, "mode": src.get("mode", "SET")})


def submit_segment(context, obj, labels: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, purpose: str,
                   names: dict[int, str] | None = None, mode: str = "SET", params: dict | None = None):
    """Submit a ``segment`` job labelling the splats of ``obj`` (sent in world space) from label images
    ``labels`` [V,H,W] seen by cameras ``viewmats``/``Ks``. ``purpose`` "labels": the result is stored on
    the object (Split by Object); "select": label 1 becomes the selection (``mode``)."""
    if purpose not in ("labels", "select"):
        raise ValueError(f"purpose must be 'labels' or 'select', got {purpose!r}")
    splats = splat_object.read_splats_from_object(obj)
    if len(splats) == 0:
        raise ValueError(f"{obj.name!r} has no splats to label")
    labels = np.ascontiguousarray(labels)
    if labels.dtype not in (np.uint8, np.int32):
        labels = labels.astype(np.int32)
    payload = {"splats": splats.to_arrays(), "labels": labels,
               "viewmats": np.asarray(viewmats, np.float32), "Ks": np.asarray(Ks, np.float32)}
    source = {"object": obj.name, "count": len(splats), "purpose": purpose, "names": names or {},
              "mode": mode, "payload": payload}
    return job_kinds.submit(context, UI, None, params, name=obj.name, source=source)


def apply_segment_finished(context, rec, job) -> None:
    """The segment result: labels stored on the object, or the selection made."""
    scene = context.scene
    info = job_kinds.job_data(scene, KIND, rec.job_id)
    job_kinds.pop_job_data(scene, KIND, rec.job_id)
    if job.error is not None:
        rec.message = f"{job.error[0]}: {job.error[1]}"
        return
    if info is None:
        rec.message = "segment result for an unknown object (submitted elsewhere)"
        return
    obj = bpy.data.objects.get(info["object"])
    labels = (job.meta or {}).get("labels")
    if obj is None or not splat_object.is_splat_object(obj):
        rec.message = f"the splat object {info['object']!r} is gone"
        return
    if labels is None:
        rec.message = "the segment result has no labels"
        return
    labels = np.asarray(labels, np.int32)
    if len(labels) != splat_object.splat_count(obj) or len(labels) != int(info["count"]):
        rec.message = (f"{obj.name!r} has {splat_object.splat_count(obj)} splats now, the labels are for "
                       f"{len(labels)}: run it again")
        return
    with splat_state.object_mode(obj):
        if info["purpose"] == "labels":
            names = {int(k): str(v) for k, v in dict(info.get("names") or {}).items()}
            splat_state.set_labels(obj, labels, names)
            counts = {names.get(int(k), k): c for k, c in (job.meta.get("label_counts") or {}).items()}
            rec.message = f"labelled by object: {counts}"
        else:
            from .ops_select import apply
            out = apply(obj, labels == 1, str(info.get("mode", "SET")))
            rec.message = f"{int(out.sum())} splats selected from the masks"


def _ignore_update(context, rec, job) -> None:
    """A segment job has no previews."""


# --------------------------------------------------------------------------- Split by Object

def split_by_object(context, obj, hide_source: bool = True) -> list:
    """One new splat object per label of ``obj`` (its ``splatbridge:label`` attribute, from the segment
    job): "<source object> splats" for labels 1..L, "<obj> rest" for the splats no object claimed (0 and
    -1). Same world matrix, representation and collections as ``obj``; values and state unchanged.
    ``obj`` is hidden (viewport and render). Returns the new objects in label order."""
    from .ops_splat_edit import _new_like, read
    labels = splat_state.get_labels(obj)
    if labels is None:
        raise ValueError(f"{obj.name!r} has no object labels: train it from a Blender scene with Object Index "
                         "Pass on (or select from masks and Separate)")
    splats, state = read(obj)
    names = splat_state.get_label_names(obj)
    merged = np.where(labels >= 1, labels, 0).astype(np.int32)
    parts = edit_ops.split_by_labels(splats, merged)
    out = []
    for label, part in parts.items():
        mask = merged == label
        st = state.subset(mask)
        st.selected[:] = False
        name = f"{names.get(label, f'{obj.name} {label}')} splats" if label >= 1 else f"{obj.name} rest"
        new = _new_like(context, obj, part, st, name)
        new["splatbridge_source_object"] = names.get(label, "") if label >= 1 else ""
        out.append(new)
    if hide_source:
        obj.hide_set(True)
        obj.hide_render = True
    return out


# --------------------------------------------------------------------------- masks from images

def new_mask_image(context, camera, width: int | None = None, height: int | None = None):
    """A transparent black image "Mask <camera>" of the render size (or ``width`` x ``height``) tagged
    with the camera, to paint the object's mask on (white where the object is)."""
    r = context.scene.render
    w = int(width or r.resolution_x * r.resolution_percentage / 100)
    h = int(height or r.resolution_y * r.resolution_percentage / 100)
    img = bpy.data.images.new(f"Mask {camera.name}", w, h, alpha=True)
    img.pixels.foreach_set(np.zeros(w * h * 4, np.float32))
    img[PROP_MASK_CAMERA] = camera.name
    return img


def mask_images(context) -> list:
    """The images tagged as masks whose camera still exists."""
    return [im for im in bpy.data.images if im.get(PROP_MASK_CAMERA) in context.scene.objects]


def masks_from_images(context, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels u8[V,H,W]: 1 where painted, viewmats [V,4,4], Ks [V,3,3]) from mask images (each tagged
    with its camera; all the same size). Painted: alpha > 0.5 and brightest channel > 0.5."""
    from .capture import blender_camera
    from .shared.cameras import stack_cameras
    if not images:
        raise ValueError("no mask images: make one per view with New Mask Image and paint the object white")
    sizes = {tuple(im.size) for im in images}
    if len(sizes) != 1:
        raise ValueError(f"mask images differ in size ({sorted(sizes)}); make them all at the render size")
    w, h = sizes.pop()
    labels, cams = np.zeros((len(images), h, w), np.uint8), []
    for i, im in enumerate(images):
        cam = context.scene.objects.get(im.get(PROP_MASK_CAMERA, ""))
        if cam is None or cam.type != "CAMERA":
            raise ValueError(f"mask image {im.name!r} names no camera of this scene "
                             f"({PROP_MASK_CAMERA}={im.get(PROP_MASK_CAMERA)!r})")
        px = np.empty(w * h * 4, np.float32)
        im.pixels.foreach_get(px)
        px = px.reshape(h, w, 4)[::-1]                      # Blender's rows start at the bottom
        labels[i] = (px[..., 3] > 0.5) & (px[..., :3].max(axis=-1) > 0.5)
        cams.append(blender_camera(context.scene, cam, w, h))
    if not labels.any():
        raise ValueError("the mask images are empty: paint the object white in at least one view")
    st = stack_cameras(cams)
    return labels, st["viewmats"], st["Ks"]


def select_from_masks(context, obj, images=None, mode: str = "SET"):
    """Submit the segment job that selects the splats of ``obj`` painted in the mask images (default:
    every tagged mask image); returns the job's record."""
    labels, viewmats, Ks = masks_from_images(context, mask_images(context) if images is None else list(images))
    return submit_segment(context, obj, labels, viewmats, Ks, purpose="select", mode=mode)


# --------------------------------------------------------------------------- operators

_active_splat = splat_state.active_splat


if bpy is not None:
    class SPLATBRIDGE_OT_split_by_object(bpy.types.Operator):
        """Make one splat object per source object of the active trained splat object (labels from the
        object-index pass); the original is hidden"""
        bl_idname = "splatbridge.split_by_object"
        bl_label = "Split by Object"
        bl_options = {"REGISTER", "UNDO"}

        @classmethod
        def poll(cls, context):
            obj = _active_splat(context)
            if obj is None or splat_state.get_labels(obj) is None:
                cls.poll_message_set("The active splat object has no object labels (train from the scene "
                                     "with Object Index Pass on)")
                return False
            return True

        def execute(self, context):
            obj = _active_splat(context)
            try:
                with splat_state.object_mode(obj):
                    new = split_by_object(context, obj)
            except ValueError as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            self.report({"INFO"}, f"Split {obj.name!r} into {', '.join(o.name for o in new)}")
            return {"FINISHED"}

    class SPLATBRIDGE_OT_new_mask_image(bpy.types.Operator):
        """Make an empty mask image for the active (or scene) camera: paint the object white on it"""
        bl_idname = "splatbridge.new_mask_image"
        bl_label = "New Mask Image"
        bl_options = {"REGISTER", "UNDO"}

        camera: StringProperty(name="Camera", description="Camera the mask is painted for (default: the "
                                                          "active object if a camera, else the scene camera)")

        def execute(self, context):
            cam = context.scene.objects.get(self.camera) if self.camera else None
            if cam is None:
                active = getattr(context, "active_object", None)
                cam = active if active is not None and active.type == "CAMERA" else context.scene.camera
            if cam is None or cam.type != "CAMERA":
                self.report({"ERROR"}, "choose a camera for the mask")
                return {"CANCELLED"}
            img = new_mask_image(context, cam)
            self.report({"INFO"}, f"Made {img.name!r}: paint the object white in the Image Editor")
            return {"FINISHED"}

    class SPLATBRIDGE_OT_select_from_masks(bpy.types.Operator):
        """Select the splats of the active splat object that the painted masks show (2-3 views are enough),
        on the backend (segment job)"""
        bl_idname = "splatbridge.select_from_masks"
        bl_label = "Select from Masks"

        mode: EnumProperty(name="Mode", default="SET", items=[
            ("SET", "Set", ""), ("ADD", "Add", ""), ("SUBTRACT", "Subtract", ""), ("INTERSECT", "Intersect", "")])

        @classmethod
        def poll(cls, context):
            return _active_splat(context) is not None

        def execute(self, context):
            obj = _active_splat(context)
            try:
                rec = select_from_masks(context, obj, mode=self.mode)
            except Exception as exc:
                self.report({"ERROR"}, f"Select from Masks: {exc}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"Submitted segment job {rec.job_id} for {obj.name!r}")
            return {"FINISHED"}


UI = job_kinds.KindUI(
    KIND, payload=_payload, submitted=_submitted, record_label=lambda sub, target: f"Segment {sub.source['object']}",
    on_update=_ignore_update, on_finished=apply_segment_finished, operator=False, panel=False,
    classes=() if bpy is None else (SPLATBRIDGE_OT_split_by_object, SPLATBRIDGE_OT_new_mask_image,
                                    SPLATBRIDGE_OT_select_from_masks))

register, unregister = job_kinds.kind_registration(UI)
