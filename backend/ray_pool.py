"""A backend pool on Ray: ``serve --executor ray --ray-address ADDR``.

The ZeroMQ front (socket, validation at submit, queue, job store, retention: ``JobRunner``) stays
what clients see; this ``Executor`` runs each job as a Ray task on one GPU of the cluster:

- **Placement.** Each job asks for ``num_gpus=1`` and, when its kind has a memory class
  (``memory_classes``: kind -> GB, ``serve --memory-class generate=40``), one unit of the custom
  resource ``gpu_mem_<GB>gb``. A node offers a class by starting with
  ``ray start --num-gpus 1 --resources '{"gpu_mem_40gb": 1}'`` (one unit per GPU that has that
  much memory). The front places each job on a node itself (a hard node-affinity), so it knows
  which GPU runs what: one job per GPU, as many at once as the cluster has GPUs, FIFO within each
  class (a job of a class whose GPUs are all busy does not hold back a job of another class).
- **Inputs** go through Ray's object store (``ray.put``); the task copies them (writable arrays).
- **Progress, previews, cancel** travel through one small ``_Hub`` actor on the front's node: the
  task pushes its reports there, the front's job thread takes them every ``poll_s`` and hands them
  to the job's ``RunnerContext`` (the same rate limits and messages as in-process); a cancel sets a
  flag there that the task's ``should_stop`` reads (at most every ``stop_poll_s``).
- **Results** come back as the task's return value and land in the front's job store (the
  runner saves them as for an in-process job). Files a job writes in ``ctx.job_dir`` stay on the
  worker's temporary folder (removed after the job): the pool is for jobs whose result is the
  splats and metrics.
- **Faults.** A worker process or node that dies mid-job: the job runs again once, on another
  node (the failed one is excluded); a second loss, or no other node, fails it with
  ``interrupted``. A restarted front reconnects to the cluster; the job store (on the front's
  disk) keeps every finished result fetchable, and its recovery marks jobs that were running when
  the front died ``interrupted`` (their Ray tasks belonged to the old front and end with it).

``ray`` is imported only when a ``RayExecutor`` is made: the in-process runner needs no Ray.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.job_api import JobResult
from backend.jobs import Executor, Job, RunnerContext
from backend.progress import ReportThrottle, plain_metrics
from shared.jobspec import JobError, Settings
from shared.splats import Splats

log = logging.getLogger("splatbridge.server")

NAMESPACE = "splatbridge"
DEFAULT_CLASS = "any"


def class_resource(gb: int) -> str:
    """The custom Ray resource a node offers per GPU of at least ``gb`` GB: ``gpu_mem_<gb>gb``."""
    return f"gpu_mem_{int(gb)}gb"


def class_name(gb: int | None) -> str:
    """The memory class's label in ``status`` (``"40gb"``; ``"any"``: any GPU)."""
    return DEFAULT_CLASS if not gb else f"{int(gb)}gb"


def parse_memory_classes(items: list[str]) -> dict[str, int]:
    """``["generate=40", ...]`` (``serve --memory-class``) as ``{"generate": 40}``; ValueError
    naming the bad item."""
    out: dict[str, int] = {}
    for item in items:
        kind, sep, gb = item.partition("=")
        try:
            value = int(gb)
        except ValueError:
            value = 0
        if not sep or not kind or value <= 0:
            raise ValueError(f"--memory-class {item!r} must look like KIND=GB with GB a whole "
                             "number > 0 (e.g. generate=40)")
        out[kind] = value
    return out


# ----------------------------------------------------------------------------------------------
# The worker side (runs in Ray worker processes)
# ----------------------------------------------------------------------------------------------

class _Hub:
    """Progress events and cancel flags between the front and its tasks (a Ray actor)."""

    def __init__(self) -> None:
        self._events: dict[str, list[dict]] = {}
        self._stops: set[str] = set()

    def push(self, job_id: str, event: dict) -> None:
        self._events.setdefault(job_id, []).append(event)

    def flush(self) -> bool:
        """Called (and waited for) by a task at its end: its earlier pushes are all in."""
        return True

    def take(self, job_id: str) -> list[dict]:
        return self._events.pop(job_id, [])

    def stop(self, job_id: str) -> None:
        self._stops.add(job_id)

    def stopped(self, job_id: str) -> bool:
        return job_id in self._stops

    def forget(self, job_id: str) -> None:
        self._events.pop(job_id, None)
        self._stops.discard(job_id)


