"""Final renders with splats: the scene's own render, composited with the splats by depth.

Splats are drawn by a Python ``gpu`` handler, so Blender's F12 render does not contain them. This
module renders them deliberately, per still or per animation frame:

1. **Scene**: ``bpy.ops.render.render`` with the scene's own engine and settings (Cycles, EEVEE or
   Workbench; compositing and the sequencer as the user set them). Two things are read back from
   the Render Result (the splat objects drawn in step 2 have their ``native_render`` modifier
   off meanwhile and native splat point clouds are hidden from it, so they are not in it twice),
   each through a temporary file (headless Blender
   has no readable Render Result pixels):

   * the *Combined* image **display-referred**, i.e. with the scene's view transform, look,
     exposure and gamma applied, exactly as F12 shows it (an output colour-management override,
     if the user set one, applies instead, as in F12's saved file): ``Image.save_render`` to a
     16-bit RGBA PNG, read back as stored (straight alpha);
   * the *Z pass* of the active view layer (``use_pass_z`` is switched on for the render and put
     back): ``save_render`` to an uncompressed 32-bit multilayer OpenEXR, read by
     :func:`read_exr_channels` (numpy only; Blender 5.0's Python has no OpenImageIO).

2. **Splats**: every splat object the render includes (:func:`render_splat_objects`) drawn by the
   viewport's own code (``viewport.draw.SplatDrawer``, the same shader, sort and display settings)
   from the scene camera (``capture.blender_camera`` -> ``shared.cameras.camera_from_blender``:
   resolution %, pixel aspect, shift and sensor fit included) into a float offscreen whose depth
   buffer was first filled from the Z pass (:func:`window_depth`, same projection as the splat
   draw, near/far = the camera's clip range). Splats test against it (LESS_EQUAL) without writing
   it, so each Gaussian is hidden per pixel by the meshes in front of its centre, as in the
   viewport.

3. **Composite** (:func:`composite_over`), premultiplied: ``out = splat_rgb + (1 - splat_a) *
   scene``. It happens in **display space**: splat colours are display-referred values (they were
   trained on Standard-view sRGB captures), so they go over the view-transformed Combined image,
   not over the scene-linear one. With a transparent film the result keeps the scene's alpha with
   the splats' alpha added (``a = splat_a + (1 - splat_a) * scene_a``).

The result goes into the Image datablock ``RESULT_IMAGE`` (float, premultiplied, colour space
Non-Color because its values are display values already: the Image Editor shows them and
``save_render`` writes them unchanged, in the scene's output format, with straight alpha where the
format wants it).

Z pass convention (measured in bpy 5.0.1 with a tilted plane; see :func:`planar_depth`): Cycles,
EEVEE and Workbench all store the *planar* depth, the distance along the camera's optical axis
(not along each pixel's ray), in scene units; pixels where nothing was hit hold 1e10 (Cycles,
Workbench) or about the camera's clip end (EEVEE).

The bpy-free maths (:func:`read_exr_channels`, :func:`planar_depth`, :func:`window_depth`,
:func:`composite_over`) lives in ``render_math`` and is tested without Blender.

Headless bpy has no event loop, so the animation is a plain object (:class:`AnimationJob`: one
``step()`` per frame, ``cancel()``) that the modal operator's timer, ``execute`` and tests drive.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import bpy
from bpy.props import BoolProperty

from .capture import _Settings, blender_camera
from .modal_progress import CountedWork, ModalProgress
from .render_math import (FinalRenderError, composite_over, planar_depth, read_exr_channels,  # noqa: F401
                          unpremultiply, window_depth)
from .shared.cameras import Camera
from .native_render import MODIFIER_NAME as NATIVE_MODIFIER
from .splat_object import is_splat_object
from .viewport import matrices
from .viewport.draw import SplatDrawer
from .viewport.offscreen import ensure_gpu_module, read_offscreen
from .viewport.settings import display_settings

RESULT_IMAGE = "SplatBridge Render"

NO_SPLATS_WARNING = "no visible splat objects: the result is the plain scene render"


def region_mask(scene, height: int, width: int) -> np.ndarray:
    """f32[H,W] (row 0 at the top): 1 inside the scene's Render Region, 0 outside; all ones
    without a region. Blender's pixel bounds: ``int(border * size)`` per edge, y from the bottom
    (measured against Workbench renders in bpy 5.0.1)."""
    r = scene.render
    mask = np.ones((height, width), np.float32)
    if not r.use_border:
        return mask
    x0, x1 = int(r.border_min_x * width), int(r.border_max_x * width)
    y0, y1 = int(r.border_min_y * height), int(r.border_max_y * height)
    mask[:] = 0.0
    mask[height - y1:height - y0, x0:x1] = 1.0
    return mask


# --------------------------------------------------------------------------- the scene's render

@dataclass
class SceneRender:
    """The scene's own render from its camera. Images are f32, row 0 at the top."""

    rgba: np.ndarray            # [H,W,4] display-referred, straight alpha (alpha 1 unless transparent film)
    depth: np.ndarray           # [H,W] planar depth, scene units, inf where nothing was hit
    camera: Camera              # the scene camera in the shared (OpenCV) convention
    near: float                 # camera clip start / end: the splat draw's projection
    far: float


