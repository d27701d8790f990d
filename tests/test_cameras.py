"""Camera convention: Blender <-> OpenCV, checked against Blender's own projection."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from shared.cameras import (BlenderCameraParams, Camera, CameraError, camera_from_blender,
                            camera_to_blender, cameras_from_arrays, look_at, stack_cameras)

pytestmark = pytest.mark.bpy_only

CASES = [
    # sensor_fit, res_x, res_y, pct, pax, pay, shift_x, shift_y, lens
    ("AUTO", 64, 48, 100, 1.0, 1.0, 0.0, 0.0, 50.0),
    ("AUTO", 48, 64, 100, 1.0, 1.0, 0.1, -0.05, 35.0),      # portrait: AUTO fits vertically
    ("AUTO", 64, 48, 100, 1.0, 2.0, 0.0, 0.0, 50.0),        # tall pixels flip AUTO to vertical
    ("HORIZONTAL", 80, 40, 100, 1.0, 1.0, 0.2, 0.1, 28.0),
    ("HORIZONTAL", 40, 80, 50, 2.0, 1.0, -0.1, 0.3, 70.0),
    ("VERTICAL", 80, 40, 100, 1.0, 1.5, 0.05, -0.2, 24.0),
    ("VERTICAL", 33, 71, 200, 1.3, 1.0, -0.3, 0.05, 85.0),
]


def _blender_camera(bpy, case, location, rotation):
    fit, rx, ry, pct, pax, pay, sx, sy, lens = case
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = rx, ry
    scene.render.resolution_percentage = pct
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = pax, pay
    data = bpy.data.cameras.new("cam")
    data.lens, data.sensor_fit = lens, fit
    data.sensor_width, data.sensor_height = 36.0, 20.0
    data.shift_x, data.shift_y = sx, sy
    obj = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(obj)
    obj.location = location
    obj.rotation_euler = rotation
    bpy.context.view_layer.update()
    return scene, obj


@pytest.mark.blender
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}x{c[2]}-pa{c[4]}:{c[5]}" for c in CASES])
def test_matches_world_to_camera_view(bpy_empty, case):
    bpy = bpy_empty
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    scene, obj = _blender_camera(bpy, case, (1.0, -6.0, 2.0), (1.3, 0.1, 0.4))
    params = BlenderCameraParams(
        matrix_world=np.array(obj.matrix_world), lens=obj.data.lens,
        sensor_width=obj.data.sensor_width, sensor_height=obj.data.sensor_height,
        sensor_fit=obj.data.sensor_fit, shift_x=obj.data.shift_x, shift_y=obj.data.shift_y,
        resolution_x=scene.render.resolution_x, resolution_y=scene.render.resolution_y,
        resolution_percentage=scene.render.resolution_percentage,
        pixel_aspect_x=scene.render.pixel_aspect_x, pixel_aspect_y=scene.render.pixel_aspect_y)
    cam = camera_from_blender(params)
    assert cam.width == int(case[1] * case[3] / 100) and cam.height == int(case[2] * case[3] / 100)

    rng = np.random.default_rng(1)
    points = rng.uniform(-2, 2, (50, 3)) + np.array([0.5, 0.0, 1.0])
    uv, depth = cam.project(points)
    for p, (u, v), z in zip(points, uv, depth):
        ndc = world_to_camera_view(scene, obj, Vector(p))
        assert abs(ndc.z - z) < 1e-5                              # Blender's z is the view depth
        assert abs(ndc.x * cam.width - u) < 1e-4, (ndc.x * cam.width, u)
        assert abs((1.0 - ndc.y) * cam.height - v) < 1e-4, ((1.0 - ndc.y) * cam.height, v)


@pytest.mark.parametrize("fx,fy,cx,cy,w,h", [(60.0, 60.0, 32.0, 24.0, 64, 48),
                                               (80.0, 50.0, 20.0, 30.5, 64, 48),
                                               (40.0, 90.0, 40.0, 10.0, 50, 70)])
def test_round_trip_through_blender_params(fx, fy, cx, cy, w, h):
    w2c = look_at([3.0, -2.0, 1.5], [0.0, 0.2, 0.3])
    cam = Camera(w2c, fx, fy, cx, cy, w, h)
    back = camera_from_blender(camera_to_blender(cam))
    np.testing.assert_allclose(back.K, cam.K, atol=1e-9)
    np.testing.assert_allclose(back.world_to_camera, cam.world_to_camera, atol=1e-12)
    assert (back.width, back.height) == (w, h)


def test_look_at_points_the_optical_axis_at_the_target():
    target = np.array([0.3, -0.2, 0.5])
    cam = Camera(look_at([2.0, 1.0, 3.0], target), 50, 50, 16, 16, 32, 32)
    uv, z = cam.project(target[None])
    np.testing.assert_allclose(uv[0], [16, 16], atol=1e-9)
    assert z[0] > 0
    # world up (+Z) appears as image up (smaller v)
    uv_up, _ = cam.project((target + [0, 0, 0.1])[None])
    assert uv_up[0, 1] < 16
    np.testing.assert_allclose(cam.position, [2.0, 1.0, 3.0], atol=1e-12)


def test_look_at_straight_down_is_valid():
    cam = Camera(look_at([0, 0, 5], [0, 0, 0]), 10, 10, 5, 5, 10, 10)
    assert cam.project(np.zeros((1, 3)))[1][0] == pytest.approx(5.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fx=0.0), "focal length fx=0.0 must be a positive"),
    (dict(fy=-3.0), "focal length fy=-3.0"),
    (dict(width=0), "width=0 must be a positive whole number"),
    (dict(height=2.5), "height=2.5"),
    (dict(cx=float("nan")), "principal point cx is not finite"),
    (dict(world_to_camera=np.diag([2.0, 2.0, 2.0, 1.0])), "not a proper rotation"),
    (dict(world_to_camera=np.eye(3)), "must be 4x4"),
])
def test_bad_cameras_are_rejected_by_name(kwargs, message):
    base = dict(world_to_camera=np.eye(4), fx=10.0, fy=10.0, cx=5.0, cy=5.0, width=10, height=10)
    base.update(kwargs)
    with pytest.raises(CameraError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Camera(**base)


def test_zero_lens_blender_camera_is_rejected():
    with pytest.raises(CameraError, match="lens=0.0 mm"):
        camera_from_blender(BlenderCameraParams(matrix_world=np.eye(4), lens=0.0))


def test_stack_and_unstack():
    cams = [Camera(look_at([np.cos(a) * 3, np.sin(a) * 3, 1], [0, 0, 0]), 30, 31, 16, 15, 32, 30)
            for a in np.linspace(0, 6, 5)]
    arrays = stack_cameras(cams)
    assert arrays["viewmats"].shape == (5, 4, 4) and arrays["Ks"].dtype == np.float32
    back = cameras_from_arrays(arrays["viewmats"], arrays["Ks"], 32, 30)
    for a, b in itertools.zip_longest(cams, back):
        np.testing.assert_allclose(a.world_to_camera, b.world_to_camera, atol=1e-6)
    bad = arrays["Ks"].copy()
    bad[3, 0, 0] = 0
    with pytest.raises(CameraError, match="camera 3: focal length fx=0.0"):
        cameras_from_arrays(arrays["viewmats"], bad, 32, 30)
