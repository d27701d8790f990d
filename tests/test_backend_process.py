"""The add-on's local backend launcher: a real `python -m backend serve` child process, a real
ZeroMQ hello from shared.client, its log in a ring buffer and a Blender text, and a clean stop."""
from __future__ import annotations

import importlib
import socket
import sys
from pathlib import Path

import pytest

from shared.client import BackendClient

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def bp(addon_dir, bpy_empty):
    mod = importlib.import_module("splatbridge.backend_process")
    yield mod
    mod.stop_backend(timeout=5)


def test_start_hello_log_stop(bp, bpy_empty, tmp_path):
    port = _free_port()
    store = tmp_path / "store"
    proc = bp.start_backend(sys.executable, ROOT, port, job_store=str(store))
    assert bp.is_running() and proc.spec.address == f"tcp://127.0.0.1:{port}"
    assert bp.start_backend(sys.executable, ROOT, port, job_store=str(store)) is proc  # idempotent
    with pytest.raises(bp.BackendLaunchError, match="already running"):
        bp.start_backend(sys.executable, ROOT, _free_port())

    client = BackendClient(proc.spec.address, timeout_s=120)
    try:
        client.send_hello()
        assert client.wait_for(lambda: client.server_info is not None, timeout=120), \
            "no hello from the backend:\n" + "\n".join(bp.read_log())
        assert "protocol" in client.server_info and "job_kinds" in client.server_info
    finally:
        client.close()

    log = bp.read_log()
    assert log[0].startswith("[SplatBridge] ") and f"--bind tcp://127.0.0.1:{port}" in log[0]
    assert f"--store {store}" in log[0]
    text = bp.sync_log_text()
    assert text is not None and text.name == bp.LOG_TEXT_NAME
    assert text.as_string().splitlines()[0] == log[0]
    assert bp.read_log(max_lines=1) == log[-1:]

    code = bp.stop_backend()
    assert code is not None and not bp.is_running()
    assert proc.popen.poll() is not None
    assert bp.read_log()[-1] == f"[SplatBridge] backend exited with code {code}"
    assert _port_is_free(port), "the backend's port is still bound after stop"
    assert bp.stop_backend() == code  # stopping again is harmless
    assert "exited" in bp.status_text()


def test_unregister_stops_the_backend_and_its_timer(bp, bpy_empty):
    bp.register()
    try:
        bp.start_backend(sys.executable, ROOT, _free_port())
        assert bp.is_running() and bpy_empty.app.timers.is_registered(bp._log_timer)
    finally:
        bp.unregister()
    assert not bp.is_running()
    assert not bpy_empty.app.timers.is_registered(bp._log_timer)


def test_bad_settings_name_the_problem(bp, tmp_path):
    with pytest.raises(bp.BackendLaunchError, match="has no backend/__main__.py"):
        bp.check_backend_source(str(tmp_path))
    assert bp.check_backend_source(str(ROOT)) == ROOT
    with pytest.raises(bp.BackendLaunchError, match="does not exist"):
        bp.resolve_python(str(tmp_path / "no-python"), ROOT)
    with pytest.raises(bp.BackendLaunchError, match="not a SplatBridge backend source"):
        bp.start_backend(sys.executable, tmp_path, _free_port())
    assert not bp.is_running()


def test_defaults_come_from_the_build_or_the_checkout(bp, addon_dir):
    # The assembled add-on (tests) has no build_info.json and lives outside the repo: no default.
    # A built zip records its source repo (see test_build); simulate that here.
    info = addon_dir / "build_info.json"
    try:
        info.write_text('{"source_root": "%s"}' % ROOT.as_posix())
        assert bp.default_backend_source() == ROOT
        assert bp.resolve_python("", ROOT) == str(ROOT / ".venv" / "bin" / "python")
    finally:
        info.unlink()


def test_ensure_local_backend_follows_the_toggle(bp, addon_dir):
    from splatbridge.prefs import DefaultSettings
    assert bp.ensure_local_backend(DefaultSettings(start_local_backend=False)) is None
    assert not bp.is_running()
    settings = DefaultSettings(start_local_backend=True, backend_source=str(ROOT),
                               python_executable=sys.executable, port=_free_port(),
                               job_store_keep_days=7.5, job_store_max_gb=0.0)
    proc = bp.ensure_local_backend(settings)
    assert proc is not None and bp.is_running()
    assert proc.spec.python == sys.executable and proc.spec.port == settings.port
    command = proc.spec.command()
    assert command[-4:] == ["--keep-days", "7.5", "--max-store-gb", "0"], command
    assert bp.ensure_local_backend(settings) is proc
    client = BackendClient(proc.spec.address, timeout_s=120)
    try:                                # the server took the retention options and serves
        client.send_hello()
        assert client.wait_for(lambda: client.server_info is not None, timeout=120), \
            "no hello from the backend:\n" + "\n".join(bp.read_log())
    finally:
        client.close()
    bp.stop_backend()


def test_log_timer_survives_opening_another_file(bp, bpy_empty):
    """Blender drops non-persistent timers when a file is opened; the backend keeps running, so its
    log must keep reaching the text datablock after File > Open."""
    bp._ensure_log_timer()
    try:
        bpy_empty.ops.wm.read_homefile(use_empty=True)
        assert bpy_empty.app.timers.is_registered(bp._log_timer)
    finally:
        if bpy_empty.app.timers.is_registered(bp._log_timer):
            bpy_empty.app.timers.unregister(bp._log_timer)