def scene_camera(scene) -> tuple[object, Camera]:
    """The scene's camera object and its shared-convention camera at render resolution."""
    cam_obj = scene.camera
    if cam_obj is None:
        raise FinalRenderError(f"scene {scene.name!r} has no camera: set the scene camera "
                               f"(Scene Properties > Camera) to render with splats")
    if cam_obj.type != "CAMERA":
        raise FinalRenderError(f"the scene camera {cam_obj.name!r} is a {cam_obj.type.lower()}, "
                               f"not a camera object")
    if cam_obj.data.type != "PERSP":
        raise FinalRenderError(f"camera {cam_obj.name!r} is {cam_obj.data.type}: splats render "
                               f"through perspective cameras only")
    return cam_obj, blender_camera(scene, cam_obj)


def _load_png_display(path: str) -> np.ndarray:
    """A PNG that ``save_render`` wrote, as f32[H,W,4] with the values as stored (display
    values, straight alpha), row 0 at the top."""
    img = bpy.data.images.load(path, check_existing=False)
    try:
        img.colorspace_settings.name = "Non-Color"      # no decoding to scene linear
        img.alpha_mode = "CHANNEL_PACKED"                # no premultiplication
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1].copy()


def _image_format_state(settings) -> list[tuple[str, object]]:
    """The plain properties of ``ImageFormatSettings`` that :func:`render_scene` changes, media
    type and file format first (setting those resets others)."""
    names = ["media_type", "file_format", "color_mode", "color_depth", "exr_codec", "compression"]
    return [(n, getattr(settings, n)) for n in names if hasattr(settings, n)]


def _restore_image_format(settings, state: list[tuple[str, object]]) -> None:
    for name, value in state:
        try:
            setattr(settings, name, value)
        except (AttributeError, TypeError, ValueError):
            pass


def _set_image_format(settings, **values) -> None:
    for name in ("media_type", "file_format", "color_mode", "color_depth", "exr_codec", "compression"):
        if name in values and hasattr(settings, name):
            setattr(settings, name, values[name])


def render_scene(scene, view_layer, workdir: str) -> SceneRender:
    """Render ``scene`` from its camera with its own engine and settings (F12); return the
    display-referred Combined image and the planar depth of ``view_layer``'s Z pass.

    Only ``view_layer`` is rendered (the other layers' "Use for Rendering" is off meanwhile), so
    the Combined image and the Z pass come from the same layer. Every setting changed (the view
    layers' Use for Rendering and this one's Z pass, the output image format used for the
    temporary files in ``workdir``) is put back, also when the render fails."""
    view_layer.update()        # object matrices (camera, splat objects) evaluated for this frame
    cam_obj, camera = scene_camera(scene)
    near, far = float(cam_obj.data.clip_start), float(cam_obj.data.clip_end)
    png, exr = os.path.join(workdir, "combined.png"), os.path.join(workdir, "passes.exr")
    im = scene.render.image_settings
    format_state = _image_format_state(im)
    s = _Settings()
    try:
        s.set(view_layer, "use_pass_z", True)
        # only this view layer: the Combined saved below is the first rendered layer's, and the
        # depth is this layer's Z
        for layer in scene.view_layers:
            s.set(layer, "use", layer == view_layer)
        bpy.ops.render.render(write_still=False, scene=scene.name)
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise FinalRenderError("the render produced no Render Result")
        # display-referred Combined, as F12 saves it: the scene's colour management (or the
        # output's override, left as the user set it: switching it re-copies the scene's)
        _set_image_format(im, media_type="IMAGE", file_format="PNG", color_mode="RGBA",
                          color_depth="16", compression=0)
        result.save_render(png, scene=scene)
        # the passes (linear float): Z of the view layer
        _set_image_format(im, media_type="MULTI_LAYER_IMAGE", file_format="OPEN_EXR_MULTILAYER",
                          color_depth="32", exr_codec="NONE")
        # Blender 5.0.1 fails to write a multilayer EXR when the pixel aspect is not 1:1
        # ("Conflicting attributes ... 'pixelAspectRatio'"); the pixels are rendered already, the
        # aspect here only labels the file
        s.set(scene.render, "pixel_aspect_x", 1.0)
        s.set(scene.render, "pixel_aspect_y", 1.0)
        result.save_render(exr, scene=scene)
    finally:
        _restore_image_format(im, format_state)
        s.restore()
    rgba = _load_png_display(png)
    channels = read_exr_channels(exr)
    key = f"{view_layer.name}.Depth.Z"
    if key not in channels:
        found = sorted(k for k in channels if ".Depth" in k)
        raise FinalRenderError(f"the render has no Z pass for view layer {view_layer.name!r} "
                               f"(depth channels found: {found or 'none'})")
    depth = planar_depth(channels[key])
    if rgba.shape[:2] != (camera.height, camera.width) or depth.shape != rgba.shape[:2]:
        raise FinalRenderError(f"the render is {rgba.shape[1]}x{rgba.shape[0]} px (depth "
                               f"{depth.shape[1]}x{depth.shape[0]}), the camera "
                               f"{camera.width}x{camera.height}: render borders with cropping "
                               f"are not supported")
    return SceneRender(rgba, depth, camera, near, far)


