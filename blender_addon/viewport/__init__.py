"""Real Gaussian-splat drawing in Blender's 3D viewport.

Modules: ``settings`` (per-object display properties), ``sort`` (back-to-front order, worker
thread), ``gpu_data`` (texture packing and upload), ``shaders`` (GLSL), ``matrices`` (OpenGL matrices
of a shared camera), ``draw`` (cache, draw calls, the POST_VIEW handler).
"""
from __future__ import annotations

from . import settings

try:
    import bpy
except ImportError:  # pragma: no cover
    bpy = None

_handle = None


def register() -> None:
    global _handle
    from . import draw

    settings.register()
    _handle = bpy.types.SpaceView3D.draw_handler_add(draw.draw_viewport, (), "WINDOW", "POST_VIEW")
    if draw.depsgraph_update not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(draw.depsgraph_update)
    if not bpy.app.timers.is_registered(draw.redraw_timer):
        bpy.app.timers.register(draw.redraw_timer, first_interval=0.1, persistent=True)


def unregister() -> None:
    global _handle
    from . import draw

    if _handle is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_handle, "WINDOW")
        _handle = None
    if draw.depsgraph_update in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(draw.depsgraph_update)
    if bpy.app.timers.is_registered(draw.redraw_timer):
        bpy.app.timers.unregister(draw.redraw_timer)
    draw.DRAWER.clear()
    settings.unregister()
