"""Job registry, FIFO queue and the worker thread that runs one job at a time.

The socket thread calls ``JobRunner.submit/cancel/status/fetch`` (all quick, under one lock);
the worker thread runs the job functions. Messages for clients (``progress``, ``result``,
``error``) are encoded on the worker thread and handed to the socket thread through the ``send``
callback given to the runner, which must be thread-safe (the server queues them and wakes its
loop): only the socket thread touches the ROUTER socket.
"""
from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.access import may_see
from backend.job_api import JobError, JobFunction, JobResult
from backend.progress import ReportThrottle, plain_metrics
from backend.store import JobStore, Retention, StoreError, is_disk_full, payload_bytes
from shared.jobkinds import load_builtin
from shared.jobspec import JobSpec, Settings, all_specs
from shared.protocol import Message, ProtocolError, encode, make_error
from shared.splats import Splats

log = logging.getLogger("splatbridge.server")

Send = Callable[[bytes, list], None]    # (client identity, encoded frames)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

class JobKinds(Mapping[str, JobSpec]):
    """``kind -> JobSpec``: the registered specs (``shared.jobspec``; the built-in kinds of
    ``shared.jobkinds`` and any module loaded with ``serve --job-module``) plus plug-in functions
    added with ``register``. Each kind's job function (``spec.runner``) is imported on first use,
    so a missing dependency of one kind (e.g. diffusers for ``generate``) does not break the others.

    ``registry=False``: only the kinds given here (tests that run the runner with their own kinds).
    """

    def __init__(self, targets: dict[str, str] | None = None, registry: bool = True):
        self._registry = registry
        self._builtin_loaded = False
        self._local: dict[str, JobSpec] = {}
        self._loaded: dict[str, JobFunction] = {}
        self._lock = threading.Lock()
        for kind, target in (targets or {}).items():
            self.register(kind, target)

    def register(self, kind: str, target: str) -> None:
        """Add or replace a plug-in kind run by ``target`` (``"package.module:function"``) with no
        declared settings: its params reach the function unchecked (as ``Settings``)."""
        if ":" not in target:
            raise ValueError(f"job target {target!r} must look like 'package.module:function'")
        with self._lock:
            self._local[kind] = JobSpec(kind, kind, f"plug-in job {target}", (), runner=target,
                                        params_open=True, payload_open=True)
            self._loaded.pop(kind, None)

    def _specs(self) -> dict[str, JobSpec]:
        if self._registry and not self._builtin_loaded:
            load_builtin()
            self._builtin_loaded = True
        specs = {s.kind: s for s in all_specs()} if self._registry else {}
        specs.update(self._local)
        return specs

    def spec(self, kind: str) -> JobSpec:
        """The spec of ``kind``; ``JobError("unknown_job_kind")`` naming the kinds this server runs."""
        specs = self._specs()
        if not isinstance(kind, str) or kind not in specs:
            raise JobError("unknown_job_kind", f"unknown job kind {kind!r}; this server runs: "
                           f"{', '.join(sorted(specs)) or 'none'}")
        return specs[kind]

    def target(self, kind: str) -> str:
        return self.spec(kind).runner

    def function(self, kind: str) -> JobFunction:
        """The job function of ``kind`` (imported on first use; ImportError/AttributeError if it
        cannot be)."""
        with self._lock:
            if kind in self._loaded:
                return self._loaded[kind]
        module_name, func_name = self.target(kind).split(":", 1)
        func = getattr(importlib.import_module(module_name), func_name)
        with self._lock:
            self._loaded[kind] = func
        return func

    def __getitem__(self, kind: str) -> JobSpec:
        try:
            return self.spec(kind)
        except JobError:
            raise KeyError(kind) from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._specs()))

    def __len__(self) -> int:
        return len(self._specs())

    def installed(self) -> list[str]:
        """Kinds whose job function's module can be found (without importing it)."""
        out = []
        for kind, spec in self._specs().items():
            try:
                if spec.runner and importlib.util.find_spec(spec.runner.split(":", 1)[0]) is not None:
                    out.append(kind)
            except (ImportError, ValueError):
                pass
        return out


def LazyJobKinds(targets: dict[str, str]) -> JobKinds:
    """Only the plug-in kinds ``targets`` (``kind -> "module:function"``), no registered specs."""
    return JobKinds(targets, registry=False)


JOB_KINDS = JobKinds()


# ----------------------------------------------------------------------------------------------
# Jobs and their context
# ----------------------------------------------------------------------------------------------

