"""Install Local Backend, for real, the way an artist does it: the built extension zip installed into a
headless Blender (bpy) with its own user folders in a temp dir; **Install Local Backend** creates a venv in
the extension's user data folder with Blender's own Python (the only one on PATH here) and pip-installs
requirements-backend.txt (CPU torch: this machine's pip finds its CPU wheel on local disk; the rest comes
from the package registry); **Start a Local Backend** then runs the bundled backend source with that venv
and no other setting (the port is set only to keep the test off 5555); a tiny training job goes through
it from Blender (camera rig, Cycles capture, ZeroMQ, a splat object back). Also: a Python that is too old
is refused with a clear error, and Update Backend runs pip only when the pinned requirements changed.

Slow on purpose: a full pip install (measured ~3 min on the 2-core box, most of it downloads).
"""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.blender, pytest.mark.slow]

PKG = "bl_ext.user_default.splatbridge"

SCRIPT = textwrap.dedent(r'''
    import json, os, sys, threading, time
    import bpy, addon_utils

    ZIP, PKG, PORT, OLD_PYTHON = sys.argv[-4], sys.argv[-3], int(sys.argv[-2]), sys.argv[-1]
    out = {}
    bpy.ops.extensions.package_install_files(filepath=ZIP, repo="user_default", enable_on_install=True)
    pkg = sys.modules[PKG]
    out["errors"] = dict(pkg.ERRORS)
    install_ops = sys.modules[PKG + ".install_ops"]
    installer = sys.modules[PKG + ".installer"]
    connection = sys.modules[PKG + ".connection"]
    backend_process = sys.modules[PKG + ".backend_process"]
    prefs = bpy.context.preferences.addons[PKG].preferences
    prefs.port = PORT
    prefs.backend_address = f"tcp://127.0.0.1:{PORT}"

    # 1. A Python that is too old, set by the user: refused, with the reason.
    if OLD_PYTHON:
        prefs.install_python = OLD_PYTHON
        try:
            bpy.ops.splatbridge.backend_install()
            out["old_python"] = "FINISHED?"
        except RuntimeError as exc:
            out["old_python"] = str(exc)
        out["old_python_cause"] = install_ops.current().error.cause
        prefs.install_python = ""

    # 2. Install (the operator's execute path: no window), its percentage sampled meanwhile.
    samples = []
    def watch():
        while True:
            job = install_ops.current()
            if job is not None and job.options.python == "" and job.state != "idle":
                samples.append((round(job.percent, 2), job.phase))
                if not job.running:
                    return
            time.sleep(0.25)
    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.monotonic()
    watcher.start()
    out["install"] = sorted(bpy.ops.splatbridge.backend_install())
    out["install_s"] = time.monotonic() - t0
    watcher.join(5)
    job = install_ops.current()
    out["samples"] = samples
    out["state"] = job.state
    out["verified"] = job.verified
    out["plan"] = [job.plan.variant, job.plan.requirement, job.plan.index, list(job.plan.notes)]
    out["folder"] = str(install_ops.install_folder(prefs))
    out["user_ext"] = bpy.utils.extension_path_user(PKG, path="")
    out["prefs_python"] = prefs.python_executable
    out["prefs_source"] = prefs.backend_source
    out["stamp"] = installer.read_stamp(install_ops.install_folder(prefs))
    log_text = bpy.data.texts.get(install_ops.LOG_TEXT_NAME)
    out["log_lines"] = log_text.as_string().splitlines() if log_text else []
    out["status"] = install_ops.status_lines(prefs)

    # 3. Update Backend with unchanged requirements: nothing runs.
    out["update"] = sorted(bpy.ops.splatbridge.backend_install(update=True))
    out["update_state"] = install_ops.current().state
    out["update_ran"] = [ln for ln in install_ops.current().lines() if ln.startswith("[SplatBridge] $ ")]

    # 4. Start a Local Backend (no other setting) and train a tiny job through it.
    out["start"] = sorted(bpy.ops.splatbridge.backend_start())
    proc = backend_process.current()
    out["backend_cmd"] = proc.spec.command()
    connection.connect(bpy.context)
    ok = connection.wait_for(lambda: connection.STATE.server_info is not None, 180.0)
    out["hello"] = ok and {k: connection.STATE.server_info.get(k) for k in ("device", "job_kinds")}
    if ok:
        scene = bpy.context.scene
        for o in list(bpy.data.objects):
            bpy.data.objects.remove(o)
        bpy.ops.mesh.primitive_cube_add(size=1.0)
        cube = bpy.context.active_object
        mat = bpy.data.materials.new("red")
        if mat.node_tree is None:
            mat.use_nodes = True
        mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.8, 0.1, 0.05, 1.0)
        cube.data.materials.append(mat)
        sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
        scene.collection.objects.link(sun)
        scene.render.engine = "CYCLES"
        scene.cycles.samples = 4
        scene.cycles.device = "CPU"
        cube.select_set(True)
        bpy.context.view_layer.objects.active = cube
        bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=8, resolution=(16, 16), margin=1.1)
        s = scene.splatbridge_train
        s.steps, s.sh_degree, s.num_points, s.max_gaussians = 60, 0, 200, 400
        s.holdout_every, s.preview_every = 0, 1000
        out["train"] = sorted(bpy.ops.splatbridge.train())
        rec = scene.splatbridge_jobs[-1]
        job_id = rec.job_id
        done = connection.wait_for(lambda: connection.find_record(scene, job_id).handled, 300.0)
        rec = connection.find_record(scene, job_id)
        out["job"] = {"done": done, "state": rec.state, "step": rec.step, "total": rec.total, "message": rec.message}
        obj = bpy.data.objects.get(rec.target)
        if obj is not None:
            import numpy as np
            so = sys.modules[PKG + ".splat_object"]
            splats = so.read_splats_from_object(obj)
            out["splats"] = {"count": len(splats), "max_abs_mean": float(np.abs(splats.means).max())}
    connection.disconnect()
    out["stop_code"] = backend_process.stop_backend()
    out["backend_log_tail"] = backend_process.read_log()[-15:]

    # 5. A changed pin: Update Backend runs pip again (the change is one pin pip finds satisfied).
    req = os.path.join(prefs.backend_source, installer.REQUIREMENTS_NAME)
    with open(req) as f:
        text = f.read()
    with open(req, "w") as f:
        f.write(text + "msgpack==1.2.4  # repeated pin: changes the requirements, not the environment\n")
    out["needs_update"] = installer.needs_update(install_ops.install_folder(prefs), prefs.backend_source)
    t0 = time.monotonic()
    out["update2"] = sorted(bpy.ops.splatbridge.backend_install(update=True))
    out["update2_s"] = time.monotonic() - t0
    out["update2_state"] = install_ops.current().state
    out["update2_ran_pip"] = any(" -m pip install " in ln for ln in install_ops.current().lines())
    out["needs_update_after"] = installer.needs_update(install_ops.install_folder(prefs), prefs.backend_source)
    addon_utils.disable(PKG, default_set=True)
    print("RESULT-JSON " + json.dumps(out))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _old_python() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    return found[-1] if found else ""


@pytest.fixture(scope="module")
def result(built_addon, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("blender_user")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    for key, sub in (("BLENDER_USER_RESOURCES", "res"), ("BLENDER_USER_SCRIPTS", "scripts"),
                     ("BLENDER_USER_CONFIG", "config"), ("BLENDER_USER_DATAFILES", "datafiles"),
                     ("BLENDER_USER_EXTENSIONS", "extensions")):
        (tmp / sub).mkdir()
        env[key] = str(tmp / sub)
    env.pop("PYTHONPATH", None)
    # No Python on PATH: the installer must find Blender's own (here the bpy venv's interpreter).
    (tmp / "bin").mkdir()
    env["PATH"] = str(tmp / "bin")
    script = tmp / "install_backend.py"
    script.write_text(SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), str(built_addon), PKG, str(_free_port()), _old_python()],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=1500)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT-JSON ")]
    assert proc.returncode == 0 and lines, f"script failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n" \
                                           f"{proc.stderr[-4000:]}"
    out = json.loads(lines[-1][len("RESULT-JSON "):])
    out["total_s"] = time.monotonic() - t0
    print(f"install test: pip install {out['install_s']:.0f} s, whole test {out['total_s']:.0f} s")
    return out


def test_install_makes_a_venv_with_blenders_python_and_cpu_torch(result):
    r = result
    assert r["errors"] == {}
    assert r["install"] == ["FINISHED"] and r["state"] == "done", r["log_lines"][-20:]
    folder = Path(r["folder"])
    assert folder == Path(r["user_ext"]) / "backend"            # the extension's user data folder
    assert r["prefs_python"] == str(folder / "venv" / "bin" / "python")
    assert Path(r["prefs_source"]).name == "backend_source" and (Path(r["prefs_source"]) / "backend").is_dir()
    assert any(ln.startswith(f"[SplatBridge] using {sys.executable} (Python 3.11") for ln in r["log_lines"]), \
        [ln for ln in r["log_lines"] if ln.startswith("[SplatBridge]")]
    assert r["plan"][:3] == ["cpu", "torch==2.13.0+cpu", None]
    assert r["verified"]["torch"] == "2.13.0+cpu" and r["verified"]["cuda"] is False
    assert r["stamp"]["verified"] == r["verified"] and r["stamp"]["python"][:2] == [3, 11]
    assert any(ln.startswith("Successfully installed") for ln in r["log_lines"])    # pip's output in the log text
    assert r["status"][0][0].startswith("Installed: torch 2.13.0+cpu (cpu), Python 3.11")


def test_install_progress_is_a_rising_percentage(result):
    percents = [p for p, _ in result["samples"]]
    assert len(percents) > 20
    assert percents == sorted(percents), percents
    assert percents[-1] == 100.0
    assert len({round(p) for p in percents if 5 < p < 70}) >= 5            # downloads move the bar
    assert len({round(p) for p in percents if 70 <= p < 97}) >= 2          # so does unpacking
    phases = {ph.split()[0] for _, ph in result["samples"] if ph}
    assert {"collecting", "installing"} <= phases, phases


def test_too_old_python_is_refused_by_name(result):
    if "old_python" not in result:
        pytest.skip("no Python 3.10 on this machine")
    msg = result["old_python"]
    assert result["old_python_cause"] == "no_python"
    assert "no suitable Python: the Python set for the install" in msg and "(Python 3.10" in msg
    assert "version not supported (the backend needs 3.11, 3.12, 3.13)" in msg


def test_local_backend_starts_with_no_other_setting_and_trains(result):
    r = result
    assert r["start"] == ["FINISHED"]
    assert r["backend_cmd"][0] == r["prefs_python"] and r["backend_cmd"][1:4] == ["-m", "backend", "serve"]
    assert r["hello"] and "train" in r["hello"]["job_kinds"], r["backend_log_tail"]
    assert r["train"] == ["FINISHED"]
    job = r["job"]
    assert job["done"] and job["state"] == "done" and job["step"] == job["total"] == 60, (job, r["backend_log_tail"])
    assert 20 <= r["splats"]["count"] <= 400
    assert r["splats"]["max_abs_mean"] < 1.5            # the splats sit on the unit cube
    assert r["stop_code"] is not None


def test_update_reinstalls_only_when_the_pins_changed(result):
    r = result
    assert r["update"] == ["FINISHED"] and r["update_state"] == "up_to_date" and r["update_ran"] == []
    assert r["needs_update"] is True
    assert r["update2"] == ["FINISHED"] and r["update2_state"] == "done" and r["update2_ran_pip"]
    assert r["needs_update_after"] is False
