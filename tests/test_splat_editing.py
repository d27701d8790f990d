"""Editing splat objects in Blender (headless bpy), both representations: Select by (volume, opacity,
size, colour, floaters, invert/grow, modes; hidden and locked never selected), delete, hide/unhide, lock,
separate, duplicate, merge (merge then separate round-trips exactly), apply transform (offscreen render
equal, >= 60 dB), colour grading (neutral is the identity; the viewport preview matches the applied
grade), undo restores the exact arrays, hidden/locked survive save and load, and the viewport drawing
(hidden splats skipped, the selection tinted in Edit Mode)."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from helpers import psnr
from shared.cameras import Camera, look_at
from shared.splats import FIELDS, Splats

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

MODULES = ("splat_object", "viewport", "ops_select", "ops_splat_edit")


@pytest.fixture(params=[False, True], ids=["mesh", "native"])
def native(request, addon_dir):
    so = importlib.import_module("splatbridge.splat_object")
    if request.param and not so.NATIVE_SUPPORTED:
        pytest.skip("this bpy has no Gaussian-splat point clouds (Blender 5.3+); build.py compat runs it")
    return request.param


@pytest.fixture
def addon(addon_dir, bpy_empty):
    mods = [importlib.import_module(f"splatbridge.{m}") for m in MODULES]
    for m in mods:
        m.register()
    yield {name: m for name, m in zip(MODULES, mods)} | {
        "splat_state": importlib.import_module("splatbridge.splat_state")}
    for m in reversed(mods):
        m.unregister()


def _equal(a: Splats, b: Splats) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def _make(addon, name: str, splats: Splats, native: bool):
    import bpy
    obj = addon["splat_object"].create_splat_object(bpy.context, name, splats, native=native)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def _constructed(n_per: int = 100) -> Splats:
    """Four groups of known properties: A opaque small red at x=-2, B faint small green at x=0,
    C opaque huge blue at x=2, D opaque small red at x=4 (far: its own cluster)."""
    rng = np.random.default_rng(0)
    centres = [(-2, 0, 0), (0, 0, 0), (2, 0, 0), (4, 0, 0)]
    means = np.concatenate([rng.uniform(-0.4, 0.4, (n_per, 3)) + c for c in centres])
    alphas = np.repeat([0.9, 0.05, 0.9, 0.9], n_per)
    sizes = np.repeat([0.02, 0.02, 0.3, 0.02], n_per)
    cols = np.repeat(np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.1, 0.1]]), n_per, axis=0)
    n = len(means)
    return Splats.from_activated(means, rng.normal(size=(n, 4)), np.repeat(sizes, 3).reshape(n, 3),
                                 alphas, cols, shN=rng.normal(0, 0.05, (n, 3, 3)))


def test_select_by(addon, native):
    import bpy
    ops = addon["ops_select"]
    st = addon["splat_state"]
    obj = _make(addon, "S", _constructed(), native)
    obj.scale = (2.0, 2.0, 2.0)                       # sizes are asked in world metres
    bpy.context.view_layer.update()
    group = np.repeat(np.arange(4), 100)
    # selections read the splats without their higher SH bands (the rest bit for bit)
    full = addon["splat_object"].read_splats_from_object(obj, apply_transform=False)
    light = addon["splat_object"].read_splats_from_object(obj, apply_transform=False, sh=False)
    assert full.shN.shape == (400, 3, 3) and light.shN.shape == (400, 0, 3)
    _equal(light, Splats(full.means, full.quats, full.scales, full.opacities, full.sh0, np.zeros((400, 0, 3), np.float32)))

    assert np.array_equal(ops.select_by_opacity(obj, 0.0, 0.1), group == 1)
    assert np.array_equal(ops.select_by_size(obj, 0.3, None), group == 2)        # 0.3 local = 0.6 world
    assert np.array_equal(ops.select_by_size(obj, 0.5, None), group == 2)
    assert not ops.select_by_size(obj, 0.7, None).any()
    assert np.array_equal(ops.select_by_color(obj, 5, 0.1), (group == 0) | (group == 3))
    # inside a cube object around group B (world x = 0 +- 0.8: the object is scaled by 2)
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(0.0, 0.0, 0.0))
    cube = bpy.context.active_object
    cube.scale = (1.0, 1.0, 1.0)
    bpy.context.view_layer.update()
    assert np.array_equal(ops.select_inside(obj, cube), group == 1)
    assert np.array_equal(ops.select_inside(obj, cube, outside=True), group != 1)
    # modes
    ops.select_by_opacity(obj, 0.0, 0.1)
    assert np.array_equal(ops.select_by_size(obj, 0.5, None, mode="ADD"), (group == 1) | (group == 2))
    assert np.array_equal(ops.select_by_color(obj, 5, 0.1, mode="SUBTRACT"), (group == 1) | (group == 2))
    assert np.array_equal(ops.select_by_opacity(obj, 0.5, 1.0, mode="INTERSECT"), group == 2)
    assert np.array_equal(ops.select_invert(obj), group != 2)
    # floaters, on their own object: a dense blob, 5 isolated splats far off, 3 huge ones in the blob
    rng = np.random.default_rng(4)
    means = np.concatenate([rng.uniform(-0.1, 0.1, (1000, 3)), rng.uniform(3.0, 3.2, (5, 3))])
    sizes = np.full(1005, 0.02)
    sizes[[10, 20, 30]] = 0.5
    fobj = _make(addon, "F", Splats.from_activated(means, rng.normal(size=(1005, 4)), np.repeat(sizes, 3).reshape(-1, 3),
                                                  np.full(1005, 0.8), np.full((1005, 3), 0.5)), native)
    fl = ops.select_floaters(fobj, 0.5)
    assert sorted(np.flatnonzero(fl)) == [10, 20, 30, 1000, 1001, 1002, 1003, 1004]
    assert not ops.select_floaters(fobj, 0.0).any()
    # grow from one splat of group A reaches the rest of A, not the far groups
    one = np.zeros(400, bool)
    one[0] = True
    st.set_selected(obj, one)
    grown = ops.select_grow(obj, 0.4)
    assert grown[0] and grown.sum() > 1 and not grown[group >= 2].any()
    # hidden and locked splats are never selected
    st.set_hidden(obj, group == 0)
    assert np.array_equal(st.get_selected(obj), grown & (group != 0))     # hiding deselects
    st.set_selected(obj, group >= 2)
    st.set_locked(obj, group == 3)
    assert np.array_equal(st.get_selected(obj), group == 2)               # locking deselects
    assert np.array_equal(ops.select_by_opacity(obj, 0.5, 1.0), group == 2)
    assert np.array_equal(st.get_selected(obj), group == 2)
    # Edit's "Only Selected Splats" reads the same selection
    assert np.array_equal(addon["splat_object"].selected_splats(obj), group == 2)
    # the operator path (undo-able), from Edit Mode too
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    assert bpy.ops.splatbridge.select_opacity(low=0.0, high=0.1) == {"FINISHED"}
    assert np.array_equal(addon["splat_object"].selected_splats(obj), group == 1)     # live, in Edit Mode
    # in a 3D view, Blender's edit-vertex dots give way to the tinted splats while editing
    from types import SimpleNamespace
    from splatbridge.viewport.draw import hide_edit_points
    space = SimpleNamespace(overlay=SimpleNamespace(vertex_opacity=0.8), as_pointer=lambda: 1)
    assert hide_edit_points(space, obj) and space.overlay.vertex_opacity == 0.0
    bpy.ops.object.mode_set(mode="OBJECT")
    assert not hide_edit_points(space, obj) and space.overlay.vertex_opacity == 0.8
    assert np.array_equal(st.get_selected(obj), group == 1)


def test_delete_hide_lock_duplicate(addon, native):
    ed, st = addon["ops_splat_edit"], addon["splat_state"]
    src = Splats.random(50, sh_degree=1, seed=3)
    obj = _make(addon, "S", src, native)
    sel = np.zeros(50, bool)
    sel[[1, 5, 7]] = True
    st.set_selected(obj, sel)
    assert ed.duplicate_selected(obj) == 3
    splats, state = ed.read(obj)
    assert len(splats) == 53 and np.array_equal(np.flatnonzero(state.selected), [50, 51, 52])
    _equal(splats.subset(np.arange(53) >= 50), src.subset(sel))
    assert ed.delete_selected(obj) == 3
    _equal(ed.read(obj)[0], src)
    st.set_selected(obj, sel)
    assert ed.hide_selected(obj) == 3
    assert np.array_equal(st.get_hidden(obj), sel) and not st.get_selected(obj).any()
    assert ed.reveal(obj) == 3
    assert not st.get_hidden(obj).any() and np.array_equal(st.get_selected(obj), sel)
    assert ed.lock_selected(obj) == 3
    assert np.array_equal(st.get_locked(obj), sel)
    st.set_selected(obj, np.ones(50, bool))
    assert ed.delete_selected(obj) == 47          # locked splats stay
    _equal(ed.read(obj)[0], src.subset(sel))
    with pytest.raises(ed.SplatEditError, match="no splats .* are selected"):
        st.set_selected(obj, np.zeros(3, bool))
        ed.delete_selected(obj)


def test_merge_then_separate_round_trips(addon, native):
    import bpy
    from mathutils import Euler, Matrix
    ed, st = addon["ops_splat_edit"], addon["splat_state"]
    a_src, b_src, c_src = (Splats.random(n, sh_degree=2, seed=s) for n, s in ((40, 1), (30, 2), (20, 3)))
    a = _make(addon, "A", a_src, native)
    b = _make(addon, "B", b_src, native)
    c = _make(addon, "C", c_src, native)
    a.matrix_world = Matrix.LocRotScale((1.0, 2.0, 0.5), Euler((0.3, -0.2, 1.1)), (1.5, 1.5, 1.5))
    b.matrix_world = a.matrix_world.copy()                         # same space as A: exact values
    c.matrix_world = Matrix.LocRotScale((-1.0, 0.0, 2.0), Euler((1.0, 0.4, -0.5)), (0.7, 0.7, 0.7))
    bpy.context.view_layer.update()
    st.set_hidden(b, np.arange(30) % 7 == 0)
    st.set_locked(c, np.arange(20) % 5 == 0)
    c_world = addon["splat_object"].read_splats_from_object(c)
    bpy.context.view_layer.objects.active = a
    for o in (a, b, c):
        o.select_set(True)
    assert bpy.ops.splatbridge.splat_merge() == {"FINISHED"}
    assert "B" not in bpy.data.objects and "C" not in bpy.data.objects
    a = bpy.data.objects["A"]
    merged, state = ed.read(a)
    assert len(merged) == 90
    _equal(merged.subset(np.arange(90) < 40), a_src)
    _equal(merged.subset((np.arange(90) >= 40) & (np.arange(90) < 70)), b_src)     # same matrix: exact
    assert np.array_equal(state.hidden[40:70], np.arange(30) % 7 == 0)
    assert np.array_equal(state.locked[70:], np.arange(20) % 5 == 0)
    # C kept its place in the world, SH rotated (float rounding only)
    back_world = addon["splat_object"].read_splats_from_object(a).subset(np.arange(90) >= 70)
    for f in ("means", "sh0", "shN", "opacities"):
        np.testing.assert_allclose(getattr(back_world, f), getattr(c_world, f), atol=2e-5, err_msg=f)
    # separate each part again: exactly the merged values, and A is its old self
    part_b = np.zeros(90, bool)
    part_b[40:70] = True
    part_c = np.zeros(90, bool)
    part_c[70:] = True
    st.write_state(a, st.SplatState(part_c, np.zeros(90, bool), np.zeros(90, bool)))
    new_c = ed.separate_selected(bpy.context, a)
    _equal(ed.read(new_c)[0], merged.subset(part_c))
    assert np.array_equal(np.array(new_c.matrix_world), np.array(a.matrix_world))
    st.set_selected(a, np.arange(70) >= 40)
    new_b = ed.separate_selected(bpy.context, a)
    _equal(ed.read(new_b)[0], b_src)
    _equal(ed.read(a)[0], a_src)
    assert new_b.type == a.type and new_c.type == a.type


def _camera(width: int = 96) -> Camera:
    f = width / (2 * math.tan(math.radians(25)))
    return Camera(look_at(np.array([3.0, -4.0, 2.5]), np.array([0.5, 0.5, 0.0])), f, f, width / 2, width / 2,
                  width, width)


def _save(path, *images: np.ndarray, scale: int = 3) -> None:
    from PIL import Image
    row = np.concatenate([np.clip(im[..., :3], 0, 1) for im in images], axis=1)
    big = np.repeat(np.repeat(row, scale, axis=0), scale, axis=1)
    Image.fromarray((big * 255 + 0.5).astype(np.uint8)).save(path)


def test_apply_transform_keeps_the_render_and_undo_restores(addon, native, gpu_ready, artifacts):
    import bpy
    from mathutils import Euler, Matrix
    from splatbridge.viewport.offscreen import draw_camera_view
    ed = addon["ops_splat_edit"]
    src = Splats.random(400, sh_degree=3, seed=5, extent=0.6, scale=0.05)
    src.shN *= 4.0                                    # strong view dependence: a wrong SH rotation shows
    obj = _make(addon, "T", src, native)
    obj.matrix_world = Matrix.LocRotScale((0.4, 0.6, 0.1), Euler((0.5, -0.3, 0.9)), (1.3, 1.3, 1.3))
    bpy.context.view_layer.update()
    cam = _camera()
    before = draw_camera_view(obj, cam)
    # headless Blender pushes no undo step after an operator (there is no window): the test pushes the
    # step the UI pushes after every operator with the UNDO option
    assert "UNDO" in bpy.types.SPLATBRIDGE_OT_splat_apply_transform.bl_options
    bpy.ops.ed.undo_push(message="base")          # the first step of a fresh undo stack is its floor
    bpy.ops.ed.undo_push(message="before apply")
    assert bpy.ops.splatbridge.splat_apply_transform() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Apply Transform to Splats")
    obj = bpy.data.objects["T"]
    assert np.allclose(np.array(obj.matrix_world), np.eye(4))
    after = draw_camera_view(obj, cam)
    _save(artifacts / f"edit_apply_transform_{'native' if native else 'mesh'}.png", before, after,
          np.abs(after - before) * 10)
    p = psnr(after[..., :3], before[..., :3])
    print(f"apply transform: offscreen PSNR {p:.1f} dB")
    assert before[..., 3].max() > 0.5 and p >= 60.0
    # undo: the exact arrays and the transform come back
    assert bpy.ops.ed.undo() == {"FINISHED"}
    obj = bpy.data.objects["T"]
    _equal(ed.read(obj)[0], src)
    assert np.allclose(np.array(obj.location), (0.4, 0.6, 0.1)) and np.allclose(np.array(obj.scale), 1.3)
    # and undo of a delete
    st = addon["splat_state"]
    st.set_selected(obj, np.arange(400) < 100)
    bpy.ops.ed.undo_push(message="selected")
    assert bpy.ops.splatbridge.splat_delete() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="Delete Splats")
    assert addon["splat_object"].splat_count(bpy.data.objects["T"]) == 300
    assert bpy.ops.ed.undo() == {"FINISHED"}
    obj = bpy.data.objects["T"]
    _equal(ed.read(obj)[0], src)
    assert np.array_equal(st.get_selected(obj), np.arange(400) < 100)
    assert bpy.ops.ed.redo() == {"FINISHED"}
    assert addon["splat_object"].splat_count(bpy.data.objects["T"]) == 300


def test_color_grade_neutral_identity_and_preview(addon, native, gpu_ready, artifacts):
    import bpy
    from splatbridge.shared.color_grade import Grade
    from splatbridge.viewport import draw
    from splatbridge.viewport.offscreen import draw_camera_view, read_offscreen
    from splatbridge.viewport import matrices
    ed, st = addon["ops_splat_edit"], addon["splat_state"]
    src = Splats.random(300, sh_degree=2, seed=7, extent=0.6, scale=0.06)
    obj = _make(addon, "G", src, native)
    ed.grade_object(obj, Grade())
    _equal(ed.read(obj)[0], src)                       # neutral: bit for bit
    g = bpy.context.scene.splatbridge_grade
    assert bpy.ops.splatbridge.splat_color_grade() == {"FINISHED"}
    _equal(ed.read(bpy.data.objects["G"])[0], src)
    obj = bpy.data.objects["G"]
    # the preview (shader) equals the applied grade (data)
    g.exposure, g.saturation, g.hue, g.temperature, g.contrast = 0.5, 1.4, 25.0, 0.4, 1.2
    g.preview = True
    bpy.context.view_layer.objects.active = obj
    cam = _camera()
    plain = draw_camera_view(obj, cam)
    drawer = draw.SplatDrawer(threaded_sort=False)
    size = (cam.width, cam.height)
    preview = read_offscreen(lambda: drawer.draw_objects([obj], matrices.gl_view_matrix(cam),
                                                         matrices.gl_projection_matrix(cam), size, sync_sort=True,
                                                         preview=True), *size)
    assert np.array_equal(draw_camera_view(obj, cam), plain)       # offscreen/final renders: the data only
    assert bpy.ops.splatbridge.splat_color_grade() == {"FINISHED"}
    assert (g.exposure, g.saturation) == (0.0, 1.0)            # back to neutral
    obj = bpy.data.objects["G"]
    applied = draw_camera_view(obj, cam)
    _save(artifacts / f"edit_grade_preview_{'native' if native else 'mesh'}.png", plain, preview, applied)
    p = psnr(preview[..., :3], applied[..., :3])
    print(f"grade preview vs applied: {p:.1f} dB (vs ungraded {psnr(plain[..., :3], applied[..., :3]):.1f} dB)")
    assert p >= 40.0 and psnr(plain[..., :3], applied[..., :3]) < 30.0
    # only the selected splats
    obj = _make(addon, "G2", src, native)
    st.set_selected(obj, np.arange(300) < 150)
    ed.grade_object(obj, Grade(exposure=1.0), only_selected=True)
    out = ed.read(obj)[0]
    _equal(out.subset(np.arange(300) >= 150), src.subset(np.arange(300) >= 150))
    assert not np.array_equal(out.sh0[:150], src.sh0[:150])


def test_drawing_skips_hidden_and_tints_the_selection(addon, native, gpu_ready, artifacts):
    import bpy
    from splatbridge.viewport import draw, matrices
    from splatbridge.viewport.offscreen import draw_camera_view, read_offscreen
    st = addon["splat_state"]
    src = _constructed(60)
    src.means *= 0.3
    obj = _make(addon, "D", src, native)
    group = np.repeat(np.arange(4), 60)
    cam = _camera()
    full = draw_camera_view(obj, cam)
    st.set_hidden(obj, group == 2)                  # the huge blue ones
    hidden = draw_camera_view(obj, cam)
    st.set_selected(obj, group == 0)
    drawer = draw.SplatDrawer(threaded_sort=False)
    size = (cam.width, cam.height)
    tinted = read_offscreen(lambda: drawer.draw_object(obj, matrices.gl_view_matrix(cam),
                                                       matrices.gl_projection_matrix(cam), size, sync_sort=True,
                                                       show_state=True), *size)
    _save(artifacts / f"edit_hidden_selected_{'native' if native else 'mesh'}.png", full, hidden, tinted)
    blue = lambda im: float((im[..., 2] * (im[..., 2] > im[..., 0] + 0.2)).sum())
    assert blue(full) > 20 * max(blue(hidden), 1e-3)         # the hidden blue splats are gone
    # the selected red group turns orange: more green where it is drawn, the rest unchanged
    diff = np.abs(tinted - hidden)[..., :3].sum(-1)
    assert diff.max() > 0.2 and (tinted[..., 1] - hidden[..., 1]).max() > 0.15
    # in Edit Mode the drawer tints the selection by itself (and reads the edit state)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    in_edit = read_offscreen(lambda: draw.SplatDrawer(threaded_sort=False).draw_objects(
        [obj], matrices.gl_view_matrix(cam), matrices.gl_projection_matrix(cam), size, sync_sort=True,
        preview=True), *size)
    bpy.ops.object.mode_set(mode="OBJECT")
    assert np.abs(in_edit - tinted).max() < 1e-4
    # hidden splats survive save and load, with the locked ones
    st.set_locked(obj, group == 3)
    path = str(artifacts / f"edit_state_{'native' if native else 'mesh'}.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    obj = bpy.data.objects["D"]
    assert np.array_equal(st.get_hidden(obj), group == 2)
    assert np.array_equal(st.get_locked(obj), group == 3)
    assert np.array_equal(st.get_selected(obj), group == 0)


def test_edit_panel_calls_operators_that_exist(addon_dir, bpy_empty):
    """The Edit Splats panel draws (with a splat object active) and every button is a registered
    operator; the colour grade settings are drawn."""
    import types
    import bpy
    from helpers import RecordingLayout, registered_addon
    with registered_addon(("splat_object", "viewport", "connection", "ops_select", "ops_splat_edit", "ops_split",
                           "ui_edit")) as mods:
        obj = mods["splat_object"].create_splat_object(bpy.context, "P", Splats.random(5))
        bpy.context.view_layer.objects.active = obj
        panel = types.SimpleNamespace(layout=RecordingLayout())
        mods["ui_edit"].SPLATBRIDGE_PT_edit_splats.draw(panel, bpy.context)
        ops = [n for _, k, n in panel.layout.log if k == "operator"]
        assert len(ops) >= 20 and "splatbridge.split_by_object" in ops and "splatbridge.splat_color_grade" in ops
        for idname in ops:
            group, name = idname.split(".")
            op = getattr(getattr(bpy.ops, group), name)
            assert getattr(bpy.types, op.idname(), None) is not None, idname        # registered
            assert op.poll() in (True, False)
        assert {"exposure", "contrast", "saturation", "hue", "temperature", "preview"} <= set(panel.layout.props())


def test_blenders_own_selection_tools_select_splats(addon, native):
    """Edit Mode's own selection operators (here select all / none / random, which the click, box,
    circle and lasso tools write the same way) are the splat selection every tool reads."""
    import bpy
    st = addon["splat_state"]
    obj = _make(addon, "B", Splats.random(200, seed=9), native)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    ops = bpy.ops.pointcloud if native else bpy.ops.mesh
    ops.select_all(action="DESELECT")
    assert not st.get_selected(obj).any()
    ops.select_all(action="SELECT")
    assert st.get_selected(obj).all()
    ops.select_all(action="DESELECT")
    if native:
        ops.select_random(probability=0.5, seed=3)
    else:
        bpy.ops.mesh.select_random(ratio=0.5, seed=3)
    picked = st.get_selected(obj)
    assert 40 < picked.sum() < 160
    bpy.ops.object.mode_set(mode="OBJECT")
    assert np.array_equal(st.get_selected(obj), picked)
    assert np.array_equal(addon["splat_object"].selected_splats(obj), picked)
    # and our tools write what Blender's show: hide in Edit Mode (H) is our hide
    if not native:
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.hide(unselected=False)
        bpy.ops.object.mode_set(mode="OBJECT")
        assert np.array_equal(st.get_hidden(obj), picked) and not st.get_selected(obj).any()


def test_capture_masks_wait_beside_the_training_job(addon_dir, bpy_empty):
    """A capture's object-index masks are kept for its training job (a file named in the scene) and
    removed when the job ends without splats."""
    import os
    import types
    import bpy
    from helpers import registered_addon
    with registered_addon(("splat_object", "connection", "ops_select", "ops_splat_edit", "ops_split")) as mods:
        ops_split = mods["ops_split"]
        capture = types.SimpleNamespace(labels=np.zeros((2, 4, 4), np.int32), label_names=["A", "B"],
                                        viewmats=np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
                                        Ks=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)))
        ops_split.remember_capture(bpy.context.scene, "job1", capture)
        info = dict(bpy.context.scene["splatbridge_train_jobs"]["job1"])
        assert list(info["label_names"]) == ["A", "B"] and os.path.isfile(info["labels_file"])
        ops_split.forget_capture(bpy.context.scene, "job1")
        assert not os.path.exists(info["labels_file"])
        assert "job1" not in dict(bpy.context.scene["splatbridge_train_jobs"])
