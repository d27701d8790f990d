"""End to end, real processes: a Blender scene -> camera rig -> Cycles capture -> ZeroMQ ->
``python -m backend serve`` (a subprocess, CPU, temporary job store) -> training -> a splat object
in the scene, drawn by the viewport's offscreen draw and compared with a Cycles render from a
camera that training never saw. A second test cancels a job after a simulated Blender restart
(a new client, resuming from the job ids saved in the scene) and gets the partial splats.

CPU budget: the scene is a two-coloured lit sphere, 24 views at 32x32, 400 steps, at most 1000
Gaussians (the backend trains with the pure-torch reference rasterizer on the CPU).
"""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from demo.scene_kit import sky_sun_cycles
from helpers import psnr as _psnr, node_material

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
RES = 32
VIEWS = 24
STEPS = 400
POINTS = 500
MAX_GAUSSIANS = 1000
HALF_COLOURS = [(0.8, 0.3, 0.05), (0.05, 0.25, 0.8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def backend_address(tmp_path_factory):
    """A real backend server process on a free loopback port with a temporary job store."""
    port = _free_port()
    store = tmp_path_factory.mktemp("jobstore")
    log_path = store.parent / "backend.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--bind",
                                 f"tcp://127.0.0.1:{port}", "--store", str(store), "--device", "cpu",
                                 "--preview-interval", "0.2"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"--- backend log ({log_path}) ---\n" + log_path.read_text()[-3000:])


@pytest.fixture
def addon(addon_dir, bpy_empty):
    """The add-on modules this pipeline uses, registered in a fresh scene."""
    from splatbridge import connection, ops_train, rig, splat_object
    mods = [rig, splat_object, connection, ops_train]
    for m in mods:
        m.register()
    yield rig, connection, ops_train, splat_object
    connection.disconnect()
    for m in reversed(mods):
        m.unregister()


def _scene(bpy, rig, views: int, res: int):
    """A lit sphere, orange above and blue below the equator (a flipped or mirrored camera
    convention shows as swapped colours), sun + grey world; a rig around it."""
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=0.6)
    ball = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    for i, c in enumerate(HALF_COLOURS):
        m = node_material(bpy, f"half{i}")
        m.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*c, 1.0)
        ball.data.materials.append(m)
    for poly in ball.data.polygons:
        poly.material_index = 0 if poly.center.z > 0 else 1
    sky_sun_cycles(bpy, scene, (0.4, 0.4, 0.4), 2.0, (0.6, 0.2, 0.8), samples=16)
    for o in scene.objects:
        o.select_set(False)
    ball.select_set(True)
    bpy.context.view_layer.objects.active = ball
    bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=views, resolution=(res, res),
                                       margin=1.05)
    return ball, rig.find_rig(bpy.context)


def _connect(connection, bpy, address):
    connection.connect(bpy.context, address)
    assert connection.wait_for(lambda: connection.STATE.server_info is not None, 90.0), \
        f"no hello from the backend at {address}: {connection.STATE.last_error}"
    info = connection.STATE.server_info
    assert "train" in info["job_kinds"]
    assert connection.status_summary()[1] == "LINKED"


def _save_side_by_side(path: Path, *images: np.ndarray, scale: int = 6) -> None:
    from PIL import Image
    row = np.concatenate([np.clip(im, 0, 1) for im in images], axis=1)
    big = np.repeat(np.repeat(row, scale, axis=0), scale, axis=1)
    Image.fromarray((big * 255 + 0.5).astype(np.uint8)).save(path)


