"""Native render's Gaussian falloff against the closed form, without torch (headless bpy only).

tests/test_native_render.py compares a Cycles F12 render with the reference rasterizer, which needs
torch; an environment with only ``bpy`` (e.g. a newer Blender's Python, where the backend is not
installed) skips that comparison. Here a few rotated, anisotropic splats on a rotated, scaled object
are rendered by Cycles (one sample at each pixel centre: pixel filter width ~0, black world) and
each pixel is compared with what the material computes in closed form: with ``A`` the inverse of the
splat's world covariance, ``q`` the camera centre minus the splat centre and ``d`` the ray
direction, the ray's closest squared Mahalanobis distance is ``r^2 = q.A.q - (q.A.d)^2 / d.A.d`` and
the pixel's linear value is ``alpha * exp(-r^2 / 2) * colour``.

Found this way: bpy 5.3 gave the Vector Transform node a hidden first input, so ``inputs[0]``
no longer was the ray direction and every splat's falloff came from a constant vector.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from shared.rotations import quat_to_matrix
from shared.splats import Splats

from helpers import registered

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

W, H = 48, 40
R_MAX = 2.5            # compare pixels whose ray passes within 2.5 sigma (the sphere is at 3 sigma)


@pytest.fixture
def nr(addon_dir):
    with registered("native_render") as mod:
        yield mod


def _read_exr_rgb(bpy, path: str) -> np.ndarray:
    img = bpy.data.images.load(path, check_existing=False)
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1, :, :3]


def test_cycles_falloff_matches_the_closed_form(bpy_empty, nr, tmp_path):
    bpy = bpy_empty
    so = importlib.import_module("splatbridge.splat_object")
    capture = importlib.import_module("splatbridge.capture")
    from mathutils import Euler, Matrix

    local = Splats(
        means=np.array([[-0.35, 0.0, 0.1], [0.3, 0.1, -0.15], [0.05, -0.2, 0.3]], np.float32),
        quats=np.array([[0.9, 0.3, -0.2, 0.1], [0.5, -0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]], np.float32),
        scales=np.log(np.array([[0.25, 0.08, 0.12], [0.1, 0.2, 0.06], [0.07, 0.07, 0.07]], np.float32)),
        opacities=np.array([3.0, 1.0, 0.0], np.float32),
        sh0=np.array([[1.2, -0.4, 0.1], [-0.3, 1.0, 0.2], [0.6, 0.6, 0.6]], np.float32),
        shN=np.zeros((3, 0, 3), np.float32))
    obj = so.create_splat_object(bpy.context, "Splats", local, native=False)   # the GN path is for meshes
    obj.matrix_world = (Matrix.Translation((0.05, 0.1, -0.05)) @ Euler((0.3, -0.4, 0.6)).to_matrix().to_4x4()
                        @ Matrix.Scale(1.3, 4))
    nr.ensure_native_render(obj, True)
    world = so.read_splats_from_object(obj)              # means, rotations, scales in world space

    scene = bpy.context.scene                            # no world: black background
    cam_obj = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam_obj)
    cam_obj.location, cam_obj.rotation_euler, cam_obj.data.lens = (0.4, -3.2, 0.5), (math.pi / 2 - 0.12, 0.0, 0.1), 40.0
    scene.camera = cam_obj
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = W, H, 100
    c = scene.cycles
    c.device, c.samples, c.use_denoising = "CPU", 1, False
    c.filter_width = 0.01                                # each sample at the pixel centre
    c.transparent_max_bounces = nr.MIN_TRANSPARENT_BOUNCES
    im = r.image_settings
    im.file_format, im.color_depth, im.exr_codec = "OPEN_EXR", "32", "NONE"   # scene-linear floats
    bpy.context.view_layer.update()
    camera = capture.blender_camera(scene, cam_obj)
    bpy.ops.render.render()
    path = str(tmp_path / "falloff.exr")
    bpy.data.images["Render Result"].save_render(path)
    rendered = _read_exr_rgb(bpy, path)

    # closed form per pixel centre, splats composited front to back (they do not overlap much)
    rot = camera.world_to_camera[:3, :3]
    origin = -rot.T @ camera.world_to_camera[:3, 3]
    jj, ii = np.mgrid[0:H, 0:W] + 0.5
    dirs = np.stack([(ii - camera.cx) / camera.fx, (jj - camera.cy) / camera.fy, np.ones_like(ii)], -1) @ rot
    linear = np.array(nr_linear_colours(world))
    expected = np.zeros((H, W, 3))
    transmit = np.ones((H, W))
    near_any = np.zeros((H, W), bool)
    far_from_edges = np.ones((H, W), bool)
    order = np.argsort(np.linalg.norm(world.means - origin, axis=1))
    for k in order:
        rs = quat_to_matrix(world.unit_quats()[k].astype(np.float64)) * world.scales_linear()[k]
        a = np.linalg.inv(rs @ rs.T)
        q = origin - world.means[k]
        qa, da = dirs @ a @ q, np.einsum("hwi,ij,hwj->hw", dirs, a, dirs)
        r2 = q @ a @ q - qa ** 2 / da
        weight = world.alphas()[k] * np.exp(-0.5 * r2) * (r2 < nr.SCALE_SIGMAS ** 2)
        expected += (transmit * weight)[..., None] * linear[k]
        transmit *= 1.0 - weight
        near_any |= r2 < R_MAX ** 2
        far_from_edges &= (r2 < R_MAX ** 2) | (r2 > (nr.SCALE_SIGMAS * 1.05) ** 2)

    mask = far_from_edges                       # the faceted 3-sigma edge is left out
    assert near_any.sum() > 150 and mask.sum() > 0.8 * H * W
    err = np.abs(rendered - expected)[mask]
    print(f"native render falloff vs closed form: max {err.max():.4f}, mean {err.mean():.5f} "
          f"(peak value {expected.max():.3f})")
    # facets: the 80-face ico sphere's face centres lie at 0.934 of the radius, and the material
    # takes the normalised hit point as on the sphere, so r^2 comes out up to ~14 % too large
    # (measured: max 0.031, mean 0.001; with the ray direction unlinked: max 0.61, mean 0.013)
    assert err.max() < 0.05 and err.mean() < 3e-3


def nr_linear_colours(splats: Splats) -> np.ndarray:
    """Test oracle: the DC colour, display -> scene-linear (the sRGB EOTF), as the node group stores it."""
    rgb = np.maximum(splats.base_colors().astype(np.float64), 0.0)
    return np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
