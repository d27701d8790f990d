"""shared/client.py: non-blocking polling, request timeouts, heartbeats, reconnects, job state.

Servers are real ``python -m backend serve`` processes (see test_server.ServerProcess) with the
``sleep`` plug-in job kind from test_server.py.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from test_server import ROOT, ServerProcess, drain_until, free_port, run_until
from shared.client import LOCAL_TIMEOUT_CODE, BackendClient, _read_key

pytestmark = pytest.mark.bpy_only


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("cli") / "store").start()
    yield srv
    srv.stop()


def test_poll_never_blocks_and_silence_becomes_a_local_event():
    with BackendClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.3) as c:   # nobody there
        c.send_hello()
        c.status()
        events, worst = [], 0.0
        t_end = time.monotonic() + 0.6
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            events += c.poll()
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.01)
        assert worst < 0.02, worst
        assert [e.type for e in events] == ["error", "error"]
        assert all(e.fields["code"] == LOCAL_TIMEOUT_CODE and e.fields["local"] for e in events)
        assert [e.fields["request"] for e in events] == ["hello", "status"]
        assert "backend not responding" in events[0].fields["message"]
        assert not c.connected and c.pending == 0
        assert c.wait_for(lambda: False, 0.1) is False


def test_hello_sets_connected_and_server_info(server):
    with server.client() as c:
        assert not c.connected
        c.send_hello()
        assert c.wait_for(lambda: c.server_info is not None, 10)
        assert c.connected and c.pending == 0
        assert c.server_info["device"] == "cpu" and "sleep" in c.server_info["job_kinds"]


def test_heartbeats_are_sent_by_poll_when_quiet(server):
    with server.client(heartbeat_s=0.1) as c:
        # Until 4 heartbeat replies came (every 0.1 s: ~0.4 s on a quiet machine; a loaded CI box may
        # need longer, hence the generous bound), and never more often than the heartbeat interval.
        seen = []
        t0 = time.monotonic()
        while seen.count("status") < 4 and time.monotonic() - t0 < 20.0:
            seen += [m.type for m in c.poll()]
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert seen.count("status") >= 4, seen
        assert elapsed >= 0.25, f"4 heartbeats in {elapsed:.2f} s: faster than every 0.1 s"
        assert c.connected


def test_job_state_tracks_progress_result_and_errors(server):
    pts = np.arange(9, dtype=np.float32).reshape(3, 3)
    with server.client() as c:
        jid = c.submit("sleep", {"steps": 12, "dt": 0.02}, {"points": pts})
        assert c.jobs[jid].state == "submitted" and c.jobs[jid].kind == "sleep"
        job = run_until(c, jid)
        assert job.state == "done" and job.error is None
        assert [s for s, _, _ in job.progress] == sorted(s for s, _, _ in job.progress)
        assert job.step == job.total == 12 and job.metrics["num_gaussians"] == 3
        np.testing.assert_array_equal(job.result_splats().means, pts)
        bad = c.submit("no_such_kind", {})
        c.wait_for(lambda: c.jobs[bad].finished, 10)
        assert c.jobs[bad].state == "failed" and c.jobs[bad].error[0] == "unknown_job_kind"
        assert c.pending == 0


def test_reconnect_keeps_receiving_the_running_jobs_progress(server):
    with server.client() as c:
        jid = c.submit("sleep", {"steps": 40, "dt": 0.02})
        assert c.wait_for(lambda: c.jobs[jid].step >= 3, 10)
        c.reconnect()                      # a new connection; its hello carries the session
        before = c.jobs[jid].step
        job = run_until(c, jid)
        assert job.state == "done" and job.result is not None
        assert job.progress[-1][0] == 40 and before < 40
        assert c.server_info is not None and c.connected


def test_client_survives_a_server_restart(tmp_path):
    srv = ServerProcess(tmp_path / "store", plugins=[]).start()
    with BackendClient(srv.address, timeout_s=0.5) as c:
        c.send_hello()
        assert c.wait_for(lambda: c.connected, 10)
        srv.stop()
        c.status()
        events = drain_until(c, lambda: not c.connected, 3)
        assert [e.fields["code"] for e in events] == [LOCAL_TIMEOUT_CODE]
        srv = ServerProcess(tmp_path / "store", port=srv.port, plugins=[]).start()
        try:
            c.timeout_s = 10
            c.send_hello()            # the DEALER reconnected by itself
            assert c.wait_for(lambda: c.connected and c.pending == 0, 15)
        finally:
            srv.stop()


def test_curve_keys_from_files_or_z85(tmp_path):
    import zmq.auth
    pub_file, sec_file = zmq.auth.create_certificates(tmp_path, "me")
    public, secret = zmq.auth.load_certificate(sec_file)
    assert _read_key(sec_file, secret=True) == secret
    assert _read_key(sec_file, secret=False) == public
    assert _read_key(public.decode(), secret=False) == public
    with pytest.raises(ValueError, match="no secret key"):
        _read_key(pub_file, secret=True)
    with pytest.raises(ValueError, match="key pair"):
        BackendClient("tcp://127.0.0.1:1", server_public_key=public)


def test_client_is_pure_python_and_vendorable(tmp_path):
    """No torch, no bpy; relative imports only, so it works as the add-on's `.shared`."""
    pkg = tmp_path / "someaddon"
    shutil.copytree(ROOT / "shared", pkg / "shared",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__init__.py").write_text("")
    code = ("import sys; import someaddon.shared.client as c; "
            "assert 'torch' not in sys.modules and 'bpy' not in sys.modules, 'heavy import'; "
            "assert 'shared' not in sys.modules, 'absolute import of shared'; "
            "print(c.BackendClient.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "BackendClient"


def test_send_on_a_closed_client_says_so():
    c = BackendClient(f"tcp://127.0.0.1:{free_port()}")
    c.close()
    with pytest.raises(RuntimeError, match=r"the client is closed; call reconnect\(\)"):
        c.send_hello()
    assert c.poll() == []
    c.reconnect()
    assert c.pending == 1
    c.close()


def test_poll_respects_max_messages(server):
    with server.client() as c:
        for _ in range(5):
            c.status()
        time.sleep(0.5)                    # let all five replies arrive
        first = c.poll(max_messages=2)
        assert len(first) == 2
        rest = drain_until(c, lambda: c.pending == 0, 5)
        assert len(first) + len(rest) == 5 and {m.type for m in first + rest} == {"status"}
