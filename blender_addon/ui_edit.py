"""The "Edit Splats" panel of the SplatBridge sidebar tab and the Edit Mode menu entries: Select by,
the operations, colour grading (with its viewport preview switch), Split by Object and mask selection.
Panels only draw properties and call operators (``ops_select``, ``ops_splat_edit``, ``ops_split``)."""
from __future__ import annotations

import bpy

from . import splat_state
from .ui_panel import CATEGORY


class SPLATBRIDGE_PT_edit_splats(bpy.types.Panel):
    bl_idname = "SPLATBRIDGE_PT_edit_splats"
    bl_label = "Edit Splats"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_order = 3

    def draw(self, context):
        layout = self.layout
        obj = splat_state.active_splat(context)
        if obj is None:
            layout.label(text="Select a splat object", icon="INFO")
            return
        if obj.mode != "EDIT":
            layout.label(text="Edit Mode: click, box, circle, lasso", icon="RESTRICT_SELECT_OFF")
        col = layout.column(align=True)
        col.label(text="Select by")
        col.operator("splatbridge.select_inside", text="Inside Mesh", icon="MESH_CUBE")
        col.operator("splatbridge.select_opacity", text="Opacity")
        col.operator("splatbridge.select_size", text="Size")
        col.operator("splatbridge.select_color", text="Colour (at 3D Cursor)", icon="EYEDROPPER")
        col.operator("splatbridge.select_floaters", text="Floaters")
        row = col.row(align=True)
        row.operator("splatbridge.select_invert", text="Invert")
        row.operator("splatbridge.select_grow", text="Grow")
        row.operator("splatbridge.select_shrink", text="Shrink")
        col = layout.column(align=True)
        col.label(text="Selected splats")
        row = col.row(align=True)
        row.operator("splatbridge.splat_delete", text="Delete", icon="X")
        row.operator("splatbridge.splat_duplicate", text="Duplicate")
        row = col.row(align=True)
        row.operator("splatbridge.splat_hide", text="Hide", icon="HIDE_ON")
        row.operator("splatbridge.splat_reveal", text="Unhide", icon="HIDE_OFF")
        row = col.row(align=True)
        row.operator("splatbridge.splat_lock", text="Lock", icon="LOCKED")
        row.operator("splatbridge.splat_unlock", text="Unlock", icon="UNLOCKED")
        col.operator("splatbridge.splat_separate", text="Separate", icon="MOD_EXPLODE")
        col = layout.column(align=True)
        col.label(text="Objects")
        col.operator("splatbridge.splat_merge", text="Merge Selected into Active", icon="AUTOMERGE_ON")
        col.operator("splatbridge.splat_apply_transform", text="Apply Transform", icon="OBJECT_ORIGIN")
        col.operator("splatbridge.split_by_object", icon="OUTLINER_OB_GROUP_INSTANCE")
        row = col.row(align=True)
        row.operator("splatbridge.new_mask_image", text="New Mask", icon="IMAGE_DATA")
        row.operator("splatbridge.select_from_masks", text="Select from Masks")
        g = context.scene.splatbridge_grade
        col = layout.column(align=True)
        row = col.row()
        row.label(text="Colour Grade")
        row.prop(g, "preview", text="Preview")
        for name in ("exposure", "contrast", "saturation", "hue", "temperature"):
            col.prop(g, name)
        col.prop(g, "only_selected")
        col.operator("splatbridge.splat_color_grade", icon="COLOR")


def menu_edit_select(self, context) -> None:
    if splat_state.active_splat(context) is None:
        return
    layout = self.layout
    layout.separator()
    for idname, text in (("splatbridge.select_inside", "Splats Inside Mesh"),
                         ("splatbridge.select_opacity", "Splats by Opacity"),
                         ("splatbridge.select_size", "Splats by Size"),
                         ("splatbridge.select_color", "Splats by Colour"),
                         ("splatbridge.select_floaters", "Floater Splats")):
        layout.operator(idname, text=text)


_MENUS = ("VIEW3D_MT_select_edit_mesh", "VIEW3D_MT_select_edit_pointcloud")


def register() -> None:
    bpy.utils.register_class(SPLATBRIDGE_PT_edit_splats)
    for name in _MENUS:
        menu = getattr(bpy.types, name, None)
        if menu is not None:
            menu.append(menu_edit_select)


def unregister() -> None:
    for name in _MENUS:
        menu = getattr(bpy.types, name, None)
        if menu is not None:
            menu.remove(menu_edit_select)
    if getattr(SPLATBRIDGE_PT_edit_splats, "is_registered", False):
        bpy.utils.unregister_class(SPLATBRIDGE_PT_edit_splats)
