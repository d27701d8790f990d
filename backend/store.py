"""On-disk job store: one folder per job, so results outlive clients and server restarts.

Layout of ``<root>/<job_id>/``::

    job.json            kind, params, owner (the submitting client), state, step/total, timestamps
                        (Unix seconds), metrics, error
    inputs/<key>.npy    the submit payload's arrays (top-level keys of ``payload``), written by
                        the worker when the job starts (not on the socket thread)
    inputs/values.json  the payload's non-array values (plain JSON)
    result/<key>.npy    the result splats, one lossless .npy per ``Splats.to_arrays()`` field
    result/metrics.json the result's metrics
    result/meta.json    the result's meta (a top-level array of it: result/meta.<key>.npy, JSON keeps a note)
    result/record.json  the changes the job's record gets with this result (state, finished, ...)
    reconstruct/        the reconstruct job's solve (images, COLMAP database/log/models,
                        transforms.json; see backend/reconstruct.py)

and ``<root>/.records.jsonl``: compacted records (one JSON record a line) of old finished jobs
whose folders are gone.

Crash safety (kill -9 at any instant):

- Files are written beside their final name and moved into place (``os.replace``), so a crash
  leaves the old or the new file, never half of one. Folders are built the same way: a job
  folder as ``.creating-<id>/`` (with its ``job.json``), inputs as ``.inputs.tmp/``, a result as
  ``.result.tmp/``, each renamed into place in one step.
- "Result written" is the commit point of a finished job: ``result/record.json`` carries the
  record update, so ``recover`` (at start-up) adopts a complete result whose ``job.json`` was not
  updated yet. Jobs left queued or running without a result become ``failed`` (``interrupted``);
  a job folder without ``job.json`` (an older server killed while creating it) gets a ``failed``
  record saying so; leftover temporary files and folders are removed.

Disk space: ``create`` and ``save_result`` first check that the write leaves ``min_free_bytes``
free, and a full disk (``ENOSPC``) at any write removes what was half written; both raise
``StoreError('disk_full')``.

Retention (``JobStore.prune`` with a ``Retention``): finished jobs give back their ``inputs/``,
``result/`` (and ``reconstruct/``) once they are older than ``max_age_days`` or while the store is over ``max_bytes``
(oldest first). Their record stays, marked ``pruned`` with the reason, so a later fetch says
why the result is gone instead of "unknown job". Queued and running jobs and the most recently
finished one with data (whose client may not have it yet) are never pruned; jobs with nothing on
disk (cancelled while queued) are left unmarked. Records with no data left are compacted into
``.records.jsonl`` ``compact_after_days`` after they were pruned (or finished, when they never
had data); they stay readable and their ids stay taken.

An in-memory index (built by one scan when the store opens) keeps finished jobs with data and
data-less records sorted by time, and the store's size, so ``prune`` after each job costs in
proportion to what it frees, not to the store's history. The store is used from the socket
thread and the worker thread; one lock serialises record writes and the index.
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.defaults import DEFAULT_KEEP_DAYS, DEFAULT_MAX_STORE_GB
from shared.jobspec import JobError
from shared.protocol import SPLAT_KEYS, valid_job_id
from shared.splats import Splats

ACTIVE_STATES = ("queued", "running")
FINISHED_STATES = ("done", "cancelled", "failed")
DEFAULT_MIN_FREE_BYTES = 256 * 2 ** 20     # what the store leaves free on its disk
_ARCHIVE = ".records.jsonl"
_SLACK_BYTES = 64 * 2 ** 10                # record, metadata and file-system overhead per write
_DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
#: The folders of a job that hold data (freed by retention); job.json stays.
DATA_PARTS = ("result", "inputs", ".result.tmp", ".inputs.tmp", "reconstruct")


@dataclass(frozen=True)
class Retention:
    """When finished jobs' data leaves the store, and when data-less records compact; 0 turns a
    rule off."""

    max_age_days: float = DEFAULT_KEEP_DAYS                 # days since the job finished
    max_bytes: int = int(DEFAULT_MAX_STORE_GB * 2 ** 30)    # the whole store folder
    compact_after_days: float = 7.0     # days a record stays a folder once it has no data

    def __post_init__(self) -> None:
        for name in ("max_age_days", "max_bytes", "compact_after_days"):
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


def payload_bytes(value: Any) -> int:
    """Bytes of the arrays anywhere in a payload (maps and lists at any depth)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


