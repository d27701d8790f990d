"""The viewport's splat draw into an offscreen buffer, read back as an image (headless use: tests,
the demo, comparisons with a render). Blender's GPU module must be initialised (in background mode,
one render does that)."""
from __future__ import annotations

from typing import Callable

import numpy as np


_gpu_ready = False


def ensure_gpu_module() -> None:
    """Make Blender's ``gpu`` module usable in background mode (headless bpy), where shader and
    batch calls raise "not available in background mode" until some render has run: one 4x4
    Workbench render of an empty temporary scene (the fastest engine), the user's scenes untouched.
    A no-op with a UI, and after the first call."""
    global _gpu_ready
    import bpy

    if _gpu_ready or not bpy.app.background:
        return
    scene = bpy.data.scenes.new("splatbridge_gpu_init")
    cam = bpy.data.objects.new("splatbridge_gpu_init", bpy.data.cameras.new("splatbridge_gpu_init"))
    try:
        scene.collection.objects.link(cam)
        scene.camera = cam
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.render.resolution_x = scene.render.resolution_y = 4
        bpy.ops.render.render(write_still=False, scene=scene.name)
        _gpu_ready = True
    finally:
        cam_data = cam.data
        bpy.data.objects.remove(cam)
        bpy.data.cameras.remove(cam_data)
        bpy.data.scenes.remove(scene)


def read_offscreen(draw_fn: Callable[[], object], width: int, height: int) -> np.ndarray:
    """Run ``draw_fn()`` into a float offscreen of ``width`` x ``height`` pixels cleared to
    transparent black (depth 1); returns RGBA f32[H,W,4], premultiplied, row 0 at the top."""
    import gpu

    off = gpu.types.GPUOffScreen(width, height, format="RGBA32F")
    try:
        with off.bind():
            fb = gpu.state.active_framebuffer_get()
            fb.clear(color=(0.0, 0.0, 0.0, 0.0), depth=1.0)
            draw_fn()
            buf = fb.read_color(0, 0, width, height, 4, 0, "FLOAT")
    finally:
        off.free()
    buf.dimensions = width * height * 4
    return np.array(buf, dtype=np.float32).reshape(height, width, 4)[::-1]


def draw_camera_view(obj, cam) -> np.ndarray:
    """Splat object ``obj`` as the viewport draws it, seen from shared camera ``cam``
    (``shared.cameras.Camera``; the image is ``cam.width`` x ``cam.height``): see ``read_offscreen``.
    Sorted on this thread, so the result is complete."""
    from . import draw, matrices

    drawer = draw.SplatDrawer(threaded_sort=False)
    size = (cam.width, cam.height)
    return read_offscreen(lambda: drawer.draw_object(obj, matrices.gl_view_matrix(cam),
                                                     matrices.gl_projection_matrix(cam), size,
                                                     sync_sort=True), *size)
