"""Select splats by: inside/outside a closed mesh, opacity, size, colour similarity to a picked splat,
floaters; invert, grow, shrink. Blender's own click/box/circle/lasso tools select splats in Edit Mode
(they are the mesh's vertices or the point cloud's points); these operators add the rest.

Each is a plain function returning the new selection (bool[N]) and an operator with
``{"REGISTER", "UNDO"}`` on the active splat object, from Object or Edit Mode. ``mode`` combines the
result with the current selection: SET, ADD, SUBTRACT, INTERSECT. Hidden and locked splats are never
selected (``splat_state``). The masks come from ``shared.selection``, computed in the object's own space:
volumes are given relative to it (``inverse(splat.matrix_world) @ volume.matrix_world``) and sizes in
world metres are divided by the object's (uniform) world scale.
"""
from __future__ import annotations

import numpy as np

from . import splat_object, splat_state
from .shared import selection as sel
from .shared.edit_ops import relative_matrix
from .shared.splats import Splats

try:
    import bpy
    from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
except ImportError:  # pragma: no cover
    bpy = None

MODES = ("SET", "ADD", "SUBTRACT", "INTERSECT")


class SelectError(ValueError):
    """A selection that cannot be made (the message says why)."""


def combine(current: np.ndarray, new: np.ndarray, mode: str) -> np.ndarray:
    """``new`` combined with ``current`` by ``mode`` (one of ``MODES``)."""
    if mode == "SET":
        return new.copy()
    if mode == "ADD":
        return current | new
    if mode == "SUBTRACT":
        return current & ~new
    if mode == "INTERSECT":
        return current & new
    raise SelectError(f"selection mode must be one of {', '.join(MODES)}, got {mode!r}")


def apply(obj, new: np.ndarray, mode: str = "SET") -> np.ndarray:
    """Combine ``new`` with the current selection of ``obj`` and store it; returns what is selected
    (hidden and locked splats never are)."""
    state = splat_state.read_state(obj)
    out = combine(state.selected, np.asarray(new, bool), mode) & state.editable
    splat_state.set_selected(obj, out)
    return out


def _local(obj) -> Splats:
    """The splats of ``obj`` in object space without their higher SH bands (no selection needs them)."""
    with splat_state.object_mode(obj):
        return splat_object.read_splats_from_object(obj, apply_transform=False, sh=False)


def world_scale(obj) -> float:
    """The (uniform) scale of the object's world matrix."""
    m = np.array(obj.matrix_world, dtype=np.float64)[:3, :3]
    return float(abs(np.linalg.det(m)) ** (1.0 / 3.0)) or 1.0


def mesh_triangles(volume) -> tuple[np.ndarray, np.ndarray]:
    """(vertices f64[V,3] object space, triangles int[T,3]) of mesh object ``volume`` as evaluated
    (modifiers applied)."""
    if volume.type != "MESH":
        raise SelectError(f"{volume.name!r} is not a mesh object: select inside a closed mesh (a cube, a sphere...)")
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = volume.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    try:
        mesh.calc_loop_triangles()
        v = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", v)
        t = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", t)
    finally:
        ev.to_mesh_clear()
    if len(t) == 0:
        raise SelectError(f"mesh {volume.name!r} has no faces")
    return v.reshape(-1, 3).astype(np.float64), t.reshape(-1, 3)


def select_inside(obj, volume, outside: bool = False, mode: str = "SET") -> np.ndarray:
    """Splats inside (or outside) closed mesh object ``volume`` (any transform)."""
    vertices, triangles = mesh_triangles(volume)
    rel = relative_matrix(np.array(obj.matrix_world), np.array(volume.matrix_world))
    try:
        inside = sel.inside_mesh(_local(obj), vertices, triangles, rel)
    except ValueError as exc:
        raise SelectError(f"{volume.name!r}: {exc}") from None
    return apply(obj, ~inside if outside else inside, mode)


def select_by_opacity(obj, low: float = 0.0, high: float = 1.0, mode: str = "SET") -> np.ndarray:
    """Splats with opacity (0..1) in [low, high]."""
    return apply(obj, sel.by_opacity(_local(obj), low, high), mode)


