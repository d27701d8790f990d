"""Viewport splat drawing: sort logic (numpy) and the GPU shader against the reference rasterizer.

The GPU tests draw with Blender's ``gpu`` module into a ``GPUOffScreen`` (headless bpy, the GPU
module initialised by the ``gpu_ready`` fixture; on this machine that is Mesa's llvmpipe) and
compare with ``backend.render.rasterize`` (the pure-torch reference on the CPU) for the same camera.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from shared.cameras import Camera, look_at
from shared.sh import SH_C0
from shared.splats import Splats

from helpers import psnr as _psnr

pytestmark = pytest.mark.bpy_only

W, H = 160, 120


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _vp(addon_dir, name: str):
    return importlib.import_module(f"splatbridge.viewport.{name}")


def _scene_splats(n: int = 400, sh_degree: int = 3, seed: int = 0) -> Splats:
    """Varied scales (anisotropic, 1-12 cm), rotations, opacities and colours, view-dependent SH."""
    rng = np.random.default_rng(seed)
    base = Splats.random(n, sh_degree=sh_degree, seed=seed, extent=0.6)
    scales = np.log(rng.uniform(0.01, 0.12, (n, 3)) * rng.uniform(0.2, 1.0, (n, 1)) ** [0, 1, 2])
    shN = base.shN * 3.0                      # strong enough that the view direction matters
    return Splats(base.means, base.quats, scales.astype(np.float32), base.opacities, base.sh0, shN)


def _camera(position=(2.0, -1.5, 1.2), target=(0.0, 0.0, 0.0), fx: float = 140.0) -> Camera:
    return Camera(look_at(position, target), fx, fx * 1.05, W / 2 + 3.0, H / 2 - 2.0, W, H)


def _reference(splats: Splats, camera: Camera, sh_degree: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H,W,3] (black background) and alpha [H,W] of the reference rasterizer."""
    import torch

    from backend.render import rasterize
    torch.set_num_threads(2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    coeffs = np.concatenate([splats.sh0[:, None, :], splats.shN], axis=1)
    rgb, alpha, _ = rasterize(t(splats.means), t(splats.quats), t(splats.scales_linear()), t(splats.alphas()),
                              t(coeffs), t(camera.world_to_camera[None]), t(camera.K[None]), W, H,
                              sh_degree=sh_degree)
    return rgb[0].numpy(), alpha[0, ..., 0].numpy()


def _offscreen_draw(draw_fn) -> np.ndarray:
    """Run ``draw_fn()`` into a cleared W x H float offscreen; RGBA [H,W,4], row 0 at the top."""
    return importlib.import_module("splatbridge.viewport.offscreen").read_offscreen(draw_fn, W, H)


def _save(artifacts, name: str, rgb: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(artifacts / name)


# ------------------------------------------------------------------------------------------------
# sorting (numpy only)
# ------------------------------------------------------------------------------------------------

def _model_view(camera: Camera) -> np.ndarray:
    from shared.cameras import BLENDER_TO_OPENCV
    return BLENDER_TO_OPENCV @ camera.world_to_camera


def test_order_is_back_to_front_up_to_quantisation(addon_dir):
    sort = _vp(addon_dir, "sort")
    means = Splats.random(20000, seed=2, extent=3.0).means
    mv = _model_view(_camera(position=(4.0, 5.0, -2.0)))
    order = sort.back_to_front(means, mv)
    depth = -(means.astype(np.float64) @ mv[2, :3] + mv[2, 3])            # distance along the view axis
    centre, radius = sort.bounding_sphere(means)
    quantum = 2 * radius / sort.QUANT_LEVELS
    assert sorted(order.tolist()) == list(range(len(means)))              # a permutation
    d = depth[order]
    assert np.all(np.diff(d) <= quantum + 1e-9)                            # never nearer-then-farther
    exact = np.argsort(-depth, kind="stable")
    assert np.abs(depth[exact] - d).max() <= quantum                       # same depth profile as argsort


def test_sorter_resorts_only_when_the_view_turns(addon_dir):
    sort = _vp(addon_dir, "sort")
    means = Splats.random(5000, seed=3).means
    sorter = sort.SplatSorter(means, threaded=False)
    mv = _model_view(_camera())
    assert sorter.request(mv) and sorter.sort_count == 1
    assert not sorter.request(mv)                                          # same view
    moved = mv.copy()
    moved[:3, 3] += [0.7, -0.3, 2.0]                                       # camera translation only
    assert not sorter.request(moved)
    tiny = _model_view(_camera(position=(2.0, -1.5, 1.2005)))              # ~0.01 degrees
    assert not sorter.request(tiny)
    turned = _model_view(_camera(position=(2.0, -1.3, 1.2)))               # a few degrees
    assert sorter.request(turned) and sorter.sort_count == 2
    order, serial = sorter.latest()
    assert serial == 2
    np.testing.assert_array_equal(order.astype(np.int64), sort.back_to_front(means, turned))


def test_sorter_worker_thread_publishes_latest(addon_dir):
    sort = _vp(addon_dir, "sort")
    means = Splats.random(50000, seed=4).means
    done = []
    sorter = sort.SplatSorter(means, threaded=True, on_done=lambda: done.append(1))
    assert sorter.latest() == (None, 0)
    views = [_model_view(_camera(position=(2.0, y, 1.2))) for y in (-1.5, -0.5, 0.5)]
    for mv in views:
        sorter.request(mv)
    assert sorter.wait(10.0)
    order, serial = sorter.latest()
    assert serial == len(done) >= 1                                        # intermediate requests coalesce
    np.testing.assert_array_equal(order.astype(np.int64), sort.back_to_front(means, views[-1]))


def test_sort_axis_rejects_degenerate_matrix(addon_dir):
    sort = _vp(addon_dir, "sort")
    with pytest.raises(ValueError, match="degenerate depth row"):
        sort.sort_axis(np.zeros((4, 4)))


def test_texture_shapes_and_limits(addon_dir):
    gd = _vp(addon_dir, "gpu_data")
    assert gd.texture_shape(10) == (10, 1)
    assert gd.texture_shape(4097) == (4096, 2)
    w, h = gd.texture_shape(200_000_000)
    assert w * h >= 200_000_000 and w <= 16384 and h <= 16384
    with pytest.raises(gd.GPUDataError, match="point mode"):
        gd.texture_shape(16384 * 16384 + 1)
    packed = gd.pack_splats(Splats.random(5, sh_degree=3, seed=1))
    assert packed.sh_stride == 12 and packed.sh.size == 5 * 12 * 4


def test_packing_layout(addon_dir):
    gd = _vp(addon_dir, "gpu_data")
    s = Splats.random(50, sh_degree=2, seed=5)
    packed = gd.pack_splats(s)
    center = packed.center.reshape(-1, 4)[:50]
    np.testing.assert_array_equal(center[:, :3], s.means)
    np.testing.assert_allclose(center[:, 3], 1 / (1 + np.exp(-s.opacities.astype(np.float64))), rtol=1e-6)
    rs = packed.rot_scale.reshape(-1, 8)[:50]
    np.testing.assert_allclose(rs[:, :4], s.quats / np.linalg.norm(s.quats, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(rs[:, 4:7], np.exp(s.scales), rtol=1e-6)
    sh = packed.sh.reshape(50, packed.sh_stride * 4)
    assert packed.sh_stride == 7                                    # 27 floats -> 7 RGBA texels
    np.testing.assert_array_equal(sh[:, :3], s.sh0)
    np.testing.assert_array_equal(sh[:, 3:27], s.shN.reshape(50, -1))   # coefficient-major, then RGB


# ------------------------------------------------------------------------------------------------
# GPU drawing (headless Blender, offscreen)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def addon(addon_dir, gpu_ready):
    so = importlib.import_module("splatbridge.splat_object")
    draw = _vp(addon_dir, "draw")
    matrices = _vp(addon_dir, "matrices")
    settings = _vp(addon_dir, "settings")
    return so, draw, matrices, settings


@pytest.mark.torch        # the reference image comes from the backend's torch rasterizer
@pytest.mark.blender
@pytest.mark.parametrize("sh_degree,where", [(3, "outside"), (0, "outside"), (3, "inside")])
def test_viewport_matches_reference_rasterizer(addon, gpu_ready, artifacts, sh_degree, where):
    """An object with a rotated/scaled/moved transform, drawn for a camera, equals the reference
    render of its world-space splats (the object's transform rotates the SH on read). "inside":
    the camera stands within the cloud, so splats cross the frame edges and lie behind it."""
    from mathutils import Euler, Matrix

    so, draw, matrices, settings = addon
    bpy = gpu_ready
    local = _scene_splats(sh_degree=3)
    obj = so.create_splat_object(bpy.context, "Splats", local)
    obj.matrix_world = (Matrix.Translation((0.1, 0.2, -0.1)) @ Euler((0.4, -0.2, 0.9)).to_matrix().to_4x4()
                        @ Matrix.Scale(1.2, 4))
    world = so.read_splats_from_object(obj)
    camera = _camera() if where == "outside" else _camera(position=(0.15, -0.25, 0.1), target=(-1.0, 1.0, -0.2))
    drawer = draw.SplatDrawer(threaded_sort=False)
    shown = settings.DisplaySettings(sh_degree=sh_degree)
    img = _offscreen_draw(lambda: drawer.draw_object(obj, matrices.gl_view_matrix(camera),
                                                     matrices.gl_projection_matrix(camera), (W, H),
                                                     settings=shown, sync_sort=True))
    ref_rgb, ref_alpha = _reference(world, camera, sh_degree)
    psnr = _psnr(img[..., :3], ref_rgb)
    _save(artifacts, f"viewport_{where}_sh{sh_degree}.png", img[..., :3])
    _save(artifacts, f"viewport_{where}_sh{sh_degree}_reference.png", ref_rgb)
    _save(artifacts, f"viewport_{where}_sh{sh_degree}_diff_x10.png", 10 * np.abs(img[..., :3] - ref_rgb))
    print(f"viewport vs reference, camera {where}, SH degree {sh_degree}: PSNR {psnr:.1f} dB")
    assert (ref_alpha > 0.5).mean() > 0.15                # the splats fill a good part of the frame
    assert psnr >= 40.0                                   # llvmpipe: > 85 dB; margin for real GPUs' exp/log
    assert np.abs(img[..., 3] - ref_alpha).mean() < 2e-3


@pytest.mark.blender
def test_sh_degree_setting_changes_colours(addon, gpu_ready):
    so, draw, matrices, settings = addon
    obj = so.create_splat_object(gpu_ready.context, "S", _scene_splats(150, seed=1))
    camera = _camera()
    drawer = draw.SplatDrawer(threaded_sort=False)
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    imgs = [_offscreen_draw(lambda d=d: drawer.draw_object(obj, view, proj, (W, H), settings.DisplaySettings(sh_degree=d),
                                                           sync_sort=True)) for d in (0, 3)]
    assert _psnr(imgs[0][..., :3], imgs[1][..., :3]) < 30          # view-dependent colour is visible
    np.testing.assert_allclose(imgs[0][..., 3], imgs[1][..., 3], atol=1e-6)   # same coverage


class _MeshQuad:
    """A camera-facing rectangle ``depth`` metres in front of ``camera`` (camera-space half
    extents ``x``, ``y`` as (lo, hi)), drawn with a depth-writing flat-colour shader."""

    COLOR = (0.9, 0.1, 0.8, 1.0)

    def __init__(self, camera: Camera, matrices, depth: float, x=(-0.15, 0.15), y=(-0.1, 0.2)):
        import gpu
        from gpu_extras.batch import batch_for_shader
        from mathutils import Matrix

        info = gpu.types.GPUShaderCreateInfo()
        info.push_constant("MAT4", "mvp")
        info.push_constant("VEC4", "color")
        info.vertex_in(0, "VEC3", "pos")
        info.fragment_out(0, "VEC4", "FragColor")
        info.vertex_source("void main() { gl_Position = mvp * vec4(pos, 1.0); }")
        info.fragment_source("void main() { FragColor = color; }")
        self.shader = gpu.shader.create_from_info(info)
        c2w = camera.camera_to_world
        corners = [c2w[:3, :3] @ (np.array([u, v, 1.0]) * depth) + c2w[:3, 3]
                   for u, v in ((x[0], y[0]), (x[1], y[0]), (x[0], y[1]), (x[1], y[1]))]
        self.batch = batch_for_shader(self.shader, "TRI_STRIP", {"pos": [tuple(p) for p in corners]})
        self.mvp = Matrix((matrices.gl_projection_matrix(camera) @ matrices.gl_view_matrix(camera)).tolist())
        self.uv = camera.project(np.array(corners))[0]

    def draw(self) -> None:
        import gpu
        gpu.state.depth_test_set("LESS_EQUAL")
        gpu.state.depth_mask_set(True)
        self.shader.bind()
        self.shader.uniform_float("mvp", self.mvp)
        self.shader.uniform_float("color", self.COLOR)
        self.batch.draw(self.shader)
        gpu.state.depth_mask_set(False)
        gpu.state.depth_test_set("NONE")


@pytest.mark.blender
def test_mesh_in_front_occludes_splats(addon, gpu_ready, artifacts):
    so, draw, matrices, settings = addon
    obj = so.create_splat_object(gpu_ready.context, "S", _scene_splats(400, seed=2))
    camera = _camera()                                  # splats at ~2.9 m, the rectangle at 1 m
    drawer = draw.SplatDrawer(threaded_sort=False)
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    quad = _MeshQuad(camera, matrices, depth=1.0)
    splats_only = _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H), sync_sort=True))
    img = _offscreen_draw(lambda: (quad.draw(), drawer.draw_object(obj, view, proj, (W, H), sync_sort=True)))
    _save(artifacts, "viewport_occlusion.png", img[..., :3])
    u0, v0 = np.ceil(quad.uv.min(axis=0)).astype(int) + 1
    u1, v1 = np.floor(quad.uv.max(axis=0)).astype(int) - 1
    inside = img[v0:v1, u0:u1]
    assert inside.shape[0] > 10 and inside.shape[1] > 10
    assert (splats_only[v0:v1, u0:u1, 3] > 0.5).mean() > 0.5          # splats would be visible there
    np.testing.assert_allclose(inside, np.broadcast_to(_MeshQuad.COLOR, inside.shape), atol=1e-6)
    outside = np.ones((H, W), bool)
    outside[v0 - 3:v1 + 3, u0 - 3:u1 + 3] = False
    np.testing.assert_allclose(img[outside], splats_only[outside], atol=1e-6)


@pytest.mark.blender
def test_mesh_behind_splats_shows_through_their_gaps(addon, gpu_ready):
    """A mesh behind the splats passes the depth test under them: premultiplied 'over'."""
    so, draw, matrices, settings = addon
    obj = so.create_splat_object(gpu_ready.context, "S", _scene_splats(400, seed=2))
    camera = _camera()
    drawer = draw.SplatDrawer(threaded_sort=False)
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    wall = _MeshQuad(camera, matrices, depth=6.0, x=(-2.0, 2.0), y=(-2.0, 2.0))    # fills the frame
    splats_only = _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H), sync_sort=True))
    img = _offscreen_draw(lambda: (wall.draw(), drawer.draw_object(obj, view, proj, (W, H), sync_sort=True)))
    expected = splats_only + (1.0 - splats_only[..., 3:4]) * np.array(_MeshQuad.COLOR)
    np.testing.assert_allclose(img, expected, atol=1e-5)
    assert 0.1 < (splats_only[..., 3] > 0.5).mean() < 0.9             # both are visible