# --------------------------------------------------------------------------- the splats

def render_splat_objects(scene, view_layer) -> list:
    """The splat objects a render of ``view_layer`` includes: in a collection that is neither
    excluded from the view layer nor disabled for renders, not disabled for renders themselves
    (``hide_render``), with Show Splats on (what the viewport draws is what renders)."""
    seen: dict[str, object] = {}

    def walk(layer_collection) -> None:
        if layer_collection.exclude or layer_collection.collection.hide_render:
            return
        for obj in layer_collection.collection.objects:
            if (obj.name not in seen and is_splat_object(obj) and not obj.hide_render
                    and display_settings(obj).show):
                seen[obj.name] = obj
        for child in layer_collection.children:
            walk(child)

    walk(view_layer.layer_collection)
    return list(seen.values())


def _viewport_disabled(view_layer, objects) -> list:
    """``objects`` and the collections holding them (in ``view_layer``) that are disabled in
    viewports (``hide_viewport``): the view layer's depsgraph does not evaluate those objects."""
    names = {o.name for o in objects}
    owners = [o for o in objects if o.hide_viewport]

    def walk(layer_collection) -> None:
        coll = layer_collection.collection
        if layer_collection.exclude or coll.hide_render:
            return
        if coll.hide_viewport and any(o.name in names for o in coll.all_objects):
            owners.append(coll)
        for child in layer_collection.children:
            walk(child)

    for child in view_layer.layer_collection.children:
        walk(child)
    return owners


_DEPTH_FILL_VERT = """
void main() { gl_Position = vec4(pos, 0.0, 1.0); }
"""
_DEPTH_FILL_FRAG = """
void main() {
  gl_FragDepth = texelFetch(depth_tex, ivec2(gl_FragCoord.xy), 0).r;
  FragColor = vec4(0.0);
}
"""
_depth_fill = {}


def _depth_fill_shader():
    """Fullscreen pass: each pixel's depth-buffer value from an R32F texture (row 0 = bottom)."""
    if "shader" not in _depth_fill:
        import gpu
        from gpu_extras.batch import batch_for_shader

        info = gpu.types.GPUShaderCreateInfo()
        info.sampler(0, "FLOAT_2D", "depth_tex")
        info.vertex_in(0, "VEC2", "pos")
        info.fragment_out(0, "VEC4", "FragColor")
        info.depth_write("ANY")
        info.vertex_source(_DEPTH_FILL_VERT)
        info.fragment_source(_DEPTH_FILL_FRAG)
        shader = gpu.shader.create_from_info(info)
        _depth_fill["shader"] = shader
        _depth_fill["batch"] = batch_for_shader(shader, "TRIS", {"pos": [(-1, -1), (3, -1), (-1, 3)]})
    return _depth_fill["shader"], _depth_fill["batch"]


