"""A textured test scene rendered with real Blender (bpy) for the camera-solving tests and bench:
an opaque room corner (textured floor and two walls) with three textured boxes, seen by cameras on
an arc around it. Known cameras (``shared.cameras.Camera``, OpenCV convention) come with the
renders, so solved cameras can be compared with the truth.

Materials are emission shaders driven by procedural textures (noise, voronoi, checker, brick): flat
lighting, no sampling noise from lights, and plenty of corners for SIFT. Cycles on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class RenderedScene:
    images: list[np.ndarray]        # u8[H,W,3] each (opaque)
    cameras: list                   # shared.cameras.Camera each, OpenCV world-to-camera
    scene_size: float               # metres: the diagonal of the scene's bounding box


def _textured_material(bpy, name: str, kind: str, scale: float, c1, c2):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    nt = mat.node_tree
    for n in list(nt.nodes):
        nt.nodes.remove(n)
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    em = nt.nodes.new("ShaderNodeEmission")
    tex = nt.nodes.new({"noise": "ShaderNodeTexNoise", "voronoi": "ShaderNodeTexVoronoi",
                        "checker": "ShaderNodeTexChecker", "brick": "ShaderNodeTexBrick"}[kind])
    tex.inputs["Scale"].default_value = scale
    coord = nt.nodes.new("ShaderNodeTexCoord")
    nt.links.new(coord.outputs["Object"], tex.inputs["Vector"])
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (*c1, 1.0)
    ramp.color_ramp.elements[1].color = (*c2, 1.0)
    ramp.color_ramp.elements[0].position = 0.35      # stretch the texture's contrast
    ramp.color_ramp.elements[1].position = 0.75
    # a second, finer noise on top: texture at every scale, so features survive any image size
    fine = nt.nodes.new("ShaderNodeTexNoise")
    fine.inputs["Scale"].default_value = scale * 4.0
    nt.links.new(coord.outputs["Object"], fine.inputs["Vector"])
    mix = nt.nodes.new("ShaderNodeMath")
    mix.operation = "MULTIPLY_ADD"
    src = tex.outputs["Fac"] if "Fac" in tex.outputs else tex.outputs["Distance"]
    if kind == "voronoi":
        src = tex.outputs["Distance"]
    nt.links.new(src, mix.inputs[0])
    mix.inputs[1].default_value = 0.75
    nt.links.new(fine.outputs["Fac"], mix.inputs[2])
    nt.links.new(mix.outputs["Value"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], em.inputs["Color"])
    em.inputs["Strength"].default_value = 1.0
    nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
    return mat


def build_scene(bpy) -> float:
    """Replace the current scene's objects with the test scene; returns its size (m)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mats = [
        _textured_material(bpy, "floor", "voronoi", 3.0, (0.15, 0.1, 0.05), (0.9, 0.8, 0.6)),
        _textured_material(bpy, "wall_a", "brick", 2.5, (0.6, 0.2, 0.1), (0.95, 0.9, 0.85)),
        _textured_material(bpy, "wall_b", "noise", 4.0, (0.05, 0.2, 0.5), (0.9, 0.95, 1.0)),
        _textured_material(bpy, "box1", "checker", 6.0, (0.1, 0.5, 0.1), (0.95, 0.95, 0.3)),
        _textured_material(bpy, "box2", "noise", 8.0, (0.5, 0.05, 0.3), (1.0, 0.7, 0.2)),
        _textured_material(bpy, "box3", "voronoi", 6.0, (0.05, 0.05, 0.05), (0.3, 0.9, 0.9)),
    ]
    bpy.ops.mesh.primitive_plane_add(size=4.0, location=(0, 0, 0))
    bpy.context.active_object.data.materials.append(mats[0])
    bpy.ops.mesh.primitive_plane_add(size=4.0, location=(0, 2.0, 1.0), rotation=(math.pi / 2, 0, 0))
    bpy.context.active_object.scale = (1.0, 0.5, 1.0)
    bpy.context.active_object.data.materials.append(mats[1])
    bpy.ops.mesh.primitive_plane_add(size=4.0, location=(-2.0, 0, 1.0), rotation=(0, math.pi / 2, 0))
    bpy.context.active_object.scale = (0.5, 1.0, 1.0)
    bpy.context.active_object.data.materials.append(mats[2])
    for (loc, size, rot), mat in zip((((0.5, 0.4, 0.35), 0.7, 0.3), ((-0.7, -0.3, 0.25), 0.5, 0.9),
                                      ((0.2, -0.9, 0.2), 0.4, -0.4)), mats[3:]):
        bpy.ops.mesh.primitive_cube_add(size=size, location=loc, rotation=(0, 0, rot))
        bpy.context.active_object.data.materials.append(mat)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("w")
    scene.world = world
    return float(np.linalg.norm([4.0, 4.0, 2.0]))


def orbit_poses(count: int, radius: float = 3.6, height: float = 1.7, arc_deg: float = 100.0,
                start_deg: float = -125.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(position, look-at target) of ``count`` cameras on an arc in front of the room corner, with a
    gentle bob in height so the views are not all coplanar."""
    out = []
    for i in range(count):
        t = i / max(1, count - 1)
        a = math.radians(start_deg + arc_deg * t)
        pos = np.array([radius * math.cos(a), radius * math.sin(a), height + 0.25 * math.sin(3 * math.pi * t)])
        target = np.array([0.0, 0.3, 0.4])
        out.append((pos, target))
    return out


def render_scene(count: int, width: int, height: int, lens_mm: float = 24.0,
                 samples: int = 4) -> RenderedScene:
    """Render ``count`` views of the test scene at ``width`` x ``height`` px with Cycles."""
    import bpy
    from mathutils import Matrix

    from shared.cameras import BlenderCameraParams, camera_from_blender, look_at

    size = build_scene(bpy)
    scene = bpy.context.scene
    scene.cycles.samples = samples
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens = lens_mm
    cam_data.sensor_width = 36.0
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    images, cameras = [], []
    out = Path(bpy.app.tempdir or "/tmp") / "reconstruct_scene_frame.png"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    for pos, target in orbit_poses(count):
        w2c = look_at(pos, target)
        from shared.cameras import BLENDER_TO_OPENCV
        c2w_blender = np.linalg.inv(BLENDER_TO_OPENCV @ w2c)
        cam.matrix_world = Matrix(c2w_blender.tolist())
        bpy.context.view_layer.update()
        scene.render.filepath = str(out)
        bpy.ops.render.render(write_still=True)
        from PIL import Image
        images.append(np.asarray(Image.open(out).convert("RGB")).copy())
        cameras.append(camera_from_blender(BlenderCameraParams(
            matrix_world=np.array(cam.matrix_world), lens=cam_data.lens, sensor_width=36.0,
            sensor_height=cam_data.sensor_height, sensor_fit=cam_data.sensor_fit,
            resolution_x=width, resolution_y=height)))
    return RenderedScene(images, cameras, size)


def write_photos(scene: RenderedScene, folder: Path, ext: str = ".jpg") -> list[Path]:
    """The renders as image files ``view_000.jpg``, ... (JPEG quality 95)."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(scene.images):
        p = folder / f"view_{i:03d}{ext}"
        Image.fromarray(img).save(p, quality=95)
        paths.append(p)
    return paths


def write_video(images: list[np.ndarray], path: Path, fps: int = 24, faststart: bool = False) -> Path:
    """The frames as an H.264 MP4 written with PyAV (yuv420p); ``faststart``: the index (moov) before
    the frames, as streaming-friendly files have it."""
    import av
    h, w = images[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "16", "preset": "veryfast"}
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
