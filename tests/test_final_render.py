"""Final renders with splats (headless bpy): the scene's render composited with the splats by depth.

The scene (``_scene``): a camera at (0, -6, 0) looking along +Y (128x96 at 50 % = 64x48 px, pixel
aspect 1 : 1.25, lens shift), two splat groups (near N at depth ~6, far F at ~8.5), a plane in
front of N (depth 4, "front"), a plane between N and F (depth 7.2, "between") and a backdrop
behind both (depth 11). Workbench renders it (fast; Cycles joins only the depth-convention probe).
Regions are found from the render's own planar depth; the splat part is checked against the
reference rasterizer (``backend.render.rasterize`` on the CPU) for the same camera, built here
from the Blender camera through ``shared.cameras``.
"""
from __future__ import annotations

import importlib
import math
import os

import numpy as np
import pytest

from shared.cameras import BlenderCameraParams, Camera, camera_from_blender
from shared.splats import Splats

from helpers import psnr, registered

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

FRONT_DEPTH, BETWEEN_DEPTH, BACKDROP_DEPTH = 4.0, 7.2, 11.0
NEAR_Y, FAR_Y = (-0.3, 0.3), (2.2, 2.8)          # splat groups' extent along the view axis (y)
CAM_Y = -6.0


@pytest.fixture
def fr(addon_dir, gpu_ready):
    """The add-on's final_render module, registered (operators) for the test."""
    with registered("final_render") as mod:
        yield mod


# ------------------------------------------------------------------------------------------------
# scene and reference
# ------------------------------------------------------------------------------------------------

def _slab(n: int, x: tuple, y: tuple, z: tuple, seed: int) -> Splats:
    """``n`` splats with centres uniform in the box x * y * z (metres, world), 5-15 cm sigmas."""
    rng = np.random.default_rng(seed)
    base = Splats.random(n, sh_degree=1, seed=seed)
    lo, hi = np.array([x[0], y[0], z[0]]), np.array([x[1], y[1], z[1]])
    means = rng.uniform(lo, hi, (n, 3)).astype(np.float32)
    scales = np.log(rng.uniform(0.05, 0.15, (n, 3))).astype(np.float32)
    return Splats(means, base.quats, scales, base.opacities, base.sh0, base.shN)


def _plane(bpy, name: str, x: tuple, y: float, z: tuple, color) -> object:
    """A rectangle facing the camera: x-range * z-range at depth plane y (world metres)."""
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(x[0], y, z[0]), (x[1], y, z[0]), (x[1], y, z[1]), (x[0], y, z[1])], [], [(0, 1, 2, 3)])
    obj = bpy.data.objects.new(name, mesh)
    obj.color = (*color, 1.0)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _camera_object(bpy, scene, location=(0.0, CAM_Y, 0.0), rotation=(math.pi / 2, 0.0, 0.0)):
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = location, rotation
    cam.data.lens = 35.0
    cam.data.shift_x, cam.data.shift_y = 0.04, -0.03
    scene.camera = cam
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 128, 96, 50
    r.pixel_aspect_x, r.pixel_aspect_y = 1.0, 1.25
    return cam


def _shared_camera(bpy, scene) -> Camera:
    """The scene camera through shared.cameras (the one conversion), built here from bpy."""
    cam = scene.camera
    bpy.context.view_layer.update()
    r = scene.render
    return camera_from_blender(BlenderCameraParams(
        matrix_world=np.array(cam.matrix_world), lens=cam.data.lens, sensor_width=cam.data.sensor_width,
        sensor_height=cam.data.sensor_height, sensor_fit=cam.data.sensor_fit, shift_x=cam.data.shift_x,
        shift_y=cam.data.shift_y, resolution_x=r.resolution_x, resolution_y=r.resolution_y,
        resolution_percentage=r.resolution_percentage, pixel_aspect_x=r.pixel_aspect_x,
        pixel_aspect_y=r.pixel_aspect_y))


