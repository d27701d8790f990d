"""Capture a camera rig: render every rig camera with the scene's engine, plus surface samples.

Images: one render per camera with the scene's render engine (Cycles or EEVEE) and
``film_transparent`` on, so alpha is the object mask; written to a temporary 8-bit RGBA PNG and
read back through ``bpy.data.images`` (headless Blender has no readable Render Result pixels).
Result: u8[C,H,W,4], rows top to bottom, straight alpha, display-referred sRGB.
By default the capture uses the "Standard" view transform (no AgX/Filmic tone curve, no look,
exposure 0, gamma 1) so that pixel values are the sRGB encoding of the rendered radiance, as
3DGS expects of photos; ``standard_view=False`` keeps the scene's colour management.
Compositing and the sequencer are off during capture. Every scene setting the capture touches is
restored after each view.

Object index (``CaptureJob(object_index=True)`` with two or more target objects, for "Split by Object"):
per view also a label image,
u8/i4[C,H,W], 0 where no target object is seen and i (1..L) where the i-th target object is: Cycles'
object-index pass (``pass_index`` set to i on the targets and 0 elsewhere for that render only), one
sample at the pixel centre (filter width 0.01, so labels are never blends), read from a multilayer EXR.

Cameras: the shared OpenCV convention (``viewmats`` world-to-camera, ``Ks`` pinhole in pixels)
through ``shared.cameras.camera_from_blender``.

Initial points: area-weighted samples on the evaluated (modifier-applied) surfaces of the target
meshes, in world space. By default each is coloured from the captured views once they are all
rendered (the pixel under its projection in a camera that sees it, checked by ray cast: lit, as
the renders show it), falling back to its material's colour, unlit, which is read as follows:

* Principled BSDF (or Diffuse / Emission) reached from the active Material Output:
  - Base Color not linked: its default value;
  - linked to a Color Attribute / Attribute node: that colour attribute (point or corner domain),
    interpolated over the triangle;
  - linked to an Image Texture node: the image sampled (nearest, repeat) at the active UV map;
  - linked to anything else: the socket's default value;
* other shaders or no nodes: the material's viewport display colour; no material: Blender's default
  surface colour, 0.8 linear grey. Colours are unlit: lighting is left to training.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

import bpy

from .modal_progress import CountedWork
from .splat_object import is_splat_object
from .rig import (GEOMETRY_TYPES, evaluated_mesh, is_rig, mesh_world_vertices, rig_cameras,
                  rig_resolution, rig_targets)
from .shared.cameras import BlenderCameraParams, Camera, camera_from_blender, stack_cameras

ENGINES_CYCLES = "CYCLES"
DEFAULT_GREY = (0.8, 0.8, 0.8)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """sRGB transfer function (IEC 61966-2-1) of linear values in [0, 1] (clipped)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


def to_u8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to u8 with rounding."""
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- cameras

def blender_camera(scene, cam_obj, width: int | None = None, height: int | None = None) -> Camera:
    """The shared-convention camera of a Blender camera object as the scene would render it.

    ``width``/``height`` override the scene resolution (at 100 %), as the capture sets them.
    Object scale (e.g. a scaled rig empty) is removed: Blender renders cameras unscaled.
    """
    if cam_obj.type != "CAMERA":
        raise ValueError(f"object {cam_obj.name!r} is not a camera")
    data = cam_obj.data
    if data.type != "PERSP":
        raise ValueError(f"camera {cam_obj.name!r} is {data.type}: only perspective cameras "
                         f"can be captured for training")
    m = np.array(cam_obj.matrix_world, dtype=np.float64)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
    r = scene.render
    return camera_from_blender(BlenderCameraParams(
        matrix_world=m, lens=data.lens, sensor_width=data.sensor_width,
        sensor_height=data.sensor_height, sensor_fit=data.sensor_fit,
        shift_x=data.shift_x, shift_y=data.shift_y,
        resolution_x=int(width if width is not None else r.resolution_x),
        resolution_y=int(height if height is not None else r.resolution_y),
        resolution_percentage=100 if width is not None else r.resolution_percentage,
        pixel_aspect_x=r.pixel_aspect_x, pixel_aspect_y=r.pixel_aspect_y))


# --------------------------------------------------------------------------- rendering

class _Settings:
    """Set attributes on Blender data and put the old values back (in reverse order)."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []

    def set(self, owner, attr: str, value) -> None:
        self._saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def restore(self) -> None:
        for owner, attr, value in reversed(self._saved):
            try:
                setattr(owner, attr, value)
            except (AttributeError, TypeError, ValueError):  # e.g. a camera deleted meanwhile
                pass
        self._saved.clear()


