"""Generate a splat asset from a text prompt: the "Generate" panel, its operator and plain functions.

Stages, each a plain function so the modal operator, ``execute`` (no window), tests and the demo all
drive the same code:

1. ``submit_generate(context)`` builds the ``generate`` job (docs/INTERFACES.md) from
   ``scene.splatbridge_generate``; with init "Selected Mesh" it sends area-weighted surface samples of
   the selected meshes (``capture.sample_surface``) as ``points``/``colors``. The 3D cursor's location
   at submit time is remembered: the preview and the final object are placed there.
2. ``connection.poll_once`` hands progress to ``apply_generate_update`` (live preview object) and the
   end to ``apply_generate_finished`` (final object, named after the prompt; a cancelled job still
   yields its partial splats).
3. ``cancel_generate(context, job_id)``.

The backend returns the object centred on its origin (``backend/generate.py``), so placing it is
setting the object's location.
"""
from __future__ import annotations

import re
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import connection

try:  # H5b's splat object module; absent in a partial build
    from . import splat_object
except ImportError:  # pragma: no cover
    splat_object = None

KIND = "generate"
INIT_ITEMS = [
    ("shap-e", "Shap-E", "Start from Shap-E's text-to-3D shape for the prompt"),
    ("mesh", "Selected Mesh", "Start from surface samples of the selected mesh objects"),
    ("sphere", "Sphere", "Start from a grey ball of Gaussians"),
]
NAME_MAX = 48

_placement: dict[str, tuple[float, float, float]] = {}   # job id -> 3D cursor location at submit
_preview_applied: dict[str, int] = {}                     # job id -> id() of the last preview applied


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


def unique_object_name(base: str) -> str:
    """``base`` if no object has it, else ``base.001``, ``base.002``..."""
    if base not in bpy.data.objects:
        return base
    i = 1
    while f"{base}.{i:03d}" in bpy.data.objects:
        i += 1
    return f"{base}.{i:03d}"


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
    _placement[job_id] = tuple(context.scene.cursor.location)
    return connection.track_job(context.scene, job_id, KIND, target, label=f"Generate {target}")


def cancel_generate(context, job_id: str) -> None:
    """Ask the backend to stop; the partial result arrives as a ``cancelled`` result."""
    connection.cancel_job(job_id)
    rec = connection.find_record(context.scene, job_id)
    if rec is not None:
        rec.message = "cancelling..."


def _put_splats(context, rec, splats):
    """Create (at the remembered 3D cursor location) or update the record's splat object."""
    if splat_object is None:
        raise RuntimeError("the splat object module is missing from this build")
    obj = bpy.data.objects.get(rec.target)
    if obj is not None and splat_object.is_splat_object(obj):
        splat_object.update_splat_object(obj, splats)
        return obj
    obj = splat_object.create_splat_object(context, unique_object_name(rec.target), splats)
    obj.location = _placement.get(rec.job_id, tuple(context.scene.cursor.location))
    rec.target = obj.name
    return obj


def apply_generate_update(context, rec, job) -> None:
    """Handler for progress: a new preview replaces the object's contents (live preview)."""
    if job.preview is not None and _preview_applied.get(rec.job_id) != id(job.preview):
        _preview_applied[rec.job_id] = id(job.preview)
        _put_splats(context, rec, job.preview_splats())


def apply_generate_finished(context, rec, job) -> None:
    """Handler for the end: the final (or partial, if cancelled) splats, or the error."""
    _preview_applied.pop(rec.job_id, None)
    if job.result is not None:
        obj = _put_splats(context, rec, job.result_splats())
        obj["sb_job_id"] = rec.job_id
        meta = job.meta or {}
        if "seed" in meta:
            obj["sb_seed"] = int(meta["seed"])
        prompt = (meta.get("settings") or {}).get("prompt")
        if prompt:
            obj["sb_prompt"] = str(prompt)
        rec.message = "cancelled: partial result" if job.state == "cancelled" else "done"
        _placement.pop(rec.job_id, None)
    elif job.error is not None:
        rec.message = f"{job.error[0]}: {job.error[1]}"


