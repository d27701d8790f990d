"""Operations on splat objects: delete, hide/unhide, lock/unlock, separate, duplicate, merge, apply
transform and colour grading (with a live viewport preview).

Each is a plain function (tests and scripts call them; no window needed) and an operator with
``{"REGISTER", "UNDO"}`` (Blender's undo restores the exact arrays: the splats and their state are
object data). The maths is in ``shared.edit_ops`` and ``shared.color_grade``; state (selection, hidden,
locked, labels) travels with the splats through ``splat_state.SplatState``. Operators work from Object
Mode and Edit Mode alike (on the active splat object; merge on the selected ones).

Spaces: splats are edited in their object's own space; merge expresses each part in the target's space
(``inverse(target.matrix_world) @ part.matrix_world``, SH rotated), apply transform bakes the object's
local transform (``matrix_basis``) into the splats and resets it, so the world stays where it was.
"""
from __future__ import annotations

import numpy as np

from . import splat_object, splat_state
from .shared import color_grade, edit_ops
from .shared.splats import SplatError, Splats
from .splat_state import SplatState

try:
    import bpy
    from bpy.props import BoolProperty, FloatProperty, PointerProperty
except ImportError:  # pragma: no cover
    bpy = None


class SplatEditError(ValueError):
    """An operation that cannot run on this object or selection (the message says why)."""


# ------------------------------------------------------------------------------------------------
# plain functions
# ------------------------------------------------------------------------------------------------

def read(obj) -> tuple[Splats, SplatState]:
    """The splats of ``obj`` in object space and their state."""
    if not splat_object.is_splat_object(obj):
        raise SplatEditError(f"{getattr(obj, 'name', obj)!r} is not a splat object")
    with splat_state.object_mode(obj):
        return splat_object.read_splats_from_object(obj, apply_transform=False), splat_state.read_state(obj)


def write(obj, splats: Splats, state: SplatState) -> None:
    """Replace the splats of ``obj`` (object space) and their state."""
    if len(state) != len(splats):
        raise SplatEditError(f"state for {len(state)} splats, {len(splats)} splats")
    with splat_state.object_mode(obj):
        splat_object.update_splat_object(obj, splats)
        splat_state.write_state(obj, state)


def _selection(obj, state: SplatState, what: str) -> np.ndarray:
    sel = state.selected & state.editable
    if not sel.any():
        raise SplatEditError(f"{what}: no splats of {obj.name!r} are selected (select some in Edit Mode "
                             "or with Select by...)")
    return sel


def delete_selected(obj) -> int:
    """Delete the selected splats; returns how many."""
    splats, state = read(obj)
    sel = _selection(obj, state, "Delete")
    write(obj, edit_ops.delete(splats, sel), state.subset(~sel))
    return int(sel.sum())


def hide_selected(obj, unselected: bool = False) -> int:
    """Hide the selected (or, with ``unselected``, the other visible) splats; returns how many."""
    state = splat_state.read_state(obj)
    target = (~state.selected & ~state.hidden) if unselected else (state.selected & ~state.hidden)
    splat_state.set_hidden(obj, state.hidden | target)
    return int(target.sum())


def reveal(obj) -> int:
    """Unhide every hidden splat; the revealed ones become the selection (as Blender's Reveal)."""
    state = splat_state.read_state(obj)
    shown = state.hidden.copy()
    splat_state.set_hidden(obj, np.zeros(len(state), bool))
    splat_state.set_selected(obj, shown)
    return int(shown.sum())


def lock_selected(obj) -> int:
    """Lock the selected splats (they stay visible and no tool selects or changes them)."""
    state = splat_state.read_state(obj)
    sel = state.selected & ~state.hidden
    splat_state.set_locked(obj, state.locked | sel)
    return int(sel.sum())


def unlock_all(obj) -> int:
    state = splat_state.read_state(obj)
    splat_state.set_locked(obj, np.zeros(len(state), bool))
    return int(state.locked.sum())