@pytest.mark.blender
def test_redraw_reuses_gpu_data_and_order(addon, gpu_ready):
    so, draw, matrices, settings = addon
    obj = so.create_splat_object(gpu_ready.context, "S", _scene_splats(100, seed=3))
    camera = _camera()
    drawer = draw.SplatDrawer(threaded_sort=False)
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    first = _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H)))
    entry = drawer.objects[(obj.session_uid, 0)]
    assert drawer.upload_count == 1 and entry.sorter.sort_count == 1
    again = _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H)))
    assert drawer.upload_count == 1 and entry.sorter.sort_count == 1
    np.testing.assert_array_equal(first, again)
    turned = matrices.gl_view_matrix(_camera(position=(1.5, -2.0, 1.2)))
    _offscreen_draw(lambda: drawer.draw_object(obj, turned, proj, (W, H)))
    assert drawer.upload_count == 1 and entry.sorter.sort_count == 2 and entry.order.serial == 2
    for _ in range(2):                                             # two 3D views: an order each, no thrashing
        for key, v in ((1, view), (2, turned)):
            _offscreen_draw(lambda: drawer.draw_object(obj, v, proj, (W, H), view_key=key))
    assert [drawer.objects[(obj.session_uid, k)].sorter.sort_count for k in (1, 2)] == [1, 1]
    assert drawer.upload_count == 1
    so.update_splat_object(obj, _scene_splats(80, seed=4))
    changed = _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H)))
    assert drawer.upload_count == 2 and drawer.objects[(obj.session_uid, 0)].data.textures.count == 80
    assert not np.allclose(changed, first)
    assert drawer.gpu_bytes() > 0
    drawer.prune([])
    assert drawer.gpu_bytes() == 0