class WorkerContext:
    """The ``JobContext`` of a job running in a Ray task: reports go to the hub, rate-limited by
    the same ``ReportThrottle`` as in-process jobs; ``should_stop`` reads the hub's cancel flag at
    most every ``stop_poll_s``."""

    def __init__(self, job_id: str, hub: Any, job_dir: Any, device: str,
                 preview_interval_s: float, min_interval_s: float = 0.05,
                 stop_poll_s: float = 0.2):
        self.job_id = job_id
        self.job_dir = job_dir
        self.device = device
        self._hub = hub
        self._throttle = ReportThrottle(min_interval_s, preview_interval_s, name=f"job {job_id}")
        self._stop_poll_s = stop_poll_s
        self._last_poll = -1e9
        self._stopped = False

    def report(self, step: int, total: int, metrics: dict[str, Any],
               preview: Splats | None = None) -> None:
        event = self._throttle.event(step, total, metrics, preview)
        if event is not None:
            self._hub.push.remote(self.job_id, event)

    def should_stop(self) -> bool:
        if self._stopped:
            return True
        now = time.monotonic()
        if now - self._last_poll >= self._stop_poll_s:
            import ray
            self._last_poll = now
            self._stopped = bool(ray.get(self._hub.stopped.remote(self.job_id)))
        return self._stopped


def _worker_device() -> str:
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def probe_gpu() -> dict[str, Any]:
    """The ``hello`` facts of the GPU this task holds (a Ray task on a worker node)."""
    out: dict[str, Any] = {"cuda": False, "gpu_name": None, "gpu_memory_bytes": None,
                           "gsplat_cuda": False}
    try:
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out.update(cuda=True, gpu_name=str(props.name), gpu_memory_bytes=int(props.total_memory))
            from backend.render import gsplat_cuda_available
            out["gsplat_cuda"] = bool(gsplat_cuda_available())
    except Exception as exc:        # a broken worker must not stop the front: it says CPU
        log.warning("GPU probe failed on a worker: %s", exc)
    return out


def run_job_task(job_id: str, kind: str, target: str, values: dict, payload: dict, hub: Any,
                 preview_interval_s: float) -> dict:
    """The Ray task of one job: import ``target``, run it, return its result as plain data.

    Errors come back in the result (``{"error": {code, message}, "oom": bool}``), not raised, so
    the front never depends on unpickling a job's exception classes; only a dead worker or node
    surfaces as a Ray error."""
    import importlib

    import ray

    from backend.jobs import free_memory, is_out_of_memory
    node = ray.get_runtime_context().get_node_id()
    job_dir = tempfile.mkdtemp(prefix=f"splatbridge-{job_id}-")
    out: dict[str, Any] = {"node": node}
    try:
        from pathlib import Path
        ctx = WorkerContext(job_id, hub, Path(job_dir), _worker_device(), preview_interval_s)
        # writable copies: arrays from the object store are read-only views of shared memory
        payload = {k: np.array(v) if isinstance(v, np.ndarray) else v
                   for k, v in (payload or {}).items()}
        try:
            module_name, func_name = target.split(":", 1)
            func = getattr(importlib.import_module(module_name), func_name)
        except Exception as exc:
            raise JobError("job_unavailable", f"the {kind!r} job cannot run on node {node[:12]}: "
                           f"importing {target} failed ({type(exc).__name__}: {exc})") from None
        settings = Settings(kind, values)
        result = func(settings, payload, ctx)
        if not isinstance(result, JobResult) or not isinstance(result.splats, Splats):
            raise TypeError(f"the {kind} job returned {type(result).__name__}, "
                            "not a JobResult with Splats")
        out.update(splats=result.splats.to_arrays(), metrics=plain_metrics(result.metrics),
                   meta=dict(result.meta or {}))
        meta = out["meta"]
        if "cancelled" not in meta and ctx.should_stop():
            meta["cancelled"] = True
    except JobError as exc:
        out["error"] = {"code": exc.code, "message": exc.message}
    except Exception as exc:
        oom = is_out_of_memory(exc)
        out["error"] = {"code": "out_of_memory" if oom else "job_failed",
                        "message": f"{type(exc).__name__}: {exc}"}
        out["oom"] = oom
        out["traceback"] = traceback.format_exc()
        if oom:
            free_memory()
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    ray.get(hub.flush.remote())        # every progress push of this task is in the hub now
    return out


# ----------------------------------------------------------------------------------------------
# The front side
# ----------------------------------------------------------------------------------------------