def _scene(bpy, so, splats: bool = True):
    """The test scene (module docstring); returns (near splats, far splats), world space."""
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.color_type = "OBJECT"
    scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0.05, 0.1, 0.2)
    _camera_object(bpy, scene)
    _plane(bpy, "Front", (-4.0, -0.9), CAM_Y + FRONT_DEPTH, (0.1, 4.0), (0.8, 0.3, 0.1))
    _plane(bpy, "Between", (0.0, 6.0), CAM_Y + BETWEEN_DEPTH, (-6.0, 0.6), (0.2, 0.7, 0.3))
    _plane(bpy, "Backdrop", (0.9, 9.0), CAM_Y + BACKDROP_DEPTH, (-0.1, 9.0), (0.6, 0.6, 0.7))
    near = _slab(500, (-2.3, 1.7), NEAR_Y, (-1.6, 1.6), seed=1)
    far = _slab(700, (-1.0, 3.6), FAR_Y, (-2.8, 2.2), seed=2)
    if splats:
        so.create_splat_object(bpy.context, "Near", near)
        # the far group through an object transform: local = world - offset
        offset = np.array([0.3, 0.5, 0.0], np.float32)
        local = Splats(far.means - offset, far.quats, far.scales, far.opacities, far.sh0, far.shN)
        obj = so.create_splat_object(bpy.context, "Far", local)
        obj.location = offset.tolist()
    return near, far


def _reference(splats: Splats, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB [H,W,3] (over black) and alpha [H,W] of the reference rasterizer."""
    import torch

    from backend.render import rasterize
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    coeffs = np.concatenate([splats.sh0[:, None, :], splats.shN], axis=1)
    rgb, alpha, _ = rasterize(t(splats.means), t(splats.quats), t(splats.scales_linear()), t(splats.alphas()),
                              t(coeffs), t(camera.world_to_camera[None]), t(camera.K[None]),
                              camera.width, camera.height, sh_degree=splats.sh_degree)
    return rgb[0].numpy(), alpha[0, ..., 0].numpy()


def _over(ref_rgb: np.ndarray, ref_alpha: np.ndarray, scene_rgba: np.ndarray) -> np.ndarray:
    """Reference splats over the straight-alpha scene image: premultiplied RGB."""
    return ref_rgb + (1.0 - ref_alpha[..., None]) * scene_rgba[..., :3] * scene_rgba[..., 3:]


def _save(artifacts, name: str, *images: np.ndarray, zoom: int = 4) -> None:
    from PIL import Image
    row = np.concatenate([np.clip(im[..., :3], 0, 1) for im in images], axis=1)
    u8 = (row * 255 + 0.5).astype(np.uint8)
    Image.fromarray(u8).resize((u8.shape[1] * zoom, u8.shape[0] * zoom), Image.NEAREST).save(artifacts / name)


def _load_png(bpy, path: str) -> np.ndarray:
    """A PNG's values as stored (straight alpha), f32[H,W,4], row 0 at the top."""
    img = bpy.data.images.load(path, check_existing=False)
    img.colorspace_settings.name = "Non-Color"
    img.alpha_mode = "CHANNEL_PACKED"
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1]


# ------------------------------------------------------------------------------------------------
# depth convention of the Z pass
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["BLENDER_WORKBENCH", "CYCLES"])
def test_z_pass_is_planar_depth(fr, gpu_ready, tmp_path, engine):
    """A tilted plane at a known place: the converted Z pass equals the analytic depth along the
    optical axis to < 1 %, where the distance along the ray differs from it by more than 3 %."""
    bpy = gpu_ready
    scene = bpy.context.scene
    scene.render.engine = engine
    if engine == "CYCLES":
        scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.device = 1, False, "CPU"
    _camera_object(bpy, scene, location=(0.3, -0.2, 0.1), rotation=(math.pi / 2 + 0.1, 0.05, 0.2))
    centre, normal = np.array([1.0, 5.0, 0.5]), np.array([0.3, -1.0, 0.4])
    normal /= np.linalg.norm(normal)
    bpy.ops.mesh.primitive_plane_add(size=40.0, location=centre.tolist())
    plane = bpy.context.active_object
    plane.rotation_mode = "QUATERNION"
    plane.rotation_quaternion = _quat_from_z(normal)
    camera = _shared_camera(bpy, scene)
    base = fr.render_scene(scene, bpy.context.view_layer, str(tmp_path))

    u, v = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    ray_cam = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    c2w = camera.camera_to_world
    ray = ray_cam @ c2w[:3, :3].T
    t = ((centre - c2w[:3, 3]) @ normal) / (ray @ normal)           # ray_cam z = 1: t is planar depth
    ray_len = t * np.linalg.norm(ray_cam, axis=-1)
    assert np.isfinite(base.depth).all() and (t > 0).all()
    rel = np.abs(base.depth - t) / t
    print(f"{engine}: Z pass vs planar depth: max rel. error {rel.max():.2e}; "
          f"ray distance differs by up to {np.max(ray_len / t - 1):.1%}")
    assert rel.max() < 0.01
    assert np.max(ray_len / t - 1) > 0.03                       # the two conventions are told apart


