"""Photos or a video to splats in Blender: File > Import > "Photos or Video as Splats" and the
"Capture" panel, on the ``reconstruct`` job kind (``shared/jobkinds/reconstruct.py``).

Stages, each a plain function (the modal operator, ``execute`` without a window, and tests drive
the same code; headless bpy runs no timers):

1. ``capture_inputs(paths)`` -> ``CaptureInputs``: photos (JPEG/PNG, at least 3) or one video, or a
   ``ValueError`` the user can act on;
2. ``CaptureRun(context, inputs)``: ``step()`` until it returns the job record: the files are
   uploaded (their encoded bytes in chunks, ``BackendClient.upload``; resumable) unless the backend
   is on this machine and reads the path itself (setting ``transfer``), then the job is submitted
   naming the upload (or the path);
3. ``connection.poll_once`` hands progress to ``apply_update`` (live preview splats under the
   capture's empty) and the end to ``apply_finished``: everything under one empty (``build_capture``):
   the splat object, the solved cameras, the sparse points (optional), and for a video one animated
   camera (a key per used frame at the video's frame rate, the scene's frame range and fps set, the
   video as its background: a MovieClip), so scrubbing shows the splats over the footage. Images that
   did not register are named in the job's message.

World: the backend's solved world (Z up, centred, ``scene_size`` m across) is the empty's local space;
the empty starts at the identity, so moving, rotating or scaling it moves the whole capture.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import connection, job_kinds, job_objects
from .shared.cameras import BLENDER_TO_OPENCV, Camera, camera_to_blender
from .shared.jobkinds.reconstruct import PHOTO_EXTENSIONS, VIDEO_EXTENSIONS
from .shared.splats import Splats

KIND = "reconstruct"
MIN_PHOTOS = 3
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
UPLOAD_CHUNK_BYTES = 4 << 20

EXTRA = {
    "input_path": StringProperty(name="Photos or Video", subtype="FILE_PATH", default="",
                                 description="A video file, or a folder of photos (JPEG/PNG)"),
    "transfer": EnumProperty(name="Send Files", default="AUTO", items=[
        ("AUTO", "Automatic", "Upload to a backend on another machine; a local backend reads the files itself"),
        ("UPLOAD", "Upload", "Upload the files (resumable, in chunks)"),
        ("PATH", "Path", "The backend reads the files from this path (it shares this machine's disk)")]),
    "import_points": BoolProperty(name="Sparse Points", default=True,
                                  description="Also add the solved sparse points as a point cloud"),
    "output_name": StringProperty(name="Name", default="",
                                  description="Name of the capture (empty: the video's or folder's name)"),
}


# --------------------------------------------------------------------------- stage 1: inputs

@dataclass
class CaptureInputs:
    kind: str                 # "photos" or "video"
    paths: list[str]          # the photos, or the one video

    @property
    def name(self) -> str:
        if self.kind == "video":
            return os.path.splitext(os.path.basename(self.paths[0]))[0]
        return os.path.basename(os.path.dirname(self.paths[0])) or "Photos"


def capture_inputs(paths: list[str]) -> CaptureInputs:
    """Photos (a folder, or picked files) or one video; a ``ValueError`` naming what is wrong."""
    files: list[str] = []
    for p in paths:
        p = bpy.path.abspath(p)
        if os.path.isdir(p):
            files += sorted(os.path.join(p, n) for n in os.listdir(p)
                            if n.lower().endswith(PHOTO_EXTENSIONS + VIDEO_EXTENSIONS))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    if not files:
        raise ValueError("pick photos (JPEG/PNG) or a video")
    other = [os.path.basename(f) for f in files if not f.lower().endswith(PHOTO_EXTENSIONS + VIDEO_EXTENSIONS)]
    if other:
        raise ValueError(f"not a photo (JPEG/PNG) or a video ({', '.join(VIDEO_EXTENSIONS)}): {', '.join(other[:5])}")
    videos = [f for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
    if videos:
        if len(files) > 1:
            raise ValueError("pick one video, or photos only (not both, not several videos)")
        return CaptureInputs("video", videos)
    if len(files) < MIN_PHOTOS:
        raise ValueError(f"too few photos: {len(files)} picked, at least {MIN_PHOTOS} are needed "
                         "(30 or more, all around the subject, work best)")
    names = [os.path.basename(f).lower() for f in files]
    if len(set(names)) != len(names):
        raise ValueError("photos with the same file name in different folders: rename them")
    return CaptureInputs("photos", files)


def get_settings(context):
    return job_kinds.settings(context, UI)


def backend_is_local(address: str) -> bool:
    """Whether the backend at ``address`` shares this machine (and its disk)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return address.startswith(("ipc://", "inproc://")) or host in LOCAL_HOSTS