def _new_like(context, obj, splats: Splats, state: SplatState, name: str):
    """A new splat object beside ``obj`` (same representation, collections and world matrix)."""
    from .job_objects import unique_object_name
    colls = list(obj.users_collection) or [context.scene.collection]
    new = splat_object.create_splat_object(context, unique_object_name(name), splats, collection=colls[0],
                                           native=obj.type == "POINTCLOUD")
    for c in colls[1:]:
        c.objects.link(new)
    new.matrix_world = obj.matrix_world.copy()
    splat_state.write_state(new, state)
    display = getattr(obj, "splatbridge_display", None)
    if display is not None:
        for prop in display.bl_rna.properties:
            if prop.identifier != "rna_type" and not prop.is_readonly:
                setattr(new.splatbridge_display, prop.identifier, getattr(display, prop.identifier))
    return new


def separate_selected(context, obj, name: str = ""):
    """Move the selected splats into a new object (same world matrix: nothing moves); returns it."""
    splats, state = read(obj)
    sel = _selection(obj, state, "Separate")
    rest, part = edit_ops.separate(splats, sel)
    write(obj, rest, state.subset(~sel))
    part_state = state.subset(sel)
    part_state.selected[:] = False
    return _new_like(context, obj, part, part_state, name or obj.name)


def duplicate_selected(obj) -> int:
    """Append copies of the selected splats; the copies become the selection. Returns how many."""
    splats, state = read(obj)
    sel = _selection(obj, state, "Duplicate")
    out, new_sel = edit_ops.duplicate(splats, sel)
    copies = state.subset(sel)
    merged = SplatState.concatenate([state, copies])
    merged.selected = new_sel
    write(obj, out, merged)
    return int(sel.sum())


def merge_objects(context, target, others) -> list[slice]:
    """Join splat objects ``others`` into ``target``, each keeping its place in the world (SH rotated
    into the target's space; a part with the target's matrix keeps its values bit for bit). The others
    are removed. Returns the slice each part (target first) occupies in the result."""
    others = [o for o in others if o is not target]
    if not others:
        raise SplatEditError("Merge: select at least two splat objects (the active one receives the others)")
    parts, states = [], []
    for o in [target, *others]:
        s, st = read(o)
        parts.append((s, np.array(o.matrix_world, dtype=np.float64)))
        states.append(st)
    try:
        merged, slices = edit_ops.merge(parts, parts[0][1])
    except SplatError as exc:
        raise SplatEditError(f"Merge: {exc}") from None
    write(target, merged, SplatState.concatenate(states))
    for o in others:
        data = o.data
        bpy.data.objects.remove(o)
        if data.users == 0:
            (bpy.data.meshes if isinstance(data, bpy.types.Mesh) else bpy.data.pointclouds).remove(data)
    return slices


def apply_transform(obj) -> None:
    """Bake the object's local transform (location, rotation, uniform scale) into its splats (means,
    rotations, scales and SH rotated) and reset it: the splats stay where they were in the world."""
    splats, state = read(obj)
    basis = np.array(obj.matrix_basis, dtype=np.float64)
    try:
        baked = edit_ops.apply_transform(splats, basis)
    except SplatError as exc:
        raise SplatEditError(f"Apply Transform on {obj.name!r}: {exc}") from None
    write(obj, baked, state)
    from mathutils import Matrix
    obj.matrix_basis = Matrix.Identity(4)


def grade_object(obj, grade: color_grade.Grade, only_selected: bool = False) -> None:
    """Colour-grade the splats of ``obj`` (all editable ones, or only the selected), every SH band."""
    splats, state = read(obj)
    mask = state.editable & (state.selected if only_selected else True)
    if only_selected and not mask.any():
        raise SplatEditError(f"Colour Grade: no splats of {obj.name!r} are selected")
    graded = color_grade.grade(splats, grade, None if mask.all() else mask)
    write(obj, graded, state)


def grade_settings(group) -> color_grade.Grade:
    """The ``Grade`` of a ``scene.splatbridge_grade`` group."""
    return color_grade.Grade(exposure=group.exposure, contrast=group.contrast, saturation=group.saturation,
                             hue=group.hue, temperature=group.temperature)