def _quat_from_z(normal: np.ndarray) -> tuple:
    """Quaternion (w, x, y, z) turning +Z onto the unit ``normal``."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, normal)
    s = np.linalg.norm(axis)
    angle = math.atan2(s, float(z @ normal))
    axis = axis / s
    return (math.cos(angle / 2), *(axis * math.sin(angle / 2)))


# ------------------------------------------------------------------------------------------------
# the composite
# ------------------------------------------------------------------------------------------------

@pytest.mark.torch        # the reference image comes from the backend's torch rasterizer
def test_composite_occlusion_and_reference(fr, so, gpu_ready, artifacts, tmp_path):
    bpy = gpu_ready
    scene = bpy.context.scene
    near, far = _scene(bpy, so)
    # Blender's own F12 file of the scene (no splats), display-referred 16-bit PNG
    scene.render.image_settings.color_depth = "16"
    scene.render.filepath = str(tmp_path / "plain_")
    bpy.ops.render.render(write_still=True)
    plain = _load_png(bpy, str(tmp_path / "plain_.png"))

    res = fr.render_still(scene, bpy.context.view_layer)
    camera = _shared_camera(bpy, scene)
    assert (camera.width, camera.height) == (64, 48) and camera.fx != camera.fy
    np.testing.assert_allclose(res.scene.camera.K, camera.K, atol=1e-9)
    assert sorted(res.objects) == ["Far", "Near"] and res.warnings == []
    assert res.image.name == fr.RESULT_IMAGE and tuple(res.image.size) == (64, 48)

    depth, comp = res.scene.depth, res.rgba
    front = depth < FRONT_DEPTH + 0.5
    between = np.abs(depth - BETWEEN_DEPTH) < 0.5
    clear = depth > FAR_Y[1] - CAM_Y + 0.5                    # backdrop or nothing behind both groups

    n_rgb, n_a = _reference(near, camera)
    all_rgb, all_a = _reference(Splats.concatenate([near, far]), camera)
    f_rgb, f_a = _reference(far, camera)
    regions = np.stack([front, between, clear], -1).astype(np.float32)
    _save(artifacts, "final_render_composite.png", comp)
    _save(artifacts, "final_render_side_by_side.png", res.scene.rgba, res.splats, comp)
    # regions (red: mesh in front, green: mesh between the groups, blue: nothing in front),
    # reference of both groups, reference of the far group alone
    _save(artifacts, "final_render_regions.png", regions, all_rgb, f_rgb)
    for name, mask in (("front", front), ("between", between), ("clear", clear)):
        assert mask.sum() >= 150, f"region {name} has only {mask.sum()} px"
    # the test could fail: the splats do cover the occluded regions
    assert (n_a[front] > 0.5).sum() >= 50 and (f_a[between] > 0.5).sum() >= 150

    # 1. mesh in front: the composite is the plain scene render, which is Blender's own F12 image
    plain_pm = plain[..., :3] * plain[..., 3:]
    front_err = np.abs(comp[..., :3] - plain_pm)[front].max()
    assert np.abs(res.scene.rgba - plain).max() < 1e-6
    assert front_err < 1e-6 and res.splats[front].max() == 0.0
    # 2. nothing in front: reference splats (both groups) over the scene
    expected_all = _over(all_rgb, all_a, res.scene.rgba)
    psnr_clear = psnr(comp[..., :3][clear], expected_all[clear])
    # 3. a mesh between the groups: the near group over the scene, the far one hidden
    expected_near = _over(n_rgb, n_a, res.scene.rgba)
    psnr_between = psnr(comp[..., :3][between], expected_near[between])
    psnr_between_if_far_shown = psnr(comp[..., :3][between], expected_all[between])
    print(f"composite: front max|diff| {front_err:.1e} ({front.sum()} px); clear PSNR {psnr_clear:.1f} dB "
          f"({clear.sum()} px); between PSNR {psnr_between:.1f} dB ({between.sum()} px; "
          f"{psnr_between_if_far_shown:.1f} dB against both groups)")
    # llvmpipe: 86 / 99 dB (the viewport shader equals the reference); 40 dB leaves room for
    # real GPUs' exp/log, as in test_viewport
    assert psnr_clear >= 40.0
    assert psnr_between >= 40.0
    assert psnr_between_if_far_shown < 30.0
    # alpha: the scene's (Workbench's opaque film stores 0.998) with the splats' added
    np.testing.assert_allclose(comp[..., 3], res.splats[..., 3] + (1 - res.splats[..., 3]) * plain[..., 3], atol=1e-6)


@pytest.mark.torch        # the reference image comes from the backend's torch rasterizer
def test_transparent_film_adds_splat_alpha(fr, so, gpu_ready):
    bpy = gpu_ready
    scene = bpy.context.scene
    near, far = _scene(bpy, so)
    scene.render.film_transparent = True
    res = fr.render_still(scene, bpy.context.view_layer)
    camera = _shared_camera(bpy, scene)
    # nothing hit (mesh edges, anti-aliased in Combined but not in Z, excluded): transparent
    empty = np.isinf(res.scene.depth) & (res.scene.rgba[..., 3] == 0.0)
    all_rgb, all_a = _reference(Splats.concatenate([near, far]), camera)
    assert empty.sum() > 300 and (all_a[empty] > 0.5).sum() > 100
    np.testing.assert_allclose(res.rgba[..., 3][empty], all_a[empty], atol=0.02)
    assert psnr(res.rgba[..., :3][empty], all_rgb[empty]) > 40
    opaque = res.scene.rgba[..., 3] > 0.99
    assert (res.rgba[..., 3][opaque] > 0.99).all()


def test_written_file_holds_the_composite(fr, so, gpu_ready, tmp_path):
    """The operator with write_still: the file in the scene's format (8-bit PNG here) holds the
    composite's display values unchanged (no second view transform)."""
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    scene.render.filepath = str(tmp_path / "f12" / "still_")
    bpy.ops.render.render(write_still=True)                        # where F12 writes a still
    scene.render.filepath = str(tmp_path / "ours" / "still_")
    scene.render.dither_intensity = 0.0
    assert bpy.ops.splatbridge.render_image(write_still=True) == {"FINISHED"}
    assert os.listdir(tmp_path / "ours") == os.listdir(tmp_path / "f12") == ["still_.png"]
    written = _load_png(bpy, str(tmp_path / "ours" / "still_.png"))
    img = bpy.data.images[importlib.import_module("splatbridge.final_render").RESULT_IMAGE]
    px = np.empty(64 * 48 * 4, np.float32)
    img.pixels.foreach_get(px)
    comp = fr.unpremultiply(px.reshape(48, 64, 4)[::-1])
    assert written.shape == (48, 64, 4)
    assert np.abs(written - comp).max() <= 1.0 / 255 + 1e-6       # 8-bit rounding


