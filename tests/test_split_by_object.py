"""Split by Object, end to end with real processes: a Blender scene of 3 separate objects -> camera rig
-> Cycles capture with the object-index pass -> ``python -m backend serve`` (CPU) trains -> the add-on
submits the ``segment`` job with the masks -> labels on the splat object -> "Split by Object" makes one
splat object per source object. Each new object drawn alone (offscreen, the viewport shader) matches
that object's own Cycles mask (the object rendered alone) with IoU >= 0.95; no splat is lost or
duplicated and every value is bit-identical. Then "Select from Masks": masks painted (as image
datablocks) in 3 views select one object's splats, compared with its split part.

CPU budget: 16 views of 64 px, 800 steps, <= 3000 Gaussians (about 45 s of training on 2 cores; the
test takes about 2 minutes).
"""
from __future__ import annotations

import importlib
import time

import numpy as np
import pytest

from demo.scene_kit import sky_sun_cycles
from test_e2e_train import backend_address  # noqa: F401  (the real backend server fixture)

pytestmark = [pytest.mark.blender, pytest.mark.slow, pytest.mark.torch]

RES = 64
VIEWS = 16
STEPS = 800
MODULES = ("rig", "splat_object", "viewport", "connection", "ops_train", "ops_select", "ops_splat_edit", "ops_split")
OBJECTS = (("Cube", (0.9, 0.25, 0.1)), ("Ball", (0.15, 0.7, 0.2)), ("Cone", (0.15, 0.3, 0.9)))


@pytest.fixture
def addon(addon_dir, bpy_empty):
    mods = [importlib.import_module(f"splatbridge.{m}") for m in MODULES]
    for m in mods:
        m.register()
    yield dict(zip(MODULES, mods))
    mods[MODULES.index("connection")].disconnect()
    for m in reversed(mods):
        m.unregister()


def _scene(bpy, rig):
    from helpers import node_material
    scene = bpy.context.scene
    # separate objects close together, so each fills a good part of the small views
    bpy.ops.mesh.primitive_cube_add(size=0.7, location=(-0.5, -0.2, 0.0), rotation=(0.3, 0.2, 0.5))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.4, location=(0.5, -0.2, 0.05))
    bpy.ops.object.shade_smooth()
    bpy.ops.mesh.primitive_cone_add(radius1=0.4, depth=0.8, location=(0.0, 0.5, 0.0))
    objs = []
    for obj, (name, colour) in zip(list(scene.objects)[-3:], OBJECTS):
        obj.name = name
        m = node_material(bpy, name)
        m.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*colour, 1.0)
        obj.data.materials.append(m)
        objs.append(obj)
    sky_sun_cycles(bpy, scene, (0.5, 0.5, 0.5), 2.0, (0.6, 0.2, 0.8), samples=8)
    for o in scene.objects:
        o.select_set(o in objs)
    bpy.context.view_layer.objects.active = objs[0]
    bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=VIEWS, resolution=(RES, RES), margin=1.05)
    return objs, rig.find_rig(bpy.context)


def _wait(connection, bpy, job_id: str, timeout: float):
    ok = connection.wait_for(lambda: connection.find_record(bpy.context.scene, job_id).handled, timeout)
    assert ok, f"job {job_id} did not finish within {timeout} s"
    return connection.find_record(bpy.context.scene, job_id)


def _save(path, rows: list[list[np.ndarray]], scale: int = 4) -> None:
    from PIL import Image
    grid = np.concatenate([np.concatenate([np.clip(im, 0, 1) for im in row], axis=1) for row in rows], axis=0)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(path)