# --------------------------------------------------------------------------- stage 2: upload + submit

class CaptureRun:
    """One import on its way to the backend: ``step()`` (never blocks) uploads, then submits; it
    returns the job record once submitted (None before). ``cancel()`` stops an upload (the chunks the
    backend stored stay; the same files upload again from where they stopped)."""

    def __init__(self, context, inputs: CaptureInputs, settings=None):
        self.context = context
        self.inputs = inputs
        self.settings = settings or get_settings(context)
        self.name = self.settings.output_name or inputs.name
        self.client = connection.get_client(context)
        self.record = None
        self.upload_id = None
        mode = self.settings.transfer
        self.path = local_source(inputs)
        if mode == "UPLOAD" or self.path is None or (mode == "AUTO" and not backend_is_local(self.client.address)):
            self.upload_id = self.client.upload(inputs.paths, upload_id=_resume_id(context, inputs),
                                                chunk_size=UPLOAD_CHUNK_BYTES)
            context.scene["splatbridge_capture_upload"] = {"id": self.upload_id, "paths": list(inputs.paths)}

    @property
    def upload(self):
        return self.client.uploads.get(self.upload_id) if self.upload_id else None

    @property
    def progress(self) -> float:
        up = self.upload
        return 1.0 if up is None else up.fraction

    def status_text(self) -> str:
        up = self.upload
        if self.record is not None or up is None:
            return f"Capture {self.name}: submitting"
        mb = 1 << 20
        return (f"Capture {self.name}: uploading {len(up.files)} file(s), {up.received / mb:.1f}/"
                f"{up.total / mb:.1f} MB")

    def step(self):
        if self.record is not None:
            return self.record
        up = self.upload
        if up is not None:
            connection.poll_once(self.context)
            if up.state == "failed":
                raise RuntimeError(f"upload failed: {up.error[1] if up.error else 'unknown error'}")
            if up.state != "complete":
                return None
            params = {"upload": self.upload_id}
        else:
            params = {"source": self.path}
        self.record = submit(self.context, self.inputs, params, self.settings)
        self.context.scene.pop("splatbridge_capture_upload", None)
        return self.record

    def run_all(self, timeout_s: float = 3600.0):
        """Headless: step until submitted (blocking)."""
        deadline = time.monotonic() + timeout_s
        while self.step() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"upload not finished within {timeout_s:g} s")
            time.sleep(0.005)
        return self.record

    def cancel(self) -> None:
        if self.upload_id:
            self.client.uploads.pop(self.upload_id, None)


def local_source(inputs: CaptureInputs) -> str | None:
    """The path a backend on this machine reads: the video, or the photos' folder when the photos are
    all of that folder's photos (else None: a subset travels as an upload)."""
    if inputs.kind == "video":
        return inputs.paths[0]
    folder = os.path.dirname(inputs.paths[0])
    in_folder = {os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(PHOTO_EXTENSIONS)}
    return folder if in_folder == set(inputs.paths) else None


def _resume_id(context, inputs: CaptureInputs) -> str | None:
    """The id of an unfinished upload of the same files (Blender closed mid-upload): resumed."""
    last = context.scene.get("splatbridge_capture_upload")
    if last and list(last.get("paths", [])) == list(inputs.paths):
        return str(last["id"])
    return None


def submit(context, inputs: CaptureInputs, params: dict, settings=None):
    """Submit the reconstruct job (``params``: ``upload`` or ``source``); returns its record. The
    splat object is "<name> Splats", the empty "<name>" (``output_name``, else the input's name)."""
    return job_kinds.submit(context, UI, settings, params, source=inputs)


def _prepare(sub: job_kinds.Submission) -> None:
    for key in ("model", "from_job"):          # a capture always solves its own inputs
        sub.params.pop(key, None)
    if "upload" in sub.params:
        sub.params.pop("source", None)


def _submitted(sub: job_kinds.Submission, rec) -> None:
    inputs: CaptureInputs = sub.source
    job_kinds.set_job_data(sub.context.scene, KIND, rec.job_id, {
        "kind": inputs.kind, "paths": list(inputs.paths), "name": sub.group.output_name or inputs.name,
        "import_points": bool(sub.group.import_points), "root": ""})


# --------------------------------------------------------------------------- stage 3: the result

