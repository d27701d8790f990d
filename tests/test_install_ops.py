"""The preferences' install box in headless Blender (panels cannot draw without a window: the draw
function is called with tests/helpers.RecordingLayout): what it shows before an install, while one runs
(a real pip waiting on an index that never answers), after one, and when the pinned requirements changed;
and the operator's clear errors. The real install is tests/test_backend_install.py."""
from __future__ import annotations

import importlib
import json
import socket
import sys
import time

import pytest

from helpers import RecordingLayout

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]


@pytest.fixture
def ops(addon_dir, bpy_empty):
    mod = importlib.import_module("splatbridge.install_ops")
    mod.register()
    yield mod
    mod.unregister()
    mod._job = None


def _draw(ops, settings) -> list:
    layout = RecordingLayout()
    ops.draw_install(layout, settings)
    return layout.log


def test_install_box_before_during_and_after(ops, addon_dir, tmp_path, monkeypatch):
    from splatbridge.prefs import DefaultSettings
    inst = ops.installer
    folder = tmp_path / "backend"
    settings = DefaultSettings(install_folder=str(folder), install_python=sys.executable)
    source = ops.bundled_source()
    assert source == addon_dir / "backend_source"            # the extension's own copy of the backend
    log = _draw(ops, settings)
    assert [e[2] for e in log if e[1] == "prop"] == ["install_folder", "install_python", "torch_index"]
    assert [e[2] for e in log if e[1] == "operator"] == ["splatbridge.backend_install"] * 2 + \
        ["splatbridge.backend_install_log"]
    assert ("box", "label", f"No local backend installed in {folder}") in log

    # while installing: a progress bar instead of the buttons (pip waits on an index that never answers)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.getsockname()[1]}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    try:
        job = ops.installer.Installer(ops.options_from_prefs(settings))
        ops._job = job
        job.start()
        deadline = time.monotonic() + 120
        while job.running and time.monotonic() < deadline \
                and not any(ln.startswith("Looking in indexes") for ln in job.lines()):
            time.sleep(0.2)
        assert job.running
        log = _draw(ops, settings)
        progress = [e[2] for e in log if e[1] == "progress"]
        assert len(progress) == 1 and progress[0] == "5% pip install -r requirements-backend.txt"
        assert "splatbridge.backend_install" not in [e[2] for e in log]
        assert ("box", "label", "Esc to cancel") in log
        assert any(e[2].startswith("Installing the SplatBridge backend: ") for e in log)
        job.cancel()
    finally:
        server.close()
    log = _draw(ops, settings)
    assert any(e[2].startswith("Backend install cancelled: cancelled") for e in log), log
    text = ops.sync_log_text()
    assert text.name == ops.LOG_TEXT_NAME and "pip install" in text.as_string()

    # after an install: what it is; and Update when the extension's pins differ from the installed ones
    ops._job = None
    venv = inst.venv_dir(folder)
    venv.mkdir(parents=True, exist_ok=True)
    req = (source / inst.REQUIREMENTS_NAME).read_text()
    stamp = {"schema": inst.STAMP_SCHEMA, "requirements": inst.requirements_hash(req), "python": [3, 11, 7],
             "verified": {"torch": "2.13.0+cpu"}, "torch_plan": {"variant": "cpu", "notes": ["torch's CPU build"]}}
    (venv / inst.STAMP_NAME).write_text(json.dumps(stamp))
    labels = [e[2] for e in _draw(ops, settings) if e[1] == "label"]
    assert f"Installed: torch 2.13.0+cpu (cpu), Python 3.11.7, in {folder}" in labels
    assert "torch's CPU build" in labels
    assert not any("Update Backend" in t for t in labels)
    stamp["requirements"] = inst.requirements_hash(req + "\nsomething==1.0\n")
    (venv / inst.STAMP_NAME).write_text(json.dumps(stamp))
    assert "The backend's requirements changed: Update Backend" in \
        [e[2] for e in _draw(ops, settings) if e[1] == "label"]


def test_operator_names_the_problem(ops, bpy_empty, tmp_path, monkeypatch):
    """No backend source in the build: the operator says so and installs nothing."""
    monkeypatch.setattr(ops, "bundled_source", lambda: None)
    with pytest.raises(RuntimeError, match="carries no backend source"):
        bpy_empty.ops.splatbridge.backend_install()
    assert ops.current() is None
    assert bpy_empty.ops.splatbridge.backend_install_log() == {"CANCELLED"}   # "No backend install has run"
