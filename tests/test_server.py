"""The backend server as a real process on a real socket.

The server runs as ``python -m backend serve`` in a subprocess; requests go over TCP from real
DEALER sockets (raw frames for hostile messages, ``shared.client.BackendClient`` otherwise).
Besides the product's job kinds, the server is started with plug-in job kinds from this module
(``--job-kind``), which exercise the runner without a trainer: ``sleep`` (a job that reports
progress with previews and honours cancel), ``fail`` (raises JobError), ``oom`` (raises the
RuntimeError torch raises for CUDA out-of-memory; a stand-in, as this machine has no GPU).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from backend.job_api import JobError, JobResult  # noqa: E402
from shared.client import LOCAL_TIMEOUT_CODE, BackendClient  # noqa: E402
from shared.protocol import PROTOCOL_VERSION, Message, decode, encode  # noqa: E402
from shared.splats import Splats  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Plug-in job kinds (imported by the server process through --job-kind)
# ----------------------------------------------------------------------------------------------

def _splats_at(points: np.ndarray, level: float) -> Splats:
    n = len(points)
    return Splats(means=points, quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
                  scales=np.full((n, 3), -3.0, np.float32),
                  opacities=np.full(n, level, np.float32), sh0=np.zeros((n, 3), np.float32))


def sleep_job(params: dict, payload: dict, ctx) -> JobResult:
    """``steps`` steps of ``dt`` seconds; a preview at each step (the runner throttles them);
    the result's means are the payload's ``points``; opacity logit = steps done."""
    steps, dt = int(params.get("steps", 10)), float(params.get("dt", 0.01))
    points = payload.get("points", np.zeros((4, 3), np.float32))
    done = 0
    for i in range(1, steps + 1):
        if ctx.should_stop():
            break
        time.sleep(dt)
        done = i
        ctx.report(i, steps, {"loss": 1.0 / i, "num_gaussians": len(points)},
                   preview=_splats_at(points, float(i)))
    (ctx.job_dir / "scratch.txt").write_text(f"{done}\n")
    return JobResult(_splats_at(points, float(done)), metrics={"steps_done": done},
                     meta={"seed": params.get("seed", 0)})


def fail_job(params: dict, payload: dict, ctx) -> JobResult:
    raise JobError("bad_params", "steps must be positive (got -1)")


def oom_job(params: dict, payload: dict, ctx) -> JobResult:
    # The message torch's CUDA caching allocator uses; no GPU here, so this stands in for it.
    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 7.79 GiB total "
                       "capacity)")


def crash_job(params: dict, payload: dict, ctx) -> JobResult:
    return {"not": "a JobResult"}  # type: ignore[return-value]


PLUGINS = ["sleep=test_server:sleep_job", "fail=test_server:fail_job",
           "oom=test_server:oom_job", "crash=test_server:crash_job"]


# ----------------------------------------------------------------------------------------------
# A server process
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m backend serve`` in a subprocess; stderr goes to ``<store>/../server-N.log``."""

    count = 0

    def __init__(self, store: Path, port: int | None = None, bind: str | None = None,
                 extra: list[str] | None = None, plugins: list[str] = PLUGINS,
                 env: dict[str, str] | None = None, device: str = "cpu"):
        self.extra_env = env or {}
        self.store = Path(store)
        self.port = port or free_port()
        self.bind = bind or f"tcp://127.0.0.1:{self.port}"
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "backend", "serve", "--bind", self.bind,
                     "--store", str(self.store), "--device", device]
        for p in plugins:
            self.args += ["--job-kind", p]
        self.args += extra or []
        ServerProcess.count += 1
        self.log_path = self.store.parent / f"server-{ServerProcess.count}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, **client_kw) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
                   OMP_NUM_THREADS="1")
        env.update(self.extra_env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(**client_kw)
        return self

    def wait_ready(self, timeout: float = 60.0, **client_kw) -> None:
        deadline = time.monotonic() + timeout
        with BackendClient(self.address, timeout_s=2.0, **client_kw) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                if c.pending == 0:
                    c.send_hello()
                if c.wait_for(lambda: c.server_info is not None, 0.5):
                    return
        raise RuntimeError(f"server did not answer hello in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored signal {sig} for {timeout} s:\n{self.log()}")
        finally:
            self._log.close()

    def client(self, **kw) -> BackendClient:
        return BackendClient(self.address, **{"timeout_s": 10.0, **kw})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "store",
                        extra=["--preview-interval", "0.2"]).start()
    yield srv
    rc = srv.stop()
    assert rc == 0, srv.log()