def select_by_size(obj, low: float = 0.0, high: float | None = None, measure: str = "max",
                   mode: str = "SET") -> np.ndarray:
    """Splats whose size in world metres (largest standard deviation, or the geometric mean) is in
    [low, high] (``high`` None: unbounded)."""
    s = world_scale(obj)
    return apply(obj, sel.by_size(_local(obj), low / s, None if high is None else high / s, measure), mode)


def nearest_splat(obj, point_world) -> int:
    """Index of the splat of ``obj`` whose centre is nearest to ``point_world`` (e.g. the 3D cursor)."""
    splats = _local(obj)
    if len(splats) == 0:
        raise SelectError(f"{obj.name!r} has no splats")
    inv = np.linalg.inv(np.array(obj.matrix_world, dtype=np.float64))
    p = inv[:3, :3] @ np.asarray(point_world, np.float64) + inv[:3, 3]
    d = splats.means.astype(np.float64) - p
    return int(np.argmin(np.einsum("ij,ij->i", d, d)))


def select_by_color(obj, index: int, tolerance: float = 0.1, mode: str = "SET") -> np.ndarray:
    """Splats whose base colour is within ``tolerance`` (linear RGB distance) of splat ``index``'s."""
    splats = _local(obj)
    try:
        return apply(obj, sel.by_color_of(splats, index, tolerance), mode)
    except IndexError as exc:
        raise SelectError(str(exc)) from None


def select_floaters(obj, strength: float = 0.5, mode: str = "SET") -> np.ndarray:
    """Floaters: small disconnected clusters, nearly transparent and huge splats (``strength`` 0..1)."""
    return apply(obj, sel.floaters(_local(obj), strength), mode)


def select_invert(obj) -> np.ndarray:
    state = splat_state.read_state(obj)
    return apply(obj, sel.invert(state.selected), "SET")


def select_grow(obj, radius: float = 0.0) -> np.ndarray:
    """Grow the selection by its 3D neighbours (``radius`` world metres per step; 0: automatic)."""
    state = splat_state.read_state(obj)
    r = radius / world_scale(obj) if radius > 0 else None
    return apply(obj, sel.grow(_local(obj), state.selected, r), "SET")


def select_shrink(obj, radius: float = 0.0) -> np.ndarray:
    state = splat_state.read_state(obj)
    r = radius / world_scale(obj) if radius > 0 else None
    return apply(obj, sel.shrink(_local(obj), state.selected, r), "SET")


# ------------------------------------------------------------------------------------------------
# operators
# ------------------------------------------------------------------------------------------------

