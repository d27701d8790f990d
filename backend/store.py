"""On-disk job store: one folder per job, so results outlive clients and server restarts.

Layout of ``<root>/<job_id>/``::

    job.json            kind, params, state, step/total, timestamps (Unix seconds), metrics, error
    inputs/<key>.npy    the submit payload's arrays (top-level keys of ``payload``), written by
                        the worker when the job starts (not on the socket thread)
    inputs/values.json  the payload's non-array values (plain JSON)
    result/<key>.npy    the result splats, one lossless .npy per ``Splats.to_arrays()`` field
    result/metrics.json the result's metrics
    result/meta.json    the result's meta (a top-level array of it: result/meta.<key>.npy, JSON keeps a note)
    reconstruct/        the reconstruct job's solve (images, COLMAP database/log/models,
                        transforms.json; see backend/reconstruct.py)

Writes go to a temporary file first and are moved into place (``os.replace``), so a crash leaves
either the old or the new file, never half of one.

Retention (``JobStore.prune`` with a ``Retention``): finished jobs give back their ``inputs/``,
``result/`` (and ``reconstruct/``) once they are older than ``max_age_days`` or while the store is over ``max_bytes``
(oldest first). Their ``job.json`` stays, marked ``pruned`` with the reason, so a later fetch says
why the result is gone instead of "unknown job". Queued and running jobs and the most recently
finished one with data (whose client may not have it yet) are never pruned; jobs with nothing on
disk (cancelled while queued) are left unmarked. The store is used from the socket thread and
the worker thread; one lock serialises the ``job.json`` read-modify-write.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.jobspec import JobError
from shared.protocol import SPLAT_KEYS
from shared.splats import Splats

ACTIVE_STATES = ("queued", "running")
FINISHED_STATES = ("done", "cancelled", "failed")
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # same rule as shared.protocol
#: The folders of a job that hold data (freed by retention); job.json stays.
DATA_PARTS = ("result", "inputs", ".result.tmp", "reconstruct")


@dataclass(frozen=True)
class Retention:
    """When finished jobs' data leaves the store; 0 turns a rule off."""

    max_age_days: float = 30.0      # days since the job finished
    max_bytes: int = 20 * 2 ** 30   # the whole store folder

    def __post_init__(self) -> None:
        for name in ("max_age_days", "max_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"retention {name} must be a number >= 0 (0 = no limit), got {value!r}")


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it is gone)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:         # removed meanwhile
                pass
    return total


# The store's errors (unknown job, no result, bad job id) are the one job error class.
StoreError = JobError


@dataclass
class StoredResult:
    splats: Splats
    metrics: dict[str, Any]
    meta: dict[str, Any]


