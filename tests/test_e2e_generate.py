"""End to end: the Generate panel's operator in headless Blender, a backend subprocess, tiny models.

A cube is selected as the init mesh; ``splatbridge.generate`` (the operator's ``execute`` path, as
headless Blender runs no modal events) submits the job with surface samples of the cube; the add-on's
poll step (``connection.wait_for``) applies the live previews and the result. A splat object named after
the prompt must appear at the 3D cursor, with the cube's size. The diffusion models are tiny random
pipelines (no weights can be downloaded here), so the object's look is meaningless; its placement,
name, size and count are not.
"""
from __future__ import annotations


import numpy as np
import pytest

from helpers import model_server, registered_addon
from tiny_models import tiny_models

pytestmark = pytest.mark.blender

MODULES = ("splat_object", "connection", "ops_generate")


@pytest.fixture
def addon(addon_dir, bpy_empty):
    with registered_addon(MODULES) as mods:
        yield mods


@pytest.fixture
def server(tmp_path):
    with model_server(tmp_path / "store") as srv:
        yield srv


def test_generate_from_selected_mesh_appears_at_cursor(addon, server, bpy_empty):
    bpy = bpy_empty
    conn, so = addon["connection"], addon["splat_object"]
    models = tiny_models()
    conn.connect(bpy.context, server.address)
    bpy.ops.mesh.primitive_cube_add(size=2.0, location=(4.0, 0.0, 0.0))    # selected and active
    cube = bpy.context.active_object
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    s = bpy.context.scene.splatbridge_generate
    s.prompt, s.init, s.seed, s.steps = "a ceramic teapot", "mesh", 5, 3
    s.resolution, s.batch_size, s.num_points, s.mesh_samples, s.preview_every = 16, 1, 64, 500, 1
    s.guidance_model = str(models["sd"])

    assert bpy.ops.splatbridge.generate() == {"FINISHED"}
    rec = bpy.context.scene.splatbridge_jobs[-1]
    assert rec.kind == "generate" and rec.target == "a ceramic teapot"
    assert conn.wait_for(lambda: rec.handled, 240, bpy.context), (rec.state, rec.message, server.log()[-2000:])
    assert rec.state == "done", rec.message

    obj = bpy.data.objects["a ceramic teapot"]
    assert so.is_splat_object(obj) and obj["sb_seed"] == 5
    assert tuple(obj.location) == pytest.approx((1.0, 2.0, 3.0))
    local = so.read_splats_from_object(obj, apply_transform=False)
    assert len(local) == 64
    lo, hi = local.bounds()
    # the cube's size, centred on the object (3 steps move the means by ~0.005, measured)
    assert np.allclose(hi - lo, 2.0, atol=0.03), (lo, hi)
    assert np.allclose((lo + hi) / 2, 0.0, atol=0.02), (lo, hi)
    bpy.context.view_layer.update()                 # headless: refresh matrix_world from location
    world = so.read_splats_from_object(obj)
    assert np.allclose(world.means.mean(axis=0), [1.0, 2.0, 3.0], atol=0.3)
    # The live preview went into the same object: no stray objects.
    assert sorted(o.name for o in bpy.data.objects) == sorted([cube.name, "a ceramic teapot"])


def test_generate_without_selection_reports_error(addon, bpy_empty):
    bpy = bpy_empty
    s = bpy.context.scene.splatbridge_generate
    s.prompt, s.init = "a teapot", "mesh"
    with pytest.raises(RuntimeError, match="selected mesh"):
        bpy.ops.splatbridge.generate()
    assert len(bpy.context.scene.splatbridge_jobs) == 0


def test_name_from_prompt(addon):
    name = addon["ops_generate"].name_from_prompt
    assert name("  a ceramic   teapot ") == "a ceramic teapot"
    assert name("") == "Generated"
    assert len(name("word " * 40)) <= 48


_RESTARTED_BLENDER = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
import bpy
mods = [importlib.import_module(f"splatbridge.{n}") for n in ("splat_object", "connection", "ops_generate")]
for m in mods:
    m.register()