# The store's errors (unknown job, no result, bad job id, disk full) are the one job error class.
StoreError = JobError


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def disk_full_error(what: str) -> StoreError:
    return StoreError("disk_full", f"the server's disk is full: {what} could not be saved; free "
                                   "disk space on the server (or lower --keep-days / "
                                   "--max-store-gb) and submit the job again")


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


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a power loss, not only a killed process)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, json.dumps(_jsonable(obj), indent=1, sort_keys=True).encode())


class _Writes:
    """A file seen by numpy as a plain stream: ``np.save`` then writes through ``write`` (whose
    full-disk error is ``OSError(ENOSPC)``), not ``ndarray.tofile`` (whose short write on a full
    disk is an OSError without an errno, "75000 requested and 20448 written")."""

    def __init__(self, f):
        self._f = f

    def write(self, data) -> int:
        return self._f.write(data)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """One array as ``path`` (.npy), flushed to disk; written in a folder that is renamed into
    place afterwards, so no temporary name of its own."""
    with open(path, "wb") as f:
        np.save(_Writes(f), np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _is_temporary(name: str) -> bool:
    """Names the store writes only while building something (safe to delete at start-up)."""
    return name.startswith((".creating-", ".compacting-", ".pruned-")) or name in (
        ".result.tmp", ".inputs.tmp") or (name.startswith(".") and name.endswith(".tmp"))


@dataclass
class _Entry:
    """What retention needs to know about one job folder."""

    state: str
    finished: float | None
    pruned_at: float | None
    has_data: bool
    bytes: int

    def held_key(self, job_id: str) -> tuple[float, str] | None:
        """Sort key among finished jobs that hold data (retention candidates)."""
        if (self.state in FINISHED_STATES and self.pruned_at is None and self.has_data
                and isinstance(self.finished, (int, float))):
            return (float(self.finished), job_id)
        return None

    def bare_key(self, job_id: str) -> tuple[float, str] | None:
        """Sort key among finished records without data (compaction candidates)."""
        if self.state not in FINISHED_STATES or self.has_data:
            return None
        since = self.pruned_at if self.pruned_at is not None else self.finished
        return (float(since), job_id) if isinstance(since, (int, float)) else None


#: a top-level array in a result's meta is kept as ``result/meta.<key>.npy`` (meta.json holds a note)
META_ARRAY_PREFIX = "meta."


class JobStore:
    """The job folders under ``root`` (created if missing). ``min_free_bytes``: what ``create``
    and ``save_result`` leave free on the disk (they refuse with ``disk_full`` otherwise)."""

    def __init__(self, root: str | os.PathLike, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = int(min_free_bytes)
        self._lock = threading.RLock()
        self._archive: dict[str, dict] = {}
        self._index: dict[str, _Entry] = {}
        self._held: list[tuple[float, str]] = []     # sorted (finished, job_id)
        self._bare: list[tuple[float, str]] = []     # sorted (pruned or finished, job_id)
        self._index_bytes = 0                          # sum of the entries' bytes
        self._stale: list[Path] = []                   # temporaries the opening scan found
        self._other_bytes = 0                          # archive and anything else in root
        self._scan()

    # -- paths --------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """The folder of ``job_id``; the id is checked so it cannot name anything outside."""
        if not valid_job_id(job_id):
            raise StoreError("bad_job_id", f"job id {job_id!r} is not 1-64 characters of "
                             "[A-Za-z0-9_-]")
        return self.root / job_id

    def exists(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "job.json").is_file() or job_id in self._archive

    # -- disk space ---------------------------------------------------------------------------
    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, needed: int, what: str) -> None:
        """Raise ``StoreError('disk_full')`` unless writing ``needed`` bytes leaves
        ``min_free_bytes`` free."""
        free = self.free_bytes()
        if free - needed - _SLACK_BYTES < self.min_free_bytes:
            raise StoreError("disk_full", f"the server's disk is too full for {what}: "
                             f"{_mib(free)} free, {_mib(needed)} needed, and the server keeps "
                             f"{_mib(self.min_free_bytes)} free; free disk space on the server "
                             "(or lower --keep-days / --max-store-gb) and submit again")

    # -- records ------------------------------------------------------------------------------
    def create(self, job_id: str, kind: str, params: dict, reserve_bytes: int = 0,
               owner: str | None = None) -> dict:
        """Make the job's folder with a ``queued`` record in one step (built as
        ``.creating-<id>`` and renamed); returns the record. ``reserve_bytes``: what the job
        will write soon (its inputs), checked against the free space. Raises
        ``StoreError('duplicate_job')`` when the id is taken, ``StoreError('disk_full')``."""
        d = self.job_dir(job_id)
        now = time.time()
        record = {"job_id": job_id, "kind": kind, "params": params, "state": "queued",
                  "step": 0, "total": 0, "created": now, "started": None, "finished": None,
                  "metrics": {}, "error": None}
        if owner is not None:
            record["owner"] = owner        # the client identity that submitted it (backend.access)
        with self._lock:
            if job_id in self._index or job_id in self._archive or os.path.lexists(d):
                raise StoreError("duplicate_job", f"job id {job_id} is already in use; "
                                 "make a new id for a new job")
            self.check_space(int(reserve_bytes), "the job's inputs")
            tmp = self.root / f".creating-{job_id}"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                _write_json(tmp / "job.json", record)
                os.rename(tmp, d)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise StoreError("duplicate_job", f"job id {job_id} is already in use; "
                                     "make a new id for a new job") from None
                if is_disk_full(exc):
                    raise disk_full_error("the job's record") from None
                raise
            _fsync_dir(self.root)
            self._note(job_id, _jsonable(record), refresh_bytes=True)
        return _jsonable(record)

    def save_inputs(self, job_id: str, payload: dict) -> None:
        """Save the payload: top-level arrays as ``inputs/<key>.npy``, the rest as JSON (built as
        ``.inputs.tmp`` and renamed; removed again on any error)."""
        d = self.job_dir(job_id)
        tmp = d / ".inputs.tmp"
        values = {}
        with self._building(job_id, tmp, "the job's inputs"):
            for key, value in payload.items():
                if isinstance(value, np.ndarray) and valid_job_id(key):
                    _save_npy(tmp / f"{key}.npy", value)
                else:
                    values[key] = value
            _write_json(tmp / "values.json", values)
            shutil.rmtree(d / "inputs", ignore_errors=True)
            os.replace(tmp, d / "inputs")

    @contextlib.contextmanager
    def _building(self, job_id: str, tmp: Path, what: str) -> Iterator[None]:
        """A fresh temporary folder ``tmp`` for the block to fill and rename into place; on any
        OSError it is removed again (a full disk becomes ``StoreError('disk_full')``)."""
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full_error(what) from None
            raise
        finally:
            self._refresh(job_id)

    def read(self, job_id: str) -> dict:
        path = self.job_dir(job_id) / "job.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            archived = self._archive.get(job_id)
            if archived is not None:
                return json.loads(json.dumps(archived))      # a copy
            raise StoreError("unknown_job", f"no job {job_id} in the store") from None

    def update(self, job_id: str, **changes: Any) -> dict:
        """Merge ``changes`` into ``job.json``; returns the new record. Compacted records are
        final: updating one raises ``StoreError('unknown_job')``."""
        with self._lock:
            d = self.job_dir(job_id)
            if not (d / "job.json").is_file():
                raise StoreError("unknown_job", f"no job {job_id} in the store to update")
            record = self.read(job_id)
            record.update(_jsonable(changes))
            try:
                _write_json(d / "job.json", record)
            except OSError as exc:
                if is_disk_full(exc):
                    raise OSError(exc.errno, f"{exc.strerror}: the job's record could not "
                                  "be updated") from None
                raise
            self._note(job_id, record, refresh_bytes=True)
        return record

    def list_records(self) -> list[dict]:
        """All readable records (folders and compacted), oldest first (unreadable folders are
        skipped). Reads every record: for start-up and tools, not for per-job work."""
        out = [dict(r) for r in self._archive.values()]
        for d in self.root.iterdir():
            if not d.is_dir() or not valid_job_id(d.name) or d.name in self._archive:
                continue
            try:
                out.append(json.loads((d / "job.json").read_text()))
            except (ValueError, OSError):
                continue
        out.sort(key=lambda r: r.get("created") or 0)
        return out

    # -- start-up recovery --------------------------------------------------------------------
    def mark_interrupted(self) -> list[str]:
        """``recover()`` and the ids it marked interrupted (kept for older callers)."""
        return self.recover()["interrupted"]

    def recover(self) -> dict[str, list[str]]:
        """Repair what a server that died (kill -9, power loss, full disk) left; call once at
        start-up, right after opening the store (it removes the temporaries that scan found)
        and before jobs run. Returns ids by what was done: ``adopted`` (a complete result
        whose record still said queued/running: now done/cancelled), ``interrupted`` (left
        queued/running without a result: now failed), ``orphans`` (a folder without a record:
        now failed, saying why), ``cleaned`` (temporary files and folders removed, by name)."""
        out: dict[str, list[str]] = {"adopted": [], "interrupted": [], "orphans": [],
                                     "cleaned": []}
        with self._lock:
            removed = 0                 # bytes outside the indexed job folders
            touched = set()
            for path in self._stale:    # found by the scan that opened the store
                rel = path.relative_to(self.root)
                if len(rel.parts) == 1:
                    removed += folder_bytes(path) if path.is_dir() else _size(path)
                else:
                    touched.add(rel.parts[0])
                _remove(path)
                out["cleaned"].append(rel.as_posix())
            self._stale = []
            for job_id in touched:
                self._refresh(job_id)
            names = sorted(e.name for e in os.scandir(self.root)
                           if valid_job_id(e.name) and e.is_dir(follow_symlinks=False))
            for job_id in names:
                d = self.root / job_id
                if job_id in self._archive:       # compaction stopped before removing it
                    removed += folder_bytes(d)
                    _remove(d)
                    out["cleaned"].append(job_id)
                    continue
                rec_path = d / "job.json"
                if job_id not in self._index and not rec_path.exists():
                    removed += folder_bytes(d)    # counted as "other" until it is indexed
                    self._orphan(job_id, d)
                    out["orphans"].append(job_id)
                    continue
                entry = self._index.get(job_id)
                if entry is None or entry.state not in ACTIVE_STATES:
                    continue            # finished, or unreadable (left alone, its id stays taken)
                try:
                    rec = json.loads(rec_path.read_text())
                except (ValueError, OSError):
                    continue
                if rec.get("state") in ACTIVE_STATES:
                    if self._adopt(job_id, d, rec):
                        out["adopted"].append(job_id)
                    else:
                        was = rec["state"]
                        self.update(job_id, state="failed", finished=time.time(),
                                    error={"code": "interrupted",
                                           "message": f"the server stopped while the job was "
                                                      f"{was}; submit it again"})
                        out["interrupted"].append(job_id)
            self._other_bytes = max(0, self._other_bytes - removed)
        return out

    def _orphan(self, job_id: str, d: Path) -> None:
        """A folder without ``job.json``: give it a failed record (its id stays consistent:
        fetchable, and taken)."""
        now = time.time()
        message = "the server stopped while it was creating this job; submit it again with a new id"
        if (d / "result" / "meta.json").is_file():
            message += " (a result folder was found without its record)"
        record = {"job_id": job_id, "kind": "", "params": {}, "state": "failed", "step": 0,
                  "total": 0, "created": now, "started": None, "finished": now, "metrics": {},
                  "error": {"code": "interrupted", "message": message}}
        _write_json(d / "job.json", record)
        self._note(job_id, record, refresh_bytes=True)

    def _adopt(self, job_id: str, d: Path, rec: dict) -> bool:
        """Finish the record of a job whose result was written but whose record was not
        updated; False when there is no complete, readable result."""
        if not (d / "result" / "meta.json").is_file():
            return False
        try:
            stored = self.load_result(job_id)
        except Exception:           # an unreadable result is not adopted: the job failed
            return False
        try:
            changes = json.loads((d / "result" / "record.json").read_text())
        except (OSError, ValueError):   # a result written by an older server
            changes = {}
        if not isinstance(changes, dict) or changes.get("state") not in ("done", "cancelled"):
            changes = {"state": "cancelled" if stored.meta.get("cancelled") else "done",
                       "finished": os.path.getmtime(d / "result" / "meta.json"),
                       "metrics": stored.metrics}
        changes["recovered"] = "the result was saved; the server stopped before its record said so"
        self.update(job_id, **changes)
        return True

    # -- index --------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Build the index: the archive, then one pass over the job folders."""
        archive = self.root / _ARCHIVE
        if archive.is_file():
            with open(archive, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:      # a line cut short by a crash while appending
                        continue
                    if isinstance(rec, dict) and valid_job_id(rec.get("job_id")):
                        self._archive[rec["job_id"]] = rec
        sizes: dict[str, int] = {}      # one walk of the store: bytes per top-level entry
        names: dict[str, set[str]] = {}
        self._stale = []                # temporary files and folders, for ``recover``
        for dirpath, dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            top = "" if rel == "." else rel.split(os.sep)[0]
            if rel == top and top:
                names[top] = set(dirs)
            for n in [n for n in dirs if _is_temporary(n)]:
                self._stale.append(Path(dirpath, n))
                dirs.remove(n)          # counted, not walked into
                owner = top or n
                sizes[owner] = sizes.get(owner, 0) + folder_bytes(Path(dirpath, n))
            self._stale += [Path(dirpath, f) for f in files if _is_temporary(f)]
            sizes[top] = sizes.get(top, 0) + sum(_size(Path(dirpath, f)) for f in files)
        for d in self.root.iterdir():
            if not d.is_dir() or not valid_job_id(d.name) or d.name in self._archive:
                continue
            try:
                rec = json.loads((d / "job.json").read_text())
            except (ValueError, OSError):
                continue
            has_data = bool(names.get(d.name, set()) & set(DATA_PARTS))
            entry = _Entry(state="", finished=None, pruned_at=None, has_data=has_data,
                           bytes=sizes.get(d.name, 0))
            self._index[d.name] = entry
            self._index_bytes += entry.bytes
            self._note(d.name, rec)
        self._other_bytes = max(0, sum(sizes.values()) - self._index_bytes)

    def _note(self, job_id: str, record: dict, refresh_bytes: bool = False) -> None:
        """Put ``record`` (the job's current one) into the index."""
        with self._lock:
            old = self._index.get(job_id)
            if old is not None:
                self._unplace(job_id, old)
            pruned = record.get("pruned")
            entry = _Entry(state=str(record.get("state")), finished=record.get("finished"),
                           pruned_at=(pruned.get("time") if isinstance(pruned, dict) else None),
                           has_data=old.has_data if old is not None else False,
                           bytes=old.bytes if old is not None else 0)
            if refresh_bytes or old is None:
                entry.has_data = self._has_data(job_id)
                new_bytes = folder_bytes(self.job_dir(job_id))
                self._index_bytes += new_bytes - entry.bytes
                entry.bytes = new_bytes
            self._index[job_id] = entry
            self._place(job_id, entry)

    def _refresh(self, job_id: str) -> None:
        """Re-read the job's data and size after its files changed."""
        with self._lock:
            entry = self._index.get(job_id)
            if entry is None:
                return
            self._unplace(job_id, entry)
            entry.has_data = self._has_data(job_id)
            new_bytes = folder_bytes(self.job_dir(job_id))
            self._index_bytes += new_bytes - entry.bytes
            entry.bytes = new_bytes
            self._place(job_id, entry)

    def _place(self, job_id: str, entry: _Entry) -> None:
        for key, lst in ((entry.held_key(job_id), self._held), (entry.bare_key(job_id), self._bare)):
            if key is not None:
                bisect.insort(lst, key)

    def _unplace(self, job_id: str, entry: _Entry) -> None:
        for key, lst in ((entry.held_key(job_id), self._held), (entry.bare_key(job_id), self._bare)):
            if key is not None:
                i = bisect.bisect_left(lst, key)
                if i < len(lst) and lst[i] == key:
                    del lst[i]

    def total_bytes(self) -> int:
        """The store folder's size as the index knows it (job folders, archive, the rest)."""
        return self._index_bytes + self._other_bytes

    # -- retention ----------------------------------------------------------------------------
    def prune(self, retention: Retention, keep: frozenset[str] | set[str] = frozenset(),
              now: float | None = None) -> list[tuple[str, str]]:
        """Apply ``retention`` (see the module docstring); ``keep``: ids never to prune (the runner's
        live jobs). Returns ``[(job_id, reason)]`` in the order pruned. Costs in proportion to
        what it prunes and compacts (plus ``keep``), not to the number of records."""
        now = time.time() if now is None else now
        pruned: list[tuple[str, str]] = []

        def oldest(before: float | None) -> str | None:
            """The oldest finished job with data that may go (not kept, not the newest)."""
            with self._lock:
                for i in range(len(self._held) - 1):    # the newest finished job stays
                    fin, job_id = self._held[i]
                    if before is not None and fin >= before:
                        return None
                    if job_id not in keep:
                        return job_id
            return None

        if retention.max_age_days > 0:
            limit = now - retention.max_age_days * 86400.0
            reason = f"finished more than {retention.max_age_days:g} days ago"
            while (job_id := oldest(limit)) is not None:
                self._prune_one(job_id, reason, now)
                pruned.append((job_id, reason))
        if retention.max_bytes > 0:
            reason = f"the job store was over its {retention.max_bytes / 2 ** 30:g} GiB limit"
            while self.total_bytes() > retention.max_bytes and (job_id := oldest(None)) is not None:
                self._prune_one(job_id, reason, now)
                pruned.append((job_id, "store over its size limit"))
        if retention.compact_after_days > 0:
            self._compact(now - retention.compact_after_days * 86400.0, keep)
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
        self._refresh(job_id)
        return freed

    def _compact(self, before: float, keep: frozenset[str] | set[str]) -> list[str]:
        """Move records without data, pruned (or finished) before ``before``, into the archive
        (one append, one fsync), then remove their folders."""
        with self._lock:
            ids = []
            for since, job_id in self._bare:
                if since >= before:
                    break
                if job_id not in keep:
                    ids.append(job_id)
            if not ids:
                return []
            records = {}
            for job_id in ids:
                try:
                    records[job_id] = self.read(job_id)
                except (StoreError, ValueError, OSError):
                    continue
            lines = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n"
                             for r in records.values())
            try:
                with open(self.root / _ARCHIVE, "ab") as f:
                    f.write(lines)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:         # a full disk: the folders stay; try again next time
                return []
            self._other_bytes += len(lines)
            for job_id, rec in records.items():
                self._archive[job_id] = rec
                entry = self._index.pop(job_id)
                self._unplace(job_id, entry)
                self._index_bytes -= entry.bytes
                d = self.job_dir(job_id)
                doomed = self.root / f".compacting-{job_id}"
                try:
                    os.replace(d, doomed)
                except OSError:
                    continue
                shutil.rmtree(doomed, ignore_errors=True)
            return list(records)

    # -- inputs -------------------------------------------------------------------------------
    def load_inputs(self, job_id: str) -> dict:
        """The payload as saved by ``save_inputs`` (arrays loaded from .npy)."""
        inputs = self.job_dir(job_id) / "inputs"
        payload: dict[str, Any] = json.loads((inputs / "values.json").read_text())
        for p in inputs.glob("*.npy"):
            payload[p.stem] = np.load(p, allow_pickle=False)
        return payload

    # -- results ------------------------------------------------------------------------------
    def save_result(self, job_id: str, splats: Splats, metrics: dict, meta: dict,
                    record: dict | None = None) -> None:
        """Save the result splats losslessly (one .npy per field) with metrics and meta, and
        ``record``: the changes the job's record gets with it (``recover`` applies them if the
        server dies before ``update`` does). The folder is written beside the final one and
        renamed into place. Raises ``StoreError('disk_full')`` (nothing half-written is left)."""
        d = self.job_dir(job_id)
        arrays = splats.to_arrays()
        self.check_space(sum(int(a.nbytes) for a in arrays.values())
                         + sum(int(v.nbytes) for v in meta.values() if isinstance(v, np.ndarray)), "the job's result")
        tmp = d / ".result.tmp"
        with self._building(job_id, tmp, "the job's result"):
            for key, arr in arrays.items():
                _save_npy(tmp / f"{key}.npy", arr)
            _write_json(tmp / "metrics.json", metrics)
            for key, value in meta.items():       # arrays of meta (e.g. segment's labels) beside it
                if isinstance(value, np.ndarray):
                    _save_npy(tmp / f"{META_ARRAY_PREFIX}{key}.npy", value)
            if record is not None:
                _write_json(tmp / "record.json", record)
            _write_json(tmp / "meta.json", meta)         # last: marks a complete result
            _fsync_dir(tmp)
            final = d / "result"
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(d)

    def has_result(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "result" / "meta.json").is_file()

    def load_result(self, job_id: str) -> StoredResult:
        d = self.job_dir(job_id) / "result"
        if not (d / "meta.json").is_file():
            raise StoreError("no_result", f"job {job_id} has no result in the store")
        arrays = {k: np.load(d / f"{k}.npy", allow_pickle=False) for k in SPLAT_KEYS
                  if k != "shN" or (d / "shN.npy").is_file()}
        meta = json.loads((d / "meta.json").read_text())
        for p in d.glob(f"{META_ARRAY_PREFIX}*.npy"):
            meta[p.stem[len(META_ARRAY_PREFIX):]] = np.load(p, allow_pickle=False)
        return StoredResult(splats=Splats.from_arrays(arrays),
                            metrics=json.loads((d / "metrics.json").read_text()), meta=meta)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass
