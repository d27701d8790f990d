"""Throughput of the Ray pool on 1 node vs 3 nodes, and its added latency per job.

    python bench/pool.py [--jobs 12] [--train-steps 300] [--wait-s 2.0] [--latency-jobs 10]

One local Ray cluster (``ray.cluster_utils.Cluster``): a head node without GPU, first one worker
node with one logical GPU; 12 jobs are queued at once and timed from the first submit to the last
result (jobs per minute); then two more nodes join (the pool picks them up while it runs) and the
same 12 jobs run on 3 nodes. The ratio is 3-node / 1-node throughput (the target: >= 2.5).

Two workloads, both printed:

- ``train``: real tiny train jobs (6 views of 32 px, ``--train-steps`` steps, CPU rasterizer).
  They are CPU-bound, and on this machine all "nodes" share its cores: on a 2-core box their ratio
  cannot pass ~2 whatever the scheduler does. On a real cluster each node brings its own GPU.
- ``wait``: jobs that hold their GPU for ``--wait-s`` seconds without using the CPU (a stand-in for
  a job whose work is on its GPU: the worker's CPU idles while the kernels run). They show what the
  pool's scheduling gives when the nodes do not share a CPU: one job per GPU, three at once.

The added latency per job: ``--latency-jobs`` one-step jobs run one after the other through the
front's ``JobRunner`` (submit to result saved in the job store), in-process vs the Ray pool
(1 node, warm worker), interleaved; the difference is what the pool adds per job (object store,
task dispatch, progress polling every 0.1 s).
Measured on the team's 2-core CPU box (no GPU) while other engineers' tests ran (load average 10-18),
three runs: ``wait`` 28.4-28.7 jobs/min on 1 node, 83.6-85.4 on 3 nodes, ratio 2.94-2.97 (the
target, >= 2.5, met where jobs do not share a CPU); ``train`` ratio 0.64-1.29 (three CPU-bound
workers on 2 shared, oversubscribed cores: this measures the machine, not the pool); added latency
per job -61 / +2.8 / +6.3 ms over the in-process runner's 73-132 ms (noise of the same order: the
pool adds no measurable latency here). The in-process ``train`` reference ran slower than the 1-node
pool in every run (13-21 vs 30-34 jobs/min); not explained yet (the in-process job shares this
process's GIL with the bench's polling loop and Ray's driver threads).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# one torch/OpenMP thread for the in-process reference too, as Ray gives each 1-CPU task (set before
# anything imports torch; the worker processes inherit it)
os.environ["OMP_NUM_THREADS"] = "1"


def wait_job(params, payload, ctx):
    """Hold the GPU ``seconds`` seconds without CPU work, reporting progress; a plug-in job kind."""
    from backend.job_api import JobResult
    from shared.splats import Splats
    seconds, steps = float(params.get("seconds", 1.0)), 10
    for i in range(1, steps + 1):
        if ctx.should_stop():
            break
        time.sleep(seconds / steps)
        ctx.report(i, steps, {"loss": 1.0 / i})
    n = 4
    return JobResult(Splats(means=np.zeros((n, 3), np.float32),
                            quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
                            scales=np.zeros((n, 3), np.float32), opacities=np.zeros(n, np.float32),
                            sh0=np.zeros((n, 3), np.float32)))


def train_payload(views: int = 6, size: int = 32) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_trainer import render_dataset, sphere_rig, torus_cloud
    cloud = torus_cloud(300)
    viewmats, Ks = sphere_rig(views, size)
    return {"images": render_dataset(cloud, viewmats, Ks, size),
            "viewmats": viewmats.astype(np.float32), "Ks": Ks.astype(np.float32),
            "points": cloud[0].astype(np.float32), "colors": (cloud[4] * 255).astype(np.uint8)}


class Front:
    """A ``JobRunner`` with its store, on an executor; ``run`` queues jobs and waits for them."""

    def __init__(self, executor=None):
        from backend.jobs import JobKinds, JobRunner
        from backend.store import JobStore
        kinds = JobKinds({"wait": "bench.pool:wait_job"})
        self.runner = JobRunner(JobStore(tempfile.mkdtemp(prefix="pool-bench-")), "cpu",
                                lambda identity, frames: None, kinds=kinds, executor=executor,
                                retention=None)
        self.count = 0

    def run(self, jobs: list[tuple[str, dict, dict]]) -> float:
        """Queue ``jobs`` (kind, params, payload) at once; seconds until all are finished."""
        t0 = time.perf_counter()
        ids = []
        for kind, params, payload in jobs:
            self.count += 1
            ids.append(f"b{self.count}")
            self.runner.submit(ids[-1], kind, params, payload, None)
        while True:
            states = [self.runner.status(i)[0] for i in ids]
            if all(s["state"] not in ("queued", "running") for s in states):
                break
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        bad = [s for s in states if s["state"] != "done"]
        if bad:
            raise RuntimeError(f"jobs failed: {bad[:2]}")
        return dt

    def latency(self, n: int) -> float:
        """Mean seconds per one-step job, one after the other."""
        return sum(self.run([("wait", {"seconds": 0.0}, {})]) for _ in range(n)) / n

    def close(self) -> None:
        self.runner.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--wait-s", type=float, default=2.0)
    ap.add_argument("--latency-jobs", type=int, default=10)
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    os.environ["OMP_NUM_THREADS"] = "1"
    import ray
    from ray.cluster_utils import Cluster

    from backend.ray_pool import RayExecutor

    print(f"machine: {os.cpu_count()} CPU cores, no GPU (Ray's GPUs are logical: 1 per node)")
    payload = train_payload()
    train = [("train", {"steps": args.train_steps, "seed": i, "holdout_every": 0, "sh_degree": 1,
                        "preview_every": 0}, payload) for i in range(args.jobs)]
    wait = [("wait", {"seconds": args.wait_s}, {}) for _ in range(args.jobs)]

    local = Front()
    local.latency(3)                       # warm: imports, the rasterizer's compiled code
    local.run(train[:1])

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    pool = Front(RayExecutor(cluster.address))
    results: dict[int, dict[str, float]] = {}
    try:
        pool.run(train[:1])                # warm the node's worker
        # one job at a time, in-process and pool interleaved (the machine's load drifts)
        lat_local = lat_ray = 0.0
        for _ in range(args.latency_jobs):
            lat_local += local.latency(1) / args.latency_jobs
            lat_ray += pool.latency(1) / args.latency_jobs
        for nodes in (1, 3):
            if nodes == 3:
                for _ in range(2):
                    cluster.add_node(num_cpus=1, num_gpus=1)
                cluster.wait_for_nodes()
                time.sleep(1.0)                # the pool sees new nodes within 0.5 s
                pool.run(train[:3])            # warm the new nodes' workers (one job each)
            results[nodes] = {name: len(jobs) / pool.run(jobs) * 60
                              for name, jobs in (("train", train), ("wait", wait))}
            if nodes == 1:                     # the in-process reference, right after
                t_local_train = local.run(train)
    finally:
        local.close()
        pool.close()
        ray.shutdown()
        cluster.shutdown()

    print(f"\nthroughput, {args.jobs} jobs queued at once (jobs per minute):")
    print(f"  {'workload':<8} {'in-process':>11} {'1 node':>8} {'3 nodes':>8} {'3/1 ratio':>10}")
    for name in ("train", "wait"):
        one, three = results[1][name], results[3][name]
        ref = f"{args.jobs / t_local_train * 60:11.1f}" if name == "train" else f"{'-':>11}"
        print(f"  {name:<8} {ref} {one:8.1f} {three:8.1f} {three / one:10.2f}")
    print(f"  (train: {args.train_steps} steps, 6 views of 32 px, CPU rasterizer: CPU-bound, so "
          f"bounded by this machine's {os.cpu_count()} cores; wait: {args.wait_s:g} s per job on "
          "its GPU without CPU work)")
    print(f"\nlatency per one-step job (submit -> result stored), mean of {args.latency_jobs}:")
    print(f"  in-process {lat_local * 1000:7.1f} ms   Ray pool {lat_ray * 1000:7.1f} ms   "
          f"added by the pool {(lat_ray - lat_local) * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
