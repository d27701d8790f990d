"""The scenes of ``bench/quality.py``: Blender (bpy, headless Cycles) renders of two object-centric
scenes, cached as .npz so that the training benchmark renders each once.

    python bench/quality_scenes.py --size 64 --out bench/.cache      # both scenes at 64 px

* ``alpha``: three coloured, textured objects (a checkered Suzanne, a two-tone torus, a glossy
  cube) on a transparent film: images are RGBA with the object mask in alpha.
* ``opaque``: the same objects on a large floor inside a room with coloured walls, film opaque:
  every pixel is content (alpha 255), as in photos.

Each scene: ``views`` cameras on a Fibonacci half-sphere (elevation 10..60 degrees) looking at
the objects, rendered through the add-on's own capture (``splatbridge.capture.render_view``,
Standard view transform, sRGB u8); cameras in the shared OpenCV convention
(``blender_camera``); and ``surface`` points with colours sampled on the meshes as the add-on
sends them (``capture.sample_surface``; the opaque scene includes floor and walls).
Arrays in the .npz: images u8[C,H,W,4], viewmats f32[C,4,4], Ks f32[C,3,3], points f32[P,3],
colors u8[P,3].
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("alpha", "opaque")
CACHE = ROOT / "bench" / ".cache"


def scene_path(cache: Path, name: str, size: int, views: int) -> Path:
    """Where the cached render of scene ``name`` at ``size`` px with ``views`` cameras lives."""
    return Path(cache) / f"quality_{name}_{size}px_{views}v.npz"


def _material(bpy, name: str, color, *, checker=None, roughness: float = 0.5, metallic: float = 0.0):
    m = bpy.data.materials.new(name)
    m.use_nodes = True
    nodes = m.node_tree.nodes
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    if checker is not None:
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Color1"].default_value = (*color, 1.0)
        tex.inputs["Color2"].default_value = (*checker, 1.0)
        tex.inputs["Scale"].default_value = 6.0
        m.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return m


def build(bpy, name: str) -> list:
    """Build scene ``name`` in an empty file; returns the mesh objects to sample."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    objs = []
    bpy.ops.mesh.primitive_monkey_add(size=0.9, location=(0.0, 0.0, 0.25))
    monkey = bpy.context.active_object
    monkey.rotation_euler = (0.0, 0.0, math.radians(-25))
    bpy.ops.object.shade_smooth()
    monkey.data.materials.append(_material(bpy, "monkey", (0.85, 0.35, 0.05), checker=(0.95, 0.85, 0.6)))
    objs.append(monkey)
    bpy.ops.mesh.primitive_torus_add(major_radius=0.45, minor_radius=0.14, location=(0.75, 0.45, -0.1),
                                     rotation=(math.radians(60), 0.0, 0.3))
    torus = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    for i, c in enumerate([(0.05, 0.3, 0.85), (0.1, 0.7, 0.2)]):
        torus.data.materials.append(_material(bpy, f"torus{i}", c, roughness=0.3))
    for poly in torus.data.polygons:
        poly.material_index = 0 if poly.center.x > 0 else 1
    objs.append(torus)
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(-0.7, 0.5, -0.15), rotation=(0.3, 0.2, 0.7))
    cube = bpy.context.active_object
    cube.data.materials.append(_material(bpy, "cube", (0.7, 0.1, 0.4), roughness=0.2, metallic=0.3))
    objs.append(cube)
    if name == "opaque":
        bpy.ops.mesh.primitive_plane_add(size=9.0, location=(0.0, 0.0, -0.45))
        floor = bpy.context.active_object
        floor.data.materials.append(_material(bpy, "floor", (0.55, 0.5, 0.45), checker=(0.25, 0.22, 0.2)))
        objs.append(floor)
        for i, (loc, rot, c) in enumerate([((0, 4.5, 1.5), (math.pi / 2, 0, 0), (0.6, 0.75, 0.9)),
                                           ((0, -4.5, 1.5), (math.pi / 2, 0, 0), (0.9, 0.8, 0.5)),
                                           ((4.5, 0, 1.5), (0, math.pi / 2, 0), (0.6, 0.85, 0.6)),
                                           ((-4.5, 0, 1.5), (0, math.pi / 2, 0), (0.85, 0.6, 0.7))]):
            bpy.ops.mesh.primitive_plane_add(size=9.0, location=loc, rotation=rot)
            wall = bpy.context.active_object
            wall.data.materials.append(_material(bpy, f"wall{i}", c, roughness=0.9))
            objs.append(wall)
    from demo.scene_kit import sky_sun_cycles
    sky_sun_cycles(bpy, scene, (0.35, 0.38, 0.42), 3.0, (0.7, 0.2, 0.9))
    scene.cycles.use_denoising = False     # (the samples are enough at these sizes; no OIDN dependency)
    return objs