def preview_grade(obj) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(A, b, only_selected) of the grade previewed on ``obj`` in the viewport, or None: the scene's
    grading settings with Preview on apply to the active object and the selected splat objects."""
    scene = getattr(bpy.context, "scene", None) if bpy is not None else None
    group = getattr(scene, "splatbridge_grade", None)
    if group is None or not group.preview:
        return None
    layer = bpy.context.view_layer
    if not (obj == layer.objects.active or obj.select_get(view_layer=layer)):
        return None
    try:
        g = grade_settings(group)
    except ValueError:
        return None
    if g.neutral:
        return None
    a, b = color_grade.grade_matrix(g)
    return a, b, bool(group.only_selected)


# ------------------------------------------------------------------------------------------------
# operators
# ------------------------------------------------------------------------------------------------

_active_splat = splat_state.active_splat


if bpy is not None:
    class _SplatOp:
        bl_options = {"REGISTER", "UNDO"}

        @classmethod
        def poll(cls, context):
            if _active_splat(context) is None:
                cls.poll_message_set("The active object must be a splat object")
                return False
            return True

        def execute(self, context):
            """``run`` on the active splat object, in Object Mode (Edit Mode is left and entered again)."""
            obj = _active_splat(context)
            try:
                with splat_state.object_mode(obj):
                    message = self.run(context, obj)
            except (SplatEditError, SplatError, ValueError) as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            if message is not None:
                self.report({"INFO"}, self.describe(message))
            return {"FINISHED"}

        def describe(self, result) -> str:
            """The report of ``run``'s result (a message)."""
            return str(result)

    class SPLATBRIDGE_OT_splat_delete(_SplatOp, bpy.types.Operator):
        """Delete the selected splats"""
        bl_idname = "splatbridge.splat_delete"
        bl_label = "Delete Splats"

        def run(self, context, obj):
            return f"Deleted {delete_selected(obj)} splats"

    class SPLATBRIDGE_OT_splat_hide(_SplatOp, bpy.types.Operator):
        """Hide the selected splats (they are not drawn and cannot be selected)"""
        bl_idname = "splatbridge.splat_hide"
        bl_label = "Hide Splats"

        unselected: BoolProperty(name="Unselected", default=False, description="Hide the unselected splats instead")

        def run(self, context, obj):
            return f"Hid {hide_selected(obj, self.unselected)} splats"

    class SPLATBRIDGE_OT_splat_reveal(_SplatOp, bpy.types.Operator):
        """Show every hidden splat again (they become the selection)"""
        bl_idname = "splatbridge.splat_reveal"
        bl_label = "Unhide Splats"

        def run(self, context, obj):
            return f"Revealed {reveal(obj)} splats"

    class SPLATBRIDGE_OT_splat_lock(_SplatOp, bpy.types.Operator):
        """Lock the selected splats: drawn greyed, never selected or changed"""
        bl_idname = "splatbridge.splat_lock"
        bl_label = "Lock Splats"

        def run(self, context, obj):
            return f"Locked {lock_selected(obj)} splats"

    class SPLATBRIDGE_OT_splat_unlock(_SplatOp, bpy.types.Operator):
        """Unlock every locked splat"""
        bl_idname = "splatbridge.splat_unlock"
        bl_label = "Unlock Splats"

        def run(self, context, obj):
            return f"Unlocked {unlock_all(obj)} splats"

    class SPLATBRIDGE_OT_splat_separate(_SplatOp, bpy.types.Operator):
        """Move the selected splats into a new splat object"""
        bl_idname = "splatbridge.splat_separate"
        bl_label = "Separate Splats"

        def run(self, context, obj):
            new = separate_selected(context, obj)
            return f"Separated {splat_object.splat_count(new)} splats into {new.name!r}"

    class SPLATBRIDGE_OT_splat_duplicate(_SplatOp, bpy.types.Operator):
        """Duplicate the selected splats (the copies become the selection)"""
        bl_idname = "splatbridge.splat_duplicate"
        bl_label = "Duplicate Splats"

        def run(self, context, obj):
            return f"Duplicated {duplicate_selected(obj)} splats"

    class SPLATBRIDGE_OT_splat_merge(_SplatOp, bpy.types.Operator):
        """Join the selected splat objects into the active one, each keeping its place in the world"""
        bl_idname = "splatbridge.splat_merge"
        bl_label = "Merge Splat Objects"

        def run(self, context, obj):
            if obj.mode == "EDIT":
                raise SplatEditError("Merge: leave Edit Mode first")
            others = [o for o in context.selected_objects if o is not obj and splat_object.is_splat_object(o)]
            slices = merge_objects(context, obj, others)
            return f"Merged {len(slices)} objects into {obj.name!r}"

    class SPLATBRIDGE_OT_splat_apply_transform(_SplatOp, bpy.types.Operator):
        """Bake the object's location, rotation and scale into its splats (SH rotated too)"""
        bl_idname = "splatbridge.splat_apply_transform"
        bl_label = "Apply Transform to Splats"

        def run(self, context, obj):
            apply_transform(obj)
            return f"Applied the transform of {obj.name!r}"

    class SPLATBRIDGE_OT_splat_color_grade(_SplatOp, bpy.types.Operator):
        """Apply the colour grade (exposure, contrast, saturation, hue, temperature) to the splats, every
        SH band; the settings go back to neutral"""
        bl_idname = "splatbridge.splat_color_grade"
        bl_label = "Apply Colour Grade"

        def run(self, context, obj):
            group = context.scene.splatbridge_grade
            grade_object(obj, grade_settings(group), group.only_selected)
            reset_grade(group)
            return f"Colour-graded {obj.name!r}"

    def _redraw(self, context) -> None:
        for window in getattr(context.window_manager, "windows", []):
            for area in window.screen.areas:
                if area.type == "VIEW_3D":
                    area.tag_redraw()

    class SPLATBRIDGE_PG_grade(bpy.types.PropertyGroup):
        """Colour grading settings (neutral by default) and the viewport preview switch."""

        exposure: FloatProperty(name="Exposure", default=0.0, min=-10.0, max=10.0, soft_min=-4, soft_max=4,
                                update=_redraw, description="Exposure in stops (linear light x 2^stops)")
        contrast: FloatProperty(name="Contrast", default=1.0, min=0.0, max=10.0, soft_max=3.0, update=_redraw,
                                description="Contrast about linear mid-grey 0.18 (1: unchanged)")
        saturation: FloatProperty(name="Saturation", default=1.0, min=0.0, max=10.0, soft_max=3.0,
                                  update=_redraw, description="Saturation (0: grey, 1: unchanged)")
        hue: FloatProperty(name="Hue", default=0.0, min=-180.0, max=180.0, update=_redraw,
                           description="Hue rotation in degrees about the grey axis")
        temperature: FloatProperty(name="Temperature", default=0.0, min=-1.0, max=1.0, update=_redraw,
                                   description="White balance: warmer (> 0) or cooler (< 0)")
        only_selected: BoolProperty(name="Only Selected Splats", default=False, update=_redraw,
                                    description="Grade only the splats selected in Edit Mode")
        preview: BoolProperty(name="Preview", default=True, update=_redraw,
                              description="Show the grade in the viewport before applying it")


def reset_grade(group) -> None:
    group.exposure, group.contrast, group.saturation, group.hue, group.temperature = 0.0, 1.0, 1.0, 0.0, 0.0


CLASSES = () if bpy is None else (
    SPLATBRIDGE_OT_splat_delete, SPLATBRIDGE_OT_splat_hide, SPLATBRIDGE_OT_splat_reveal,
    SPLATBRIDGE_OT_splat_lock, SPLATBRIDGE_OT_splat_unlock, SPLATBRIDGE_OT_splat_separate,
    SPLATBRIDGE_OT_splat_duplicate, SPLATBRIDGE_OT_splat_merge, SPLATBRIDGE_OT_splat_apply_transform,
    SPLATBRIDGE_OT_splat_color_grade, SPLATBRIDGE_PG_grade)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.splatbridge_grade = PointerProperty(type=SPLATBRIDGE_PG_grade)
    from .viewport import draw
    draw.GRADE_PREVIEW = preview_grade


def unregister() -> None:
    from .viewport import draw
    if draw.GRADE_PREVIEW is preview_grade:
        draw.GRADE_PREVIEW = None
    if hasattr(bpy.types.Scene, "splatbridge_grade"):
        del bpy.types.Scene.splatbridge_grade
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