def _root(context, rec):
    """The capture's empty (made on first use; its name kept with the job)."""
    data = job_kinds.job_data(context.scene, KIND, rec.job_id) or {}
    root = bpy.data.objects.get(data.get("root") or "")
    if root is not None:
        return root
    root = bpy.data.objects.new(job_objects.unique_object_name(data.get("name") or rec.target), None)
    root.empty_display_type = "ARROWS"
    context.scene.collection.objects.link(root)
    data["root"] = root.name
    job_kinds.set_job_data(context.scene, KIND, rec.job_id, data)
    return root


def _parent(obj, root) -> None:
    obj.parent = root
    obj.matrix_parent_inverse.identity()       # local space = the solved world


def _put(context, rec, splats: Splats):
    obj = job_objects.put_splats(context, rec, splats)
    _parent(obj, _root(context, rec))
    return obj


def apply_update(context, rec, job) -> None:
    """Progress: a new preview replaces the splats under the capture's empty (live preview)."""
    job_objects.apply_preview(context, rec, job, put=lambda s: _put(context, rec, s))


def apply_finished(context, rec, job) -> None:
    """The end: the splats, cameras, points (and the video camera) under one empty; or the error."""
    obj = job_objects.apply_result(context, rec, job, put=lambda s: _put(context, rec, s))
    info = (job.meta or {}).get("reconstruct") or {}
    if obj is None or not info:
        job_kinds.pop_job_data(context.scene, KIND, rec.job_id)
        return
    data = job_kinds.job_data(context.scene, KIND, rec.job_id) or {}
    build_capture(context, _root(context, rec), info, data)
    unreg = list(info.get("unregistered") or [])
    rec.message += f", {info.get('registered', 0)} images registered"
    if unreg:
        shown = ", ".join(unreg[:8]) + (f" and {len(unreg) - 8} more" if len(unreg) > 8 else "")
        rec.message += f"; {len(unreg)} did not register: {shown}"
    m = job.result_metrics or {}
    if "eval_psnr" in m:
        rec.message += f", eval PSNR {m['eval_psnr']:.2f} dB"
    job_kinds.pop_job_data(context.scene, KIND, rec.job_id)


def frame_camera(frame: dict, cams: dict) -> Camera:
    """A solved frame (transforms.json layout: Blender camera-to-world, pinhole in pixels) as a
    ``Camera``."""
    c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
    g = lambda k: float(frame.get(k, cams.get(k)))        # noqa: E731  (per frame, else the top level)
    return Camera(BLENDER_TO_OPENCV @ np.linalg.inv(c2w), g("fl_x"), g("fl_y"), g("cx"), g("cy"),
                  int(g("w")), int(g("h")))


def scaled_camera(cam: Camera, width: int, height: int) -> Camera:
    """``cam`` for an image of ``width`` x ``height`` (the footage's size, when the solve scaled it)."""
    sx, sy = width / cam.width, height / cam.height
    return Camera(cam.world_to_camera, cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy, width, height)


def _set_camera_data(cam_data, cam: Camera) -> Any:
    p = camera_to_blender(cam)
    cam_data.lens, cam_data.sensor_width, cam_data.sensor_height = p.lens, p.sensor_width, p.sensor_height
    cam_data.sensor_fit, cam_data.shift_x, cam_data.shift_y = p.sensor_fit, p.shift_x, p.shift_y
    return p


def _matrix(m: np.ndarray):
    from mathutils import Matrix
    return Matrix(np.asarray(m, dtype=np.float64).tolist())


def build_capture(context, root, info: dict, data: dict) -> dict:
    """The cameras, points and (video) animated camera under ``root`` from ``meta.reconstruct``;
    returns the objects made by role."""
    scene = context.scene
    cams = info.get("cameras") or {}
    frames = list(cams.get("frames") or [])
    base = root.name
    made: dict[str, Any] = {"cameras": []}
    group = bpy.data.objects.new(f"{base} Cameras", None)
    scene.collection.objects.link(group)
    _parent(group, root)
    made["camera_group"] = group
    size = 0.05 * float(np.ptp([np.asarray(f["transform_matrix"])[:3, 3] for f in frames], axis=0).max()) \
        if len(frames) > 1 else 0.1
    for f in frames:
        cam = frame_camera(f, cams)
        label = os.path.basename(str(f.get("source") or f.get("file_path") or "view"))
        obj = bpy.data.objects.new(f"{base} {label}", bpy.data.cameras.new(f"{base} {label}"))
        _set_camera_data(obj.data, cam)
        obj.data.display_size = max(size, 1e-3)
        obj.matrix_basis = _matrix(f["transform_matrix"])
        scene.collection.objects.link(obj)
        _parent(obj, group)
        made["cameras"].append(obj)
    pts = info.get("points") or {}
    if data.get("import_points", True) and pts.get("xyz"):
        made["points"] = _points_object(scene, f"{base} Sparse Points", pts)
        _parent(made["points"], root)
    if data.get("kind") == "video" and frames and all("frame_index" in f for f in frames):
        made["video_camera"] = _video_camera(context, root, f"{base} Video Camera", frames, cams,
                                             float(cams.get("fps") or info.get("fps") or 24.0),
                                             (data.get("paths") or [None])[0])
    return made