@pytest.mark.blender
def test_point_mode_and_scale(addon, gpu_ready):
    so, draw, matrices, settings = addon
    splats = _scene_splats(300, seed=5)
    obj = so.create_splat_object(gpu_ready.context, "S", splats)
    camera = _camera()
    drawer = draw.SplatDrawer(threaded_sort=False)
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    run = lambda s: _offscreen_draw(lambda: drawer.draw_object(obj, view, proj, (W, H), s))
    full = run(settings.DisplaySettings())
    small = run(settings.DisplaySettings(scale=0.5))
    assert small[..., 3].sum() < 0.8 * full[..., 3].sum()
    sorts = drawer.objects[(obj.session_uid, 0)].sorter.sort_count
    points = run(settings.DisplaySettings(point_mode=True, point_size=1.0, sh_degree=0))
    # expected: each in-frame centre pixel shows the DC colour of its nearest splat (depth writes)
    uv, z = camera.project(splats.means)
    px = np.floor(uv).astype(int)
    ok = (splats.alphas() >= 1 / 255) & (z > 0.01) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    expected = np.zeros((H, W, 3), np.float32)
    covered = np.zeros((H, W), bool)
    for i in np.argsort(-z[ok]):                                   # far to near: the nearest is written last
        j = np.flatnonzero(ok)[i]
        expected[px[j, 1], px[j, 0]] = np.maximum(splats.sh0[j] * SH_C0 + 0.5, 0.0)
        covered[px[j, 1], px[j, 0]] = True
    assert covered.sum() > 200
    assert abs(int((points[..., 3] == 1.0).sum()) - int(covered.sum())) <= 3
    match = np.all(np.abs(points[..., :3] - expected) < 2e-3, axis=-1)[covered]
    assert match.mean() > 0.95
    assert drawer.objects[(obj.session_uid, 0)].sorter.sort_count == sorts      # point mode never sorts
    hidden = run(settings.DisplaySettings(show=False))
    assert hidden.max() == 0.0