def raw_request(address: str, frames: list, timeout_s: float = 10.0) -> Message:
    """Send raw frames from a fresh DEALER and decode the one reply."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(address)
    try:
        s.send_multipart(frames)
        assert s.poll(timeout_s * 1000), f"no reply to {frames[:1]!r} within {timeout_s} s"
        return decode(s.recv_multipart())
    finally:
        s.close()


def header(mtype="submit", job_id="job1", fields=None, v=PROTOCOL_VERSION, **extra) -> bytes:
    h = {"type": mtype, "v": v, "job_id": job_id, "fields": fields if fields is not None else {}}
    h.update(extra)
    return msgpack.packb(h, use_bin_type=True)


def nd(dtype: str, shape: list, frame: int) -> dict:
    return {"__nd__": [dtype, shape, frame]}


def drain_until(client: BackendClient, predicate, timeout: float) -> list[Message]:
    """Poll until ``predicate()``; returns every message seen (``wait_for`` discards them)."""
    msgs: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs += client.poll()
        if predicate():
            return msgs
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s; last messages: {msgs[-3:]}")


def run_until(client: BackendClient, job_id: str, timeout: float = 30.0):
    assert client.wait_for(lambda: client.jobs[job_id].finished, timeout), \
        f"job {job_id} not finished: {client.jobs[job_id]}"
    return client.jobs[job_id]


# ----------------------------------------------------------------------------------------------
# hello and hostile messages
# ----------------------------------------------------------------------------------------------

def test_hello_reports_capabilities(server):
    reply = raw_request(server.address, encode(Message("hello", None, {
        "client": "test", "protocol": PROTOCOL_VERSION})))
    f = reply.fields
    assert reply.type == "hello"
    assert f["protocol"] == PROTOCOL_VERSION and f["server_version"]
    assert f["device"] == "cpu" and f["cuda"] is False and f["gsplat_cuda"] is False
    assert f["gpu_name"] is None
    assert {"sleep", "fail", "oom", "crash"} <= set(f["job_kinds"])
    # empty until the background scan is done, then one {"id", "present", ...} per model
    assert isinstance(f["models"], list)
    assert all({"id", "present"} <= set(m) for m in f["models"]), f["models"]


def test_hello_lists_models_once_scanned(server):
    """The model scan (backend.models, which imports torch) runs in the background."""
    with server.client() as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            c.send_hello()
            t0 = time.monotonic()
            assert c.wait_for(lambda: c.pending == 0, 10)
            assert time.monotonic() - t0 < 1.0        # hello never waits for the scan
            if c.server_info["models"]:
                break
            time.sleep(0.2)
    models = c.server_info["models"]
    assert models and all("id" in m for m in models), models


_NAN_VIEWMATS = np.eye(4, dtype=np.float32)[None].repeat(2, 0)
_NAN_VIEWMATS[1, 2, 3] = np.nan
_NAN_SPLAT = {k: np.ascontiguousarray(v) for k, v in
              _splats_at(np.zeros((3, 3), np.float32), 1.0).to_arrays().items()}
_NAN_SPLAT["means"] = _NAN_SPLAT["means"].copy()
_NAN_SPLAT["means"][2, 0] = np.inf

HOSTILE = {
    # name: (frames, expected code, words the message must contain)
    "not_msgpack": ([b"\xc1\xc1 this is not msgpack"], "malformed_header",
                    ["header is not valid msgpack"]),
    "empty_frame": ([b""], "malformed_header", ["header is not valid msgpack"]),
    "header_not_map": ([msgpack.packb([1, 2, 3])], "malformed_header",
                       ["header must be a msgpack map, got list"]),
    "header_missing_v": ([msgpack.packb({"type": "hello", "job_id": None, "fields": {}})],
                         "malformed_header", ["(missing ['v'], unexpected [])"]),
    "type_not_str": ([header(mtype=7, job_id=None)], "malformed_header",
                     ["type must be a string, got int"]),
    "unknown_type": ([header(mtype="explode", job_id=None)], "unknown_type",
                     ["unknown message type 'explode'"]),
    "server_type_from_client": ([header(mtype="accepted", fields={"queue_position": 0})],
                                "unexpected_type", ["does not accept 'accepted' messages"]),
    "bad_version": ([header(mtype="hello", job_id=None, fields={"protocol": 99}, v=99)],
                    "version_mismatch", ["protocol version 99; this side speaks 1"]),
    "job_id_wrong_type": ([header(job_id=5, fields={"kind": "sleep", "params": {}})],
                          "bad_field", ["job_id: 5 is not 1-64 characters"]),
    "job_id_path": ([header(job_id="../../etc", fields={"kind": "sleep", "params": {}})],
                    "bad_field", ["job_id: '../../etc' is not 1-64 characters"]),
    "params_not_map": ([header(fields={"kind": "sleep", "params": "fast"})], "bad_field",
                       ["fields.params: expected a map, got str"]),
    "missing_kind": ([header(fields={"params": {}})], "missing_field", ["fields.kind: required"]),
    "missing_job_id": ([header(job_id=None, fields={"kind": "sleep", "params": {}})],
                       "missing_field", ["job_id: a submit message needs a job_id"]),
    "extra_field": ([header(mtype="hello", job_id=None, fields={"protocol": 1, "evil": 1})],
                    "bad_field", ["unexpected field(s) ['evil']"]),
    "unknown_job_kind": ([header(fields={"kind": "rm -rf", "params": {}})], "unknown_job_kind",
                         ["unknown job kind 'rm -rf'", "train"]),
    "huge_declared_shape": ([header(fields={"kind": "sleep", "params": {}, "payload": {
        "images": nd("u1", [100000, 100000, 100000, 4], 0)}}), b"\0" * 16],
        "too_large", ["fields.payload.images: declared shape (100000, 100000, 100000, 4)",
                      "over the 2147483648-byte limit"]),
    "frame_length_mismatch": ([header(fields={"kind": "sleep", "params": {}, "payload": {
        "points": nd("f4", [10, 3], 0)}}), b"\0" * 12], "bad_array",
        ["fields.payload.points: frame 0 has 12 bytes but shape (10, 3) f4 needs 120"]),
    "frame_out_of_range": ([header(fields={"kind": "sleep", "params": {}, "payload": {
        "points": nd("f4", [1, 3], 3)}}), b"\0" * 12], "bad_array",
        ["fields.payload.points: frame index 3 out of range"]),
    "bad_dtype": ([header(fields={"kind": "sleep", "params": {}, "payload": {
        "points": nd("O", [1], 0)}}), b"\0" * 8], "bad_array",
        ["fields.payload.points: dtype 'O' is not allowed"]),
    "unreferenced_frame": ([header(mtype="hello", job_id=None, fields={"protocol": 1}),
                            b"extra"], "bad_array", ["array frames [0] are not referenced"]),
    "too_many_frames": ([header(mtype="hello", job_id=None, fields={"protocol": 1})]
                        + [b"x"] * 200, "too_large", ["201 frames exceed the limit of 64"]),
    "nan_in_array_payload": (encode(Message("submit", "nanjob", {
        "kind": "sleep", "params": {}, "payload": {"viewmats": _NAN_VIEWMATS}})),
        "bad_field", ["fields.payload.viewmats: 1 non-finite value(s) (NaN/Inf), first at index "
                      "(1, 2, 3)"]),
    "inf_in_splat_payload": (encode(Message("submit", "nanjob2", {
        "kind": "sleep", "params": {}, "payload": {"init": _NAN_SPLAT}})),
        "bad_field", ["fields.payload.init.means: 1 non-finite value(s) (NaN/Inf), first at index "
                      "(2, 0)"]),
    "fetch_unknown_job": ([header(mtype="fetch", job_id="nosuchjob")], "unknown_job",
                          ["no job nosuchjob on this server"]),
    "cancel_unknown_job": ([header(mtype="cancel", job_id="nosuchjob")], "unknown_job",
                           ["no job nosuchjob on this server"]),
    "status_unknown_job": ([header(mtype="status", job_id="nosuchjob")], "unknown_job",
                           ["no job nosuchjob on this server"]),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_message_gets_error_and_server_goes_on(server, name):
    frames, code, words = HOSTILE[name]
    reply = raw_request(server.address, frames)
    assert reply.type == "error", reply
    assert reply.fields["code"] == code, reply.fields
    for w in words:
        assert w in reply.fields["message"], (w, reply.fields["message"])
    hello = raw_request(server.address, encode(Message("hello", None, {"protocol": 1})))
    assert hello.type == "hello"


def test_error_names_the_job_when_it_can(server):
    reply = raw_request(server.address, [header(job_id="job-77", fields={"kind": "nope",
                                                                          "params": {}})])
    assert reply.job_id == "job-77" and reply.fields["code"] == "unknown_job_kind"


def test_after_hostile_messages_a_job_still_runs(server):
    for name in ("not_msgpack", "huge_declared_shape", "too_many_frames", "nan_in_array_payload"):
        raw_request(server.address, HOSTILE[name][0])
    points = np.arange(12, dtype=np.float32).reshape(4, 3)
    with server.client() as c:
        jid = c.submit("sleep", {"steps": 5, "dt": 0.01}, {"points": points})
        job = run_until(c, jid)
        assert job.state == "done", job
        np.testing.assert_array_equal(job.result["means"], points)
        np.testing.assert_array_equal(job.result["opacities"], np.full(4, 5.0, np.float32))


# ----------------------------------------------------------------------------------------------
# jobs: progress, queue, cancel, failures, store
# ----------------------------------------------------------------------------------------------

def test_progress_in_order_with_throttled_previews_and_result(server):
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    with server.client() as c:
        t0 = time.monotonic()
        jid = c.submit("sleep", {"steps": 40, "dt": 0.025, "seed": 7}, {"points": points})
        msgs = drain_until(c, lambda: c.jobs[jid].finished, 30)
        elapsed = time.monotonic() - t0
        job = c.jobs[jid]
    steps = [s for s, _, _ in job.progress]
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
    assert steps[-1] == 40 and all(t == 40 for _, t, _ in job.progress)
    previews = [m for m in msgs if m.type == "progress" and "preview" in m.fields]
    # --preview-interval 0.2: about elapsed/0.2 previews, never one per step (40).
    assert 1 <= len(previews) <= elapsed / 0.2 + 2, (len(previews), elapsed)
    assert job.preview_splats() is not None and len(job.preview_splats()) == 50
    assert job.metrics["loss"] == pytest.approx(1 / 40)
    assert job.state == "done" and job.meta == {"seed": 7, "cancelled": False,
                                                 "seconds": job.meta["seconds"]}
    assert job.result_metrics == {"steps_done": 40}
    np.testing.assert_array_equal(job.result_splats().means, points)

    # The store holds inputs, state, scratch output and a lossless result.
    d = server.store / jid
    rec = json.loads((d / "job.json").read_text())
    assert rec["state"] == "done" and rec["kind"] == "sleep" and rec["step"] == 40
    assert rec["params"] == {"steps": 40, "dt": 0.025, "seed": 7}
    assert rec["started"] >= rec["created"] and rec["finished"] >= rec["started"]
    np.testing.assert_array_equal(np.load(d / "inputs" / "points.npy"), points)
    np.testing.assert_array_equal(np.load(d / "result" / "means.npy"), points)
    assert (d / "scratch.txt").read_text() == "40\n"


def test_queue_is_fifo_with_positions_and_status_answers_while_running(server):
    pts = np.zeros((2, 3), np.float32)
    with server.client() as c:
        a = c.submit("sleep", {"steps": 30, "dt": 0.02}, {"points": pts})
        b = c.submit("sleep", {"steps": 2, "dt": 0.01}, {"points": pts})
        d = c.submit("sleep", {"steps": 2, "dt": 0.01}, {"points": pts})
        assert c.wait_for(lambda: c.pending == 0, 10)
        assert [c.jobs[j].queue_position for j in (a, b, d)] == [0, 1, 2]
        # Heartbeats are answered promptly while job a runs.
        assert c.wait_for(lambda: c.jobs[a].step > 0, 10)
        for _ in range(3):
            t0 = time.monotonic()
            c.status()
            assert c.wait_for(lambda: c.pending == 0, 5)
            assert time.monotonic() - t0 < 0.5
        assert c.jobs[a].state == "running" and c.jobs[b].state == "queued"
        assert c.jobs[d].queue_position == 2
        # A queued job is removed at once.
        c.cancel(b)
        assert c.wait_for(lambda: c.pending == 0, 5)
        assert c.jobs[b].state == "cancelled"
        c.status(d)
        assert c.wait_for(lambda: c.pending == 0, 5)
        assert c.jobs[d].queue_position == 1
        run_until(c, d)
        assert c.jobs[a].state == "done" and c.jobs[d].state == "done"
        # The cancelled-while-queued job never ran and has no result.
        c.fetch(b)
        assert c.wait_for(lambda: c.pending == 0, 5)
        assert c.jobs[b].error[0] == "no_result"
    assert not (server.store / b / "result").exists()


def test_cancel_running_job_returns_current_splats_promptly(server):
    pts = np.ones((3, 3), np.float32)
    with server.client() as c:
        jid = c.submit("sleep", {"steps": 1000, "dt": 0.05}, {"points": pts})
        assert c.wait_for(lambda: c.jobs[jid].step >= 3, 20)
        t0 = time.monotonic()
        c.cancel(jid)
        job = run_until(c, jid, 5)
        latency = time.monotonic() - t0
    assert job.state == "cancelled" and job.meta["cancelled"] is True
    assert latency < 1.0, latency
    s = job.result_splats()
    assert 3 <= s.opacities[0] < 1000          # the splats as they stood
    rec = json.loads((server.store / jid / "job.json").read_text())
    assert rec["state"] == "cancelled"


@pytest.mark.parametrize("kind,code,words", [
    ("fail", "bad_params", ["steps must be positive"]),
    ("oom", "out_of_memory", ["ran out of memory", "max_gaussians", "keeps serving"]),
    ("crash", "job_failed", ["JobResult"]),
])
def test_failing_jobs_give_errors_with_job_id_and_server_goes_on(server, kind, code, words):
    with server.client() as c:
        jid = c.submit(kind, {})
        job = run_until(c, jid)
        assert job.state == "failed" and job.error[0] == code, job.error
        for w in words:
            assert w in job.error[1]
        # The failure is kept: fetch repeats it; the next job runs.
        c.fetch(jid)
        assert c.wait_for(lambda: c.pending == 0, 5)
        assert c.jobs[jid].error[0] == code
        ok = c.submit("sleep", {"steps": 2, "dt": 0.0})
        assert run_until(c, ok).state == "done"
    rec = json.loads((server.store / jid / "job.json").read_text())
    assert rec["state"] == "failed" and rec["error"]["code"] == code


def test_duplicate_job_id_is_refused(server):
    with server.client() as c:
        jid = c.submit("sleep", {"steps": 1, "dt": 0.0})
        run_until(c, jid)
        c.submit("sleep", {"steps": 1}, job_id=jid)
        msgs = drain_until(c, lambda: c.pending == 0, 5)
    errs = [m for m in msgs if m.type == "error"]
    assert errs and errs[0].fields["code"] == "duplicate_job" and errs[0].job_id == jid


def test_results_go_to_the_submitter_and_any_client_can_fetch(server):
    pts = np.full((5, 3), 2.0, np.float32)
    a, b = server.client(), server.client()
    try:
        b.send_hello()
        assert b.wait_for(lambda: b.server_info is not None, 5)
        jid = a.submit("sleep", {"steps": 20, "dt": 0.02}, {"points": pts})
        assert a.wait_for(lambda: a.jobs[jid].step > 0, 10)
        a.close()                                  # the submitter goes away mid-job
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:        # b sees nothing of a's job ...
            got += [m for m in b.poll() if m.job_id == jid]
            b.status(jid)
            b.wait_for(lambda: b.pending == 0, 5)
            if b.jobs.get(jid) and b.jobs[jid].state == "done":
                break
            time.sleep(0.1)
        assert [m.type for m in got] == ["status"] * len(got)
        b.fetch(jid)                               # ... but can fetch the stored result
        assert b.wait_for(lambda: b.jobs[jid].result is not None, 10)
        job = b.jobs[jid]
        assert job.result is not None and job.state == "done"
        np.testing.assert_array_equal(job.result["means"], pts)
    finally:
        a.close()
        b.close()


def test_restart_keeps_results_and_marks_interrupted_jobs(tmp_path):
    store = tmp_path / "store"
    srv = ServerProcess(store).start()
    pts = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    try:
        with srv.client() as c:
            done = c.submit("sleep", {"steps": 3, "dt": 0.0}, {"points": pts})
            run_until(c, done)
            first = c.jobs[done].result_splats()
            # SIGTERM while a job runs: clean shutdown cancels it and saves its splats.
            running = c.submit("sleep", {"steps": 1000, "dt": 0.02}, {"points": pts})
            queued = c.submit("sleep", {"steps": 3, "dt": 0.0}, {"points": pts})
            assert c.wait_for(lambda: c.jobs[running].step >= 2, 10)
        assert srv.stop(signal.SIGTERM) == 0
        assert "shutting down" in srv.log()

        srv = ServerProcess(store, port=srv.port).start()
        with srv.client() as c:
            for jid in (done, running, queued):
                c.fetch(jid)
            assert c.wait_for(lambda: c.pending == 0, 10)
            assert c.jobs[done].state == "done"
            assert c.jobs[done].result_splats().allclose(first, atol=0)
            assert c.jobs[running].state == "cancelled"
            assert c.jobs[running].result_splats().opacities[0] >= 2
            assert c.jobs[queued].error[0] == "interrupted"
            # SIGKILL while a job runs: nothing is saved, the next server marks it interrupted.
            killed = c.submit("sleep", {"steps": 1000, "dt": 0.02}, {"points": pts})
            assert c.wait_for(lambda: c.jobs[killed].step >= 1, 10)
        srv.stop(signal.SIGKILL)

        srv = ServerProcess(store, port=srv.port).start()
        with srv.client() as c:
            c.status(killed)
            c.fetch(killed)
            assert c.wait_for(lambda: c.pending == 0, 10)
            assert c.jobs[killed].state == "failed"
            assert c.jobs[killed].error[0] == "interrupted"
            assert "running" in c.jobs[killed].error[1]
    finally:
        srv.stop()


# ----------------------------------------------------------------------------------------------
# binding and CurveZMQ
# ----------------------------------------------------------------------------------------------

def test_non_loopback_bind_without_keys_refuses_to_start(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--bind",
                           f"tcp://0.0.0.0:{port}", "--store", str(tmp_path / "s"),
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "refusing to bind tcp://0.0.0.0" in proc.stderr
    assert "CurveZMQ" in proc.stderr and "--curve-secret" in proc.stderr


def test_curve_keys_admit_allowed_clients_only(tmp_path):
    from backend.security import make_keys
    keys = tmp_path / "keys"
    allow = tmp_path / "allowed"
    _, server_secret = make_keys(keys, "server")
    _, good_secret = make_keys(keys, "good")
    _, bad_secret = make_keys(keys, "bad")
    allow.mkdir()
    (allow / "good.key").write_bytes((keys / "good.key").read_bytes())
    server_public = keys / "server.key"

    srv = ServerProcess(tmp_path / "store", bind=f"tcp://0.0.0.0:{free_port()}",
                        extra=["--curve-secret", str(server_secret), "--curve-allow", str(allow)])
    srv.address = srv.bind.replace("0.0.0.0", "127.0.0.1")
    srv.start(server_public_key=server_public, secret_key=good_secret)
    try:
        with BackendClient(srv.address, timeout_s=10, server_public_key=server_public,
                           secret_key=good_secret) as good:
            jid = good.submit("sleep", {"steps": 2, "dt": 0.0})
            assert run_until(good, jid).state == "done"
        for kw in ({"server_public_key": server_public, "secret_key": bad_secret}, {}):
            with BackendClient(srv.address, timeout_s=1.5, **kw) as bad:
                bad.send_hello()
                events = drain_until(bad, lambda: bad.pending == 0, 4)
                assert bad.server_info is None and not bad.connected
                assert [e.fields["code"] for e in events] == [LOCAL_TIMEOUT_CODE]
        assert srv.stop() == 0
    finally:
        srv.stop()


def test_missing_curve_key_file_is_a_clear_error(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--bind",
                           f"tcp://0.0.0.0:{port}", "--store", str(tmp_path / "s"), "--device",
                           "cpu", "--curve-secret", str(tmp_path / "nope.key_secret"),
                           "--curve-allow", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "nope.key_secret does not exist" in proc.stderr


def test_device_cuda_without_a_gpu_refuses_to_start(tmp_path):
    from conftest import cuda_available
    if cuda_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--bind",
                           f"tcp://127.0.0.1:{free_port()}", "--store", str(tmp_path / "s"),
                           "--device", "cuda"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "torch sees no CUDA GPU" in proc.stderr


def test_out_of_memory_is_recognised_in_both_forms():
    import torch
    from backend.jobs import is_out_of_memory
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("The size of tensor a (3) must match"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_cli_lists_commands_and_rejects_unknown():
    proc = subprocess.run([sys.executable, "-m", "backend", "frobnicate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr
    assert "serve" in proc.stderr and "train" in proc.stderr
