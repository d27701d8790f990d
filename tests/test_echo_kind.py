"""A job kind added with no edits outside its own files (tests/jobkinds_echo: spec + job function),
through a real server process (``serve --job-module``), real DEALER sockets and the command line
(``SPLATBRIDGE_JOB_MODULES``). Also: params are checked at ``submit``, so a bad request behind a
running job is refused at once and the running job carries on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from shared.formats import read_splats
from shared.protocol import Message, decode, encode
from test_server import ServerProcess, drain_until, run_until

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ECHO = ["--job-module", "jobkinds_echo.spec"]
POINTS = np.array([[0, 0, 0], [1, 2, 3]], np.float32)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("echo") / "store", plugins=[], extra=ECHO).start()
    yield srv
    srv.stop()


def _dealer_request(address: str, msg: Message, timeout_s: float = 10.0) -> tuple[Message, float]:
    """One request on a fresh DEALER socket: (the reply, seconds it took)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(address)
        t0 = time.monotonic()
        sock.send_multipart(encode(msg))
        assert sock.poll(int(timeout_s * 1000)), "no reply"
        reply = decode(sock.recv_multipart(copy=False))
        return reply, time.monotonic() - t0
    finally:
        sock.close()


def test_echo_runs_through_the_server(echo_server):
    with echo_server.client() as c:
        c.send_hello()
        assert c.wait_for(lambda: c.server_info is not None, 10)
        assert {"echo", "train", "generate", "edit"} <= set(c.server_info["job_kinds"])
        jid = c.submit("echo", {"message": "over the wire", "steps": 4, "shift": 0.5, "dt": 0.05},
                       {"points": POINTS})
        msgs = drain_until(c, lambda: c.jobs[jid].finished, 30)
        job = c.jobs[jid]
        assert job.state == "done", job.error
        progress = [m for m in msgs if m.type == "progress" and m.job_id == jid]
        assert [m.fields["step"] for m in progress][-1] == 4
        assert any("preview" in m.fields for m in progress)
        assert {"loss", "steps_per_s", "eta_s"} <= set(progress[-1].fields["metrics"])
        out = job.result_splats()
        assert np.allclose(out.means, POINTS + [2.0, 0, 0])          # 4 steps of 0.5 m along +X
        assert job.meta["message"] == "over the wire" and job.meta["settings"]["steps"] == 4


@pytest.mark.parametrize("kind, params, payload, code, words", [
    ("echo", {"steps": 0}, {}, "bad_params", "echo setting steps=0: out of range: allowed [1, 10000]"),
    ("echo", {"mode": "shift", "shift": 0.0}, {}, "bad_params", "mode 'shift' needs a shift other than 0"),
    ("echo", {}, {"colors": np.zeros((2, 3), np.uint8)}, "bad_input", "'colors' given without 'points'"),
    ("echo", {}, {"points": np.zeros((2, 3), np.float64)}, "bad_input", "'points' must be float32[P,3]"),
    ("train", {"stepz": 3}, {}, "bad_params", "unknown train setting 'stepz'"),
    ("generate", {"prompt": "a cup", "resolution": 8}, {}, "bad_params",
     "generate setting resolution=8: out of range: allowed [16, 2048]"),
    ("teleport", {}, {}, "unknown_job_kind", "unknown job kind 'teleport'; this server runs: echo, edit, generate"),
])
def test_bad_requests_behind_a_running_job_are_refused_at_once(echo_server, kind, params, payload, code, words):
    with echo_server.client() as c:
        long_job = c.submit("echo", {"steps": 400, "dt": 0.01, "preview_every": 0}, {"points": POINTS})
        drain_until(c, lambda: c.jobs[long_job].step >= 2, 30)           # it is running
        reply, seconds = _dealer_request(echo_server.address, Message("submit", "bad1", {
            "kind": kind, "params": params, "payload": payload}))
        assert reply.type == "error" and reply.job_id == "bad1", reply
        assert reply.fields["code"] == code and words in reply.fields["message"], reply.fields
        assert seconds < 2.0, seconds                                  # not after the 4 s job
        assert c.jobs[long_job].state == "running"                     # undisturbed ...
        status, _ = _dealer_request(echo_server.address, Message("status", "bad1", {}))
        assert status.type == "error" and status.fields["code"] == "unknown_job"   # ... and nothing stored
        job = run_until(c, long_job, 60)
        assert job.state == "done" and job.meta["steps_done"] == 400   # ... to the end


def test_echo_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), COLUMNS="300",
               SPLATBRIDGE_JOB_MODULES="jobkinds_echo.spec", OMP_NUM_THREADS="1")
    out = tmp_path / "echo.ply"
    proc = subprocess.run([sys.executable, "-m", "backend", "echo", "from the shell", "--out", str(out),
                           "--steps", "3", "--shift", "-1", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(read_splats(out).means[:, 0], np.array([0, 1, 0, 0]) - 3.0)
    meta = json.loads(out.with_suffix(".ply.json").read_text())["meta"]
    assert meta["message"] == "from the shell" and meta["settings"]["shift"] == -1.0
    assert "step 3/3" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "backend", "echo", "x", "--out", str(out), "--dt", "11"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "echo setting dt=11.0: out of range: allowed [0, 10]" in bad.stderr
    without = subprocess.run([sys.executable, "-m", "backend", "echo", "--help"], cwd=ROOT,
                             env={**env, "SPLATBRIDGE_JOB_MODULES": ""}, capture_output=True, text=True,
                             timeout=120)
    assert without.returncode == 2 and "unknown command 'echo'" in without.stderr