def _jsonable(value: Any) -> Any:
    """Plain JSON for msgpack-ish values: numpy scalars become Python numbers, NaN/Inf become
    None (JSON has no NaN), bytes become a short note (they are not kept)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.ndarray):
        return f"<array {value.dtype}{list(value.shape)}>"
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(_jsonable(obj), indent=1, sort_keys=True).encode())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
    os.replace(tmp, path)


#: a top-level array in a result's meta is kept as ``result/meta.<key>.npy`` (meta.json holds a note)
META_ARRAY_PREFIX = "meta."


class JobStore:
    """The job folders under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- paths --------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """The folder of ``job_id``; the id is checked so it cannot name anything outside."""
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise StoreError("bad_job_id", f"job id {job_id!r} is not 1-64 characters of "
                             "[A-Za-z0-9_-]")
        return self.root / job_id

    def exists(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "job.json").is_file()

    # -- records ------------------------------------------------------------------------------
    def create(self, job_id: str, kind: str, params: dict) -> dict:
        """Make the job's folder with a ``queued`` record; returns the record.
        Raises ``StoreError('duplicate_job', ...)`` when the id is taken."""
        d = self.job_dir(job_id)
        try:
            d.mkdir()
        except FileExistsError:
            raise StoreError("duplicate_job", f"job id {job_id} is already in use; "
                             "make a new id for a new job") from None
        now = time.time()
        record = {"job_id": job_id, "kind": kind, "params": params, "state": "queued",
                  "step": 0, "total": 0, "created": now, "started": None, "finished": None,
                  "metrics": {}, "error": None}
        with self._lock:
            _write_json(d / "job.json", record)
        return _jsonable(record)

    def save_inputs(self, job_id: str, payload: dict) -> None:
        """Save the payload: top-level arrays as ``inputs/<key>.npy``, the rest as JSON."""
        inputs = self.job_dir(job_id) / "inputs"
        inputs.mkdir(exist_ok=True)
        values = {}
        for key, value in payload.items():
            if isinstance(value, np.ndarray) and _JOB_ID_RE.match(key):
                _save_npy(inputs / f"{key}.npy", value)
            else:
                values[key] = value
        _write_json(inputs / "values.json", values)

    def read(self, job_id: str) -> dict:
        path = self.job_dir(job_id) / "job.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError("unknown_job", f"no job {job_id} in the store") from None

    def update(self, job_id: str, **changes: Any) -> dict:
        """Merge ``changes`` into ``job.json``; returns the new record."""
        with self._lock:
            record = self.read(job_id)
            record.update(_jsonable(changes))
            _write_json(self.job_dir(job_id) / "job.json", record)
        return record

    def list_records(self) -> list[dict]:
        """All readable records, oldest first (unreadable folders are skipped)."""
        out = []
        for d in self.root.iterdir():
            if not d.is_dir() or not _JOB_ID_RE.match(d.name):
                continue
            try:
                out.append(self.read(d.name))
            except (StoreError, ValueError, OSError):
                continue
        out.sort(key=lambda r: r.get("created") or 0)
        return out

    def mark_interrupted(self) -> list[str]:
        """Mark jobs left ``queued``/``running`` by a server that died as ``failed`` with error
        code ``interrupted``; returns their ids. Call once at start-up."""
        ids = []
        for rec in self.list_records():
            if rec.get("state") in ACTIVE_STATES:
                was = rec["state"]
                self.update(rec["job_id"], state="failed", finished=time.time(),
                            error={"code": "interrupted",
                                   "message": f"the server stopped while the job was {was}; "
                                              "submit it again"})
                ids.append(rec["job_id"])
        return ids

    # -- retention ----------------------------------------------------------------------------
    def prune(self, retention: Retention, keep: frozenset[str] | set[str] = frozenset(),
              now: float | None = None) -> list[tuple[str, str]]:
        """Apply ``retention`` (see the module docstring); ``keep``: ids never to prune (the runner's
        live jobs). Returns ``[(job_id, reason)]`` in the order pruned."""
        now = time.time() if now is None else now
        finished = [r for r in self.list_records()
                    if r.get("state") in FINISHED_STATES and not r.get("pruned")
                    and r.get("job_id") not in keep and isinstance(r.get("finished"), (int, float))
                    and self._has_data(r["job_id"])]     # nothing to free: not marked pruned
        finished.sort(key=lambda r: r["finished"])
        candidates = finished[:-1]          # the newest finished job stays
        pruned: list[tuple[str, str]] = []
        if retention.max_age_days > 0:
            limit = now - retention.max_age_days * 86400.0
            for rec in [r for r in candidates if r["finished"] < limit]:
                reason = f"finished more than {retention.max_age_days:g} days ago"
                self._prune_one(rec["job_id"], reason, now)
                pruned.append((rec["job_id"], reason))
                candidates.remove(rec)
        if retention.max_bytes > 0:
            total = folder_bytes(self.root)
            for rec in candidates:
                if total <= retention.max_bytes:
                    break
                freed = self._prune_one(rec["job_id"], f"the job store was over its "
                                        f"{retention.max_bytes / 2 ** 30:g} GiB limit", now)
                total -= freed
                pruned.append((rec["job_id"], "store over its size limit"))
        return pruned

    def _has_data(self, job_id: str) -> bool:
        """True when the job has inputs or a result (finished or half-written) on disk."""
        d = self.job_dir(job_id)
        return any((d / name).exists() for name in DATA_PARTS)

    def _prune_one(self, job_id: str, reason: str, now: float) -> int:
        """Delete the job's inputs and result (renamed away first, so a concurrent reader sees
        either all of the result or none); returns the bytes freed."""
        d = self.job_dir(job_id)
        self.update(job_id, pruned={"time": now, "reason": reason})   # first: a fetch that then
        freed = 0                                                       # misses the files says why
        for name in DATA_PARTS:
            part = d / name
            if not part.exists():
                continue
            doomed = d / f".pruned-{name.strip('.')}"
            if doomed.exists():
                shutil.rmtree(doomed, ignore_errors=True)
            os.replace(part, doomed)
            freed += folder_bytes(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return freed

    # -- inputs -------------------------------------------------------------------------------
    def load_inputs(self, job_id: str) -> dict:
        """The payload as saved by ``save_inputs`` (arrays loaded from .npy)."""
        inputs = self.job_dir(job_id) / "inputs"
        payload: dict[str, Any] = json.loads((inputs / "values.json").read_text())
        for p in inputs.glob("*.npy"):
            payload[p.stem] = np.load(p, allow_pickle=False)
        return payload

    # -- results ------------------------------------------------------------------------------
    def save_result(self, job_id: str, splats: Splats, metrics: dict, meta: dict) -> None:
        """Save the result splats losslessly (one .npy per field) with metrics and meta. The
        folder is written beside the final one and renamed into place."""
        d = self.job_dir(job_id)
        tmp = d / ".result.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for key, arr in splats.to_arrays().items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        _write_json(tmp / "metrics.json", metrics)
        for key, value in meta.items():       # arrays of meta (e.g. segment's labels) beside it
            if isinstance(value, np.ndarray):
                np.save(tmp / f"{META_ARRAY_PREFIX}{key}.npy", np.ascontiguousarray(value), allow_pickle=False)
        _write_json(tmp / "meta.json", meta)
        final = d / "result"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    def has_result(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "result" / "meta.json").is_file()

    def load_result(self, job_id: str) -> StoredResult:
        d = self.job_dir(job_id) / "result"
        if not (d / "meta.json").is_file():
            raise StoreError("no_result", f"job {job_id} has no result in the store")
        arrays = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in SPLAT_KEYS}
        meta = json.loads((d / "meta.json").read_text())
        for p in d.glob(f"{META_ARRAY_PREFIX}*.npy"):
            meta[p.stem[len(META_ARRAY_PREFIX):]] = np.load(p, allow_pickle=False)
        return StoredResult(splats=Splats.from_arrays(arrays),
                            metrics=json.loads((d / "metrics.json").read_text()), meta=meta)