@dataclass
class Job:
    job_id: str
    kind: str
    params: dict
    payload: dict | None
    identity: Any                          # where its messages go (the server's routing id / Peer)
    settings: Settings                     # params as checked by the kind's spec at submit
    owner: str | None = None               # the client identity that submitted it (backend.access)
    inputs_bytes: int = 0                  # payload bytes it holds until it finishes
    state: str = "queued"
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)
    error: dict | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def entry(self, queue_position: int | None) -> dict:
        e = {"job_id": self.job_id, "kind": self.kind, "state": self.state, "step": self.step,
             "total": self.total, "queue_position": queue_position}
        if self.error:
            e["error"] = dict(self.error)
        return e


def _record_entry(rec: dict) -> dict:
    """A status entry for a job known only from the store (an earlier server run)."""
    e = {"job_id": rec["job_id"], "kind": rec.get("kind", ""), "state": rec["state"],
         "step": int(rec.get("step") or 0), "total": int(rec.get("total") or 0),
         "queue_position": None}
    if rec.get("error"):
        e["error"] = dict(rec["error"])
    return e


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA out-of-memory, whether raised as torch's own class or as a RuntimeError."""
    torch = sys.modules.get("torch")
    if torch is not None:
        oom_cls = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
        if oom_cls is not None and isinstance(oom_cls, type) and isinstance(exc, oom_cls):
            return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Drop what a failed job left behind and return cached GPU blocks to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception as exc:   # a broken CUDA context must not stop the server
            log.warning("torch.cuda.empty_cache() failed: %s", exc)


class RunnerContext:
    """The ``JobContext`` a job function receives (see backend/job_api.py): its reports go out as
    ``progress`` messages to the job's client, rate-limited by one ``ReportThrottle`` (see there:
    intervals, stages, previews)."""

    def __init__(self, job: Job, job_dir: Path, device: str, send: Send,
                 min_interval_s: float = 0.05, preview_interval_s: float = 1.0):
        self.job = job
        self.job_dir = job_dir
        self.device = device
        self._send = send
        self._throttle = ReportThrottle(min_interval_s, preview_interval_s, name=f"job {job.job_id}")

    @property
    def preview_interval_s(self) -> float:
        return self._throttle.preview_interval_s

    def restart_steps(self) -> None:
        """The job starts over (e.g. rerun on another node): its steps count from 0 again."""
        self._throttle.restart()

    def report(self, step: int, total: int, metrics: dict[str, Any],
               preview: Splats | None = None) -> None:
        step, total = int(step), int(total)
        self.job.step, self.job.total = step, max(total, step)
        fields = self._throttle.event(step, total, metrics, preview)
        if fields is None:
            return
        try:
            frames = encode(Message("progress", self.job.job_id, fields))
        except ProtocolError as exc:
            self._throttle.unsend()
            log.warning("job %s: progress report not sent: %s", self.job.job_id, exc)
            return
        if self.job.identity is not None:
            self._send(self.job.identity, frames)

    def should_stop(self) -> bool:
        return self.job.stop.is_set()


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------

SubmitError = JobError      # the one error class (shared.jobspec); this name stays for old imports


def _pruned_message(job_id: str, rec: dict) -> str:
    pruned = rec.get("pruned") or {}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(pruned.get("time") or 0))
    return (f"job {job_id} is {rec.get('state')}, but its result was removed from the job store on "
            f"{when} ({pruned.get('reason', 'retention')}); run the job again, or start the server "
            f"with larger --keep-days / --max-store-gb")


