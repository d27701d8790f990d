"""Native render of splats (headless bpy): the Geometry Nodes modifier "SplatBridge Native Render"
turns a splat object into ico-sphere instances with an attribute-driven material, so that a plain
F12 render (``bpy.ops.render.render``) in Cycles contains the splats, approximately.

Checked: the modifier / node group / material life cycle (enable, disable, save and reload, rebuild
of an outdated group, the toggle operator), the evaluated instances against the splats (count,
transforms, stored colour and alpha), and a real Cycles render (64x48, 16 samples) against the
reference rasterizer (``backend.render.rasterize`` on the CPU) for the same camera, built from the
Blender camera through ``shared.cameras``. Two references: the *display-space* one (splat colours
blended as display values, as the reference rasterizer and the compositing path do: what the user
expects) and a *linear-light* one (the same rasterizer with linearised colours, blended in linear
light and encoded to sRGB afterwards: what a renderer that blends in scene-linear light should give
when the geometry and the Gaussian falloff are right).
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from shared.cameras import BlenderCameraParams, camera_from_blender
from shared.rotations import quat_to_matrix
from shared.sh import sh0_to_rgb, rgb_to_sh0
from shared.splats import Splats

import native_scene
from helpers import psnr, registered

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

BG_DISPLAY = np.array([0.05, 0.1, 0.2])          # background as shown with the Standard view
# measured (bpy 5.0.1, Cycles CPU, 16 samples, 64x48, k = 3): 23.1 dB display-space, 29.3 dB
# linear-light, 10.9 dB for the render without the modifier
MIN_PSNR_DISPLAY = 20.0
MIN_PSNR_LINEAR = 26.0
MAX_PSNR_WITHOUT = 15.0


@pytest.fixture
def nr(addon_dir):
    """The add-on's native_render module, registered (operator) for the test."""
    with registered("native_render") as mod:
        yield mod


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Test oracle: the sRGB EOTF (the add-on does it in the node tree)."""
    c = np.maximum(np.asarray(c, np.float64), 0.0)
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def _cloud(n: int = 150, seed: int = 0) -> Splats:
    """``n`` degree-0 splats in a 2.4 x 1 x 1.8 m box around the origin, 4-20 cm sigmas."""
    rng = np.random.default_rng(seed)
    base = Splats.random(n, sh_degree=0, seed=seed + 3)
    means = rng.uniform([-1.2, -0.5, -0.9], [1.2, 0.5, 0.9], (n, 3)).astype(np.float32)
    scales = np.log(rng.uniform(0.04, 0.2, (n, 3))).astype(np.float32)
    return Splats(means, base.quats, scales, base.opacities, base.sh0, base.shN)


def _splat_object(bpy, so, splats: Splats):
    obj = so.create_splat_object(bpy.context, "Splats", splats, native=False)   # the GN path is for meshes
    bpy.context.view_layer.objects.active = obj
    return obj


# ------------------------------------------------------------------------------------------------
# life cycle
# ------------------------------------------------------------------------------------------------

def test_enable_disable_save_reload(bpy_empty, so, nr, tmp_path):
    bpy = bpy_empty
    obj = _splat_object(bpy, so, _cloud(20))
    assert not nr.native_render_enabled(obj)

    mod = nr.ensure_native_render(obj, True)
    assert mod.name == nr.MODIFIER_NAME and mod.type == "NODES"
    assert mod.node_group.name == nr.GROUP_NAME and mod.node_group[nr.PROP_VERSION] == nr.VERSION
    assert (mod.show_viewport, mod.show_render) == (False, True)   # the draw handler draws the viewport
    assert bpy.data.materials[nr.MATERIAL_NAME][nr.PROP_VERSION] == nr.VERSION
    assert nr.native_render_enabled(obj)

    # a second splat object shares the node group and the material
    other = so.create_splat_object(bpy.context, "Other", _cloud(5, seed=1), native=False)
    assert nr.ensure_native_render(other, True).node_group == mod.node_group
    assert len([g for g in bpy.data.node_groups if g.name.startswith(nr.GROUP_NAME)]) == 1
    assert len([m for m in bpy.data.materials if m.name.startswith(nr.MATERIAL_NAME)]) == 1

    path = str(tmp_path / "native.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=path)
    obj = bpy.data.objects["Splats"]
    mod = obj.modifiers[nr.MODIFIER_NAME]
    assert mod.node_group.name == nr.GROUP_NAME and (mod.show_viewport, mod.show_render) == (False, True)
    assert nr.native_render_enabled(obj)

    # an outdated group is rebuilt in place on the next enable
    group = mod.node_group
    group[nr.PROP_VERSION] = nr.VERSION - 1
    group.nodes.clear()
    assert nr.ensure_native_render(obj, True).node_group == group
    assert group[nr.PROP_VERSION] == nr.VERSION and len(group.nodes) > 10

    assert nr.ensure_native_render(obj, False) is None
    assert nr.MODIFIER_NAME not in obj.modifiers and not nr.native_render_enabled(obj)
    assert nr.MODIFIER_NAME in bpy.data.objects["Other"].modifiers

    # the operator (what the Splat Display panel's toggle runs) on the active object
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.splatbridge.native_render_toggle(enable=True) == {"FINISHED"}
    assert nr.native_render_enabled(obj)
    assert bpy.context.scene.cycles.transparent_max_bounces >= nr.MIN_TRANSPARENT_BOUNCES
    assert bpy.ops.splatbridge.native_render_toggle(enable=False) == {"FINISHED"}
    assert nr.MODIFIER_NAME not in obj.modifiers

    plain = bpy.data.objects.new("Plain", bpy.data.meshes.new("Plain"))
    with pytest.raises(ValueError, match="'Plain' is not a splat object"):
        nr.ensure_native_render(plain, True)


# ------------------------------------------------------------------------------------------------
# evaluated instances
# ------------------------------------------------------------------------------------------------

def test_instances_match_splats(bpy_empty, so, nr):
    bpy = bpy_empty
    splats = _cloud(40)
    # quaternions not normalised on purpose: the node group normalises them
    splats = Splats(splats.means, splats.quats * 1.7, splats.scales, splats.opacities, splats.sh0, splats.shN)
    obj = _splat_object(bpy, so, splats)
    mod = nr.ensure_native_render(obj, True)
    mod.show_viewport = True            # the viewport depsgraph evaluates it only when shown there
    depsgraph = bpy.context.evaluated_depsgraph_get()
    mats = np.array([np.array(inst.matrix_world) for inst in depsgraph.object_instances
                     if inst.is_instance and inst.parent is not None and inst.parent.original == obj])
    assert mats.shape == (len(splats), 4, 4)
    np.testing.assert_array_equal(mats[:, :3, 3], splats.means)                    # exact
    expected = quat_to_matrix(splats.quats) * (nr.SCALE_SIGMAS * np.exp(splats.scales.astype(np.float64)))[:, None, :]
    np.testing.assert_allclose(mats[:, :3, :3], expected, atol=2e-6)

    geometry = obj.evaluated_get(depsgraph).evaluated_geometry()     # keep it: the cloud lives in it
    cloud = geometry.instances_pointcloud()
    alpha = np.empty(len(splats), np.float32)
    cloud.attributes[nr.ATTR_ALPHA].data.foreach_get("value", alpha)
    np.testing.assert_allclose(alpha, splats.alphas(), atol=1e-6)
    color = np.empty(len(splats) * 3, np.float32)
    cloud.attributes[nr.ATTR_COLOR].data.foreach_get("vector", color)
    np.testing.assert_allclose(color.reshape(-1, 3), _srgb_to_linear(sh0_to_rgb(splats.sh0)), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# F12 render
# ------------------------------------------------------------------------------------------------

def _render(bpy, path: str) -> np.ndarray:
    return native_scene.render_f12(bpy, path)


def _reference(splats: Splats, camera, colors_sh0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from backend.render import rasterize
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    rgb, alpha, _ = rasterize(t(splats.means), t(splats.quats), t(splats.scales_linear()), t(splats.alphas()),
                              t(colors_sh0[:, None, :]), t(camera.world_to_camera[None]), t(camera.K[None]),
                              camera.width, camera.height, sh_degree=0)
    return rgb[0].numpy(), alpha[0].numpy()


@pytest.mark.torch        # the reference image comes from the backend's torch rasterizer
def test_f12_cycles_render_contains_the_splats(bpy_empty, so, nr, tmp_path, artifacts):
    bpy = bpy_empty
    splats = _cloud(150)
    obj = _splat_object(bpy, so, splats)
    nr.ensure_native_render(obj, True)
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("World")
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (*_srgb_to_linear(BG_DISPLAY), 1.0)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler, cam.data.lens = (0.0, -3.5, 0.0), (math.pi / 2, 0.0, 0.0), 35.0
    scene.camera = cam
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = 64, 48, 100
    scene.view_settings.view_transform = "Standard"
    c = scene.cycles
    c.device, c.samples, c.use_denoising = "CPU", 16, False
    c.transparent_max_bounces = nr.MIN_TRANSPARENT_BOUNCES
    bpy.context.view_layer.update()
    camera = camera_from_blender(BlenderCameraParams(
        matrix_world=np.array(cam.matrix_world), lens=cam.data.lens, sensor_width=cam.data.sensor_width,
        sensor_height=cam.data.sensor_height, sensor_fit=cam.data.sensor_fit, shift_x=cam.data.shift_x,
        shift_y=cam.data.shift_y, resolution_x=r.resolution_x, resolution_y=r.resolution_y,
        resolution_percentage=r.resolution_percentage, pixel_aspect_x=r.pixel_aspect_x,
        pixel_aspect_y=r.pixel_aspect_y))

    rendered = _render(bpy, str(tmp_path / "with.png"))
    obj.modifiers[nr.MODIFIER_NAME].show_render = False
    without = _render(bpy, str(tmp_path / "without.png"))
    np.testing.assert_allclose(without, np.broadcast_to(BG_DISPLAY, without.shape), atol=1.5 / 255)

    linear_to_srgb = importlib.import_module("splatbridge.capture").linear_to_srgb
    rgb, alpha = _reference(splats, camera, splats.sh0)
    display_ref = rgb + (1.0 - alpha) * BG_DISPLAY
    rgb, alpha = _reference(splats, camera, rgb_to_sh0(_srgb_to_linear(sh0_to_rgb(splats.sh0))))
    linear_ref = linear_to_srgb(rgb + (1.0 - alpha) * _srgb_to_linear(BG_DISPLAY))

    from PIL import Image
    row = np.concatenate([rendered, display_ref, linear_ref, without], axis=1)
    u8 = (np.clip(row, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(u8).resize((u8.shape[1] * 4, u8.shape[0] * 4), Image.NEAREST).save(
        artifacts / "native_render_cycles.png")   # F12 | display-space ref | linear-light ref | no modifier

    p_display, p_linear, p_without = psnr(rendered, display_ref), psnr(rendered, linear_ref), psnr(without, display_ref)
    print(f"native render PSNR: display-space {p_display:.1f} dB, linear-light {p_linear:.1f} dB, "
          f"without modifier {p_without:.1f} dB")
    assert p_display > MIN_PSNR_DISPLAY
    assert p_linear > MIN_PSNR_LINEAR
    assert p_without < MAX_PSNR_WITHOUT
