"""The backend pool on Ray: ``python -m backend serve --executor ray`` in front of a real local Ray
cluster (``ray.cluster_utils.Cluster``: real raylets and worker processes on this CPU).

The cluster: a head node without GPU (it runs the GCS and the front's progress hub) and three
worker nodes with one *logical* GPU each (Ray counts GPUs as resources; there is no GPU here, so
the jobs run on the CPU inside those nodes' worker processes). The third node also offers the
40 GB memory class (``gpu_mem_40gb``). The front is a real server process; clients talk to it over
ZeroMQ exactly as to an in-process server. One cluster for the whole module (starting one costs
~15 s on 2 cores); the test that kills a node runs last.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray pool needs ray (requirements.txt)")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for p in (str(ROOT), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from shared.protocol import PROTOCOL_VERSION, Message, encode  # noqa: E402
from test_server import ServerProcess, drain_until, raw_request, run_until  # noqa: E402

pytestmark = pytest.mark.slow

VIEWS, SIZE, STEPS = 4, 24, 40
TRAIN = {"steps": STEPS, "holdout_every": 0, "sh_degree": 1, "preview_every": 10}
PLUGINS = ["sleep=test_server:sleep_job", "big=test_server:sleep_job",
           "huge=test_server:sleep_job"]
CLASSES = ["--memory-class", "big=40", "--memory-class", "huge=80"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    # the raylets (and so every worker process) inherit this: they import backend and the tests'
    # plug-in job kinds from this checkout, with one torch thread each
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    os.environ["OMP_NUM_THREADS"] = "1"
    # a killed node is declared dead after 5 failed health checks 1 s apart (Ray's default: 3 s
    # apart); a slow but live node is not (each check waits its 10 s timeout)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}})
    nodes = [c.add_node(num_cpus=1, num_gpus=1,
                        resources={"gpu_mem_40gb": 1} if i == 2 else {}) for i in range(3)]
    c.wait_for_nodes()
    c.gpu_nodes = nodes
    try:
        yield c
    finally:
        c.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Front:
    """The front server process; ``restart`` starts a new one on the same store and port."""

    def __init__(self, cluster, store: Path):
        self.cluster, self.store, self.port = cluster, store, None
        self.proc: ServerProcess | None = None

    def start(self) -> ServerProcess:
        self.proc = ServerProcess(self.store, port=self.port, plugins=PLUGINS, extra=[
            "--executor", "ray", "--ray-address", self.cluster.address, "--preview-interval",
            "0.2", *CLASSES]).start(timeout=90)
        self.port = self.proc.port
        return self.proc

    def pool(self) -> dict:
        reply = raw_request(self.proc.address, encode(Message("status", None, {})))
        assert reply.type == "status", reply
        return reply.fields["pool"]


@pytest.fixture(scope="module")
def front(cluster, tmp_path_factory):
    f = Front(cluster, tmp_path_factory.mktemp("pool") / "store")
    f.start()
    yield f
    rc = f.proc.stop()
    assert rc == 0, f.proc.log()


@pytest.fixture(scope="module")
def payload():
    from test_trainer import render_dataset, sphere_rig, torus_cloud
    cloud = torus_cloud(200)
    viewmats, Ks = sphere_rig(VIEWS, SIZE)
    images = render_dataset(cloud, viewmats, Ks, SIZE)
    return {"images": images, "viewmats": viewmats.astype(np.float32),
            "Ks": Ks.astype(np.float32), "points": cloud[0].astype(np.float32),
            "colors": (cloud[4] * 255).astype(np.uint8)}


def gpu_node_ids(front: Front) -> dict[str, list[str]]:
    """node id -> its memory classes, for the nodes with a GPU."""
    return {n["node_id"]: n["classes"] for n in front.pool()["nodes"] if n["gpus"] >= 1}


FINISHED: dict[str, dict] = {}      # job id -> result splat map, for the restart test


def test_status_shows_nodes_and_queue_per_class(front):
    pool = front.pool()
    assert pool["executor"] == "ray"
    gpus = [n for n in pool["nodes"] if n["gpus"] >= 1]
    assert len(gpus) == 3 and all(n["alive"] and n["gpus_busy"] == 0 for n in gpus), pool
    assert sorted(n["classes"] for n in gpus) == [[], [], ["40gb"]]
    assert pool["queue"] == {}


def test_hello_describes_the_pool_not_the_front(front):
    """Blender's connection line shows the pool's GPUs: a probe task ran on a worker (whose GPU is
    logical here, so no CUDA, as is true of these workers)."""
    deadline = time.monotonic() + 60
    while True:
        f = raw_request(front.proc.address, encode(Message("hello", None, {
            "client": "test", "protocol": PROTOCOL_VERSION}))).fields
        if f["gpu_name"] == "Ray pool: 3 x logical GPU on 3 node(s)" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert f["device"] == "ray" and f["gpu_name"] == "Ray pool: 3 x logical GPU on 3 node(s)", f
    assert f["cuda"] is False and f["gsplat_cuda"] is False and f["gpu_memory_bytes"] is None
    assert {"train", "sleep", "big"} <= set(f["job_kinds"])


def test_status_command_prints_the_pool(front):
    """``python -m backend status`` (what an admin runs) shows the nodes, GPU use and queue."""
    import subprocess
    out = subprocess.run([sys.executable, "-m", "backend", "status", "--server", front.proc.address],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("jobs: ")
    assert any(l.startswith("pool: ray at ") and "0/3 GPUs busy on 4 live node(s)" in l
               for l in lines), out.stdout
    nodes = [l for l in lines if l.startswith("  node ")]
    assert len(nodes) == 4 and sum("GPUs 0/1 busy" in l for l in nodes) == 3, out.stdout
    assert sum("classes 40gb" in l for l in nodes) == 1 and lines[-1] == "  queue: empty"


def test_six_train_jobs_spread_over_the_nodes_equal_in_process(front, payload):
    """Six train jobs at once: three run at a time (one per GPU), every node runs some, and each
    result equals the same job run in this process with the same seed, bit for bit."""
    from backend.job_api import NullContext
    from backend.trainer import run_train_job
    busy_max, per_node_max = 0, 0
    with front.proc.client() as c:
        ids = [c.submit("train", {**TRAIN, "seed": seed}, payload, job_id=f"train-{seed}")
               for seed in range(6)]
        deadline = time.monotonic() + 150
        while not all(c.jobs[i].finished for i in ids):
            assert time.monotonic() < deadline, [c.jobs[i].state for i in ids]
            c.poll()
            pool = front.pool()
            busy = [n["gpus_busy"] for n in pool["nodes"]]
            busy_max, per_node_max = max(busy_max, sum(busy)), max(per_node_max, *busy)
            time.sleep(0.1)
        jobs = [c.jobs[i] for i in ids]
    assert [j.state for j in jobs] == ["done"] * 6, [(j.state, j.error) for j in jobs]
    assert busy_max == 3 and per_node_max == 1, (busy_max, per_node_max)
    nodes = {j.meta["node"] for j in jobs}
    assert nodes == set(gpu_node_ids(front)), nodes
    assert any(j.progress for j in jobs) and all(j.progress[-1][0] == STEPS for j in jobs)
    for seed, job in enumerate(jobs):
        FINISHED[job.job_id] = job.result
        before = {k: v.copy() for k, v in payload.items()}
        ref = run_train_job({**TRAIN, "seed": seed}, payload, NullContext()).splats.to_arrays()
        for k, v in before.items():       # the trainer leaves its inputs as they were
            np.testing.assert_array_equal(payload[k], v, err_msg=k)
        got = job.result_splats().to_arrays()
        assert set(got) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"seed {seed}: {k}")
    assert not np.array_equal(FINISHED["train-0"]["means"], FINISHED["train-1"]["means"])


def test_big_memory_class_lands_on_the_only_node_with_it(front):
    """Two 40 GB jobs run one after the other on the one node offering that class, while a job
    of no class is not held back by them (FIFO per class); a class no node offers is an error."""
    big_node = [nid for nid, cls in gpu_node_ids(front).items() if "40gb" in cls]
    assert len(big_node) == 1
    with front.proc.client() as c:
        pts = np.zeros((4, 3), np.float32)
        b1 = c.submit("big", {"steps": 15, "dt": 0.1}, {"points": pts})
        b2 = c.submit("big", {"steps": 5, "dt": 0.02}, {"points": pts})
        s1 = c.submit("sleep", {"steps": 3, "dt": 0.02}, {"points": pts})
        h = c.submit("huge", {"steps": 3}, {"points": pts})
        drain_until(c, lambda: c.jobs[b1].state == "running", 30)
        queue = front.pool()["queue"]
        for j in (b1, b2, s1, h):
            run_until(c, j, 60)
        got = {j: c.jobs[j] for j in (b1, b2, s1, h)}
    assert got[b1].meta["node"] == big_node[0] and got[b2].meta["node"] == big_node[0]
    assert got[b1].state == got[b2].state == got[s1].state == "done"
    assert got[s1].meta["node"] != big_node[0]       # small jobs leave the big GPU alone
    # b2 waited for b1 (one job per GPU), s1 did not wait for either
    assert got[b2].updated_at > got[b1].updated_at and got[s1].updated_at < got[b1].updated_at
    assert queue.get("40gb") == 1, queue
    code, message = got[h].error
    assert got[h].state == "failed" and code == "no_capacity"
    assert "80gb" in message and "40gb" in message, message


def test_cancel_reaches_the_worker(front):
    with front.proc.client() as c:
        j = c.submit("sleep", {"steps": 400, "dt": 0.05}, {"points": np.ones((4, 3), np.float32)})
        drain_until(c, lambda: c.jobs[j].step >= 3, 60)
        t0 = time.monotonic()
        c.cancel(j)
        job = run_until(c, j, 10)
        took = time.monotonic() - t0
    assert job.state == "cancelled" and job.meta["cancelled"] is True
    steps_done = int(job.result_splats().opacities[0])
    assert 3 <= steps_done < 400 and took < 3.0, (steps_done, took)


def _all_reduce(rank: int, world_size: int, base: float) -> list[float]:
    """A rank function: the sum over ranks of ``base + rank``, and what this rank holds."""
    import torch
    import torch.distributed as dist
    t = torch.tensor([base + rank])
    dist.all_reduce(t)
    return [float(t), float(dist.get_rank()), float(dist.get_world_size())]


def test_multi_gpu_group_set_up_on_cpu(front, cluster):
    """Item 3's set-up (backend/ray_distributed.py; the distributed trainer itself needs several
    GPUs and is not built): two ranks hold two GPUs of two nodes as one placement group and meet in
    one torch.distributed group (gloo here, NCCL on GPUs); the plans split views and points."""
    from backend.ray_distributed import plan_ranks, run_group
    from shared.jobkinds import load_builtin
    from shared.jobspec import get_spec
    load_builtin()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        out = run_group(2, _all_reduce, (10.0,), strategy="STRICT_SPREAD", timeout_s=60)
    finally:
        ray.shutdown()
    assert [o["value"] for o in out] == [[21.0, 0.0, 2.0], [21.0, 1.0, 2.0]]
    assert out[0]["backend"] == "gloo" and out[0]["node"] != out[1]["node"]
    assert {o["node"] for o in out} <= set(gpu_node_ids(front))
    s = get_spec("train").make(steps=1000)
    plans = plan_ranks(s, 2, views=5)
    assert [p.cameras for p in plans] == [(0, 2, 4), (1, 3)]
    assert all(p.steps == 500 and p.steps_scaler == 0.5 for p in plans)
    assert sorted(i for p in plans for i in p.points(7)) == list(range(7))
    with pytest.raises(ValueError, match="1 views cannot feed 2 GPUs"):
        plan_ranks(s, 2, views=1)


def test_front_restart_keeps_results_fetchable_and_reconnects(front, payload):
    """SIGKILL the front while a job runs: after a restart every finished result is fetched
    unchanged, the job that was running is ``interrupted``, and new jobs run on the cluster."""
    assert len(FINISHED) == 6, "needs the train test's results"
    with front.proc.client() as c:
        j = c.submit("sleep", {"steps": 400, "dt": 0.05}, {"points": np.ones((4, 3), np.float32)})
        drain_until(c, lambda: c.jobs[j].step >= 2, 60)
    front.proc.proc.send_signal(signal.SIGKILL)
    front.proc.proc.wait(10)
    front.start()
    with front.proc.client() as c:
        for job_id, result in FINISHED.items():
            c.fetch(job_id)
            run_until(c, job_id, 20)
            for k, v in result.items():
                np.testing.assert_array_equal(c.jobs[job_id].result[k], v)
        entry = raw_request(front.proc.address, encode(Message("status", j, {}))).fields["jobs"][0]
        assert entry["state"] == "failed" and entry["error"]["code"] == "interrupted", entry
        n = c.submit("train", {**TRAIN, "seed": 3}, payload)
        job = run_until(c, n, 60)
    assert job.state == "done"
    np.testing.assert_array_equal(job.result["means"], FINISHED["train-3"]["means"])


def _node_of(front: Front, job_id: str, not_on: set[str] = frozenset()) -> str | None:
    for n in front.pool()["nodes"]:
        if job_id in n["jobs"] and n["node_id"] not in not_on:
            return n["node_id"]
    return None


def test_node_killed_mid_job_reruns_elsewhere_nothing_else_lost(front, cluster):
    """A node dies while it runs a job: that job runs again on another node and finishes; the job
    on a third node finishes untouched. A job whose rerun's node dies too is ``interrupted``."""
    pts = np.ones((4, 3), np.float32)
    kill = {n.node_id: n for n in cluster.gpu_nodes}
    with front.proc.client() as c:
        b = c.submit("sleep", {"steps": 150, "dt": 0.05}, {"points": pts * 2})
        drain_until(c, lambda: c.jobs[b].step >= 1, 60)
        a = c.submit("sleep", {"steps": 60, "dt": 0.05}, {"points": pts})
        drain_until(c, lambda: c.jobs[a].step >= 2, 60)
        first, node_b = _node_of(front, a), _node_of(front, b)      # both still running
        assert first and node_b, front.pool()
        cluster.remove_node(kill[first], allow_graceful=False)
        ja, jb = run_until(c, a, 90), run_until(c, b, 90)
        assert jb.state == "done" and jb.meta["node"] == node_b
        np.testing.assert_array_equal(jb.result_splats().means, pts * 2)
        assert ja.state == "done", ja.error
        assert ja.meta["node"] not in (first, node_b)
        assert int(ja.result_splats().opacities[0]) == 60        # all its steps, from the rerun
        assert int(jb.result_splats().opacities[0]) == 150

        # one retry only: a job that loses its node twice is reported interrupted
        j = c.submit("sleep", {"steps": 400, "dt": 0.05}, {"points": pts})
        drain_until(c, lambda: c.jobs[j].step >= 2, 60)
        second = _node_of(front, j)
        cluster.remove_node(kill[second], allow_graceful=False)
        deadline = time.monotonic() + 60
        while (third := _node_of(front, j, {first, second})) is None:
            assert time.monotonic() < deadline and not c.jobs[j].finished, c.jobs[j]
            c.poll()
            time.sleep(0.1)
        # the rerun has started once it reports a step below the first run's last one
        seen = len(c.jobs[j].progress)
        top = max(step for step, _total, _m in c.jobs[j].progress)
        drain_until(c, lambda: any(step < top for step, _t, _m in c.jobs[j].progress[seen:])
                    or c.jobs[j].finished, 60)
        cluster.remove_node(kill[third], allow_graceful=False)
        jj = run_until(c, j, 60)
    assert jj.state == "failed" and jj.error[0] == "interrupted", jj
    assert "died (2 time(s))" in jj.error[1], jj.error
    assert "was lost" in front.proc.log()
    # status says so once Ray's health checks have declared the nodes dead (~5 s after a kill)
    deadline = time.monotonic() + 60
    while True:
        alive = {n["node_id"] for n in front.pool()["nodes"] if n["alive"]}
        if not alive & {first, second, third}:
            break
        assert time.monotonic() < deadline, alive
        time.sleep(0.5)