def fill_depth(window: np.ndarray) -> None:
    """Write the depth-buffer values ``window`` (f32[H,W], row 0 at the top) into the bound
    framebuffer's depth (colour untouched). GPU context required."""
    import gpu

    h, w = window.shape
    flat = np.ascontiguousarray(window[::-1], dtype=np.float32).reshape(-1)
    tex = gpu.types.GPUTexture((w, h), format="R32F", data=gpu.types.Buffer("FLOAT", flat.size, flat))
    shader, batch = _depth_fill_shader()
    shader.bind()
    shader.uniform_sampler("depth_tex", tex)
    gpu.state.color_mask_set(False, False, False, False)
    gpu.state.depth_test_set("ALWAYS")
    gpu.state.depth_mask_set(True)
    batch.draw(shader)
    gpu.state.depth_mask_set(False)
    gpu.state.depth_test_set("NONE")
    gpu.state.color_mask_set(True, True, True, True)


def draw_splats(objects, camera: Camera, depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """The splat objects seen from ``camera`` as the viewport draws them, occluded by the scene
    depth ``depth`` (planar, f32[H,W], inf = nothing): premultiplied RGBA f32[H,W,4], row 0 at
    the top, transparent where no splat is."""
    ensure_gpu_module()
    view = matrices.gl_view_matrix(camera)
    proj = matrices.gl_projection_matrix(camera, near, far)
    window = window_depth(depth, proj)
    drawer = SplatDrawer(threaded_sort=False)
    size = (camera.width, camera.height)

    def draw() -> None:
        fill_depth(window)
        drawer.draw_objects(objects, view, proj, size, sync_sort=True)
    try:
        return read_offscreen(draw, *size)
    finally:
        drawer.clear()


# --------------------------------------------------------------------------- result and output

def is_video_output(scene) -> bool:
    """True when the scene's output is a movie file (frames cannot be written one by one)."""
    im = scene.render.image_settings
    return getattr(im, "media_type", "IMAGE") == "VIDEO" or im.file_format in ("FFMPEG", "AVI_JPEG", "AVI_RAW")


def still_output_path(scene) -> str:
    """Where F12's "write still" puts the current frame: the output path with ``#`` replaced by
    the frame number (no number appended without ``#``, unlike animation frames), plus the
    format's extension when File Extensions is on."""
    r = scene.render
    if "#" in os.path.basename(r.filepath):
        return r.frame_path(frame=scene.frame_current)
    path = bpy.path.abspath(r.filepath)
    if r.use_file_extension and not path.lower().endswith(r.file_extension.lower()):
        path += r.file_extension
    return path


def store_result_image(rgba: np.ndarray, name: str = RESULT_IMAGE):
    """Put a premultiplied display-referred RGBA image (f32[H,W,4], row 0 at the top) into the
    float Image datablock ``name`` (created, or resized, as needed; colour space Non-Color)."""
    h, w = rgba.shape[:2]
    img = bpy.data.images.get(name)
    if img is not None and (tuple(img.size) != (w, h) or not img.is_float):
        bpy.data.images.remove(img)
        img = None
    if img is None:
        img = bpy.data.images.new(name, w, h, alpha=True, float_buffer=True)
    if img.colorspace_settings.name != "Non-Color":      # before the pixels: it regenerates them
        img.colorspace_settings.name = "Non-Color"
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], dtype=np.float32).reshape(-1))
    img.update()
    return img


def write_result(image, scene, path: str) -> str:
    """Write ``image`` to ``path`` in the scene's output format and colour depth (its values are
    written unchanged: they are display values already). Returns the absolute path."""
    if is_video_output(scene):
        raise FinalRenderError("the output format is a movie: choose an image format in Output "
                               "Properties to write renders with splats")
    path = bpy.path.abspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    image.save_render(path, scene=scene)
    if not os.path.exists(path):
        raise FinalRenderError(f"could not write {path}")
    return path


def show_result(context, image) -> None:
    """Show ``image`` in an Image Editor (the first one open, else Blender's render view). Does
    nothing without a UI."""
    if bpy.app.background:
        return

    def find():
        for window in context.window_manager.windows:
            for area in window.screen.areas:
                if area.type == "IMAGE_EDITOR":
                    return area
        return None
    area = find()
    if area is None:
        try:
            bpy.ops.render.view_show("INVOKE_DEFAULT")
        except RuntimeError:
            return
        area = find()
    if area is not None:
        area.spaces.active.image = image
        area.tag_redraw()