@pytest.mark.blender
def test_register_settings_panel_and_handlers(addon_dir, bpy_empty):
    """viewport + ui_display register cleanly: per-object settings, draw handler, depsgraph hook."""
    bpy = bpy_empty
    so = importlib.import_module("splatbridge.splat_object")
    viewport = importlib.import_module("splatbridge.viewport")
    draw, settings = _vp(addon_dir, "draw"), _vp(addon_dir, "settings")
    ui_display = importlib.import_module("splatbridge.ui_display")
    viewport.register()
    ui_display.register()
    try:
        obj = so.create_splat_object(bpy.context, "S", Splats.random(20, sh_degree=2, seed=1))
        assert settings.display_settings(obj) == settings.DisplaySettings()
        obj.splatbridge_display.sh_degree = 1
        obj.splatbridge_display.scale = 0.5
        obj.splatbridge_display.point_mode = True
        assert settings.display_settings(obj) == settings.DisplaySettings(sh_degree=1, scale=0.5, point_mode=True)
        with pytest.raises(TypeError, match="sh_degree expected an int type, not str"):
            obj.splatbridge_display.sh_degree = "three"
        obj.splatbridge_display.sh_degree = 7                       # clamped to the property's range
        assert obj.splatbridge_display.sh_degree == 3
        assert draw.depsgraph_update in bpy.app.handlers.depsgraph_update_post
        assert hasattr(bpy.types, "SPLATBRIDGE_PT_display")
        assert draw.visible_splat_objects(bpy.context) == [obj]
        obj.splatbridge_display.show = False
        assert draw.visible_splat_objects(bpy.context) == []
        # a geometry change (as edit mode makes it) bumps the mesh's epoch -> re-upload on next draw
        before = draw._fingerprint(obj)
        _move_first_splat(obj)
        bpy.context.view_layer.update()
        assert draw._fingerprint(obj) != before
        draw.draw_viewport()                                        # no region in background: a no-op
    finally:
        ui_display.unregister()
        viewport.unregister()
    assert draw.depsgraph_update not in bpy.app.handlers.depsgraph_update_post
    assert not hasattr(bpy.types.Object, "splatbridge_display")
    assert settings.display_settings(obj) == settings.DisplaySettings()


