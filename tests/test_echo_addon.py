"""A kind added from the tests alone reaches Blender: the test-only ``echo`` kind (tests/jobkinds_echo: its
spec, its job function and its add-on module ``addon.py``) gets its settings, operator, panel and result
handling from the spec through ``job_kinds``, with no edit to the add-on. Headless Blender submits
through the generated operator to a real backend subprocess (``serve --job-module jobkinds_echo.spec``)
and gets the result back as a splat object."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from helpers import RecordingLayout, registered_addon
from test_server import ServerProcess

pytestmark = pytest.mark.blender

POINTS = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-1.0, 0.5, 0.25]], np.float32)


@pytest.fixture
def echo_addon(addon_dir, bpy_empty):
    """The add-on's connection plus the echo kind's add-on module, registered; afterwards both are gone
    (the spec too, from the add-on's registry)."""
    with registered_addon(("splat_object", "connection")) as mods:
        sys.modules.pop("jobkinds_echo.addon", None)
        echo = importlib.import_module("jobkinds_echo.addon")
        echo.register()
        try:
            yield mods["connection"], echo
        finally:
            echo.unregister()
            importlib.import_module("splatbridge.shared.jobspec").unregister("echo")


@pytest.fixture
def echo_server(tmp_path):
    srv = ServerProcess(tmp_path / "store", plugins=[], extra=["--job-module", "jobkinds_echo.spec"]).start()
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def test_echo_kind_from_its_spec_runs_through_the_backend(echo_addon, echo_server, bpy_empty):
    bpy = bpy_empty
    conn, echo = echo_addon
    s = bpy.context.scene.splatbridge_echo
    rna = s.bl_rna.properties
    assert (rna["steps"].hard_min, rna["steps"].hard_max, rna["steps"].default) == (1, 10_000, 5)
    assert [i.identifier for i in rna["mode"].enum_items] == ["shift", "copy"]
    assert rna["shift"].unit == "LENGTH"
    layout = RecordingLayout()
    echo.job_kinds.draw_panel(layout, bpy.context, echo.UI)
    assert layout.props() == ["message", "steps", "dt", "mode", "show_advanced"]    # shift, preview_every: Advanced
    assert ("main", "operator", "splatbridge.job_echo") in layout.log
    assert hasattr(bpy.types, "SPLATBRIDGE_PT_echo")

    mesh = bpy.data.meshes.new("pts")
    mesh.from_pydata(POINTS.tolist(), [], [])
    obj = bpy.data.objects.new("pts", mesh)
    bpy.context.collection.objects.link(obj)
    obj.location = (0.0, 0.0, 1.0)
    bpy.context.view_layer.objects.active = obj
    bpy.context.view_layer.update()
    s.message, s.steps, s.dt, s.shift = "from blender", 3, 0.01, 0.5

    conn.connect(bpy.context, echo_server.address)
    assert bpy.ops.splatbridge.job_echo() == {"FINISHED"}
    rec = bpy.context.scene.splatbridge_jobs[-1]
    assert (rec.kind, rec.target, rec.label) == ("echo", "Echo", "Echo")
    assert conn.wait_for(lambda: rec.handled, 60, bpy.context), (rec.state, rec.message, echo_server.log()[-2000:])
    assert rec.state == "done", rec.message
    out = bpy.data.objects["Echo"]
    assert out["sb_echo_message"] == "from blender"
    so = importlib.import_module("splatbridge.splat_object")
    got = so.read_splats_from_object(out)
    # the mesh's world-space vertices, moved 3 x 0.5 m along +X by the job
    np.testing.assert_allclose(got.means, POINTS + [1.5, 0.0, 1.0], atol=1e-6)


def test_echo_bad_params_are_refused_in_blender_before_sending(echo_addon, bpy_empty):
    """The spec's own check runs in the add-on: no connection is needed to refuse it, nothing is tracked."""
    bpy = bpy_empty
    s = bpy.context.scene.splatbridge_echo
    s.mode, s.shift = "shift", 0.0
    with pytest.raises(RuntimeError, match="echo setting mode 'shift' needs a shift other than 0"):
        bpy.ops.splatbridge.job_echo()
    assert len(bpy.context.scene.splatbridge_jobs) == 0


def test_unregistering_the_kind_removes_what_it_added(addon_dir, bpy_empty):
    bpy = bpy_empty
    with registered_addon(("splat_object", "connection")):
        sys.modules.pop("jobkinds_echo.addon", None)
        echo = importlib.import_module("jobkinds_echo.addon")
        echo.register()
        assert hasattr(bpy.types.Scene, "splatbridge_echo") and hasattr(bpy.types, "SPLATBRIDGE_OT_job_echo")
        echo.unregister()
        importlib.import_module("splatbridge.shared.jobspec").unregister("echo")
        assert not hasattr(bpy.types.Scene, "splatbridge_echo")
        assert not hasattr(bpy.types, "SPLATBRIDGE_PT_echo") and not hasattr(bpy.types, "SPLATBRIDGE_OT_job_echo")
