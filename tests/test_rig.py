"""Camera rig: layouts, look-at, parenting, auto radius, and the cameras' conversion to the shared
OpenCV convention checked against Blender's own projection (world_to_camera_view)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]


@pytest.fixture
def rigmod(addon_dir, bpy_empty):
    from splatbridge import rig
    rig.register()
    yield rig
    rig.unregister()


def _select_only(bpy, obj):
    for o in bpy.context.scene.objects:
        o.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def _subject(bpy, location=(1.0, -2.0, 0.5), scale=(1.0, 0.5, 0.7)):
    bpy.ops.mesh.primitive_monkey_add(location=location)
    obj = bpy.context.active_object
    obj.scale = scale
    obj.rotation_euler = (0.3, 0.0, 0.8)
    mod = obj.modifiers.new("sub", "SUBSURF")     # bounds must come from evaluated geometry
    mod.levels = 1
    bpy.context.view_layer.update()
    _select_only(bpy, obj)
    return obj


def _world_verts(bpy, obj):
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    m = np.array(ev.matrix_world)
    co = np.array([v.co for v in ev.to_mesh().vertices])
    ev.to_mesh_clear()
    return co @ m[:3, :3].T + m[:3, 3]


# --------------------------------------------------------------------------- pure layouts

@pytest.mark.parametrize("layout,kw,n", [
    ("FIBONACCI", dict(count=40), 40),
    ("HEMISPHERE", dict(count=17), 17),
    ("RINGS", dict(rings=3, per_ring=7), 21),
])
def test_positions_count_and_radius(addon_dir, layout, kw, n):
    from splatbridge.rig import rig_positions
    c = np.array([1.0, 2.0, -3.0])
    p = rig_positions(layout, kw.get("count", 1), 2.5, center=c,
                      **{k: v for k, v in kw.items() if k != "count"})
    assert p.shape == (n, 3)
    np.testing.assert_allclose(np.linalg.norm(p - c, axis=1), 2.5, rtol=1e-9)


def test_fibonacci_covers_sphere_evenly(addon_dir):
    from splatbridge.rig import max_angular_gap, rig_positions
    for n in (24, 64, 200):
        d = rig_positions("FIBONACCI", n, 1.0)
        gap = max_angular_gap(d)
        # A perfect covering by n equal caps has radius >= acos(1 - 2/n); the spiral is within 1.5x.
        ideal = math.acos(1.0 - 2.0 / n)
        assert ideal <= gap < 1.5 * ideal, (n, math.degrees(gap), math.degrees(ideal))
        # Balanced: the mean direction is near zero (no clumping on one side).
        assert np.linalg.norm(d.mean(axis=0)) < 0.05


def test_hemisphere_and_rings_respect_elevations(addon_dir):
    from splatbridge.rig import rig_positions
    h = rig_positions("HEMISPHERE", 50, 1.0)
    assert h[:, 2].min() > 0.0 and h[:, 2].max() < 1.0
    band = rig_positions("HEMISPHERE", 50, 1.0, elev_min=20, elev_max=40)
    el = np.degrees(np.arcsin(band[:, 2]))
    assert el.min() >= 20 - 1e-9 and el.max() <= 40 + 1e-9
    r = rig_positions("RINGS", 0, 1.0, rings=4, per_ring=6, elev_min=-30, elev_max=60)
    el = np.degrees(np.arcsin(r[:, 2])).reshape(4, 6)
    np.testing.assert_allclose(el, np.repeat([[-30.0], [0.0], [30.0], [60.0]], 6, axis=1), atol=1e-9)
    az = np.degrees(np.arctan2(r[:, 1], r[:, 0])).reshape(4, 6)
    # Odd rings are turned by half a step (30 degrees of 60).
    np.testing.assert_allclose((az[1] - az[0]) % 60.0, 30.0, atol=1e-9)


@pytest.mark.parametrize("args,match", [
    (("SPIRAL", 10, 1.0), "unknown rig layout 'SPIRAL'"),
    (("FIBONACCI", 10, 0.0), "radius must be a positive"),
    (("FIBONACCI", 0, 1.0), "camera count must be >= 1"),
])
def test_positions_bad_input(addon_dir, args, match):
    from splatbridge.rig import rig_positions
    with pytest.raises(ValueError, match=match):
        rig_positions(*args)
    with pytest.raises(ValueError, match="elevation range"):
        rig_positions("RINGS", 1, 1.0, elev_min=50, elev_max=10)


def test_look_at_matrix_straight_down_and_up(addon_dir):
    from splatbridge.rig import look_at_matrix
    for pos in ((0, 0, 5), (0, 0, -5), (3, 0, 0)):
        m = look_at_matrix(pos, (0, 0, 0))
        fwd = -m[:3, 2]
        np.testing.assert_allclose(fwd, -np.asarray(pos) / 5.0 if pos[0] == 0 else (-1, 0, 0), atol=1e-12)
        np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- Blender operator

def test_operator_builds_parented_rig_looking_at_centre(rigmod):
    import bpy
    obj = _subject(bpy)
    res = bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=24, lens=35.0,
                                             resolution=(96, 64))
    assert res == {"FINISHED"}
    rig = rigmod.find_rig(bpy.context)
    assert rig is not None and rigmod.is_rig(rig)
    cams = rigmod.rig_cameras(rig)
    assert len(cams) == 24
    assert rigmod.rig_resolution(rig) == (96, 64)
    assert rigmod.rig_targets(rig) == [obj.name]
    verts = _world_verts(bpy, obj)
    centre = (verts.min(0) + verts.max(0)) / 2
    np.testing.assert_allclose(np.array(rig.matrix_world.translation), centre, atol=1e-5)
    dists = []
    for cam in cams:
        assert cam.parent == rig and cam.data.lens == pytest.approx(35.0)
        assert not cam.constraints                            # plain editable cameras
        m = np.array(cam.matrix_world)
        to_c = centre - m[:3, 3]
        forward = -m[:3, 2]                                   # Blender cameras look down -Z
        assert forward @ to_c == pytest.approx(np.linalg.norm(to_c), rel=1e-6)
        dists.append(np.linalg.norm(to_c))
    np.testing.assert_allclose(dists, dists[0], rtol=1e-6)
    dirs = np.array([np.array(c.matrix_world.translation) - centre for c in cams])
    assert math.degrees(rigmod.max_angular_gap(dirs)) < 40.0

    # Moving and turning the empty carries every camera along, still aimed at the (moved) centre.
    rig.location = (rig.location[0] + 3.0, rig.location[1], rig.location[2] - 1.0)
    rig.rotation_euler = (0.0, 0.0, 1.0)
    bpy.context.view_layer.update()
    new_centre = np.array(rig.matrix_world.translation)
    for cam in cams:
        m = np.array(cam.matrix_world)
        to_c = new_centre - m[:3, 3]
        assert -m[:3, 2] @ to_c == pytest.approx(np.linalg.norm(to_c), rel=1e-6)
        assert np.linalg.norm(to_c) == pytest.approx(dists[0], rel=1e-6)


def test_auto_radius_frames_the_subject(rigmod):
    """Every vertex of the subject is inside every view, and the subject fills a good part of it."""
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    obj = _subject(bpy)
    bpy.ops.splatbridge.add_camera_rig(layout_kind="HEMISPHERE", count=12, lens=50.0,
                                       resolution=(80, 60), margin=1.1)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 80, 60
    verts = _world_verts(bpy, obj)[::7]
    rig = rigmod.find_rig(bpy.context)
    extents = []
    for cam in rigmod.rig_cameras(rig):
        ndc = np.array([world_to_camera_view(scene, cam, Vector(v))[:2] for v in verts])
        assert ndc.min() > 0.0 and ndc.max() < 1.0, cam.name
        extents.append(np.abs(ndc - 0.5).max())
    assert max(extents) > 0.3                 # fitted, not tiny in the frame


def test_operator_centre_on_cursor_with_fixed_radius(rigmod):
    import bpy
    bpy.context.scene.cursor.location = (2.0, 3.0, 4.0)
    bpy.ops.splatbridge.add_camera_rig(layout_kind="RINGS", rings=2, per_ring=5, radius=7.0,
                                       center_mode="CURSOR")
    rig = rigmod.find_rig(bpy.context)
    cams = rigmod.rig_cameras(rig)
    assert len(cams) == 10
    for cam in cams:
        assert np.linalg.norm(np.array(cam.matrix_world.translation) - (2, 3, 4)) == pytest.approx(7.0)


def test_operator_errors_name_the_problem(rigmod):
    import bpy
    with pytest.raises(RuntimeError, match="select at least one mesh"):
        bpy.ops.splatbridge.add_camera_rig(center_mode="SELECTION")
    with pytest.raises(RuntimeError, match="automatic radius needs selected mesh"):
        bpy.ops.splatbridge.add_camera_rig(center_mode="CURSOR", radius=0.0)
    assert rigmod.find_rig(bpy.context) is None


def test_rig_cameras_convert_like_blender_projects(rigmod):
    """shared.cameras via capture.blender_camera agrees with world_to_camera_view to 1e-3 px,
    including a non-square image, a shifted lens and a scaled rig empty."""
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    from splatbridge.capture import blender_camera
    obj = _subject(bpy)
    bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=6, lens=42.0,
                                       resolution=(120, 70))
    rig = rigmod.find_rig(bpy.context)
    rig.scale = (2.0, 2.0, 2.0)                # uniform rig scale: cameras move, do not distort
    cams = rigmod.rig_cameras(rig)
    cams[0].data.shift_x, cams[0].data.shift_y = 0.1, -0.05
    cams[1].data.sensor_fit = "VERTICAL"
    bpy.context.view_layer.update()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 120, 70
    scene.render.resolution_percentage = 100
    verts = _world_verts(bpy, obj)[::5]
    for cam in cams:
        c = blender_camera(scene, cam, 120, 70)
        uv, z = c.project(verts)
        ref = np.array([world_to_camera_view(scene, cam, Vector(v)) for v in verts])
        ref_px = np.stack([ref[:, 0] * 120, (1.0 - ref[:, 1]) * 70], axis=1)
        np.testing.assert_allclose(uv, ref_px, atol=1e-3)
        np.testing.assert_allclose(z, ref[:, 2], rtol=1e-6)