# ------------------------------------------------------------------------------------------------
# settings, animation, bad input
# ------------------------------------------------------------------------------------------------

def _snapshot(struct, depth: int = 0) -> dict:
    """Every readable plain property of an RNA struct (and of its nested structs, two levels)."""
    out = {}
    for prop in struct.bl_rna.properties:
        name = prop.identifier
        if name in ("rna_type", "depsgraph"):                  # depsgraph: runtime, not a setting
            continue
        try:
            value = getattr(struct, name)
        except Exception:
            continue
        if prop.type == "POINTER":
            if value is not None and depth < 2 and not hasattr(value, "users"):    # not an ID
                out[name] = _snapshot(value, depth + 1)
        elif prop.type != "COLLECTION":
            out[name] = tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
    return out


@pytest.mark.parametrize("fmt", [("IMAGE", "PNG", "8", None), ("IMAGE", "OPEN_EXR", "16", "DWAA"),
                                 ("VIDEO", "FFMPEG", None, None)])
def test_render_settings_are_restored(fr, so, gpu_ready, fmt):
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    im = scene.render.image_settings
    media, file_format, depth, codec = fmt
    if hasattr(im, "media_type"):        # Blender 5.0+: image / multilayer / video, chosen first
        im.media_type = media
    im.file_format = file_format
    if depth:
        im.color_depth = depth
    if codec:
        im.exr_codec = codec
    layer = bpy.context.view_layer
    assert not layer.use_pass_z
    before = (_snapshot(scene.render), _snapshot(layer), _snapshot(scene.view_settings),
              scene.frame_current, scene.camera.name)
    fr.render_still(scene, layer)
    after = (_snapshot(scene.render), _snapshot(layer), _snapshot(scene.view_settings),
             scene.frame_current, scene.camera.name)
    changed = {k: (before_v, after[i].get(k) if isinstance(after[i], dict) else after[i])
               for i, part in enumerate(before) if isinstance(part, dict)
               for k, before_v in part.items() if after[i].get(k) != before_v}
    assert changed == {} and after == before