def _points_object(scene, name: str, pts: dict):
    xyz = np.asarray(pts["xyz"], dtype=np.float32).reshape(-1, 3)
    rgb = np.asarray(pts.get("rgb") or np.full(xyz.size, 200), dtype=np.float32).reshape(-1, 3) / 255.0
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(xyz))
    mesh.vertices.foreach_set("co", xyz.ravel())
    attr = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", np.concatenate([rgb, np.ones((len(rgb), 1), np.float32)], axis=1).ravel())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def video_keys(frames: list[dict]) -> list[tuple[int, np.ndarray]]:
    """(scene frame, camera-to-world) per used video frame, in frame order: video frame i is scene
    frame i + 1 (the MovieClip's first frame is scene frame 1)."""
    return sorted((int(f["frame_index"]) + 1, np.asarray(f["transform_matrix"], dtype=np.float64)) for f in frames)


def _fcurves(obj) -> list:
    """The F-curves of the object's action (Blender 5's layered actions: its slot's channel bag)."""
    action = obj.animation_data.action
    try:
        return list(action.fcurves)
    except AttributeError:
        from bpy_extras import anim_utils
        bag = anim_utils.action_get_channelbag_for_slot(action, obj.animation_data.action_slot)
        return list(bag.fcurves) if bag is not None else []


def _video_camera(context, root, name: str, frames: list[dict], cams: dict, fps: float, video_path: str | None):
    scene = context.scene
    keys = video_keys(frames)
    cam = frame_camera(frames[0], cams)
    clip = None
    if video_path and os.path.isfile(video_path):
        clip = bpy.data.movieclips.load(video_path, check_existing=True)
        clip.frame_start = 1
        if clip.size[0] and clip.size[1]:
            cam = scaled_camera(cam, int(clip.size[0]), int(clip.size[1]))
    obj = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    p = _set_camera_data(obj.data, cam)
    scene.collection.objects.link(obj)
    _parent(obj, root)
    obj.rotation_mode = "QUATERNION"
    prev = None
    for frame, c2w in keys:
        obj.matrix_basis = _matrix(c2w)
        q = obj.rotation_quaternion.copy()
        if prev is not None and q.dot(prev) < 0:      # the same rotation, on the near side: no spin
            q.negate()
        obj.rotation_quaternion = q
        prev = q
        obj.keyframe_insert("location", frame=frame)
        obj.keyframe_insert("rotation_quaternion", frame=frame)
    for fc in _fcurves(obj):                         # between keys: straight to the next solved pose
        for k in fc.keyframe_points:
            k.interpolation = "LINEAR"
    scene.render.resolution_x, scene.render.resolution_y = p.resolution_x, p.resolution_y
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = p.pixel_aspect_x, p.pixel_aspect_y
    rate = max(1, round(fps))
    scene.render.fps, scene.render.fps_base = rate, rate / fps
    scene.frame_start, scene.frame_end = keys[0][0], keys[-1][0]
    scene.camera = obj
    if clip is not None:
        obj.data.show_background_images = True
        bg = obj.data.background_images.new()
        bg.source = "MOVIE_CLIP"
        bg.clip = clip
        bg.use_camera_clip = False
        bg.alpha = 1.0
        scene.active_clip = clip
    scene.frame_set(keys[0][0])
    return obj


# --------------------------------------------------------------------------- operators