@dataclass
class StillResult:
    """One final render."""

    rgba: np.ndarray            # composite, premultiplied, display-referred f32[H,W,4], row 0 at the top
    scene: SceneRender
    splats: np.ndarray          # the splat layer alone, premultiplied f32[H,W,4]
    objects: list[str]          # names of the splat objects drawn
    image: object = None        # the Image datablock holding ``rgba``
    path: str = ""              # the file written, if any
    warnings: list[str] = field(default_factory=list)


def render_still(scene, view_layer, write_path: str | None = None) -> StillResult:
    """Render the scene with its splats at the current frame (module docstring); the composite
    goes into the image ``RESULT_IMAGE`` and, if ``write_path`` is given, to that file."""
    scene_camera(scene)                                   # fail before any render time is spent
    if write_path is not None and is_video_output(scene):
        raise FinalRenderError("the output format is a movie: choose an image format in Output "
                               "Properties to write renders with splats")
    objects = render_splat_objects(scene, view_layer)
    workdir = tempfile.mkdtemp(prefix="splatbridge_render_")
    s = _Settings()
    try:
        # objects (or collections) disabled in viewports are not evaluated by the view layer's
        # depsgraph: their matrix_world would be stale. Enabled while their transforms are read.
        for owner in _viewport_disabled(view_layer, objects):
            s.set(owner, "hide_viewport", False)
        # splats drawn here exactly are not also rendered as native-render spheres, nor (native
        # point clouds, Blender 5.3+) by Blender's own splat renderer
        for obj in objects:
            mod = obj.modifiers.get(NATIVE_MODIFIER)
            if mod is not None and mod.show_render:
                s.set(mod, "show_render", False)
            if obj.type == "POINTCLOUD":
                s.set(obj, "hide_render", True)
        base = render_scene(scene, view_layer, workdir)      # updates the view layer
        warnings = []
        if objects:
            splats = draw_splats(objects, base.camera, base.depth, base.near, base.far)
            splats *= region_mask(scene, *splats.shape[:2])[..., None]   # Blender leaves the rest empty
        else:
            splats = np.zeros_like(base.rgba)
            warnings.append(NO_SPLATS_WARNING)
    finally:
        s.restore()
        shutil.rmtree(workdir, ignore_errors=True)
    rgba = composite_over(splats, base.rgba)
    result = StillResult(rgba, base, splats, [o.name for o in objects], warnings=warnings)
    result.image = store_result_image(rgba)
    if write_path is not None:
        result.path = write_result(result.image, scene, write_path)
    return result


class AnimationJob(CountedWork):
    """Renders frames ``frame_start..frame_end`` (every ``frame_step``) with splats, one per
    ``step()``, each written to ``scene.render.frame_path(frame=f)``. ``cancel()`` stops; frames
    written so far stay. The scene's current frame is put back at the end."""

    def __init__(self, scene, view_layer):
        scene_camera(scene)
        if is_video_output(scene):
            raise FinalRenderError("the output format is a movie: choose an image format in "
                                   "Output Properties to render an animation with splats")
        if scene.frame_step < 1 or scene.frame_end < scene.frame_start:
            raise FinalRenderError(f"no frames to render ({scene.frame_start}..{scene.frame_end}, "
                                   f"step {scene.frame_step})")
        self.scene, self.view_layer = scene, view_layer
        self.frames = list(range(scene.frame_start, scene.frame_end + 1, scene.frame_step))
        self.written: list[str] = []
        self.warnings: list[str] = []
        self.done = 0
        self.cancelled = False
        self._frame_before = (scene.frame_current, scene.frame_subframe)
        self._render_s = 0.0

    @property
    def total(self) -> int:
        return len(self.frames)

    def status_text(self) -> str:
        frame = self.frames[min(self.done, self.total - 1)]
        return (f"SplatBridge: rendering frame {frame} ({min(self.done + 1, self.total)}/{self.total})"
                f"{self.eta_suffix()} (Esc to cancel)")

    def step(self) -> bool:
        """Render and write the next frame; True when every frame is done."""
        if self.cancelled:
            raise FinalRenderError("the animation render was cancelled")
        if self.finished:
            return True
        frame = self.frames[self.done]
        t = time.monotonic()
        try:
            self.scene.frame_set(frame)
            result = render_still(self.scene, self.view_layer,
                                  write_path=self.scene.render.frame_path(frame=frame))
        except Exception:
            self._restore_frame()
            raise
        for w in result.warnings:
            if w not in self.warnings:
                self.warnings.append(w)
        self.written.append(result.path)
        self._render_s += time.monotonic() - t
        self.done += 1
        if self.finished:
            self._restore_frame()
        return self.finished

    def cancel(self) -> None:
        self.cancelled = True
        self._restore_frame()

    def run_all(self) -> list[str]:
        """Render every remaining frame (blocking); the files written."""
        while not self.step():
            pass
        return self.written

    def _restore_frame(self) -> None:
        frame, sub = self._frame_before
        if (self.scene.frame_current, self.scene.frame_subframe) != (frame, sub):
            self.scene.frame_set(frame, subframe=sub)