bpy.ops.wm.open_mainfile(filepath=sys.argv[2])
rec = bpy.context.scene.splatbridge_jobs[-1]
print("PLACE", *mods[2]._location(bpy.context, rec))
mods[1].disconnect()
"""


def test_placement_survives_a_restart_of_blender(addon, bpy_empty, addon_dir, tmp_path):
    """Submit at the cursor, move the cursor, save, quit; a new Blender that opens the file (and
    would then fetch the finished job) still places the result where the cursor was at submit."""
    import socket
    import subprocess
    import sys
    bpy = bpy_empty
    conn, gen = addon["connection"], addon["ops_generate"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn.connect(bpy.context, f"tcp://127.0.0.1:{port}")      # nobody listens: the submit just queues
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    s = bpy.context.scene.splatbridge_generate
    s.prompt, s.init = "a teapot", "sphere"
    gen.submit_generate(bpy.context)
    bpy.context.scene.cursor.location = (-5.0, 0.0, 0.0)
    path = tmp_path / "job.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    proc = subprocess.run([sys.executable, "-c", _RESTARTED_BLENDER, str(addon_dir.parent), str(path)],
                          capture_output=True, text=True, timeout=120)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PLACE")]
    assert line, proc.stdout + proc.stderr
    assert [float(v) for v in line[0].split()[1:]] == pytest.approx([1.0, 2.0, 3.0])


def test_result_waits_while_its_object_is_in_edit_mode(addon, bpy_empty):
    """A result that cannot be applied yet (its preview object is in edit mode) is neither lost
    nor an exception out of the poll step: the record says why, and the next poll after leaving
    edit mode applies it. The client is real; the finished job is put in its job table as a
    ``result`` reply would (no backend listens on the port)."""
    import socket
    from shared.client import JobState
    from shared.splats import Splats
    bpy = bpy_empty
    conn, so = addon["connection"], addon["splat_object"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = conn.connect(bpy.context, f"tcp://127.0.0.1:{port}")
    obj = so.create_splat_object(bpy.context, "teapot", Splats.random(10, seed=1))
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    rec = conn.track_job(bpy.context.scene, "job1", "generate", target="teapot")
    client.jobs["job1"] = JobState("job1", kind="generate", state="done",
                                   result=Splats.random(50, seed=2).to_arrays())
    conn.poll_once(bpy.context)
    assert not rec.handled and "edit mode" in rec.message
    assert len(obj.data.vertices) == 10
    bpy.ops.object.mode_set(mode="OBJECT")
    conn.poll_once(bpy.context)
    assert rec.handled and rec.message == "done"
    assert len(obj.data.vertices) == 50 and obj["sb_job_id"] == "job1"


def test_cancel_buttons_grey_out_without_a_connection(addon, bpy_empty):
    """With no client the panels' cancel buttons are disabled (poll), not an error on click."""
    import socket
    bpy = bpy_empty
    conn = addon["connection"]
    assert not bpy.ops.splatbridge.cancel_generate.poll()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn.connect(bpy.context, f"tcp://127.0.0.1:{port}")
    assert bpy.ops.splatbridge.cancel_generate.poll()
    conn.disconnect()
    assert not bpy.ops.splatbridge.cancel_generate.poll()


def test_applied_result_survives_undo_of_the_next_action(addon, bpy_empty):
    """A result arrives from a timer, outside any operator, so it is in no undo step unless the
    add-on pushes one: undoing the user's next action would then also take the result away."""
    import socket
    from shared.client import JobState
    from shared.splats import Splats
    bpy = bpy_empty
    conn = addon["connection"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = conn.connect(bpy.context, f"tcp://127.0.0.1:{port}")
    conn.track_job(bpy.context.scene, "job2", "generate", target="teapot")
    bpy.ops.ed.undo_push(message="submitted")                  # the user's last undo step
    client.jobs["job2"] = JobState("job2", kind="generate", state="done",
                                   result=Splats.random(30, seed=2).to_arrays())
    with bpy.context.temp_override(window=None):               # as in a bpy.app.timers callback
        assert bpy.context.window is None
        conn.poll_once(bpy.context)
    assert "teapot" in bpy.data.objects
    bpy.ops.mesh.primitive_cube_add()                          # the user's next action
    bpy.ops.ed.undo_push(message="Add Cube")                   # (the UI pushes this one itself)
    bpy.ops.ed.undo()
    assert "Cube" not in bpy.data.objects
    assert "teapot" in bpy.data.objects and len(bpy.data.objects["teapot"].data.vertices) == 30
    assert bpy.context.scene.splatbridge_jobs[-1].handled


def test_tracked_job_survives_undo_of_the_next_action(addon, bpy_empty):
    """Submitting (from a modal step, no undo flag) records the job in the scene; undoing the
    user's next action must not take the record away, or the result would never be applied."""
    bpy = bpy_empty
    conn = addon["connection"]
    bpy.ops.ed.undo_push(message="before")
    conn.track_job(bpy.context.scene, "job3", "generate", target="teapot")
    bpy.ops.mesh.primitive_cube_add()
    bpy.ops.ed.undo_push(message="Add Cube")                   # (the UI pushes this one itself)
    bpy.ops.ed.undo()
    assert "Cube" not in bpy.data.objects
    assert [r.job_id for r in bpy.context.scene.splatbridge_jobs] == ["job3"]


def test_status_bar_shows_the_stage_until_the_steps_start(addon, bpy_empty):
    """Loading a diffusion model takes from seconds to minutes; the status bar says so instead of
    "running". The stage comes with step 0 of 0; the first counted step replaces it."""
    from shared.client import JobState
    from splatbridge.job_objects import status_text
    conn = addon["connection"]
    rec = conn.track_job(bpy_empty.context.scene, "job1", "generate", "Teapot", label="Generate Teapot")
    job = JobState("job1", "generate", state="running",
                   metrics={"stage": "loading the guidance model (stabilityai/stable-diffusion-2-1-base)"})
    conn._sync_record(rec, job)
    assert status_text(rec) == "Generate Teapot: loading the guidance model (stabilityai/stable-diffusion-2-1-base)"
    job.step, job.total, job.metrics = 3, 1200, {"loss": 0.5, "num_gaussians": 4096.0, "eta_s": 90.0}
    conn._sync_record(rec, job)
    assert rec.stage == ""
    assert status_text(rec) == "Generate Teapot: step 3/1200, 4k Gaussians, 1m 30s left"