class _CaptureModal(job_objects.JobModal):
    """Upload (progress bar, status bar), submit, follow the job; Esc cancels either phase."""

    _run: CaptureRun | None = None
    _phase: str = ""

    def _start(self, context, paths: list[str]) -> set:
        try:
            self._run = CaptureRun(context, capture_inputs(paths))
        except Exception as exc:
            self.report({"ERROR"}, f"Photos or Video as Splats: {exc}")
            return {"CANCELLED"}
        if bpy.app.background or context.window is None:     # headless, scripts: upload, submit, return
            try:
                rec = self._run.run_all()
            except Exception as exc:
                self.report({"ERROR"}, f"Photos or Video as Splats: {exc}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"Submitted reconstruct job {rec.job_id} ({rec.target})")
            return {"FINISHED"}
        self._phase, self._cancel_at = "upload", 0.0
        return self._begin(context, 0.05)

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            if self._phase == "upload":
                self._run.cancel()
                self.report({"WARNING"}, "Upload cancelled (what arrived stays on the backend; importing "
                                         "the same files again resumes it)")
                return self._finish(context, {"CANCELLED"})
            return self._request_cancel(context, "Photos or Video as Splats") or {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            if self._phase == "upload":
                rec = self._run.step()
                context.window_manager.progress_update(int(1000 * self._run.progress))
                context.workspace.status_text_set(self._run.status_text() + " (Esc to cancel)")
                if rec is not None:
                    self._job_id, self._phase = rec.job_id, "job"
                    self._set_interval(context, job_objects.FOLLOW_INTERVAL_S)
                return {"RUNNING_MODAL"}
            return self._follow_job(context) or {"RUNNING_MODAL"}
        except Exception as exc:
            self.report({"ERROR"}, f"Photos or Video as Splats: {exc}")
            return self._finish(context, {"CANCELLED"})


class IMPORT_SCENE_OT_splatbridge_capture(_CaptureModal, bpy.types.Operator, ImportHelper):
    """Solve the cameras of photos or a video on the backend and train splats: the splats, the solved
    cameras and (video) an animated camera over the footage, under one empty (Esc cancels)"""
    bl_idname = "import_scene.splatbridge_capture"
    bl_label = "Photos or Video as Splats"

    filename_ext = ""
    filter_glob: StringProperty(default=";".join("*" + e for e in PHOTO_EXTENSIONS + VIDEO_EXTENSIONS),
                                options={"HIDDEN"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})

    def draw(self, context):
        draw_settings(self.layout, context, with_input=False)

    def execute(self, context):
        names = [f.name for f in self.files if f.name]
        paths = [os.path.join(self.directory, n) for n in names] if names else \
            ([self.filepath] if self.filepath else [])
        return self._start(context, paths)


class SPLATBRIDGE_OT_capture(_CaptureModal, bpy.types.Operator):
    """Solve the cameras of the panel's photos or video on the backend and train splats (Esc cancels)"""
    bl_idname = "splatbridge.capture"
    bl_label = "Photos or Video to Splats"

    def execute(self, context):
        return self._start(context, [get_settings(context).input_path])

    def invoke(self, context, event):
        return self.execute(context)


class SPLATBRIDGE_OT_cancel_capture(job_objects.CancelJob, bpy.types.Operator):
    """Stop a capture's job; the splats trained so far are kept"""
    bl_idname = "splatbridge.cancel_capture"
    bl_label = "Cancel Capture"

    job_id: StringProperty()


DRAWN = ("source", "upload", "model", "from_job")     # the panel picks the input itself


def draw_settings(layout, context, with_input: bool = True) -> None:
    group = get_settings(context)
    if with_input:
        layout.prop(group, "input_path")
    layout.prop(group, "output_name")
    row = layout.row(align=True)
    row.prop(group, "transfer")
    layout.prop(group, "import_points")
    from . import spec_props
    spec_props.draw(layout, group, UI.spec(), skip=DRAWN)


class SPLATBRIDGE_PT_capture(bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_capture"
    bl_label = "Capture"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = job_kinds.CATEGORY
    bl_order = 12

    def draw(self, context):
        draw_settings(self.layout, context)
        self.layout.operator(SPLATBRIDGE_OT_capture.bl_idname, icon="IMPORT")
        job_objects.draw_job_rows(self.layout, context.scene, KIND, SPLATBRIDGE_OT_cancel_capture.bl_idname)


def menu_import(self, context) -> None:
    self.layout.operator(IMPORT_SCENE_OT_splatbridge_capture.bl_idname, text="Photos or Video as Splats")


UI = job_kinds.KindUI(
    KIND, label="Capture", extra=EXTRA, prepare=_prepare, submitted=_submitted,
    target=lambda sub: f"{sub.group.output_name or sub.source.name} Splats",
    on_update=apply_update, on_finished=apply_finished, operator=False, panel=False,
    classes=(IMPORT_SCENE_OT_splatbridge_capture, SPLATBRIDGE_OT_capture, SPLATBRIDGE_OT_cancel_capture,
             SPLATBRIDGE_PT_capture))

_register, _unregister = job_kinds.kind_registration(UI)


def register() -> None:
    _register()
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    _unregister()
