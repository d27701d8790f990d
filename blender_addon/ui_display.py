"""The "Splat Display" panel in the SplatBridge sidebar tab: viewport settings of the active
splat object (``Object.splatbridge_display``, registered by ``viewport.settings``)."""
from __future__ import annotations

import bpy

from .native_render import draw_toggle as draw_native_render_toggle
from .splat_object import NATIVE_SUPPORTED, is_mesh_splat_object, is_splat_object, splat_count, splat_sh_degree
from .viewport.draw import DRAWER
from .viewport.settings import PROP_NAME

CATEGORY = "SplatBridge"             # the sidebar tab shared with ui_panel
POINT_MODE_HINT = 5_000_000          # above this many splats, suggest point mode


class SPLATBRIDGE_PT_display(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_idname = "SPLATBRIDGE_PT_display"
    bl_label = "Splat Display"

    @classmethod
    def poll(cls, context):
        return is_splat_object(context.active_object) and hasattr(context.active_object, PROP_NAME)

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        settings = getattr(obj, PROP_NAME)
        count = splat_count(obj)
        try:
            stored = splat_sh_degree(obj)
            kind = "native" if obj.type == "POINTCLOUD" else "mesh"
            layout.label(text=f"{count:,} splats, SH degree {stored} ({kind})", icon="POINTCLOUD_DATA")
        except ValueError as exc:
            layout.label(text=str(exc), icon="ERROR")
        layout.prop(settings, "show")
        col = layout.column()
        col.active = settings.show
        col.prop(settings, "sh_degree")
        col.prop(settings, "scale")
        col.prop(settings, "point_mode")
        sub = col.column()
        sub.active = settings.point_mode
        sub.prop(settings, "point_size")
        if count > POINT_MODE_HINT and not settings.point_mode:
            col.label(text="Large set: point mode draws faster", icon="INFO")
        if is_mesh_splat_object(obj):
            draw_native_render_toggle(layout, obj)
            if NATIVE_SUPPORTED:
                layout.operator("splatbridge.convert_to_native", icon="POINTCLOUD_DATA")
        else:
            layout.label(text="F12 renders it with Blender's splat renderer", icon="RENDER_STILL")
            # Blender draws the point cloud itself too: Bounds (the default for objects SplatBridge
            # makes) leaves the viewport to the exact drawer above; Textured shows Blender's own
            layout.prop(obj, "display_type", text="Blender's Display")
        mib = DRAWER.gpu_bytes() / 2**20
        if mib:
            layout.label(text=f"GPU memory (all splat objects): {mib:,.0f} MiB")


def register() -> None:
    bpy.utils.register_class(SPLATBRIDGE_PT_display)


def unregister() -> None:
    if getattr(SPLATBRIDGE_PT_display, "is_registered", False):
        bpy.utils.unregister_class(SPLATBRIDGE_PT_display)