@dataclass
class _Node:
    node_id: str
    address: str
    resources: dict[str, float]
    alive: bool = True
    jobs: dict[str, Job] = field(default_factory=dict)   # our jobs placed here

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))

    def fits(self, gb: int | None) -> bool:
        """A free GPU (of class ``gb``) here, counting our own jobs only."""
        if not self.alive or len(self.jobs) >= self.gpus:
            return False
        if not gb:
            return True
        res = class_resource(gb)
        used = sum(1 for j in self.jobs.values() if getattr(j, "_pool_gb", None) == gb)
        return self.resources.get(res, 0) - used >= 1

    @property
    def classes(self) -> list[str]:
        """The memory classes this node offers (``["40gb"]``), from its ``gpu_mem_<GB>gb``."""
        out = []
        for k in self.resources:
            m = re.fullmatch(r"gpu_mem_(\d+)gb", k)
            if m:
                out.append((int(m.group(1)), class_name(int(m.group(1)))))
        return [name for _gb, name in sorted(out)]

    def offers(self, gb: int | None) -> bool:
        return self.alive and self.gpus >= 1 and (not gb or self.resources.get(class_resource(gb), 0) >= 1)


class RayExecutor(Executor):
    """Jobs as Ray tasks on a cluster's GPUs (see the module's docstring)."""

    name = "ray"
    concurrent = True
    poll_s = 0.5                      # how often a waiting queue looks at the cluster again

    def __init__(self, address: str | None, memory_classes: Mapping[str, int] | None = None,
                 num_cpus: float = 1.0, retries: int = 1, poll_s: float = 0.1,
                 nodes_refresh_s: float = 0.5, init: bool = True):
        """``address``: the cluster (``ray start --head``'s address, ``"auto"``, or ``None`` for a
        local one-node cluster). ``memory_classes``: kind -> GB of GPU memory it needs.
        ``num_cpus``: CPUs each job holds besides its GPU. ``retries``: reruns on another node
        after a worker or node died. ``poll_s``: how often a running job's progress is taken."""
        import ray
        self._ray = ray
        self.address = address
        self.memory_classes = dict(memory_classes or {})
        self.num_cpus = num_cpus
        self.retries = retries
        self.job_poll_s = poll_s
        self._nodes_refresh_s = nodes_refresh_s
        if init and not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                     configure_logging=False)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        self._affinity = NodeAffinitySchedulingStrategy
        here = ray.get_runtime_context().get_node_id()
        # the hub lives on the head node (which the cluster cannot lose anyway), else here
        head = "node:__internal_head__"
        on_head = any(n.get("Alive") and head in (n.get("Resources") or {}) for n in ray.nodes())
        # Any: Ray types an actor's methods (``.remote``) only when they carry @ray.method, which would
        # import ray where _Hub is defined (ray is an optional extra, imported here only)
        self._hub: Any = ray.remote(_Hub).options(
            num_cpus=0, resources={head: 0.001} if on_head else None,
            scheduling_strategy=None if on_head else NodeAffinitySchedulingStrategy(here, soft=True),
        ).remote()
        # max_calls=0: reuse worker processes (Ray's default for GPU tasks is a new one per task)
        self._task = ray.remote(max_calls=0)(run_job_task)
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._nodes_at = -1e9
        self._lost: set[str] = set()     # nodes seen dead before Ray's health checks say so
        self._refresh_nodes(force=True)
        self._probe: dict[str, Any] = {}
        self._probe_ref = ray.remote(probe_gpu).options(num_gpus=1, num_cpus=0).remote() \
            if any(n.gpus for n in self._nodes.values() if n.alive) else None
        log.info("Ray pool at %s: %d node(s), %d GPU(s)", address or "a local cluster",
                 sum(n.alive for n in self._nodes.values()),
                 sum(n.gpus for n in self._nodes.values() if n.alive))

    # -- cluster view ----------------------------------------------------------------------------
    def _refresh_nodes(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._nodes_at < self._nodes_refresh_s:
            return
        self._nodes_at = now
        seen = set()
        for n in self._ray.nodes():
            nid = n["NodeID"]
            seen.add(nid)
            node = self._nodes.get(nid)
            res = dict(n.get("Resources") or {})
            if node is None:
                node = self._nodes[nid] = _Node(nid, n.get("NodeManagerAddress", ""), res)
            node.alive = bool(n.get("Alive")) and nid not in self._lost
            if res:
                node.resources = res
        for nid in set(self._nodes) - seen:
            self._nodes[nid].alive = False

    def job_gb(self, job: Job) -> int | None:
        """GB of GPU memory ``job`` asks for (its kind's memory class; None: any GPU)."""
        return self.memory_classes.get(job.kind)

    # -- Executor --------------------------------------------------------------------------------
    def pick(self, queue: deque[Job], running: Mapping[str, Job]) -> Job | None:
        """The first queued job whose class has a free GPU, FIFO within each class; a job whose
        class no live node offers is started too (its ``run`` fails it with a clear error)."""
        with self._lock:
            self._refresh_nodes()
            blocked: set[int | None] = set()
            for job in queue:
                gb = self.job_gb(job)
                if gb in blocked:
                    continue
                if not any(n.offers(gb) for n in self._nodes.values()):
                    job._pool_node = None      # type: ignore[attr-defined]
                    return job
                node = self._place(job, gb, set())
                if node is not None:
                    return job
                blocked.add(gb)
        return None

    def _place(self, job: Job, gb: int | None, exclude: set[str]) -> _Node | None:
        """Reserve a free GPU of class ``gb`` for ``job`` (the least busy node; caller locks)."""
        free = [n for n in self._nodes.values() if n.node_id not in exclude and n.fits(gb)]
        if not free:
            return None
        # the least busy node, and among those the one offering the fewest memory classes: a
        # small job leaves the big GPUs free for the jobs that need them
        node = min(free, key=lambda n: (len(n.jobs) / max(n.gpus, 1),
                                        len(n.classes),
                                        n.node_id))
        job._pool_gb = gb                   # type: ignore[attr-defined]
        job._pool_node = node.node_id       # type: ignore[attr-defined]
        node.jobs[job.job_id] = job
        return node

    def _release(self, job: Job) -> None:
        with self._lock:
            nid = getattr(job, "_pool_node", None)
            if nid and nid in self._nodes:
                self._nodes[nid].jobs.pop(job.job_id, None)

    def run(self, job: Job, payload: dict, ctx: RunnerContext) -> JobResult:
        gb = self.job_gb(job)
        if getattr(job, "_pool_node", None) is None:
            with self._lock:
                offered = sorted({c for n in self._nodes.values() if n.alive for c in n.classes})
            raise JobError("no_capacity", f"no live node of the Ray cluster offers a GPU of the "
                           f"{class_name(gb)} class the {job.kind} job asks for (resource "
                           f"{class_resource(gb) if gb else 'GPU'}); classes offered: "
                           f"{', '.join(offered) or 'none'}")
        ray = self._ray
        target = self.runner.kinds.target(job.kind)
        values = dict(job.settings) if job.settings is not None else dict(job.params or {})
        ref_payload = ray.put(payload)
        exclude: set[str] = set()
        attempt = 0
        try:
            while True:
                node_id = job._pool_node            # type: ignore[attr-defined]
                resources = {class_resource(gb): 1} if gb else {}
                ref = self._task.options(
                    num_gpus=1, num_cpus=self.num_cpus, resources=resources, max_retries=0,
                    retry_exceptions=False, name=f"splatbridge-{job.job_id}",
                    scheduling_strategy=self._affinity(node_id, soft=False),
                ).remote(job.job_id, job.kind, target, values, ref_payload, self._hub,
                         ctx.preview_interval_s)
                log.info("job %s runs on node %s (attempt %d)", job.job_id, node_id[:12],
                         attempt + 1)
                try:
                    out = self._follow(job, ref, ctx)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayTaskError):
                        raise       # not a lost worker: a bug of the task wrapper itself
                    # a node that cannot take the task (dead before Ray's health checks said
                    # so) never started the job: that does not use up its retry
                    never_ran = isinstance(exc, ray.exceptions.TaskUnschedulableError)
                    attempt += 0 if never_ran else 1
                    exclude.add(node_id)
                    log.warning("job %s: its worker on node %s was lost (%s)", job.job_id,
                                node_id[:12], type(exc).__name__)
                    self._release(job)
                    with self._lock:
                        if never_ran or isinstance(exc, ray.exceptions.NodeDiedError):
                            self._lost.add(node_id)     # no new jobs there, whatever GCS says
                        self._refresh_nodes(force=True)
                    if job.stop.is_set():
                        raise JobError("cancelled", f"the {job.kind} job was cancelled while its "
                                       "lost worker was being replaced; nothing to keep") from None
                    if attempt > self.retries:
                        raise JobError("interrupted", f"the {job.kind} job was interrupted: the "
                                       f"worker or node running it died ({attempt} time(s)); "
                                       "submit it again") from None
                    if not self._wait_for_node(job, gb, exclude):
                        if job.stop.is_set():
                            raise JobError("cancelled", f"the {job.kind} job was cancelled while "
                                           "it waited for another node; nothing to keep") from None
                        raise JobError("interrupted", f"the {job.kind} job was interrupted: the "
                                       "node running it died and no other node of its class "
                                       "is left; submit it again") from None
                    ctx.restart_steps()     # the rerun counts from step 0
                    continue
                return self._result(job, out)
        finally:
            self._release(job)
            self._hub.forget.remote(job.job_id)
            del ref_payload

    def _wait_for_node(self, job: Job, gb: int | None, exclude: set[str]) -> bool:
        """Reserve another node for a retry; False when none of the class is left alive."""
        while not job.stop.is_set():
            with self._lock:
                self._refresh_nodes(force=True)
                if not any(n.offers(gb) for nid, n in self._nodes.items() if nid not in exclude):
                    return False
                if self._place(job, gb, exclude) is not None:
                    return True
            time.sleep(self.job_poll_s)
        return False

    def _follow(self, job: Job, ref: Any, ctx: RunnerContext) -> dict:
        """Wait for the task, handing its progress to ``ctx`` every ``job_poll_s``."""
        ray = self._ray
        while True:
            done, _ = ray.wait([ref], timeout=self.job_poll_s)
            for event in ray.get(self._hub.take.remote(job.job_id)):
                self._report(ctx, event)
            if done:
                out = ray.get(ref)
                for event in ray.get(self._hub.take.remote(job.job_id)):
                    self._report(ctx, event)
                return out

    @staticmethod
    def _report(ctx: RunnerContext, event: dict) -> None:
        preview = Splats.from_arrays(event["preview"]) if event.get("preview") else None
        ctx.report(event["step"], event["total"], event["metrics"], preview)

    def _result(self, job: Job, out: dict) -> JobResult:
        err = out.get("error")
        if err:
            if out.get("traceback"):
                log.error("job %s raised on node %s:\n%s", job.job_id, out["node"][:12],
                          out["traceback"])
            code, message = err["code"], err["message"]
            if code == "job_failed":
                message = f"the {job.kind} job failed: {message}"
            elif code == "out_of_memory":
                message = (f"the GPU ran out of memory during the {job.kind} job ({message}). "
                           "Try fewer Gaussians (max_gaussians), fewer or smaller images; the "
                           "worker freed its memory and keeps serving")
            raise JobError(code, message)
        meta = dict(out.get("meta") or {})
        meta.setdefault("node", out["node"])
        return JobResult(Splats.from_arrays(out["splats"]), out.get("metrics") or {}, meta)

    def cancel(self, job: Job) -> None:
        self._hub.stop.remote(job.job_id)

    def hello_facts(self) -> dict[str, Any]:
        """The pool's side of ``hello``: device ``ray``; ``cuda``, ``gsplat_cuda``, GPU memory from
        one worker's GPU (a probe task at start-up; CPU facts until it answered); ``gpu_name``
        says how many GPUs on how many nodes."""
        if self._probe_ref is not None and not self._probe:
            done, _ = self._ray.wait([self._probe_ref], timeout=0)
            if done:
                try:
                    self._probe = self._ray.get(self._probe_ref)
                except self._ray.exceptions.RayError as exc:
                    log.warning("GPU probe task failed: %s", exc)
                    self._probe = {"cuda": False}
        with self._lock:
            self._refresh_nodes()
            live = [n for n in self._nodes.values() if n.alive and n.gpus]
        gpus = sum(n.gpus for n in live)
        kind = self._probe.get("gpu_name") or ("GPU" if self._probe.get("cuda") else "logical GPU")
        return {"device": "ray", "cuda": bool(self._probe.get("cuda")),
                "gsplat_cuda": bool(self._probe.get("gsplat_cuda")),
                "gpu_memory_bytes": self._probe.get("gpu_memory_bytes"),
                "gpu_name": f"Ray pool: {gpus} x {kind} on {len(live)} node(s)"}

    def describe(self, queue: list[Job]) -> dict:
        """Per-node GPU use and the queue (``queue``: the queued jobs) per memory class."""
        with self._lock:
            self._refresh_nodes()
            nodes = [{"node_id": n.node_id, "address": n.address, "alive": n.alive,
                      "gpus": n.gpus, "gpus_busy": len(n.jobs),
                      "classes": n.classes,
                      "jobs": sorted(n.jobs)}
                     for n in sorted(self._nodes.values(), key=lambda n: n.node_id)]
        per_class: dict[str, int] = {}
        for job in queue:
            name = class_name(self.job_gb(job))
            per_class[name] = per_class.get(name, 0) + 1
        return {"executor": "ray", "address": str(self.address or "local"), "nodes": nodes,
                "queue": per_class}

    def close(self) -> None:
        try:
            self._ray.kill(self._hub)
        except Exception:
            pass