class Executor:
    """Where the runner's jobs run: the seam between the front (socket, validation, queue, job
    store, retention: ``JobRunner``) and the compute. This base class is the in-process executor,
    the default: the job function runs in this process, one job at a time. ``backend.ray_pool``
    has the other one (a Ray cluster, one job per GPU).

    The runner calls ``pick`` under its lock to choose the next queued job to start (``None``:
    none can start now; it asks again when a job ends, a job is queued, or ``poll_s`` passed),
    then ``run`` on a thread of its own (``concurrent``) or on its worker thread.
    """

    name = "in-process"
    concurrent = False              # True: ``run`` of several jobs at once, each on its own thread
    poll_s: float | None = None     # ask ``pick`` again this often even without a wake-up

    def attach(self, runner: JobRunner) -> None:
        self.runner = runner

    def pick(self, queue: deque[Job], running: Mapping[str, Job]) -> Job | None:
        """The queued job to start now: FIFO, one at a time."""
        return queue[0] if queue and not running else None

    def run(self, job: Job, payload: dict, ctx: RunnerContext) -> JobResult:
        """Run ``job`` to its ``JobResult``; errors as the job function raises them."""
        kinds = self.runner.kinds
        try:
            func = kinds.function(job.kind)
        except Exception as exc:
            raise JobError("job_unavailable", f"the {job.kind!r} job cannot run on this server: "
                           f"importing {kinds.target(job.kind)} failed "
                           f"({type(exc).__name__}: {exc})") from None
        return func(job.settings, payload, ctx)

    def cancel(self, job: Job) -> None:
        """A cancel of a running job (``job.stop`` is already set): pass it on to the worker."""

    def hello_facts(self) -> dict[str, Any]:
        """``hello`` fields that differ from this process's own device (a pool's GPUs)."""
        return {}

    def describe(self, queue: list[Job]) -> dict | None:
        """What ``status`` adds about the compute, given the queued jobs (``None``: nothing)."""
        return None

    def close(self) -> None:
        """Release the compute (after the runner stopped its jobs)."""