def test_animation_writes_every_frame_and_cancel_keeps_written(fr, so, gpu_ready, tmp_path):
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    near = bpy.data.objects["Near"]
    for frame, x in ((1, -0.5), (3, 0.5)):
        near.location.x = x
        near.keyframe_insert("location", index=0, frame=frame)
    scene.frame_start, scene.frame_end, scene.frame_step = 1, 3, 1
    scene.frame_set(2)
    scene.render.filepath = str(tmp_path / "anim" / "f_")
    assert bpy.ops.splatbridge.render_animation() == {"FINISHED"}
    paths = [scene.render.frame_path(frame=f) for f in (1, 2, 3)]
    assert all(os.path.exists(p) for p in paths) and len(os.listdir(tmp_path / "anim")) == 3
    assert scene.frame_current == 2
    frames = [_load_png(bpy, p) for p in paths]
    assert np.abs(frames[0] - frames[2]).max() > 0.2               # the near group moved

    # cancel after the first frame: it stays, no more are written, the frame is put back
    scene.render.filepath = str(tmp_path / "cancel" / "f_")
    job = fr.AnimationJob(scene, bpy.context.view_layer)
    assert job.total == 3 and not job.step()
    job.cancel()
    with pytest.raises(fr.FinalRenderError, match="cancelled"):
        job.step()
    assert job.written == [scene.render.frame_path(frame=1)]
    assert os.listdir(tmp_path / "cancel") == [os.path.basename(job.written[0])]
    assert scene.frame_current == 2


def test_no_camera_is_a_clear_error(fr, so, gpu_ready):
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    scene.camera = None
    message = ("scene 'Scene' has no camera: set the scene camera (Scene Properties > Camera) "
               "to render with splats")
    with pytest.raises(fr.FinalRenderError) as err:
        fr.render_still(scene, bpy.context.view_layer)
    assert str(err.value) == message
    with pytest.raises(RuntimeError, match=r"Render with Splats: scene 'Scene' has no camera"):
        bpy.ops.splatbridge.render_image()
    with pytest.raises(fr.FinalRenderError, match="has no camera"):
        fr.AnimationJob(scene, bpy.context.view_layer)


def test_no_splats_gives_the_plain_render_with_a_warning(fr, so, gpu_ready):
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so, splats=False)
    res = fr.render_still(scene, bpy.context.view_layer)
    assert res.objects == [] and res.warnings == [fr.NO_SPLATS_WARNING]
    np.testing.assert_allclose(fr.unpremultiply(res.rgba), res.scene.rgba, atol=1e-6)
    assert bpy.ops.splatbridge.render_image() == {"FINISHED"}
    # a splat object hidden from renders counts as none
    so.create_splat_object(bpy.context, "Hidden", Splats.random(50, seed=3)).hide_render = True
    assert fr.render_still(scene, bpy.context.view_layer).warnings == [fr.NO_SPLATS_WARNING]


