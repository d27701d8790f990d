"""The scene that measures Blender's own splat renderer (5.3+) against the reference rasterizer.

150 degree-3 splats in a 2.4 x 1 x 1.8 m box, seen from (0, -3.5, 0) looking along +Y with a 35 mm
lens, 64 x 48 pixels, over a uniform background. The reference images are made by the torch
rasterizer (``backend.render``) in the torch venv and committed as ``tests/data/native_render_reference.npz``
(float16), so the bpy 5.3 venv (no torch) can compare against them:

* ``display``: the rasterizer as it is (what training and the viewport do): the splats' sRGB-encoded
  colours blended as they are, over the display-referred background;
* ``linear``: the same splats with their SH colour decoded to linear light first, blended in linear
  light over the linear background, then encoded to sRGB (what a renderer that blends in
  scene-linear light gives when everything else is the same).

``tests/test_native_splats.py`` checks that the fixture is what the rasterizer gives today (torch
venv) and renders the scene natively (bpy 5.3); ``bench/native_render.py`` prints the full table.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from shared.cameras import BlenderCameraParams, Camera, camera_from_blender
from shared.sh import REST_COUNT
from shared.splats import Splats

FIXTURE = Path(__file__).resolve().parent / "data" / "native_render_reference.npz"
WIDTH, HEIGHT = 64, 48
SH_DEGREE = 3
BG_DISPLAY = np.array([0.05, 0.1, 0.2])          # background as shown with the Standard view
CAM_LOCATION = (0.0, -3.5, 0.0)
CAM_ROTATION = (math.pi / 2, 0.0, 0.0)           # Euler XYZ: looking along +Y, Z up
LENS_MM = 35.0


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB EOTF (IEC 61966-2-1), values clamped at 0 first."""
    c = np.maximum(np.asarray(c, np.float64), 0.0)
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The inverse sRGB EOTF of values clamped to [0, 1]."""
    c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def splats() -> Splats:
    rng = np.random.default_rng(0)
    base = Splats.random(150, sh_degree=SH_DEGREE, seed=3)
    means = rng.uniform([-1.2, -0.5, -0.9], [1.2, 0.5, 0.9], (150, 3)).astype(np.float32)
    scales = np.log(rng.uniform(0.04, 0.2, (150, 3))).astype(np.float32)
    return Splats(means, base.quats, scales, base.opacities, base.sh0, base.shN)


def camera_matrix_world() -> np.ndarray:
    """The camera object's world matrix (Blender camera axes), float64[4,4]."""
    rx = CAM_ROTATION[0]
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]]
    m[:3, 3] = CAM_LOCATION
    return m


def camera() -> Camera:
    return camera_from_blender(BlenderCameraParams(
        matrix_world=camera_matrix_world(), lens=LENS_MM, sensor_width=36.0, sensor_height=24.0,
        sensor_fit="AUTO", shift_x=0.0, shift_y=0.0, resolution_x=WIDTH, resolution_y=HEIGHT,
        resolution_percentage=100, pixel_aspect_x=1.0, pixel_aspect_y=1.0))


def reference_images() -> dict[str, np.ndarray]:
    """``display`` and ``linear`` reference images (module docstring), float64[H, W, 3] each, made
    with the torch rasterizer (needs the torch venv)."""
    import torch

    from backend.render import rasterize
    s, cam = splats(), camera()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    coeffs = np.concatenate([s.sh0[:, None], s.shN], axis=1)
    assert coeffs.shape[1] == REST_COUNT[SH_DEGREE] + 1

    def render(colors: np.ndarray, sh_degree: int | None):
        rgb, alpha, _ = rasterize(t(s.means), t(s.quats), t(s.scales_linear()), t(s.alphas()), t(colors),
                                  t(cam.world_to_camera[None]), t(cam.K[None]), WIDTH, HEIGHT,
                                  sh_degree=sh_degree)
        return rgb[0].numpy().astype(np.float64), alpha[0].numpy().astype(np.float64)

    rgb, alpha = render(coeffs, SH_DEGREE)
    display = rgb + (1.0 - alpha) * BG_DISPLAY
    # linear light: each splat's view-dependent colour (as the rasterizer evaluates it for this
    # camera) decoded to linear, blended, encoded; the colours are passed as plain RGB
    from gsplat.cuda._torch_impl import _spherical_harmonics
    dirs = t(s.means - cam.position[None])
    colour = (_spherical_harmonics(SH_DEGREE, dirs, t(coeffs)) + 0.5).clamp_min(0.0).numpy()
    rgb, alpha = render(srgb_to_linear(colour), None)
    linear = linear_to_srgb(rgb + (1.0 - alpha) * srgb_to_linear(BG_DISPLAY))
    return {"display": display, "linear": linear}


def load_fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k].astype(np.float64) for k in data.files}


def write_fixture() -> None:
    """Regenerate the committed fixture (torch venv): ``python -c 'import native_scene as n; n.write_fixture()'``."""
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **{k: v.astype(np.float16) for k, v in reference_images().items()})


def setup_blender_scene(bpy, cycles_samples: int = 128, eevee_samples: int = 64) -> object:
    """The measuring scene's world, camera and render settings in ``bpy.context.scene`` (Standard
    view transform, CPU Cycles without denoising); the splat objects are the caller's. Returns the scene."""
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("World")
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (*srgb_to_linear(BG_DISPLAY), 1.0)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler, cam.data.lens = CAM_LOCATION, CAM_ROTATION, LENS_MM
    scene.camera = cam
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = WIDTH, HEIGHT, 100
    scene.view_settings.view_transform = "Standard"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", cycles_samples, False
    scene.cycles.transparent_max_bounces = 128
    scene.eevee.taa_render_samples = eevee_samples
    bpy.context.view_layer.update()
    return scene


def render_f12(bpy, path: str) -> np.ndarray:
    """``render.render`` (plain F12) of the current scene, saved to the PNG ``path`` and read back as
    stored (display-referred), f32[H, W, 3], row 0 at the top."""
    bpy.ops.render.render()
    bpy.data.images["Render Result"].save_render(path)
    img = bpy.data.images.load(path, check_existing=False)
    img.colorspace_settings.name = "Non-Color"
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1, :, :3].copy()


def save_row(images: list[np.ndarray], path) -> None:
    """``images`` side by side, 4x enlarged (nearest), as an 8-bit PNG to look at."""
    from PIL import Image
    row = np.concatenate(images, axis=1)
    u8 = (np.clip(row, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(u8).resize((u8.shape[1] * 4, u8.shape[0] * 4), Image.NEAREST).save(path)