# --------------------------------------------------------------------------- operators

class SPLATBRIDGE_OT_render_image(bpy.types.Operator):
    """Render the active camera's view with the scene's engine and composite the splats into it
    by depth (image "SplatBridge Render")"""
    bl_idname = "splatbridge.render_image"
    bl_label = "Render Image with Splats"

    write_still: BoolProperty(name="Write Image", default=False,
                              description="Also save the result to the scene's output path")

    def execute(self, context):
        scene = context.scene
        path = still_output_path(scene) if self.write_still else None
        try:
            result = render_still(scene, context.view_layer, write_path=path)
        except Exception as exc:
            self.report({"ERROR"}, f"Render with Splats: {exc}")
            return {"CANCELLED"}
        for w in result.warnings:
            self.report({"WARNING"}, f"Render with Splats: {w}")
        show_result(context, result.image)
        done = f"saved {result.path}" if result.path else f"image {result.image.name!r}"
        self.report({"INFO"}, f"Rendered {len(result.objects)} splat object(s) with the scene: {done}")
        return {"FINISHED"}


class SPLATBRIDGE_OT_render_animation(ModalProgress, bpy.types.Operator):
    """Render the frame range with splats, frame by frame, to the scene's output path (Esc stops;
    frames written so far stay)"""
    bl_idname = "splatbridge.render_animation"
    bl_label = "Render Animation with Splats"

    _job: AnimationJob | None = None

    def _start(self, context) -> bool:
        try:
            self._job = AnimationJob(context.scene, context.view_layer)
        except Exception as exc:
            self.report({"ERROR"}, f"Render Animation with Splats: {exc}")
            return False
        return True

    def _report_end(self) -> None:
        job = self._job
        for w in job.warnings:
            self.report({"WARNING"}, f"Render Animation with Splats: {w}")
        state = "cancelled after" if job.cancelled else "wrote"
        where = os.path.dirname(job.written[-1]) if job.written else "-"
        self.report({"INFO"}, f"Render Animation with Splats: {state} {len(job.written)} frame(s) in {where}")

    def execute(self, context):
        """Headless path: every frame now."""
        if not self._start(context):
            return {"CANCELLED"}
        try:
            self._job.run_all()
        except Exception as exc:
            self.report({"ERROR"}, f"Render Animation with Splats: {exc}")
            return {"CANCELLED"}
        self._report_end()
        return {"FINISHED"}

    def invoke(self, context, event):
        if not self._start(context):
            return {"CANCELLED"}
        context.workspace.status_text_set(self._job.status_text())
        return self._begin(context, 0.02)

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            self._report_end()
            return self._finish(context, {"CANCELLED"})
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            done = self._job.step()
        except Exception as exc:
            self._job.cancel()
            self.report({"ERROR"}, f"Render Animation with Splats: {exc}")
            return self._finish(context, {"CANCELLED"})
        context.window_manager.progress_update(int(1000 * self._job.progress))
        if done:
            self._report_end()
            return self._finish(context, {"FINISHED"})
        context.workspace.status_text_set(self._job.status_text())
        return {"RUNNING_MODAL"}

    def cancel(self, context) -> None:
        """Blender ends the modal itself (a file is opened, the window closes)."""
        if self._job is not None:
            self._job.cancel()
        self._finish(context, {"CANCELLED"})


def menu_render(self, context) -> None:
    """Entries in the Render menu (TOPBAR_MT_render)."""
    layout = self.layout
    layout.separator()
    layout.operator(SPLATBRIDGE_OT_render_image.bl_idname, icon="RENDER_STILL")
    layout.operator(SPLATBRIDGE_OT_render_animation.bl_idname, icon="RENDER_ANIMATION")


CLASSES = (SPLATBRIDGE_OT_render_image, SPLATBRIDGE_OT_render_animation)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_render.append(menu_render)


def unregister() -> None:
    bpy.types.TOPBAR_MT_render.remove(menu_render)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    _depth_fill.clear()