def cameras(bpy, views: int, dist: float = 3.2, lens: float = 35.0) -> list:
    """``views`` cameras on a Fibonacci spiral over elevations 10..60 degrees, aimed at the origin."""
    from mathutils import Vector
    cams = []
    golden = math.pi * (3.0 - math.sqrt(5.0))
    for i in range(views):
        el = math.radians(10.0 + 50.0 * (i + 0.5) / views)
        az = i * golden
        loc = Vector((dist * math.cos(el) * math.cos(az), dist * math.cos(el) * math.sin(az),
                      dist * math.sin(el)))
        data = bpy.data.cameras.new(f"cam{i}")
        data.lens = lens
        cam = bpy.data.objects.new(f"cam{i}", data)
        cam.location = loc
        cam.rotation_euler = (-loc).to_track_quat("-Z", "Y").to_euler()
        bpy.context.scene.collection.objects.link(cam)
        cams.append(cam)
    return cams


def render_scene(name: str, size: int, views: int, samples: int, points: int) -> dict[str, np.ndarray]:
    """Build and render one scene (in this process's bpy); the arrays of the .npz."""
    sys.path.insert(0, str(ROOT))
    from build import assemble_addon
    base = Path(tempfile.mkdtemp(prefix="quality_addon_"))
    assemble_addon(base)
    sys.path.insert(0, str(base))
    import bpy
    from splatbridge import capture
    objs = build(bpy, name)
    cams = cameras(bpy, views)
    scene = bpy.context.scene
    bpy.context.view_layer.update()
    images, vms, Ks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cam in enumerate(cams):
            img = capture.render_view(scene, cam, size, size, f"{tmp}/v{i}.png", samples=samples)
            if name == "opaque":
                img[..., 3] = 255
            images.append(img)
            c = capture.blender_camera(scene, cam, size, size)
            vms.append(c.world_to_camera)
            Ks.append(c.K)
    pts, cols = capture.sample_surface(bpy.context, objs, points, seed=0)
    return {"images": np.stack(images), "viewmats": np.stack(vms).astype(np.float32),
            "Ks": np.stack(Ks).astype(np.float32), "points": pts.astype(np.float32), "colors": cols}


def write_transforms(arrays: dict[str, np.ndarray], folder: Path) -> Path:
    """Write a scene as a transforms.json dataset without initial points (PNG images,
    camera-to-world in Blender's convention, pixel intrinsics), as a user would give
    ``python -m backend train``. Returns the transforms.json path."""
    import json

    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from shared.cameras import BLENDER_TO_OPENCV
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, (img, w2c, K) in enumerate(zip(arrays["images"], arrays["viewmats"], arrays["Ks"], strict=True)):
        Image.fromarray(img).save(folder / "images" / f"{i:03d}.png")
        c2w = np.linalg.inv(w2c.astype(np.float64)) @ BLENDER_TO_OPENCV
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c2w.tolist(),
                       "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                       "w": int(img.shape[1]), "h": int(img.shape[0])})
    path = folder / "transforms.json"
    path.write_text(json.dumps({"camera_model": "PINHOLE", "frames": frames}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--samples", type=int, default=128, help="Cycles samples per pixel")
    p.add_argument("--points", type=int, default=20000, help="surface samples per scene")
    p.add_argument("--scenes", nargs="*", default=list(SCENES), choices=SCENES)
    p.add_argument("--out", type=Path, default=CACHE)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.scenes:
        path = scene_path(args.out, name, args.size, args.views)
        if path.exists():
            continue
        arrays = render_scene(name, args.size, args.views, args.samples, args.points)
        np.savez_compressed(path, **arrays)
        print(f"wrote {path}: {arrays['images'].shape}, {len(arrays['points'])} surface points", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