def load_png_rgba(path: str) -> np.ndarray:
    """An 8-bit PNG as u8[H,W,4], top row first, values as stored (no colour conversion)."""
    img = bpy.data.images.load(path, check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return to_u8(px.reshape(h, w, 4)[::-1])


def render_view(scene, cam_obj, width: int, height: int, path: str, *,
                engine: str | None = None, samples: int | None = None,
                standard_view: bool = True, hide: Sequence = ()) -> np.ndarray:
    """Render ``cam_obj`` at ``width`` x ``height`` with a transparent film; u8[H,W,4] RGBA.

    The scene's settings are restored afterwards. ``samples`` sets Cycles samples or EEVEE
    render samples for this render only; the objects in ``hide`` are left out of it.
    """
    s = _Settings()
    r = scene.render
    try:
        for obj in hide:
            s.set(obj, "hide_render", True)
        if engine is not None:
            s.set(r, "engine", engine)
        s.set(scene, "camera", cam_obj)
        s.set(r, "resolution_x", int(width))
        s.set(r, "resolution_y", int(height))
        s.set(r, "resolution_percentage", 100)
        s.set(r, "film_transparent", True)
        s.set(r, "use_border", False)
        s.set(r, "use_compositing", False)
        s.set(r, "use_sequencer", False)
        s.set(r, "use_file_extension", False)
        s.set(r, "filepath", path)
        im = r.image_settings
        s.set(im, "file_format", "PNG")
        s.set(im, "color_mode", "RGBA")
        s.set(im, "color_depth", "8")
        s.set(im, "compression", 0)
        if standard_view:
            v = scene.view_settings
            s.set(scene.display_settings, "display_device", "sRGB")
            s.set(v, "view_transform", "Standard")
            s.set(v, "look", "None")
            s.set(v, "exposure", 0.0)
            s.set(v, "gamma", 1.0)
            s.set(v, "use_curve_mapping", False)
        if samples is not None:
            if r.engine == ENGINES_CYCLES:
                s.set(scene.cycles, "samples", int(samples))
            elif hasattr(scene, "eevee"):
                s.set(scene.eevee, "taa_render_samples", int(samples))
        bpy.ops.render.render(write_still=True, scene=scene.name)
        if not os.path.exists(path):
            raise RuntimeError(f"render of camera {cam_obj.name!r} wrote no image to {path}")
        img = load_png_rgba(path)
    finally:
        s.restore()
    if img.shape[:2] != (height, width):
        raise RuntimeError(f"render of {cam_obj.name!r} is {img.shape[1]}x{img.shape[0]}, "
                           f"expected {width}x{height}")
    return img


def render_object_index(scene, cam_obj, width: int, height: int, path: str, labels: dict,
                        hide: Sequence = ()) -> np.ndarray:
    """Which target object each pixel of ``cam_obj``'s view shows: int32[H,W], ``labels[object]``
    (1..L) where that object is the nearest surface, 0 elsewhere (other objects, background).

    A one-sample Cycles render of the object-index pass (any engine the scene uses for its images);
    the objects in ``hide`` are left out; every setting and ``pass_index`` touched is put back."""
    from .render_math import read_exr_channels
    s = _Settings()
    r = scene.render
    layer = bpy.context.view_layer if bpy.context.view_layer.name in scene.view_layers else scene.view_layers[0]
    im = r.image_settings
    try:
        for obj in hide:
            s.set(obj, "hide_render", True)
        s.set(r, "engine", ENGINES_CYCLES)
        s.set(scene, "camera", cam_obj)
        s.set(r, "resolution_x", int(width))
        s.set(r, "resolution_y", int(height))
        s.set(r, "resolution_percentage", 100)
        s.set(r, "pixel_aspect_x", 1.0)      # (5.0.1 writes no multilayer EXR otherwise; the camera's K has it)
        s.set(r, "pixel_aspect_y", 1.0)
        s.set(r, "film_transparent", True)
        s.set(r, "use_border", False)
        s.set(r, "use_compositing", False)
        s.set(r, "use_sequencer", False)
        s.set(scene.cycles, "pixel_filter_type", "BOX")
        s.set(scene.cycles, "filter_width", 0.01)     # one sample at the pixel centre: labels, not blends
        s.set(scene.cycles, "samples", 1)
        s.set(scene.cycles, "use_adaptive_sampling", False)
        s.set(scene.cycles, "use_denoising", False)
        for vl in scene.view_layers:
            s.set(vl, "use", vl == layer)
        s.set(layer, "use_pass_object_index", True)
        for obj in scene.objects:
            s.set(obj, "pass_index", int(labels.get(obj, 0)))
        bpy.ops.render.render(write_still=False, scene=scene.name)
        result = bpy.data.images.get("Render Result")
        if result is None:
            raise RuntimeError("the object-index render produced no Render Result")
        for name, value in (("media_type", "MULTI_LAYER_IMAGE"), ("file_format", "OPEN_EXR_MULTILAYER"),
                            ("color_depth", "32"), ("exr_codec", "NONE")):
            if hasattr(im, name):
                s.set(im, name, value)
        result.save_render(path, scene=scene)
    finally:
        s.restore()
    channels = read_exr_channels(path)
    key = next((k for k in (f"{layer.name}.IndexOB.X", f"{layer.name}.Object Index.X") if k in channels), "")
    if not key:        # the pass's name in the file: "IndexOB" before Blender 5.0, "Object Index" since
        raise RuntimeError(f"the render has no object-index pass; channels: {sorted(channels)[:8]}")
    index = np.rint(channels[key]).astype(np.int32)
    if index.shape != (height, width):
        raise RuntimeError(f"object-index pass is {index.shape[1]}x{index.shape[0]}, expected {width}x{height}")
    return index


# --------------------------------------------------------------------------- surface samples

def _socket_source(socket):
    """The node feeding ``socket`` (following reroutes), or None."""
    while socket is not None and socket.is_linked:
        node = socket.links[0].from_node
        if node.type != "REROUTE":
            return node, socket.links[0].from_socket
        socket = node.inputs[0]
    return None, None


def material_color_source(mat) -> tuple:
    """How a material's base colour is found, as one of
    ``("const", linear_rgb)``, ``("attribute", name_or_empty)``, ``("image", bpy_image)``."""
    if mat is None:
        return ("const", DEFAULT_GREY)
    tree = getattr(mat, "node_tree", None)
    fallback = ("const", tuple(mat.diffuse_color[:3]))
    if tree is None:
        return fallback
    outputs = [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"]
    out = next((n for n in outputs if n.is_active_output), outputs[0] if outputs else None)
    if out is None:
        return fallback
    shader, _ = _socket_source(out.inputs["Surface"])
    if shader is None:
        return fallback
    name = {"BSDF_PRINCIPLED": "Base Color", "BSDF_DIFFUSE": "Color", "EMISSION": "Color"}.get(shader.type)
    if name is None:
        return fallback
    sock = shader.inputs[name]
    src, _ = _socket_source(sock)
    if src is None:
        return ("const", tuple(sock.default_value[:3]))
    if src.type == "VERTEX_COLOR":
        return ("attribute", src.layer_name)
    if src.type == "ATTRIBUTE" and src.attribute_type == "GEOMETRY":
        return ("attribute", src.attribute_name)
    if src.type == "TEX_IMAGE" and src.image is not None:
        return ("image", src.image)
    return ("const", tuple(sock.default_value[:3]))


def _image_array(img) -> tuple[np.ndarray, bool]:
    w, h = img.size
    px = np.empty(w * h * 4, dtype=np.float32)
    img.pixels.foreach_get(px)
    # Byte images hold their colour space's encoding (sRGB for colour textures); float ones linear.
    return px.reshape(h, w, 4), bool(img.is_float)


def sample_surface(context, objects: Sequence, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted random points on the evaluated surfaces of ``objects`` (world space).

    Returns (points f32[P,3], colors u8[P,3] sRGB), P = ``count`` unless there is no surface
    (then P = 0). See the module docstring for the colour sources.
    """
    points, colors, _ = sample_surface_with_normals(context, objects, count, seed)
    return points, colors


def sample_surface_with_normals(context, objects: Sequence, count: int, seed: int = 0
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_surface` plus the unit world-space face normal at each point (f32[P,3])."""
    if count < 0:
        raise ValueError(f"point count must be >= 0, got {count}")
    depsgraph = context.evaluated_depsgraph_get()
    tris_w, tri_col_fn, areas = [], [], []
    for obj in objects:
        if obj.type not in GEOMETRY_TYPES:
            continue
        with evaluated_mesh(obj, depsgraph) as (ev, mesh):
            mesh.calc_loop_triangles()
            nt = len(mesh.loop_triangles)
            if nt == 0:
                continue
            co = mesh_world_vertices(ev, mesh)
            tv = np.empty(nt * 3, np.int32)
            mesh.loop_triangles.foreach_get("vertices", tv)
            tl = np.empty(nt * 3, np.int32)
            mesh.loop_triangles.foreach_get("loops", tl)
            tmat = np.empty(nt, np.int32)
            mesh.loop_triangles.foreach_get("material_index", tmat)
            tv, tl = tv.reshape(-1, 3), tl.reshape(-1, 3)
            tri = co[tv]                                          # [T,3,3]
            area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
            mats = [slot.material for slot in ev.material_slots] or [None]
            sources = [material_color_source(mt) for mt in mats]
            # Per-object colour data copied out now: the evaluated mesh is freed below.
            attr_data = {}
            for kind, val in sources:
                if kind == "attribute" and val not in attr_data:
                    ca = mesh.color_attributes.get(val) if val else mesh.color_attributes.active_color
                    if ca is None:
                        attr_data[val] = None
                        continue
                    buf = np.empty(len(ca.data) * 4, np.float32)
                    ca.data.foreach_get("color", buf)          # linear
                    attr_data[val] = (ca.domain, buf.reshape(-1, 4)[:, :3].astype(np.float64))
            uv = None
            if any(k == "image" for k, _ in sources) and mesh.uv_layers.active is not None:
                uvb = np.empty(len(mesh.loops) * 2, np.float32)
                mesh.uv_layers.active.uv.foreach_get("vector", uvb)
                uv = uvb.reshape(-1, 2).astype(np.float64)
        tris_w.append(tri)
        areas.append(area)
        tri_col_fn.append((tv, tl, np.clip(tmat, 0, len(sources) - 1), sources, attr_data, uv))
    if not tris_w or count == 0 or float(sum(a.sum() for a in areas)) <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.float32)

    rng = np.random.default_rng(seed)
    all_area = np.concatenate(areas)
    obj_of = np.concatenate([np.full(len(a), i) for i, a in enumerate(areas)])
    local = np.concatenate([np.arange(len(a)) for a in areas])
    pick = rng.choice(len(all_area), size=count, p=all_area / all_area.sum())
    # Uniform barycentric coordinates (Osada et al.): sqrt trick.
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)
    points = np.empty((count, 3))
    normals = np.empty((count, 3))
    colors = np.empty((count, 3))
    for oi in range(len(areas)):
        sel = np.nonzero(obj_of[pick] == oi)[0]
        if len(sel) == 0:
            continue
        t = local[pick[sel]]
        b = bary[sel]
        tri = tris_w[oi][t]
        points[sel] = np.einsum("nk,nkc->nc", b, tri)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals[sel] = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
        tv, tl, tmat, sources, attr_data, uv = tri_col_fn[oi]
        for mi, (kind, val) in enumerate(sources):
            ms = np.nonzero(tmat[t] == mi)[0]
            if len(ms) == 0:
                continue
            tt, bb, dst = t[ms], b[ms], sel[ms]
            if kind == "attribute" and attr_data.get(val) is not None:
                domain, cols = attr_data[val]
                idx = tv[tt] if domain == "POINT" else tl[tt]
                colors[dst] = linear_to_srgb(np.einsum("nk,nkc->nc", bb, cols[idx]))
            elif kind == "image" and uv is not None:
                pix, is_float = _image_array(val)
                h, w = pix.shape[:2]
                st = np.einsum("nk,nkc->nc", bb, uv[tl[tt]])
                px = np.clip(np.floor(np.mod(st[:, 0], 1.0) * w).astype(int), 0, w - 1)
                py = np.clip(np.floor(np.mod(st[:, 1], 1.0) * h).astype(int), 0, h - 1)
                c = pix[py, px, :3].astype(np.float64)
                colors[dst] = linear_to_srgb(c) if is_float else np.clip(c, 0, 1)
            else:
                lin = val if kind == "const" else DEFAULT_GREY
                colors[dst] = linear_to_srgb(np.asarray(lin, dtype=np.float64))[None, :]
    return points.astype(np.float32), to_u8(colors), normals.astype(np.float32)


def colors_from_views(context, points: np.ndarray, normals: np.ndarray, images: np.ndarray,
                      cameras: Sequence[Camera], colors: np.ndarray, tries: int = 4) -> np.ndarray:
    """Colour each surface point as the captured renders show it (lit), like SfM points.

    For each point the ``tries`` cameras facing its surface most squarely are tested in turn with
    a ray cast from the camera (occlusion); the first that sees it gives the pixel colour under
    its projection (alpha > 0.5). Points no camera sees keep ``colors``. Returns u8[P,3].
    """
    from mathutils import Vector
    out = np.array(colors, dtype=np.uint8, copy=True)
    if len(points) == 0:
        return out
    scene = context.scene
    depsgraph = context.evaluated_depsgraph_get()
    centres = np.stack([c.position for c in cameras])                      # [C,3]
    to_cam = centres[None, :, :] - points[:, None, :].astype(np.float64)  # [P,C,3]
    dist = np.linalg.norm(to_cam, axis=2)
    # Either side of the face may be the visible one (open meshes): use |cos|.
    facing = np.abs(np.einsum("pcx,px->pc", to_cam, normals)) / np.maximum(dist, 1e-12)
    order = np.argsort(-facing, axis=1)[:, :tries]                        # [P,T] camera indices
    h, w = images.shape[1:3]
    # Pixel of each point in each of its candidate cameras, one projection call per camera (this
    # runs inside one modal timer step: a per-point numpy call froze the UI for seconds).
    uv = np.full(order.shape + (2,), np.nan)
    z = np.zeros(order.shape)
    for c, cam in enumerate(cameras):
        pp, tt = np.nonzero(order == c)
        if len(pp):
            uv[pp, tt], z[pp, tt] = cam.project(points[pp])
    ok = (z > 0) & np.isfinite(uv).all(axis=2)
    with np.errstate(invalid="ignore"):
        ij = np.where(ok[..., None], np.floor(uv), -1).astype(np.int64)
    i, j = ij[..., 0], ij[..., 1]
    ok &= (i >= 0) & (i < w) & (j >= 0) & (j < h)
    ok &= images[order, np.where(ok, j, 0), np.where(ok, i, 0), 3] >= 128
    for p in np.flatnonzero(ok.any(axis=1)):
        for t in np.flatnonzero(ok[p]):
            ci = order[p, t]
            d = dist[p, ci]
            direction = Vector(-to_cam[p, ci] / d)
            hit, loc, *_ = scene.ray_cast(depsgraph, Vector(centres[ci]), direction, distance=d * 1.001)
            if hit and (np.linalg.norm(np.array(loc) - points[p]) > 1e-3 * d + 1e-5):
                continue                                                   # something in front
            out[p] = images[ci, j[p, t], i[p, t], :3]
            break
    return out


# --------------------------------------------------------------------------- the job

@dataclass
class CaptureResult:
    """Captured views in the wire layout of the ``train`` job payload."""

    images: np.ndarray          # u8[C,H,W,4] straight alpha, sRGB
    viewmats: np.ndarray        # f32[C,4,4] OpenCV world-to-camera
    Ks: np.ndarray              # f32[C,3,3] pixels
    width: int
    height: int
    camera_names: list[str]
    points: np.ndarray          # f32[P,3] world
    colors: np.ndarray          # u8[P,3] sRGB
    seconds: float = 0.0
    labels: np.ndarray | None = None     # i4[C,H,W] object index per pixel (object_index captures)
    label_names: list[str] = field(default_factory=list)   # label i+1 is the object label_names[i]

    def payload(self) -> dict[str, np.ndarray]:
        """The ``train`` job payload (points/colors only when there are any)."""
        out = {"images": self.images, "viewmats": self.viewmats, "Ks": self.Ks}
        if len(self.points):
            out["points"] = self.points
            out["colors"] = self.colors
        return out


def target_objects(context, rig) -> list:
    """The meshes to sample points on: the rig's recorded targets that still exist, else the
    selected meshes, else every visible mesh in the scene; never a splat object (on Blender
    before 5.3 those are meshes of loose points)."""
    scene = context.scene
    names = rig_targets(rig) if rig is not None else []
    objs = [scene.objects[n] for n in names if n in scene.objects]
    if not objs:
        objs = [o for o in getattr(context, "selected_objects", []) or [] if o.type == "MESH"]
    if not objs:
        objs = [o for o in scene.objects if o.type == "MESH" and o.visible_get()]
    return [o for o in objs if not is_splat_object(o)]


class CaptureJob(CountedWork):
    """Renders a rig's cameras one at a time (``step``) or all at once (``run_all``).

    ``point_colors``: "RENDER" colours the surface samples from the captured views once they are
    all rendered (:func:`colors_from_views`: lit, as the images show them); "MATERIAL" keeps the
    unlit material colours.

    ``include_splats``: let splat objects show in the views. Off (the default), they are hidden
    while capturing: Blender 5.3 renders its native splats (and the native-render modifier does
    on older versions), so a scene baked again would bake its earlier splats into the new ones.

    ``step()`` renders the next view and returns True once every view is done; ``progress``,
    ``eta_s`` and ``status_text()`` feed a progress bar. ``cancel()`` stops and cleans up.
    The temporary folder for the PNGs is removed at the end.
    """

    def __init__(self, context, rig, *, engine: str | None = None, samples: int | None = None,
                 num_points: int = 20000, targets: Sequence | None = None, seed: int = 0,
                 standard_view: bool = True, resolution: tuple[int, int] | None = None,
                 point_colors: str = "RENDER", object_index: bool = False, include_splats: bool = False):
        if not is_rig(rig):
            raise ValueError(f"{getattr(rig, 'name', rig)!r} is not a SplatBridge camera rig")
        if point_colors not in ("RENDER", "MATERIAL"):
            raise ValueError(f"point_colors must be 'RENDER' or 'MATERIAL', got {point_colors!r}")
        self.scene = context.scene
        self.cameras = rig_cameras(rig)
        if not self.cameras:
            raise ValueError(f"rig {rig.name!r} has no cameras")
        self.width, self.height = resolution or rig_resolution(rig)
        self.engine, self.samples, self.standard_view = engine, samples, standard_view
        # Cameras first: a bad camera fails before any render time is spent.
        self.camera_list = [blender_camera(self.scene, c, self.width, self.height) for c in self.cameras]
        objs = list(targets) if targets is not None else target_objects(context, rig)
        self.points, self.colors, self.normals = sample_surface_with_normals(context, objs, num_points, seed)
        self.point_colors = point_colors
        self.hidden = [] if include_splats else [o for o in self.scene.objects if is_splat_object(o)]
        self.images = np.zeros((len(self.cameras), self.height, self.width, 4), np.uint8)
        # object-index labels: target i -> i + 1 (their names go with the result); one object has
        # nothing to split, so no pass then
        self.label_objects = [o for o in objs if o.type in GEOMETRY_TYPES] if object_index else []
        if len(self.label_objects) < 2:
            self.label_objects = []
        self.labels = (np.zeros((len(self.cameras), self.height, self.width), np.int32)
                       if self.label_objects else None)
        self.done = 0
        self.cancelled = False
        self._tmp = tempfile.mkdtemp(prefix="splatbridge_capture_")
        self._t0 = time.monotonic()
        self._render_s = 0.0

    @property
    def total(self) -> int:
        return len(self.cameras)

    def status_text(self) -> str:
        return (f"SplatBridge: capturing view {min(self.done + 1, self.total)}/{self.total}{self.eta_suffix()} "
                f"(Esc to cancel)")

    def step(self) -> bool:
        """Render the next view; True when all views are captured."""
        if self.cancelled:
            raise RuntimeError("capture was cancelled")
        if self.finished:
            return True
        i = self.done
        t = time.monotonic()
        path = os.path.join(self._tmp, f"view_{i:04d}.png")
        self.images[i] = render_view(self.scene, self.cameras[i], self.width, self.height, path,
                                     engine=self.engine, samples=self.samples,
                                     standard_view=self.standard_view, hide=self.hidden)
        os.remove(path)
        if self.labels is not None:
            exr = os.path.join(self._tmp, f"index_{i:04d}.exr")
            self.labels[i] = render_object_index(self.scene, self.cameras[i], self.width, self.height, exr,
                                                 {o: k + 1 for k, o in enumerate(self.label_objects)},
                                                 hide=self.hidden)
            os.remove(exr)
        self._render_s += time.monotonic() - t
        self.done += 1
        if self.finished:
            self._cleanup()
            if self.point_colors == "RENDER":
                self.colors = colors_from_views(bpy.context, self.points, self.normals,
                                                self.images, self.camera_list, self.colors)
        return self.finished

    def cancel(self) -> None:
        self.cancelled = True
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def result(self) -> CaptureResult:
        if not self.finished:
            raise RuntimeError(f"capture is not finished ({self.done}/{self.total} views)")
        cams = stack_cameras(self.camera_list)
        return CaptureResult(self.images, cams["viewmats"], cams["Ks"], self.width, self.height,
                             [c.name for c in self.cameras], self.points, self.colors,
                             seconds=time.monotonic() - self._t0, labels=self.labels,
                             label_names=[o.name for o in self.label_objects])

    def run_all(self) -> CaptureResult:
        """Capture every remaining view (blocking) and return the result."""
        while not self.step():
            pass
        return self.result()


def register() -> None:
    pass


def unregister() -> None:
    pass
