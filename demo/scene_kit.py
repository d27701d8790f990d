"""The lighting and engine of the built-in scenes (the demo's, bench/quality_scenes.py's and the
end-to-end tests'): a uniform sky, one sun, Cycles on the CPU. Each scene keeps its own geometry."""
from __future__ import annotations

from typing import Any


def sky_sun_cycles(bpy: Any, scene: Any, sky_rgb: tuple[float, float, float], sun_energy: float,
                   sun_euler: tuple[float, float, float], samples: int | None = None) -> Any:
    """Light ``scene`` with a uniform world colour ``sky_rgb`` (linear) and a sun of ``sun_energy``
    (W/m^2) turned by the XYZ Euler angles ``sun_euler`` (radians); render with Cycles on the CPU
    with ``samples`` per pixel (None: the scene's current count). Returns the sun object."""
    scene.world = bpy.data.worlds.new("sky")
    scene.world.color = sky_rgb
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = sun_energy
    sun.rotation_euler = sun_euler
    scene.collection.objects.link(sun)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    if samples is not None:
        scene.cycles.samples = samples
    return sun