def status_text(rec) -> str:
    """'Generate a teapot: step 300/1200, 12k Gaussians, 1m 20s left'."""
    parts = [f"step {rec.step}/{rec.total}" if rec.total else rec.state]
    if rec.num_gaussians:
        n = rec.num_gaussians
        parts.append(f"{n / 1000:.0f}k Gaussians" if n >= 1000 else f"{n:.0f} Gaussians")
    eta = rec.eta_s
    if eta == eta and rec.total and rec.step < rec.total:      # not NaN
        s = max(0, int(round(eta)))
        parts.append((f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s") + " left")
    return f"{rec.label}: " + ", ".join(parts)


# --------------------------------------------------------------------------- operators

class SPLATBRIDGE_OT_generate(bpy.types.Operator):
    """Generate a Gaussian-splat object from the prompt on the backend (Esc cancels)"""
    bl_idname = "splatbridge.generate"
    bl_label = "Generate"

    _timer = None
    _job_id: str = ""
    _cancel_at: float = 0.0

    @classmethod
    def poll(cls, context):
        return bool(get_settings(context).prompt.strip())

    def _submit(self, context):
        try:
            return submit_generate(context)
        except Exception as exc:
            self.report({"ERROR"}, f"Generate: {exc}")
            return None

    def execute(self, context):
        """Headless path: submit and return (the result arrives through ``connection.poll_once``)."""
        rec = self._submit(context)
        if rec is None:
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted generation job {rec.job_id} ({rec.target})")
        return {"FINISHED"}

    def invoke(self, context, event):
        rec = self._submit(context)
        if rec is None:
            return {"CANCELLED"}
        self._job_id, self._cancel_at = rec.job_id, 0.0
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _finish(self, context, result: set) -> set:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return result

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            if not self._cancel_at:
                try:
                    cancel_generate(context, self._job_id)
                except Exception as exc:
                    self.report({"ERROR"}, f"Generate: {exc}")
                    return self._finish(context, {"CANCELLED"})
                self._cancel_at = time.monotonic()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            connection.poll_once(context)
            rec = connection.find_record(context.scene, self._job_id)
            if rec is None:
                return self._finish(context, {"CANCELLED"})
            if rec.total:
                context.window_manager.progress_update(int(1000 * rec.step / rec.total))
            tail = " (cancelling...)" if self._cancel_at else " (Esc to cancel)"
            context.workspace.status_text_set(status_text(rec) + tail)
            if rec.handled:
                level = {"ERROR"} if rec.state == "failed" else {"INFO"}
                self.report(level, f"{rec.label}: {rec.message or rec.state}")
                return self._finish(context, {"FINISHED"})
            if self._cancel_at and time.monotonic() - self._cancel_at > 60.0:
                self.report({"WARNING"}, "The backend did not confirm the cancel within a minute; "
                                         "the job stays in the job list")
                return self._finish(context, {"CANCELLED"})
        except Exception as exc:
            self.report({"ERROR"}, f"Generate: {exc}")
            return self._finish(context, {"CANCELLED"})
        return {"RUNNING_MODAL"}


class SPLATBRIDGE_OT_cancel_generate(bpy.types.Operator):
    """Stop a generation job; it keeps what it has made so far"""
    bl_idname = "splatbridge.cancel_generate"
    bl_label = "Cancel Generation"

    job_id: StringProperty()

    def execute(self, context):
        try:
            cancel_generate(context, self.job_id)
        except Exception as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


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
        for rec in connection.active_records(context.scene):
            if rec.kind != KIND:
                continue
            row = layout.row(align=True)
            row.label(text=status_text(rec), icon="TIME")
            op = row.operator(SPLATBRIDGE_OT_cancel_generate.bl_idname, text="", icon="CANCEL")
            op.job_id = rec.job_id


CLASSES = (SplatBridgeGenerateSettings, SPLATBRIDGE_OT_generate, SPLATBRIDGE_OT_cancel_generate,
           SPLATBRIDGE_PT_generate)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.splatbridge_generate = PointerProperty(type=SplatBridgeGenerateSettings)
    connection.register_job_handler(KIND, apply_generate_update, apply_generate_finished)


def unregister() -> None:
    connection.unregister_job_handler(KIND)
    del bpy.types.Scene.splatbridge_generate
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