if bpy is not None:
    from .ops_splat_edit import _SplatOp

    _MODE_ITEMS = [("SET", "Set", "Replace the selection"), ("ADD", "Add", "Add to the selection"),
                   ("SUBTRACT", "Subtract", "Remove from the selection"),
                   ("INTERSECT", "Intersect", "Keep only what is selected and matches")]

    class _SelectOp(_SplatOp):
        def describe(self, result) -> str:
            return f"{int(result.sum())} of {len(result)} splats selected"

    class SPLATBRIDGE_OT_select_inside(_SelectOp, bpy.types.Operator):
        """Select the splats inside (or outside) a closed mesh object"""
        bl_idname = "splatbridge.select_inside"
        bl_label = "Select Inside Mesh"

        volume: StringProperty(name="Volume", description="Closed mesh object (default: another selected mesh)")
        outside: BoolProperty(name="Outside", default=False, description="Select the splats outside instead")
        mode: EnumProperty(name="Mode", items=_MODE_ITEMS, default="SET")

        def run(self, context, obj):
            vol = bpy.data.objects.get(self.volume) if self.volume else next(
                (o for o in context.selected_objects if o is not obj and o.type == "MESH"
                 and not splat_object.is_splat_object(o)), None)
            if vol is None:
                raise SelectError("choose a closed mesh object as the volume (or select one besides the splats)")
            return select_inside(obj, vol, self.outside, self.mode)

    class SPLATBRIDGE_OT_select_opacity(_SelectOp, bpy.types.Operator):
        """Select the splats whose opacity lies in a range"""
        bl_idname = "splatbridge.select_opacity"
        bl_label = "Select by Opacity"

        low: FloatProperty(name="Min", default=0.0, min=0.0, max=1.0)
        high: FloatProperty(name="Max", default=0.1, min=0.0, max=1.0)
        mode: EnumProperty(name="Mode", items=_MODE_ITEMS, default="SET")

        def run(self, context, obj):
            return select_by_opacity(obj, self.low, self.high, self.mode)

    class SPLATBRIDGE_OT_select_size(_SelectOp, bpy.types.Operator):
        """Select the splats whose size (world metres) lies in a range"""
        bl_idname = "splatbridge.select_size"
        bl_label = "Select by Size"

        low: FloatProperty(name="Min", default=0.0, min=0.0, subtype="DISTANCE", unit="LENGTH")
        high: FloatProperty(name="Max", default=0.0, min=0.0, subtype="DISTANCE", unit="LENGTH",
                            description="Largest size (0: no upper bound)")
        measure: EnumProperty(name="Measure", default="max", items=[
            ("max", "Largest Axis", "The largest standard deviation"),
            ("mean", "Mean", "The geometric mean of the three standard deviations")])
        mode: EnumProperty(name="Mode", items=_MODE_ITEMS, default="SET")

        def run(self, context, obj):
            return select_by_size(obj, self.low, self.high or None, self.measure, self.mode)

    class SPLATBRIDGE_OT_select_color(_SelectOp, bpy.types.Operator):
        """Select the splats coloured like the picked one (the splat nearest to the 3D cursor)"""
        bl_idname = "splatbridge.select_color"
        bl_label = "Select by Colour"

        index: IntProperty(name="Splat", default=-1, min=-1,
                           description="Index of the picked splat (-1: the one nearest to the 3D cursor)")
        tolerance: FloatProperty(name="Tolerance", default=0.1, min=0.0, max=1.8,
                                 description="Largest distance in linear RGB")
        mode: EnumProperty(name="Mode", items=_MODE_ITEMS, default="SET")

        def run(self, context, obj):
            index = self.index if self.index >= 0 else nearest_splat(obj, context.scene.cursor.location)
            return select_by_color(obj, index, self.tolerance, self.mode)

    class SPLATBRIDGE_OT_select_floaters(_SelectOp, bpy.types.Operator):
        """Select floaters: small disconnected clusters, nearly transparent and huge splats"""
        bl_idname = "splatbridge.select_floaters"
        bl_label = "Select Floaters"

        strength: FloatProperty(name="Strength", default=0.5, min=0.0, max=1.0, subtype="FACTOR")
        mode: EnumProperty(name="Mode", items=_MODE_ITEMS, default="SET")

        def run(self, context, obj):
            return select_floaters(obj, self.strength, self.mode)

    class SPLATBRIDGE_OT_select_invert(_SelectOp, bpy.types.Operator):
        """Invert the splat selection"""
        bl_idname = "splatbridge.select_invert"
        bl_label = "Invert Splat Selection"

        def run(self, context, obj):
            return select_invert(obj)

    class SPLATBRIDGE_OT_select_grow(_SelectOp, bpy.types.Operator):
        """Grow the splat selection by its neighbours in 3D"""
        bl_idname = "splatbridge.select_grow"
        bl_label = "Grow Splat Selection"

        radius: FloatProperty(name="Radius", default=0.0, min=0.0, subtype="DISTANCE", unit="LENGTH",
                              description="Reach per step (0: 3x the median size of the selected splats)")

        def run(self, context, obj):
            return select_grow(obj, self.radius)

    class SPLATBRIDGE_OT_select_shrink(_SelectOp, bpy.types.Operator):
        """Shrink the splat selection away from its border in 3D"""
        bl_idname = "splatbridge.select_shrink"
        bl_label = "Shrink Splat Selection"

        radius: FloatProperty(name="Radius", default=0.0, min=0.0, subtype="DISTANCE", unit="LENGTH",
                              description="Reach per step (0: 3x the median size of the selected splats)")

        def run(self, context, obj):
            return select_shrink(obj, self.radius)


CLASSES = () if bpy is None else (
    SPLATBRIDGE_OT_select_inside, SPLATBRIDGE_OT_select_opacity, SPLATBRIDGE_OT_select_size,
    SPLATBRIDGE_OT_select_color, SPLATBRIDGE_OT_select_floaters, SPLATBRIDGE_OT_select_invert,
    SPLATBRIDGE_OT_select_grow, SPLATBRIDGE_OT_select_shrink)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