def test_scene_to_splats_over_zeromq(addon, gpu_ready, backend_address, artifacts):
    rig, connection, ops_train, splat_object = addon
    import bpy
    from splatbridge import capture
    from splatbridge.viewport.offscreen import draw_camera_view
    t0 = time.monotonic()
    ball, rg = _scene(bpy, rig, VIEWS, RES)
    s = bpy.context.scene.splatbridge_train
    s.steps, s.sh_degree, s.num_points, s.max_gaussians = STEPS, 0, POINTS, MAX_GAUSSIANS
    s.holdout_every, s.preview_every, s.strategy, s.engine = 0, 100, "default", "CYCLES"
    _connect(connection, bpy, backend_address)
    t_hello = time.monotonic()

    # The Train operator's execute path (no window): capture every view, then submit.
    assert bpy.ops.splatbridge.train() == {"FINISHED"}
    t_submit = time.monotonic()
    rec = bpy.context.scene.splatbridge_jobs[-1]
    job_id, target = rec.job_id, rec.target
    assert rec.kind == "train" and not rec.handled

    seen = {"preview_before_end": False, "max_step": 0}

    def finished() -> bool:
        r = connection.find_record(bpy.context.scene, job_id)
        if not r.handled:
            seen["max_step"] = max(seen["max_step"], r.step)
            if r.target in bpy.data.objects:
                seen["preview_before_end"] = True
        return r.handled

    assert connection.wait_for(finished, 400.0), "training did not finish within 400 s"
    t_done = time.monotonic()
    rec = connection.find_record(bpy.context.scene, job_id)
    assert rec.state == "done", rec.message
    assert rec.step == STEPS and rec.total == STEPS
    assert seen["preview_before_end"], "no live preview object appeared while training"
    obj = bpy.data.objects[rec.target]
    assert rec.target == target and splat_object.is_splat_object(obj)
    splats = splat_object.read_splats_from_object(obj)
    assert 100 <= len(splats) <= MAX_GAUSSIANS

    # Held out: a camera between the rig's directions, never used in training.
    centre = np.array(rg.matrix_world.translation)
    radius = float(np.linalg.norm(np.array(rig.rig_cameras(rg)[0].matrix_world.translation) - centre))
    az, el = math.radians(37.0), math.radians(24.0)
    pos = centre + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    dirs = np.array([np.array(c.matrix_world.translation) - centre for c in rig.rig_cameras(rg)])
    nearest = min(math.degrees(math.acos(np.clip(d @ (pos - centre) / radius ** 2, -1, 1))) for d in dirs)
    assert nearest > 5.0                      # genuinely a new view
    from mathutils import Matrix
    cam = bpy.data.objects.new("heldout", bpy.data.cameras.new("heldout"))
    cam.data.lens = rig.rig_cameras(rg)[0].data.lens
    cam.matrix_world = Matrix(rig.look_at_matrix(pos, centre).tolist())
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.view_layer.update()
    ref = capture.render_view(bpy.context.scene, cam, RES, RES, str(artifacts / "e2e_heldout_cycles_raw.png"))
    ref = ref.astype(np.float32) / 255.0
    ref_pm = ref[..., :3] * ref[..., 3:]                 # over black, like the offscreen draw
    shared_cam = capture.blender_camera(bpy.context.scene, cam, RES, RES)
    img = draw_camera_view(obj, shared_cam)
    psnr = _psnr(img[..., :3], ref_pm)
    mask_ref, mask_img = ref[..., 3] > 0.5, img[..., 3] > 0.5
    iou = (mask_ref & mask_img).sum() / max((mask_ref | mask_img).sum(), 1)
    _save_side_by_side(artifacts / "e2e_heldout_cycles_vs_splats.png", ref_pm, img[..., :3])
    print(f"e2e: hello {t_hello - t0:.1f} s, capture+submit {t_submit - t_hello:.1f} s, "
          f"training {t_done - t_submit:.1f} s ({STEPS} steps, {len(splats)} Gaussians), "
          f"held-out PSNR {psnr:.2f} dB, mask IoU {iou:.3f}, result metrics {rec.message}")
    assert iou > 0.85
    assert psnr >= 22.0


