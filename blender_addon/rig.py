"""Camera rig: cameras spread around a subject, all looking at its centre, parented to one empty.

Layouts (directions from the centre, then scaled by the radius):

- ``FIBONACCI``: ``count`` directions spread evenly over the whole sphere (golden-angle spiral).
- ``HEMISPHERE``: the same spiral over the band of elevations ``[elev_min, elev_max]`` (degrees,
  default the upper hemisphere, 0..90), uniform in area.
- ``RINGS``: ``rings`` rings of ``per_ring`` cameras at elevations evenly spaced over
  ``[elev_min, elev_max]``; odd rings are turned by half a step so the views interleave.

The cameras are plain Blender cameras with a direct rotation (no constraints), so a user can
edit, delete or add cameras by hand. The rig empty carries the capture resolution
(``sb_resolution``) and the names of the objects it was built around (``sb_targets``).
Units: metres, lens in millimetres, angles in degrees in the UI and radians inside.
"""
from __future__ import annotations

import contextlib
import json
import math
from typing import Iterable, Iterator, Sequence

import numpy as np

from .shared.cameras import BLENDER_TO_OPENCV, look_at

try:  # the add-on runs inside Blender; the pure functions also import without it
    import bpy
    from bpy.props import EnumProperty, FloatProperty, FloatVectorProperty, IntProperty
    from mathutils import Matrix, Vector
except ImportError:  # pragma: no cover - pure-numpy use outside Blender
    bpy = None

LAYOUTS = ("FIBONACCI", "HEMISPHERE", "RINGS")
RIG_TAG = "sb_rig"              # custom property marking the rig empty
RES_KEY = "sb_resolution"       # (width, height) pixels, applied at capture
TARGETS_KEY = "sb_targets"      # JSON list of object names the rig was built around
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def _spiral(z: np.ndarray) -> np.ndarray:
    """Unit directions with the given heights, turned by the golden angle one after another."""
    i = np.arange(len(z), dtype=np.float64)
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * GOLDEN_ANGLE
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def rig_positions(layout: str, count: int, radius: float, *,
                  center: Sequence[float] = (0.0, 0.0, 0.0),
                  rings: int = 3, per_ring: int = 8,
                  elev_min: float = 0.0, elev_max: float = 90.0) -> np.ndarray:
    """Camera positions (float64[N,3], world metres) of a rig layout.

    ``count`` is used by FIBONACCI and HEMISPHERE; RINGS makes ``rings * per_ring`` cameras.
    ``elev_min``/``elev_max`` (degrees, -90..90) bound HEMISPHERE and RINGS.
    """
    layout = layout.upper()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown rig layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not (radius > 0.0 and math.isfinite(radius)):
        raise ValueError(f"rig radius must be a positive number of metres, got {radius!r}")
    if not -90.0 <= elev_min <= elev_max <= 90.0:
        raise ValueError(f"elevation range must satisfy -90 <= min <= max <= 90 degrees, "
                         f"got [{elev_min}, {elev_max}]")
    if layout == "RINGS":
        if rings < 1 or per_ring < 1:
            raise ValueError(f"rings and cameras per ring must be >= 1, got {rings} x {per_ring}")
        elevs = np.radians(np.linspace(elev_min, elev_max, rings) if rings > 1
                           else np.array([(elev_min + elev_max) / 2.0]))
        dirs = []
        for k, el in enumerate(elevs):
            az = (np.arange(per_ring) + 0.5 * (k % 2)) * (2.0 * math.pi / per_ring)
            dirs.append(np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                  np.full(per_ring, np.sin(el))], axis=1))
        d = np.concatenate(dirs, axis=0)
    else:
        if count < 1:
            raise ValueError(f"camera count must be >= 1, got {count}")
        if layout == "FIBONACCI":
            z_lo, z_hi = -1.0, 1.0
        else:
            z_lo, z_hi = math.sin(math.radians(elev_min)), math.sin(math.radians(elev_max))
        # Uniform in z is uniform in area on a sphere band (Archimedes); start at the top.
        t = (np.arange(count) + 0.5) / count
        d = _spiral(z_hi - t * (z_hi - z_lo))
    return np.asarray(center, dtype=np.float64)[None, :] + radius * d