def test_split_a_trained_scene_by_object(addon, gpu_ready, backend_address, artifacts):  # noqa: F811
    import bpy
    from splatbridge import capture
    from splatbridge.viewport.offscreen import draw_camera_view
    from splatbridge.shared.splats import FIELDS
    rig, connection, so, st = addon["rig"], addon["connection"], addon["splat_object"], importlib.import_module(
        "splatbridge.splat_state")
    objs, rg = _scene(bpy, rig)
    s = bpy.context.scene.splatbridge_train
    s.steps, s.sh_degree, s.num_points, s.max_gaussians = STEPS, 0, 1500, 3000
    s.holdout_every, s.preview_every, s.engine, s.object_index = 0, 0, "CYCLES", True
    connection.connect(bpy.context, backend_address)
    assert connection.wait_for(lambda: connection.STATE.server_info is not None, 90.0)
    assert "segment" in connection.STATE.server_info["job_kinds"]

    t0 = time.monotonic()
    assert bpy.ops.splatbridge.train() == {"FINISHED"}
    train_id = bpy.context.scene.splatbridge_jobs[-1].job_id
    rec = _wait(connection, bpy, train_id, 600.0)
    t_train = time.monotonic()
    assert rec.state == "done" and "labelling by object" in rec.message, rec.message
    obj = bpy.data.objects[rec.target]
    seg = [r for r in bpy.context.scene.splatbridge_jobs if r.kind == "segment"]
    assert len(seg) == 1
    seg_rec = _wait(connection, bpy, seg[0].job_id, 300.0)
    t_seg = time.monotonic()
    assert seg_rec.state == "done", seg_rec.message
    labels = st.get_labels(obj)
    assert labels is not None and len(labels) == so.splat_count(obj)
    assert st.get_label_names(obj) == {1: "Cube", 2: "Ball", 3: "Cone"}
    print(f"split: train {t_train - t0:.1f} s ({so.splat_count(obj)} splats), segment {t_seg - t_train:.1f} s, "
          f"{seg_rec.message}")

    # Split by Object
    before = so.read_splats_from_object(obj, apply_transform=False)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.splatbridge.split_by_object() == {"FINISHED"}
    parts = {name: bpy.data.objects.get(f"{name} splats") for name, _ in OBJECTS}
    assert all(p is not None and so.is_splat_object(p) for p in parts.values()), list(bpy.data.objects.keys())
    rest = bpy.data.objects.get(f"{obj.name} rest")
    assert obj.hide_get() and obj.hide_render
    # counts add up and values are bit-identical (each part = the source's splats of its label, in order)
    total = sum(so.splat_count(p) for p in parts.values()) + (so.splat_count(rest) if rest else 0)
    assert total == len(before)
    for i, (name, _) in enumerate(OBJECTS):
        got = so.read_splats_from_object(parts[name], apply_transform=False)
        want = before.subset(labels == i + 1)
        for f in FIELDS:
            assert np.array_equal(getattr(got, f), getattr(want, f)), (name, f)
    if rest is not None:
        got = so.read_splats_from_object(rest, apply_transform=False)
        assert np.array_equal(got.means, before.subset(labels < 1).means)

    # each part drawn alone against its object's own render mask (the object rendered alone), every view
    cams = rig.rig_cameras(rg)
    ious, rows = {name: [] for name, _ in OBJECTS}, []
    tmp = artifacts / "split_mask.png"
    for v, cam_obj in enumerate(cams):
        cam = capture.blender_camera(bpy.context.scene, cam_obj, RES, RES)
        row = []
        for name, _ in OBJECTS:
            for o in objs:
                o.hide_render = o.name != name
            ref = capture.render_view(bpy.context.scene, cam_obj, RES, RES, str(tmp))[..., 3] >= 128
            img = draw_camera_view(parts[name], cam)
            mine = img[..., 3] >= 0.5
            ious[name].append((ref & mine).sum() / max(1, (ref | mine).sum()))
            if v < 4:
                row += [np.repeat(ref[..., None], 3, -1).astype(np.float32), img[..., :3]]
        if row:
            rows.append(row)
    for o in objs:
        o.hide_render = False
    _save(artifacts / "split_by_object_masks_vs_parts.png", rows)
    summary = {k: (round(float(np.mean(v)), 3), round(float(np.min(v)), 3)) for k, v in ious.items()}
    print(f"split: IoU (mean, min over {len(cams)} views) per object: {summary}")
    for name, v in ious.items():
        assert float(np.mean(v)) >= 0.95, (name, summary)

    # Select from Masks: the Ball painted in 3 views (image datablocks), lifted to 3D by the segment job
    ops_split = addon["ops_split"]
    obj.hide_set(False)
    bpy.context.view_layer.objects.active = obj
    images = []
    for cam_obj in cams[:: max(1, len(cams) // 3)][:3]:
        index = capture.render_object_index(bpy.context.scene, cam_obj, RES, RES, str(artifacts / "split_index.exr"),
                                            {o: i + 1 for i, o in enumerate(objs)})
        img = ops_split.new_mask_image(bpy.context, cam_obj, RES, RES)
        px = np.zeros((RES, RES, 4), np.float32)
        px[index == 2] = 1.0                                   # "painted" white where the Ball is
        img.pixels.foreach_set(px[::-1].reshape(-1))
        images.append(img)
    rec = ops_split.select_from_masks(bpy.context, obj, images)
    rec = _wait(connection, bpy, rec.job_id, 300.0)
    assert rec.state == "done", rec.message
    picked = st.get_selected(obj)
    truth = labels == 2
    precision = (picked & truth).sum() / max(1, picked.sum())
    recall = (picked & truth).sum() / max(1, truth.sum())
    print(f"select from 3 painted masks: precision {precision:.3f}, recall {recall:.3f} ({rec.message})")
    assert precision >= 0.95 and recall >= 0.95