def test_cancel_after_restart_gives_partial_splats(addon, backend_address):
    """Submit, 'restart Blender' (drop the client; the job ids live on in the scene), reconnect:
    the add-on follows the job through status requests, cancels it, fetches the partial result
    from the job store and makes a usable splat object."""
    rig, connection, ops_train, splat_object = addon
    import bpy
    ball, rg = _scene(bpy, rig, 8, 16)
    s = bpy.context.scene.splatbridge_train
    s.steps, s.sh_degree, s.num_points, s.max_gaussians = 100000, 0, 300, 600
    s.holdout_every, s.preview_every, s.engine, s.samples = 0, 5, "CYCLES", 4
    _connect(connection, bpy, backend_address)
    job = ops_train.start_capture(bpy.context)
    result = job.run_all()
    rec = ops_train.submit_capture(bpy.context, result, name="Partial")
    job_id = rec.job_id
    scene = bpy.context.scene
    assert connection.wait_for(lambda: connection.find_record(scene, job_id).step >= 10
                               and "Partial" in bpy.data.objects, 120.0)

    first_client = connection.STATE.client
    connection.disconnect()                                   # Blender "crashes"...
    step_before = connection.find_record(scene, job_id).step
    connection.connect(bpy.context, backend_address)          # ...and comes back: a new client
    assert connection.STATE.client is not first_client
    assert connection.wait_for(lambda: connection.find_record(scene, job_id).step > step_before + 5,
                               60.0), "no status updates for the running job after reconnecting"
    assert connection.find_record(scene, job_id).state == "running"

    ops_train.cancel_train(bpy.context, job_id)
    assert connection.wait_for(lambda: connection.find_record(scene, job_id).handled, 60.0)
    rec = connection.find_record(scene, job_id)
    assert rec.state == "cancelled" and rec.message.startswith("cancelled"), (rec.state, rec.message)
    obj = bpy.data.objects[rec.target]
    assert obj.get("sb_job_id") == job_id
    splats = splat_object.read_splats_from_object(obj)
    assert 0 < len(splats) <= 600
    # Usable: the partial splats sit on the object (their centres project into its masks).
    from splatbridge.shared.cameras import cameras_from_arrays
    inside = []
    for cam, im in zip(cameras_from_arrays(result.viewmats, result.Ks, 16, 16), result.images):
        uv, z = cam.project(splats.means)
        ij = np.clip(np.floor(uv).astype(int), 0, 15)
        inside.append(im[ij[:, 1], ij[:, 0], 3] > 0)
    assert np.mean(inside) > 0.8


def test_train_from_dataset_folder(addon, backend_address, tmp_path):
    """"Train from Dataset Folder": a BlenderNeRF-style transforms.json (camera_angle_x, Blender
    camera matrices as transform_matrix, RGBA PNGs) that the backend reads from its own disk; the
    splats come back as an object and sit where the sphere is."""
    rig, connection, ops_train, splat_object = addon
    import bpy
    from PIL import Image
    from splatbridge import capture
    ball, rg = _scene(bpy, rig, 12, 24)
    scene = bpy.context.scene
    s = scene.splatbridge_train
    s.engine, s.samples = "CYCLES", 4
    cams = rig.rig_cameras(rg)
    (tmp_path / "images").mkdir()
    frames = []
    for i, cam in enumerate(cams):
        rgba = capture.render_view(scene, cam, 24, 24, str(tmp_path / f"raw{i}.png"))
        Image.fromarray(rgba).save(tmp_path / "images" / f"v{i:02d}.png")
        frames.append({"file_path": f"images/v{i:02d}",
                       "transform_matrix": [list(row) for row in cam.matrix_world]})
    import json
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": cams[0].data.angle_x, "frames": frames}))

    _connect(connection, bpy, backend_address)
    s.steps, s.sh_degree, s.max_gaussians, s.holdout_every = 150, 0, 1000, 6
    assert bpy.ops.splatbridge.train_dataset(directory=str(tmp_path)) == {"FINISHED"}
    rec = scene.splatbridge_jobs[-1]
    job_id = rec.job_id
    assert connection.wait_for(lambda: connection.find_record(scene, job_id).handled, 300.0)
    rec = connection.find_record(scene, job_id)
    assert rec.state == "done", rec.message
    splats = splat_object.read_splats_from_object(bpy.data.objects[rec.target])
    assert 50 <= len(splats) <= 1000                  # the panel's cap (its minimum is 1000)
    # the dataset's cameras put the splats on the sphere (radius 0.6 at the origin)
    dist = np.linalg.norm(splats.means - np.array(ball.location), axis=1)
    assert np.median(dist) < 0.75, np.median(dist)

    bad = tmp_path / "empty"
    bad.mkdir()
    assert bpy.ops.splatbridge.train_dataset(directory=str(bad)) == {"FINISHED"}
    bad_id = scene.splatbridge_jobs[-1].job_id
    assert connection.wait_for(lambda: connection.find_record(scene, bad_id).handled, 60.0)
    rec = connection.find_record(scene, bad_id)
    assert rec.state == "failed" and "found neither transforms.json" in rec.message, rec.message