def _move_first_splat(obj) -> None:
    """Move splat 0 by 1 m in x as a tool would (mesh: a vertex; native point cloud: a point)."""
    if obj.type == "POINTCLOUD":
        obj.data.points[0].co.x += 1.0
        obj.data.update_tag()
    else:
        obj.data.vertices[0].co.x += 1.0
        obj.data.update()


@pytest.mark.blender
def test_geometry_hook_survives_opening_another_file(addon_dir, bpy_empty):
    """Blender drops non-persistent handlers when a file is opened: the depsgraph hook that makes
    edit-mode moves re-upload must survive File > Open (else moved splats draw where they were)."""
    bpy = bpy_empty
    so = importlib.import_module("splatbridge.splat_object")
    viewport = importlib.import_module("splatbridge.viewport")
    draw = _vp(addon_dir, "draw")
    viewport.register()
    try:
        bpy.ops.wm.read_homefile(use_empty=True)                     # as File > New / Open does
        assert draw.depsgraph_update in bpy.app.handlers.depsgraph_update_post
        obj = so.create_splat_object(bpy.context, "S", Splats.random(20, sh_degree=0, seed=1))
        bpy.context.view_layer.update()
        before = draw._fingerprint(obj)
        _move_first_splat(obj)                                       # same count, same revision
        bpy.context.view_layer.update()
        assert draw._fingerprint(obj) != before
    finally:
        viewport.unregister()


@pytest.mark.blender
def test_deleted_object_gives_gpu_memory_back_when_another_takes_its_place(addon, gpu_ready):
    """The viewport frees cached data of objects no longer drawn, by identity: deleting one splat
    object and adding another (same count of visible objects) still frees the first one's."""
    so, draw, matrices, settings = addon
    bpy = gpu_ready
    camera = _camera()
    view, proj = matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera)
    drawer = draw.SplatDrawer(threaded_sort=False)
    a = so.create_splat_object(bpy.context, "A", _scene_splats(60, seed=1))
    b = so.create_splat_object(bpy.context, "B", _scene_splats(40, seed=2))
    _offscreen_draw(lambda: drawer.draw_objects([a, b], view, proj, (W, H)))
    assert not drawer.release_unseen([a, b])
    a_keys = (a.session_uid, a.data.session_uid)
    bpy.data.objects.remove(a)
    c = so.create_splat_object(bpy.context, "C", _scene_splats(20, seed=3))
    assert drawer.release_unseen([b, c])
    assert a_keys[0] not in {k[0] for k in drawer.objects} and a_keys[1] not in drawer.meshes
    assert set(drawer.meshes) == {b.data.session_uid}