class JobRunner:
    """FIFO queue + the job store; jobs run on an ``Executor`` (by default in this process, one
    at a time on a worker thread)."""

    def __init__(self, store: JobStore, device: str, send: Send,
                 kinds: JobKinds = JOB_KINDS, preview_interval_s: float = 1.0,
                 recent_jobs: int = 50, retention: Retention | None = Retention(),
                 executor: Executor | None = None,
                 start_check: Callable[[Job], Settings] | None = None):
        self.store = store
        # run as each job starts (the server: its paths checked again); a JobError fails the job
        self.start_check = start_check
        self.executor = executor if executor is not None else Executor()
        self.retention = retention
        self.device = device
        self.kinds = kinds
        self._send = send
        self._preview_interval_s = preview_interval_s
        self._recent = recent_jobs
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False
        recovered = store.recover()
        for what, label in (("interrupted", "marked interrupted by the last shutdown"),
                            ("adopted", "finished from the result the last run saved"),
                            ("orphans", "given a failed record (created without one)"),
                            ("cleaned", "temporary files and folders removed")):
            if recovered[what]:
                log.warning("job store: %d %s: %s", len(recovered[what]), label,
                            ", ".join(recovered[what][:20]))
        self._prune()
        self.executor.attach(self)
        self._thread = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._thread.start()

    # -- socket-thread API ----------------------------------------------------------------------
    def submit(self, job_id: str, kind: str, params: dict, payload: dict,
               identity: Any, owner: str | None = None,
               admit: Callable[[JobSpec, Settings], Settings] | None = None) -> int:
        """Check ``params`` and ``payload`` against the kind's spec and queue the job; returns its
        queue position (0 = runs now). Raises ``JobError`` (``unknown_job_kind``, ``bad_params``,
        ``bad_input``, ...) before anything is stored, whatever job is running. ``admit`` (the
        server's access and admission checks, ``backend.access``/``backend.admission``) runs after
        the spec's validation and may refuse (``path_not_allowed``, ``queue_full``, ``too_large``)
        or return the settings with server paths resolved. ``owner``: the submitting client."""
        spec = self.kinds.spec(kind)
        settings = spec.validate(params, payload)
        with self._cond:
            if self._closing:
                raise JobError("shutting_down", "the server is shutting down; "
                                  "submit again once it is back")
            if job_id in self._jobs:
                raise JobError("duplicate_job", f"job id {job_id} is already in use; "
                                  "make a new id for a new job")
        if admit is not None:
            settings = admit(spec, settings)
        size = payload_bytes(payload)
        self.store.create(job_id, kind, settings.to_meta(), reserve_bytes=size, owner=owner)
        job = Job(job_id, kind, params, payload, identity, settings, owner=owner, inputs_bytes=size)
        with self._cond:
            self._jobs[job_id] = job
            self._queue.append(job)
            position = self._position(job)
            assert position is not None         # queued just above
            self._cond.notify_all()
        log.info("job %s (%s) queued at position %d", job_id, kind, position)
        return position

    def live_jobs(self) -> list[Job]:
        """The queued and running jobs, now."""
        with self._cond:
            return [j for j in self._jobs.values() if j.state in ("queued", "running")]

    def load(self, owner: str | None) -> tuple[int, int, int]:
        """(jobs of ``owner`` waiting, all jobs waiting, payload bytes of waiting and running jobs)."""
        with self._cond:
            mine = sum(1 for j in self._queue if j.owner == owner)
            held = sum(j.inputs_bytes for j in self._jobs.values() if j.state in ("queued", "running"))
            return mine, len(self._queue), held

    def _visible(self, job: Job | None, viewer: str | None) -> Job | None:
        return job if job is not None and may_see(job.owner, viewer) else None

    def cancel(self, job_id: str, identity: Any = None, viewer: str | None = None) -> dict:
        """Stop a running job (it returns its current splats) or drop a queued one.
        Returns the job's status entry. Raises ``JobError('unknown_job')``, also for a job
        ``viewer`` may not see (``None``: all)."""
        with self._cond:
            job = self._visible(self._jobs.get(job_id), viewer)
            if job is None:
                rec = self._record(job_id, viewer)
                return _record_entry(rec)
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "cancelled"
                job.payload = None
                job.error = {"code": "cancelled", "message": "cancelled before it started"}
                try:
                    self.store.update(job_id, state="cancelled", finished=time.time(),
                                      error=job.error)
                except (OSError, StoreError) as exc:    # recovery marks it at the next start
                    log.error("job %s: its record in the store was not updated: %s", job_id, exc)
                log.info("job %s cancelled while queued", job_id)
                entry = job.entry(None)
                submitter = job.identity
            elif job.state == "running":
                job.stop.set()
                self.executor.cancel(job)
                log.info("job %s: cancel requested", job_id)
                return job.entry(0)
            else:
                return job.entry(None)
        if submitter is not None and submitter != identity:
            self._send(submitter, encode(Message("status", job_id, {"jobs": [entry]})))
        return entry

    def status(self, job_id: str | None = None, viewer: str | None = None) -> list[dict]:
        """Status entries: one job, or the active jobs plus the most recent finished ones; only
        those ``viewer`` may see (``None``: all)."""
        with self._cond:
            if job_id is not None:
                job = self._visible(self._jobs.get(job_id), viewer)
                if job is not None:
                    return [job.entry(self._position(job))]
                return [_record_entry(self._record(job_id, viewer))]
            mine = [j for j in self._jobs.values() if may_see(j.owner, viewer)]
            active = [j for j in mine if j.state in ("queued", "running")]
            done = [j for j in mine if j.state not in ("queued", "running")]
            done.sort(key=lambda j: j.created)
            jobs = done[-self._recent:] + sorted(active, key=lambda j: j.created)
            return [j.entry(self._position(j)) for j in jobs]

    def fetch(self, job_id: str, viewer: str | None = None) -> Message:
        """The ``result`` message of a finished job again (from the store), or an ``error``
        (``unknown_job`` also for a job ``viewer`` may not see; ``None``: all)."""
        with self._cond:
            job = self._visible(self._jobs.get(job_id), viewer)
            if job is not None and job.state in ("queued", "running"):
                return make_error("not_finished", f"job {job_id} is {job.state} "
                                  f"(step {job.step}/{job.total}); its result is not ready yet",
                                  job_id)
        try:
            rec = self._record(job_id, viewer)
        except JobError as exc:
            return make_error(exc.code, exc.message, job_id)
        if rec["state"] == "failed":
            err = rec.get("error") or {}
            return make_error(err.get("code", "job_failed"),
                              err.get("message", "the job failed"), job_id)
        if not self.store.has_result(job_id):
            if rec["state"] in ("queued", "running"):
                return make_error("not_finished", f"job {job_id} is {rec['state']}", job_id)
            if rec.get("pruned"):
                return make_error("no_result", _pruned_message(job_id, rec), job_id)
            saved = rec.get("result_error") or {}
            err = rec.get("error") or {}
            why = ("it was cancelled before it started" if rec.get("started") is None else
                   err.get("message", "cancelled") if err.get("code") == "cancelled" else
                   f"the server could not save it: {saved['message']}" if saved.get("message")
                   else "the server could not save it; see the server log")
            return make_error("no_result", f"job {job_id} is {rec['state']} and has no result "
                              f"({why})", job_id)
        try:
            res = self.store.load_result(job_id)
        except (JobError, OSError):
            rec = self.store.read(job_id)
            if not rec.get("pruned"):       # not the retention racing this read: a real fault
                raise
            return make_error("no_result", _pruned_message(job_id, rec), job_id)
        return Message("result", job_id, {"splats": res.splats.to_arrays(),
                                          "metrics": res.metrics, "meta": res.meta})

    def _prune(self) -> None:
        """Apply the store's retention; never lets a store problem stop the runner."""
        if self.retention is None:
            return
        with self._cond:
            keep = {j.job_id for j in self._jobs.values() if j.state in ("queued", "running")}
        try:
            pruned = self.store.prune(self.retention, keep)
        except Exception:
            log.error("job store retention failed:\n%s", traceback.format_exc())
            return
        if pruned:
            log.info("job store retention freed %d job(s): %s", len(pruned),
                     "; ".join(f"{job_id} ({why})" for job_id, why in pruned))

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs, drop the queue (marked interrupted), stop the running job and wait
        for it to save its result."""
        with self._cond:
            self._closing = True
            while self._queue:
                job = self._queue.popleft()
                job.state = "failed"
                job.error = {"code": "interrupted",
                             "message": "the server shut down before the job started; "
                                        "submit it again"}
                self.store.update(job.job_id, state="failed", finished=time.time(),
                                  error=job.error)
                if job.identity is not None:
                    self._send(job.identity, encode(make_error(
                        job.error["code"], job.error["message"], job.job_id)))
            for job in self._running.values():
                log.info("shutdown: stopping job %s", job.job_id)
                job.stop.set()
                self.executor.cancel(job)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in [self._thread, *self._threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("the running job did not stop within %.0f s", timeout_s)
        self.executor.close()

    def pool_status(self) -> dict | None:
        """The executor's part of a ``status`` reply (per-node GPU use, queue per class)."""
        with self._cond:
            queue = list(self._queue)
        return self.executor.describe(queue)

    # -- internals --------------------------------------------------------------------------------
    def _record(self, job_id: str, viewer: str | None = None) -> dict:
        """The stored record of ``job_id``; ``unknown_job`` when there is none or ``viewer`` may
        not see it (the same words: another client's job ids are not revealed)."""
        try:
            rec = self.store.read(job_id)
        except JobError as exc:
            code = "unknown_job" if exc.code in ("unknown_job", "bad_job_id") else exc.code
            raise JobError(code, f"no job {job_id} on this server") from None
        if not may_see(rec.get("owner"), viewer):
            raise JobError("unknown_job", f"no job {job_id} on this server")
        return rec

    def _position(self, job: Job) -> int | None:
        if job.state == "running":
            return 0
        if job.state != "queued":
            return None
        try:
            i = self._queue.index(job)
        except ValueError:
            return 0        # taken off the queue by the worker, about to run
        return i + (1 if self._running else 0)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    job = self.executor.pick(self._queue, self._running) if self._queue else None
                    if job is not None:
                        break
                    self._cond.wait(self.executor.poll_s)
                self._queue.remove(job)
                job.state = "running"
                self._running[job.job_id] = job
            if self.executor.concurrent:
                t = threading.Thread(target=self._run_guarded, args=(job,), daemon=True,
                                     name=f"job-{job.job_id}")
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
                t.start()
            else:
                self._run_guarded(job)

    def _run_guarded(self, job: Job) -> None:
        """``_run`` that never lets an exception out, never leaves a job hanging."""
        try:
            self._run(job)
        except Exception as exc:    # the runner itself must survive anything a job does
            log.error("job %s: runner error\n%s", job.job_id, traceback.format_exc())
            if job.state == "running":      # never leave a job (and its client) hanging
                try:
                    self._fail(job, "job_failed", f"the server failed running the {job.kind} "
                               f"job: {type(exc).__name__}: {exc}")
                except Exception:
                    log.error("job %s: could not report the failure\n%s", job.job_id,
                              traceback.format_exc())
        finally:
            with self._cond:
                self._running.pop(job.job_id, None)
                job.payload = None
                self._cond.notify_all()
        self._prune()

    def _fail(self, job: Job, code: str, message: str, state: str = "failed") -> None:
        """End ``job`` without a result and tell its client, even when the store cannot record
        it (a full disk): the client's job must never stay queued or running."""
        job.state = state
        job.error = {"code": code, "message": message}
        try:
            self.store.update(job.job_id, state=state, finished=time.time(), error=job.error,
                              step=job.step, total=job.total)
        except (OSError, StoreError) as exc:
            log.error("job %s: its record in the store was not updated: %s", job.job_id, exc)
        log.warning("job %s %s (%s): %s", job.job_id, state, code, message)
        if job.identity is not None:
            self._send(job.identity, encode(make_error(code, message, job.job_id)))

    def _run(self, job: Job) -> None:
        t0 = time.monotonic()
        if self.start_check is not None:
            try:
                job.settings = self.start_check(job)
            except JobError as exc:
                self._fail(job, exc.code, exc.message)
                return
        try:
            self.store.update(job.job_id, state="running", started=time.time())
        except OSError as exc:
            code = "disk_full" if is_disk_full(exc) else "job_failed"
            self._fail(job, code, f"the job store cannot record the job's start ({exc}); "
                       + ("free disk space on the server and submit it again" if is_disk_full(exc)
                          else "see the server log"))
            return
        log.info("job %s (%s) started on %s", job.job_id, job.kind, self.device)
        # Writable copies: the decoded arrays are read-only views of the zmq frames.
        payload = {k: np.array(v) if isinstance(v, np.ndarray) else v
                   for k, v in (job.payload or {}).items()}
        job.payload = None
        try:
            self.store.save_inputs(job.job_id, payload)
        except (OSError, StoreError) as exc:  # a full disk must not lose the job itself
            log.warning("job %s: inputs not saved: %s", job.job_id, exc)
        ctx = RunnerContext(job, self.store.job_dir(job.job_id), self.device, self._send,
                            preview_interval_s=self._preview_interval_s)
        failure: tuple[str, str] | None = None
        oom = False
        try:
            result = self.executor.run(job, payload, ctx)
            if not isinstance(result, JobResult) or not isinstance(result.splats, Splats):
                raise TypeError(f"the {job.kind} job returned {type(result).__name__}, "
                                "not a JobResult with Splats")
            metrics = plain_metrics(result.metrics)
            meta = dict(result.meta or {})
            # the job knows best: a cancel that arrives after its last step cancelled nothing
            cancelled = bool(meta["cancelled"]) if "cancelled" in meta else job.stop.is_set()
            meta["cancelled"] = cancelled
            meta.setdefault("seconds", round(time.monotonic() - t0, 3))
            frames = encode(Message("result", job.job_id, {
                "splats": result.splats.to_arrays(), "metrics": metrics, "meta": meta}))
        except JobError as exc:
            if exc.code == "cancelled":     # stopped in a set-up stage: nothing to keep
                del payload, ctx
                self._fail(job, "cancelled", exc.message, state="cancelled")
                return
            failure, oom = (exc.code, exc.message), exc.code == "out_of_memory"
        except ProtocolError as exc:
            failure = ("bad_result", f"the {job.kind} job's result cannot be sent: {exc.message}")
        except Exception as exc:
            if is_out_of_memory(exc):
                oom = True
                failure = ("out_of_memory",
                           f"the GPU ran out of memory during the {job.kind} job ({exc}). "
                           "Try fewer Gaussians (max_gaussians), fewer or smaller images, or "
                           "close other programs using the GPU; the server freed its memory "
                           "and keeps serving")
            else:
                log.error("job %s raised:\n%s", job.job_id, traceback.format_exc())
                failure = ("job_failed",
                           f"the {job.kind} job failed: {type(exc).__name__}: {exc}")
        if failure is not None:
            # Out of the except block, the traceback (and the job's tensors in its frames)
            # is gone, so the memory can really be freed.
            del payload, ctx
            if oom:
                free_memory()
            self._fail(job, *failure)
            return
        state = "cancelled" if cancelled else "done"
        changes = {"state": state, "finished": time.time(), "metrics": metrics,
                   "step": job.step, "total": job.total}
        try:    # the result carries its record update: recovery adopts it after a crash
            self.store.save_result(job.job_id, result.splats, metrics, meta, record=changes)
        except (OSError, StoreError) as exc:  # e.g. a full disk: the client still gets its splats
            log.error("job %s: result not saved in the store (fetch will not find it): %s",
                      job.job_id, exc)
            code = exc.code if isinstance(exc, StoreError) else (
                "disk_full" if is_disk_full(exc) else "store_failed")
            why = exc.message if isinstance(exc, StoreError) else str(exc)
            changes["result_error"] = {"code": code, "message": why}
            meta["stored"] = False          # the client is told it cannot fetch it again
            meta["store_error"] = why
            frames = encode(Message("result", job.job_id, {
                "splats": result.splats.to_arrays(), "metrics": metrics, "meta": meta}))
        try:
            self.store.update(job.job_id, **changes)
        except (OSError, StoreError) as exc:
            log.error("job %s: its record in the store was not updated: %s", job.job_id, exc)
        job.state = state           # only now: a fetch after "done" must find the stored result
        log.info("job %s %s in %.1f s (%d splats)", job.job_id, job.state,
                 time.monotonic() - t0, len(result.splats))
        if job.identity is not None:
            self._send(job.identity, frames)