def test_lost_backend_is_shown_and_device_text(addon, monkeypatch):
    """No server at the address: the request times out and the indicator says so."""
    rig, connection, ops_train, splat_object = addon
    import bpy
    monkeypatch.setattr(connection, "REQUEST_TIMEOUT_S", 0.3)
    address = f"tcp://127.0.0.1:{_free_port()}"
    connection.connect(bpy.context, address)
    assert connection.status_summary() == (f"Connecting to {address}...", "SORTTIME")
    assert connection.wait_for(lambda: connection.STATE.lost, 5.0)
    text, icon = connection.status_summary()
    assert (text, icon) == (f"Backend not responding at {address}", "ERROR")
    assert "backend not responding: no reply to hello" in connection.STATE.last_error
    connection.disconnect()
    with pytest.raises(RuntimeError, match="not connected to a backend"):
        connection.cancel_job("abc")
    assert connection.status_summary() == ("Not connected", "UNLINKED")
    assert connection.device_text({"cuda": True, "gpu_name": "NVIDIA H100", "gsplat_cuda": True,
                                   "gpu_memory_bytes": 80 * 2**30}) == \
        "Connected: CUDA NVIDIA H100, 80 GiB; gsplat CUDA"
    assert connection.device_text({"cuda": False, "device": "cpu"}).startswith("Connected: CPU only")


def test_train_operator_leaves_nothing_behind_when_ended_early(addon):
    """Blender calls an operator's ``cancel`` when it ends a modal itself (File > Open, window
    closed): the capture's temporary folder and the panel's capture progress must go. Esc while
    training with the connection gone is a one-line report that ends the operator. Headless bpy
    runs no modal operators, so the operator's methods run on a plain stand-in object."""
    rig, connection, ops_train, _ = addon
    import bpy
    from splatbridge import job_objects
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.splatbridge.add_camera_rig(count=3, resolution=(8, 8))

    class Probe(job_objects.JobModal):
        _finish = ops_train.SPLATBRIDGE_OT_train._finish
        _end_capture = ops_train.SPLATBRIDGE_OT_train._end_capture
        _capture = None

        def __init__(self):
            self.reports = []

        def report(self, level, message):
            self.reports.append((level, message))

    op = Probe()
    op._capture = ops_train.start_capture(bpy.context)
    tmp = op._capture._tmp
    ops_train.CAPTURE_PROGRESS.update(active=True)
    assert os.path.isdir(tmp)
    op.cancel(bpy.context)
    assert op._capture.cancelled and not os.path.exists(tmp)
    assert not ops_train.CAPTURE_PROGRESS["active"]

    connection.disconnect()
    op = Probe()
    op._job_id = "0123abcd"
    assert op._request_cancel(bpy.context, "Train Splats") == {"CANCELLED"}
    assert op.reports == [({"ERROR"}, "Train Splats: not connected to a backend")]


def test_modal_timer_interval_changes_in_place(addon):
    """The Train modal renders at 50 Hz, then follows the job at FOLLOW_INTERVAL_S: the timer is
    replaced (never two), and ``_finish`` removes it."""
    import bpy
    from splatbridge import job_objects

    op = job_objects.JobModal()
    op._set_interval(bpy.context, 0.02)
    first = op._timer
    op._set_interval(bpy.context, job_objects.FOLLOW_INTERVAL_S)
    assert op._timer is not first and op._timer.time_step == pytest.approx(0.1)
    assert op._finish(bpy.context, {"FINISHED"}) == {"FINISHED"} and op._timer is None