def look_at_matrix(position: Sequence[float], center: Sequence[float]) -> np.ndarray:
    """World matrix (float64[4,4]) of a Blender camera at ``position`` looking at ``center``.

    The image's up is kept as close to world +Z as possible (shared.cameras.look_at), then the
    OpenCV pose is turned into Blender camera axes (local -Z forward, +Y up).
    """
    return np.linalg.inv(BLENDER_TO_OPENCV @ look_at(np.asarray(position, dtype=np.float64),
                                                     np.asarray(center, dtype=np.float64)))


def fit_radius(bounds_radius: float, lens: float, sensor_width: float,
               width: int, height: int, margin: float = 1.15) -> float:
    """Distance (metres) at which a sphere of ``bounds_radius`` fills the frame with ``margin``.

    Uses the narrower field of view of a camera with sensor fit AUTO (the sensor width spans the
    longer image side). ``margin`` > 1 leaves a border around the subject.
    """
    if bounds_radius <= 0 or lens <= 0 or sensor_width <= 0 or width < 1 or height < 1:
        raise ValueError("fit_radius needs positive bounds radius, lens, sensor width and resolution")
    short_sensor = sensor_width * min(width, height) / max(width, height)
    half_fov = math.atan(0.5 * short_sensor / lens)
    return margin * bounds_radius / math.sin(half_fov)


def max_angular_gap(directions: np.ndarray, probes: int = 4000) -> float:
    """Largest angle (radians) from any direction on the sphere to its nearest rig direction.

    Measured on a dense Fibonacci probe set; a coverage figure for tests and the UI.
    """
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    t = (np.arange(probes) + 0.5) / probes
    p = _spiral(1.0 - 2.0 * t)
    return float(np.arccos(np.clip((p @ d.T).max(axis=1), -1.0, 1.0)).max())


# --------------------------------------------------------------------------- Blender side

GEOMETRY_TYPES = frozenset({"MESH", "CURVE", "SURFACE", "META", "FONT"})   # object types with a mesh


@contextlib.contextmanager
def evaluated_mesh(obj, depsgraph) -> Iterator[tuple]:
    """``(evaluated object, its temporary mesh)`` of ``obj`` with modifiers applied; the mesh is
    freed when the ``with`` block ends."""
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        yield ev, mesh
    finally:
        ev.to_mesh_clear()


def mesh_world_vertices(ev, mesh) -> np.ndarray:
    """The vertices of ``mesh`` (of evaluated object ``ev``) in world space, float64[V,3]."""
    n = len(mesh.vertices)
    co = np.empty(n * 3, dtype=np.float32)
    if n:
        mesh.vertices.foreach_get("co", co)
    m = np.array(ev.matrix_world, dtype=np.float64)
    return co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]


def world_vertices(context, objects: Iterable) -> np.ndarray:
    """World-space vertices (float64[V,3]) of the evaluated geometry of ``objects``.

    Modifiers are applied (depsgraph-evaluated). Non-geometry objects are skipped.
    """
    depsgraph = context.evaluated_depsgraph_get()
    parts = []
    for obj in objects:
        if obj.type in GEOMETRY_TYPES:
            with evaluated_mesh(obj, depsgraph) as (ev, mesh):
                parts.append(mesh_world_vertices(ev, mesh))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 3))