def test_view_layer_combined_and_depth_come_from_that_layer(fr, so, gpu_ready):
    """Two view layers, the second without the Front plane, rendered with the second: the scene
    image must be that layer's (no plane) like its depth, not the first layer's Combined with the
    second's Z (the splats were drawn over the plane). Layer flags are put back."""
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    first = scene.view_layers[0]
    second = scene.view_layers.new("Second")
    hidden = bpy.data.collections.new("Hidden")
    scene.collection.children.link(hidden)
    plane = bpy.data.objects["Front"]
    scene.collection.objects.unlink(plane)
    hidden.objects.link(plane)
    second.layer_collection.children["Hidden"].exclude = True
    with_plane = fr.render_still(scene, first)
    front = with_plane.scene.depth < FRONT_DEPTH + 0.5
    assert front.sum() >= 150
    res = fr.render_still(scene, second)
    assert (res.scene.depth[front] > FRONT_DEPTH + 0.5).all()
    # the plane is gone from the scene image too: its pixels changed colour
    diff = np.abs(res.scene.rgba[..., :3] - with_plane.scene.rgba[..., :3])[front].max(axis=-1)
    assert (diff > 0.1).mean() > 0.9
    assert [(l.use, l.use_pass_z) for l in scene.view_layers] == [(True, False), (True, False)]


def test_render_region_without_crop_keeps_splats_inside(fr, so, gpu_ready):
    """Render Region (no crop): Blender renders only the region and leaves the rest empty; the
    splats must stay inside it too (they were drawn over the whole frame)."""
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    full = fr.render_still(scene, bpy.context.view_layer)
    r = scene.render
    r.use_border, r.use_crop_to_border = True, False
    r.border_min_x, r.border_max_x, r.border_min_y, r.border_max_y = 0.13, 0.61, 0.21, 0.93
    res = fr.render_still(scene, bpy.context.view_layer)
    inside = res.scene.rgba[..., 3] > 0                       # what Blender rendered (opaque film)
    assert 0.2 < inside.mean() < 0.6 and full.splats[..., 3][~inside].max() > 0.5
    assert res.splats[~inside].max() == 0.0 and res.rgba[~inside].max() == 0.0
    np.testing.assert_array_equal(res.splats[inside], full.splats[inside])


@pytest.mark.parametrize("disabled", ["object", "collection"])
def test_splats_disabled_in_viewports_render_where_they_are(fr, so, gpu_ready, disabled):
    """A splat object (or its collection) disabled in viewports but not in renders is not
    evaluated by the view layer's depsgraph: its matrix_world stayed where it was before the frame
    change, so the splats were drawn in the wrong place. Its flag is put back."""
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    near = bpy.data.objects["Near"]
    coll = bpy.data.collections.new("NearColl")
    scene.collection.children.link(coll)
    scene.collection.objects.unlink(near)
    coll.objects.link(near)
    for frame, x in ((1, -0.5), (3, 0.5)):
        near.location.x = x
        near.keyframe_insert("location", index=0, frame=frame)
    scene.frame_set(1)
    expected = fr.render_still(scene, bpy.context.view_layer).splats
    scene.frame_set(3)
    owner = near if disabled == "object" else coll
    owner.hide_viewport = True
    scene.frame_set(1)
    res = fr.render_still(scene, bpy.context.view_layer)
    assert sorted(res.objects) == ["Far", "Near"]
    np.testing.assert_allclose(res.splats, expected, atol=1e-6)
    assert owner.hide_viewport


def test_native_render_instances_are_left_out_of_the_scene_render(fr, so, gpu_ready):
    """A splat object with Native Render (F12) on: its Geometry Nodes spheres must not be in the
    scene image or its Z pass (they hid the exact splats drawn over it); the modifier is put back."""
    bpy = gpu_ready
    scene = bpy.context.scene
    _scene(bpy, so)
    nr = importlib.import_module("splatbridge.native_render")
    so.convert_splat_object(bpy.data.objects["Near"], native=False)   # the modifier is for mesh objects
    plain = fr.render_still(scene, bpy.context.view_layer)
    mod = nr.ensure_native_render(bpy.data.objects["Near"], True)
    res = fr.render_still(scene, bpy.context.view_layer)
    np.testing.assert_array_equal(res.scene.depth, plain.scene.depth)
    np.testing.assert_allclose(res.rgba, plain.rgba, atol=1e-6)
    assert mod.show_render and not mod.show_viewport
