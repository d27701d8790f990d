"""Drawing splat objects with the ``gpu`` module: GPU data cache, sorting hand-off, draw calls.

``SplatDrawer`` keeps, per mesh, the uploaded data textures (re-uploaded only when the mesh
changed) and, per object, a ``SplatSorter`` and the uploaded draw order. A draw:

1. refreshes the data if the mesh changed (pointer, vertex count, revision, depsgraph epoch);
2. asks the sorter for an order for this view: the sort runs on a worker thread and only when the
   view direction (in object space) turned enough; a first draw sorts synchronously;
3. uploads the newest finished order if it is newer than the one on the GPU;
4. draws one instanced quad per splat, depth-tested against the scene (LESS_EQUAL, no depth
   writes), blended back to front with premultiplied alpha.

The viewport handler (``draw_viewport``) does this for every visible splat object, farthest object
first. Headless code (tests, offscreen renders) calls ``draw_object`` with explicit matrices.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..splat_object import PROP_REVISION, is_splat_object, read_splats_from_object, splat_count
from ..splat_state import read_state
from . import shaders
from .gpu_data import OrderTexture, SplatTextures, pack_splats
from .settings import DisplaySettings, display_settings
from .sort import SplatSorter

try:
    import bpy
    import gpu
except ImportError:  # pragma: no cover
    bpy = gpu = None

#: set from the sort worker threads when a new order is ready; a UI timer turns it into a redraw
ORDER_READY = threading.Event()

#: bumped by the depsgraph handler when a mesh's geometry was updated (edit mode, modifiers...)
GEOMETRY_EPOCH: dict[int, int] = {}

#: (object) -> (A [3,3], b [3], only_selected) of a colour grade previewed on it, or None; set by
#: ``ops_splat_edit`` (the viewport does not know the grading settings)
GRADE_PREVIEW: Optional[Callable[[object], Optional[tuple]]] = None


def _fingerprint(obj) -> tuple:
    data = obj.data                       # a mesh or a splat point cloud
    return (data.as_pointer(), splat_count(obj), int(data.get(PROP_REVISION, 0)),
            GEOMETRY_EPOCH.get(data.session_uid, 0))


@dataclass
class MeshData:
    fingerprint: tuple
    means: np.ndarray            # object-space centres (the sorter's input)
    textures: SplatTextures


@dataclass
class ObjectOrder:
    data: MeshData
    sorter: SplatSorter
    order: OrderTexture


def camera_position_local(model_view: np.ndarray) -> np.ndarray:
    """Camera centre in object space of an OpenGL model-view (for an orthographic view this is
    only the view's origin: ``draw_textures`` moves it far back along the view axis)."""
    inv = np.linalg.inv(np.asarray(model_view, dtype=np.float64))
    return inv[:3, 3]


def near_plane(proj: np.ndarray) -> float:
    """Near clipping distance of an OpenGL perspective projection (metres)."""
    p = np.asarray(proj, dtype=np.float64)
    return float(p[2, 3] / (p[2, 2] - 1.0))


def draw_textures(textures: SplatTextures, order: Optional[OrderTexture], model_view: np.ndarray,
                  proj: np.ndarray, viewport_size: tuple[int, int],
                  settings: DisplaySettings = DisplaySettings(), grade: Optional[tuple] = None,
                  show_state: bool = False) -> None:
    """Issue the draw call for one splat set into the bound framebuffer (GPU context required).

    ``grade``: (A, b, only_selected), a colour grade previewed on the splats (``shaders.pack_params``);
    ``show_state``: tint selected and locked splats (Edit Mode). Hidden splats are never drawn.

    ``model_view`` = view @ object matrix (OpenGL), ``proj`` the OpenGL projection, both 4x4;
    ``viewport_size`` (width, height) in pixels of the framebuffer region drawn into. The caller
    owns the depth buffer: splats test against it but never write it (except in point mode).
    """
    if textures.count == 0 or not settings.show:
        return
    model_view = np.asarray(model_view, dtype=np.float64)
    proj = np.asarray(proj, dtype=np.float64)
    ortho = proj[3, 3] == 1.0
    campos = camera_position_local(model_view)
    if ortho:
        forward = np.linalg.inv(model_view)[:3, 2]           # view +z in object space (towards the viewer)
        campos = campos + forward * 1e6
    point = settings.point_mode
    shader = shaders.point_shader() if point else shaders.splat_shader()
    batch = shaders.quad_batch("point" if point else "splat")
    size = float(settings.point_size) if point else float(settings.scale)
    near = 0.0 if (point or ortho) else max(near_plane(proj), 1e-6)
    params = shaders.pack_params(model_view, proj, campos, viewport_size, size, near,
                                 max(0, min(settings.sh_degree, textures.sh_degree)), textures.sh_stride,
                                 grade=None if grade is None else grade[:2],
                                 grade_selected_only=bool(grade is not None and grade[2]), show_state=show_state)
    ubo = gpu.types.GPUUniformBuf(params)
    shader.bind()
    shader.uniform_block("params", ubo)
    shader.uniform_sampler("center_tex", textures.center)
    shader.uniform_sampler("rot_scale_tex", textures.rot_scale)
    shader.uniform_sampler("sh_tex", textures.sh)
    shader.uniform_sampler("order_tex", textures.center if point else order.texture)  # unused in point mode
    gpu.state.depth_test_set("LESS_EQUAL")
    if point:
        gpu.state.blend_set("NONE")
        gpu.state.depth_mask_set(True)
    else:
        gpu.state.blend_set("ALPHA_PREMULT")
        gpu.state.depth_mask_set(False)
    batch.draw_instanced(shader, instance_start=0, instance_count=textures.count)
    gpu.state.blend_set("NONE")
    gpu.state.depth_mask_set(False)
    gpu.state.depth_test_set("NONE")


class SplatDrawer:
    """GPU data (keyed by mesh ``session_uid``) and draw orders (keyed by object ``session_uid``
    and 3D view) of splat objects."""

    def __init__(self, threaded_sort: bool = True):
        self.threaded_sort = threaded_sort
        self.meshes: dict[int, MeshData] = {}
        self.objects: dict[int, ObjectOrder] = {}
        self.upload_count = 0

    # -- data -------------------------------------------------------------------------------
    def mesh_data(self, obj) -> MeshData:
        """The uploaded data of ``obj``'s mesh, (re-)uploading it when the mesh changed."""
        key = obj.data.session_uid
        fp = _fingerprint(obj)
        data = self.meshes.get(key)
        if data is None or data.fingerprint != fp:
            splats = read_splats_from_object(obj, apply_transform=False)
            state = read_state(obj)
            data = MeshData(fp, splats.means, SplatTextures(pack_splats(splats, flags=state.draw_flags(),
                                                                        hidden=state.hidden)))
            self.meshes[key] = data
            self.upload_count += 1
        return data

    def object_order(self, obj, model_view: np.ndarray, sync: bool = False, view_key: int = 0) -> ObjectOrder:
        """The object's draw order for this view, sorted now if none exists (or ``sync``), else
        requested from the worker; the newest finished order is uploaded. Each 3D view
        (``view_key``) keeps its own order, so two views of one object do not fight."""
        data = self.mesh_data(obj)
        key = (obj.session_uid, view_key)
        entry = self.objects.get(key)
        if entry is None or entry.data is not data:
            sorter = SplatSorter(data.means, threaded=self.threaded_sort, on_done=ORDER_READY.set)
            entry = ObjectOrder(data, sorter, OrderTexture(data.textures.count))
            self.objects[key] = entry
            sync = True
        if sync:
            if entry.sorter.needs_sort(model_view) or entry.sorter.latest()[0] is None:
                entry.sorter.sort_now(model_view)
        else:
            entry.sorter.request(model_view)
        order, serial = entry.sorter.latest()
        if order is not None and serial != entry.order.serial:
            entry.order.upload(order, serial)
        return entry

    # -- drawing ------------------------------------------------------------------------------
    def draw_object(self, obj, view_matrix, proj_matrix, viewport_size: tuple[int, int],
                    settings: Optional[DisplaySettings] = None, sync_sort: bool = False,
                    view_key: int = 0, grade: Optional[tuple] | str = None,
                    show_state: Optional[bool] = False) -> None:
        """Draw splat object ``obj`` for OpenGL ``view_matrix`` / ``proj_matrix`` (4x4) into the
        bound framebuffer of ``viewport_size`` pixels. ``grade``: a colour grade previewed on it,
        (A, b, only_selected), or "auto": what ``GRADE_PREVIEW`` gives; ``show_state``: tint selected
        and locked splats (None: when ``obj`` is in Edit Mode). The defaults draw the data as it is
        (offscreen renders, final renders); the viewport asks for "auto" and None."""
        settings = display_settings(obj) if settings is None else settings
        if isinstance(grade, str):
            grade = GRADE_PREVIEW(obj) if GRADE_PREVIEW is not None else None
        if show_state is None:
            show_state = obj.mode == "EDIT"
        if not settings.show:
            return
        model_view = np.asarray(view_matrix, dtype=np.float64) @ np.asarray(obj.matrix_world, dtype=np.float64)
        if settings.point_mode:
            draw_textures(self.mesh_data(obj).textures, None, model_view, proj_matrix, viewport_size, settings,
                          grade, show_state)
            return
        entry = self.object_order(obj, model_view, sync=sync_sort, view_key=view_key)
        draw_textures(entry.data.textures, entry.order, model_view, proj_matrix, viewport_size, settings,
                      grade, show_state)

    def draw_objects(self, objects, view_matrix, proj_matrix, viewport_size: tuple[int, int],
                     sync_sort: bool = False, view_key: int = 0, preview: bool = False) -> None:
        """Draw several splat objects, the one whose centre is farthest from the camera first;
        ``preview``: with the viewport's grade preview and Edit Mode tint (``draw_object``)."""
        view = np.asarray(view_matrix, dtype=np.float64)

        def depth(obj) -> float:
            centre = np.asarray(obj.matrix_world, dtype=np.float64)[:3, 3]
            return float((view @ np.append(centre, 1.0))[2])      # more negative = farther
        for obj in sorted(objects, key=depth):
            self.draw_object(obj, view, proj_matrix, viewport_size, sync_sort=sync_sort, view_key=view_key,
                             grade="auto" if preview else None, show_state=None if preview else False)

    def prune(self, alive_objects) -> None:
        """Forget objects and meshes that no longer exist (frees their GPU memory)."""
        obj_keys = {o.session_uid for o in alive_objects}
        mesh_keys = {o.data.session_uid for o in alive_objects}
        self.objects = {k: v for k, v in self.objects.items() if k[0] in obj_keys}
        self.meshes = {k: v for k, v in self.meshes.items() if k in mesh_keys}

    def release_unseen(self, alive_objects) -> bool:
        """``prune`` when anything cached belongs to an object not in ``alive_objects`` (hidden,
        deleted, or from a file that was closed); True when it did. Cheap when nothing changed."""
        obj_keys = {o.session_uid for o in alive_objects}
        mesh_keys = {o.data.session_uid for o in alive_objects}
        if all(k[0] in obj_keys for k in self.objects) and all(k in mesh_keys for k in self.meshes):
            return False
        self.prune(alive_objects)
        return True

    def clear(self) -> None:
        self.objects.clear()
        self.meshes.clear()

    def gpu_bytes(self) -> int:
        """GPU memory held (data textures + order textures), bytes."""
        return (sum(d.textures.nbytes for d in self.meshes.values())
                + sum(o.order.nbytes for o in self.objects.values()))


DRAWER = SplatDrawer()


def visible_splat_objects(context) -> list:
    """Splat objects visible in the context's view layer (and viewport) with display on (in Edit Mode
    too: there the selection shows as tinted splats)."""
    return [o for o in context.visible_objects if is_splat_object(o) and display_settings(o).show]


#: 3D view (space pointer) -> its own edit-vertex opacity while a splat object is edited in it
_VERTEX_OPACITY: dict[int, float] = {}


def hide_edit_points(space, obj) -> bool:
    """While splat object ``obj`` is in Edit Mode, Blender's edit-vertex dots are hidden in 3D view
    ``space`` (``overlay.vertex_opacity`` 0): the selection shows as tinted splats instead. The view's
    own opacity comes back when the object leaves Edit Mode. Returns whether the dots are hidden."""
    overlay = getattr(space, "overlay", None)
    if overlay is None or not hasattr(overlay, "vertex_opacity"):
        return False
    key = space.as_pointer()
    editing = obj is not None and obj.mode == "EDIT" and is_splat_object(obj)
    if editing and key not in _VERTEX_OPACITY:
        _VERTEX_OPACITY[key] = float(overlay.vertex_opacity)
        overlay.vertex_opacity = 0.0
    elif not editing and key in _VERTEX_OPACITY:
        overlay.vertex_opacity = _VERTEX_OPACITY.pop(key)
    return editing


def draw_viewport() -> None:
    """POST_VIEW draw handler of the 3D viewport."""
    context = bpy.context
    region, rv3d = context.region, context.region_data
    if region is None or rv3d is None:
        return
    try:
        hide_edit_points(context.space_data, context.active_object)
        objects = visible_splat_objects(context)
        # hidden or deleted objects give their GPU memory back (showing one again re-uploads it);
        # by identity, not count: one deleted and another added in its place frees the first
        DRAWER.release_unseen(objects)
        if objects:
            DRAWER.draw_objects(objects, rv3d.view_matrix, rv3d.window_matrix, (region.width, region.height),
                                view_key=rv3d.as_pointer(), preview=True)
    except Exception as exc:  # a broken object must not kill every redraw: report once per message
        _report_once(f"SplatBridge viewport: {exc}")


_REPORTED: set[str] = set()


def _report_once(message: str) -> None:
    if message not in _REPORTED:
        _REPORTED.add(message)
        import sys
        import traceback
        print(message, file=sys.stderr)
        traceback.print_exc()


def redraw_timer() -> float:
    """UI timer: redraw 3D views once a worker finished a sort. Returns the next interval."""
    if ORDER_READY.is_set():
        ORDER_READY.clear()
        wm = bpy.context.window_manager
        for window in getattr(wm, "windows", []):
            for area in window.screen.areas:
                if area.type == "VIEW_3D":
                    area.tag_redraw()
    return 0.03


def _persistent(fn):
    """``bpy.app.handlers.persistent`` (kept when a file is opened); identity without bpy."""
    return bpy.app.handlers.persistent(fn) if bpy is not None else fn


@_persistent
def depsgraph_update(scene, depsgraph) -> None:
    """Bump the geometry epoch of splat objects whose data changed (edit mode, scripts, Blender's
    own tools on native point clouds)."""
    for update in depsgraph.updates:
        if isinstance(update.id, bpy.types.Object):
            obj = update.id.original
            # in Edit Mode a selection change is no geometry update, yet it changes the drawing
            if (update.is_updated_geometry or obj.mode == "EDIT") and is_splat_object(obj):
                uid = obj.data.session_uid
                GEOMETRY_EPOCH[uid] = GEOMETRY_EPOCH.get(uid, 0) + 1