def world_bounds(context, objects: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """World-space AABB (min, max; float64[3] each) of the evaluated meshes among ``objects``.

    Raises ValueError when none of the objects has geometry.
    """
    v = world_vertices(context, objects)
    if len(v) == 0:
        raise ValueError("no mesh geometry among the objects: select at least one mesh")
    return v.min(axis=0), v.max(axis=0)


def is_rig(obj) -> bool:
    return obj is not None and obj.type == "EMPTY" and bool(obj.get(RIG_TAG, False))


def rig_cameras(rig) -> list:
    """The rig's camera objects, in name order (the capture order)."""
    return sorted((c for c in rig.children if c.type == "CAMERA"), key=lambda c: c.name)


def rig_resolution(rig) -> tuple[int, int]:
    res = rig.get(RES_KEY)
    if res is None:
        raise ValueError(f"rig {rig.name!r} has no {RES_KEY} property")
    return int(res[0]), int(res[1])


def rig_targets(rig) -> list[str]:
    """Names of the objects the rig was built around (may be empty)."""
    try:
        return list(json.loads(rig.get(TARGETS_KEY, "[]")))
    except (TypeError, ValueError):
        return []


def find_rig(context):
    """The active rig: the active object if it is a rig (or a rig camera), else the scene's first."""
    obj = context.active_object if hasattr(context, "active_object") else None
    if is_rig(obj):
        return obj
    if obj is not None and is_rig(obj.parent):
        return obj.parent
    rigs = sorted((o for o in context.scene.objects if is_rig(o)), key=lambda o: o.name)
    return rigs[0] if rigs else None


def create_rig(context, positions: np.ndarray, center: Sequence[float], *, lens: float = 50.0,
               resolution: tuple[int, int] = (256, 256), name: str = "SplatRig",
               targets: Sequence[str] = (), clip_end: float | None = None):
    """Build a rig: one empty at ``center`` and a camera per position looking at it.

    Returns the empty. Cameras are children of the empty with identity parent-inverse, so
    moving/rotating/scaling the empty moves the whole rig.
    """
    scene = context.scene
    coll = context.collection if getattr(context, "collection", None) else scene.collection
    rig = bpy.data.objects.new(name, None)
    rig.empty_display_type = "SPHERE"
    c = np.asarray(center, dtype=np.float64)
    rig.location = Vector(c)
    rig[RIG_TAG] = True
    rig[RES_KEY] = [int(resolution[0]), int(resolution[1])]
    rig[TARGETS_KEY] = json.dumps(list(targets))
    coll.objects.link(rig)
    radius = float(np.linalg.norm(positions - c[None], axis=1).max()) if len(positions) else 1.0
    rig.empty_display_size = max(0.05 * radius, 1e-3)
    for i, pos in enumerate(positions):
        cam_data = bpy.data.cameras.new(f"{name}_cam_{i:03d}")
        cam_data.lens = lens
        cam_data.sensor_fit = "AUTO"
        cam_data.display_size = max(0.08 * radius, 1e-3)
        if clip_end is not None:
            cam_data.clip_end = clip_end
        cam = bpy.data.objects.new(f"{name}_cam_{i:03d}", cam_data)
        coll.objects.link(cam)
        cam.parent = rig
        local = look_at_matrix(pos, c)
        local[:3, 3] -= c           # relative to the empty (identity rotation/scale at creation)
        cam.matrix_parent_inverse = Matrix.Identity(4)
        cam.matrix_basis = Matrix(local.tolist())
    return rig


def _layout_items():
    return [("FIBONACCI", "Fibonacci sphere", "Evenly spread over the whole sphere"),
            ("HEMISPHERE", "Upper hemisphere", "Evenly spread over an elevation band (default: upper half)"),
            ("RINGS", "Rings", "Rings of cameras at evenly spaced elevations")]


if bpy is not None:
    class SPLATBRIDGE_OT_add_camera_rig(bpy.types.Operator):
        """Add cameras around the selected objects (or a chosen centre), all looking at its centre"""
        bl_idname = "splatbridge.add_camera_rig"
        bl_label = "Add Camera Rig"
        bl_options = {"REGISTER", "UNDO"}

        layout_kind: EnumProperty(name="Layout", items=_layout_items(), default="FIBONACCI")
        count: IntProperty(name="Cameras", default=32, min=1, max=2000,
                           description="Number of cameras (Fibonacci / hemisphere)")
        rings: IntProperty(name="Rings", default=3, min=1, max=64)
        per_ring: IntProperty(name="Per Ring", default=12, min=1, max=512)
        elev_min: FloatProperty(name="Min Elevation", default=0.0, min=-90.0, max=90.0,
                                description="Lowest camera elevation in degrees (hemisphere, rings)")
        elev_max: FloatProperty(name="Max Elevation", default=90.0, min=-90.0, max=90.0,
                                description="Highest camera elevation in degrees (hemisphere, rings)")
        center_mode: EnumProperty(name="Centre", default="SELECTION", items=[
            ("SELECTION", "Selection", "Centre of the selected objects' world bounds"),
            ("CURSOR", "3D Cursor", "The 3D cursor"),
            ("CUSTOM", "Custom", "A point given below")])
        center: FloatVectorProperty(name="Point", size=3, subtype="TRANSLATION")
        radius: FloatProperty(name="Radius", default=0.0, min=0.0, unit="LENGTH",
                              description="Camera distance from the centre; 0 = fit the selection "
                                          "in frame")
        margin: FloatProperty(name="Margin", default=1.15, min=1.0, max=5.0,
                              description="Auto radius: how much room to leave around the subject")
        lens: FloatProperty(name="Lens", default=50.0, min=1.0, max=5000.0, unit="CAMERA")
        resolution: bpy.props.IntVectorProperty(name="Resolution", size=2, default=(256, 256),
                                                min=8, max=8192,
                                                description="Capture resolution (applied at capture)")

        def draw(self, context):
            lay = self.layout
            lay.prop(self, "layout_kind")
            if self.layout_kind == "RINGS":
                lay.prop(self, "rings")
                lay.prop(self, "per_ring")
            else:
                lay.prop(self, "count")
            if self.layout_kind != "FIBONACCI":
                lay.prop(self, "elev_min")
                lay.prop(self, "elev_max")
            lay.prop(self, "center_mode")
            if self.center_mode == "CUSTOM":
                lay.prop(self, "center")
            lay.prop(self, "radius")
            if self.radius == 0.0:
                lay.prop(self, "margin")
            lay.prop(self, "lens")
            lay.prop(self, "resolution")

        def execute(self, context):
            selected = [o for o in context.selected_objects if not is_rig(o) and o.type != "CAMERA"]
            verts = world_vertices(context, selected)
            bounds = (verts.min(axis=0), verts.max(axis=0)) if len(verts) else None
            if self.center_mode == "SELECTION":
                if bounds is None:
                    self.report({"ERROR"}, "Add Camera Rig: select at least one mesh object, "
                                           "or centre the rig on the 3D cursor / a custom point")
                    return {"CANCELLED"}
                center = (bounds[0] + bounds[1]) / 2.0
            elif self.center_mode == "CURSOR":
                center = np.array(context.scene.cursor.location, dtype=np.float64)
            else:
                center = np.array(self.center, dtype=np.float64)
            radius = self.radius
            if radius == 0.0:
                if bounds is None:
                    self.report({"ERROR"}, "Add Camera Rig: automatic radius needs selected "
                                           "mesh objects; set a radius instead")
                    return {"CANCELLED"}
                # Smallest sphere around the chosen centre that holds every vertex.
                r_obj = max(float(np.linalg.norm(verts - center, axis=1).max()), 1e-4)
                radius = fit_radius(r_obj, self.lens, 36.0, *self.resolution, margin=self.margin)
            try:
                pos = rig_positions(self.layout_kind, self.count, radius, center=center,
                                    rings=self.rings, per_ring=self.per_ring,
                                    elev_min=self.elev_min, elev_max=self.elev_max)
            except ValueError as e:
                self.report({"ERROR"}, f"Add Camera Rig: {e}")
                return {"CANCELLED"}
            for o in context.selected_objects:
                o.select_set(False)
            rig = create_rig(context, pos, center, lens=self.lens,
                             resolution=tuple(self.resolution),
                             targets=[o.name for o in selected],
                             clip_end=max(100.0, 4.0 * radius))
            rig.select_set(True)
            context.view_layer.objects.active = rig
            self.report({"INFO"}, f"Added a rig of {len(pos)} cameras at radius {radius:.3g} m")
            return {"FINISHED"}

    CLASSES = (SPLATBRIDGE_OT_add_camera_rig,)
else:  # pragma: no cover
    CLASSES = ()


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
