"""Non-blocking client for the SplatBridge backend (pyzmq DEALER; no bpy, no torch).

Blender's UI thread must never wait on the network, so every call here returns at once:
``send_hello``, ``submit``, ``cancel``, ``status`` and ``fetch`` queue a request, and ``poll``
(called from a ``bpy.app.timers`` callback, or directly in headless runs and tests) drains what
has arrived without blocking and folds it into per-job ``JobState`` objects that UIs read.

Liveness: every request expects a reply within ``timeout_s``. A request left unanswered makes
``poll`` return a local ``error`` message with code ``backend_not_responding`` (``fields["local"]``
is True) and sets ``connected`` to False; any reply from the server sets it back to True. With
``heartbeat_s`` set, ``poll`` also sends a ``status`` heartbeat that often when the line is quiet.

Sessions: every message carries ``session``, a random token made once per client and kept across
``reconnect()``; the server sends a job's progress and result to the connection that last spoke
with its submitter's token, so after ``reconnect()`` (any request, e.g. the ``hello`` it sends)
the running jobs' messages come to the new connection. Each connection gets a fresh random
routing id: a routing id names one connection, never the client (``backend.access`` says why).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .protocol import DEFAULT_LIMITS, PROTOCOL_VERSION, Limits, Message, ProtocolError, decode, encode, make_error

LOCAL_TIMEOUT_CODE = "backend_not_responding"
LOCAL_BAD_REPLY_CODE = "bad_reply"
TERMINAL_STATES = ("done", "cancelled", "failed")

# Reply types that settle a request of each type.
_REPLIES = {"hello": ("hello",), "submit": ("accepted",), "cancel": ("status",),
            "status": ("status",), "fetch": ("result",), "upload": ("upload",)}
DEFAULT_CHUNK_BYTES = 4 << 20
UPLOAD_STATES = ("opening", "sending", "complete", "failed")


@dataclass
class JobState:
    """What the client knows about one job. ``state`` follows the server's job states
    (queued, running, done, cancelled, failed); ``submitted`` until ``accepted`` arrives."""

    job_id: str
    kind: str = ""
    state: str = "submitted"
    step: int = 0
    total: int = 0
    queue_position: int | None = None
    progress: list[tuple[int, int, dict]] = field(default_factory=list)  # (step, total, metrics)
    metrics: dict[str, Any] = field(default_factory=dict)     # the last progress metrics
    preview: dict | None = None             # the latest preview splat map (arrays)
    result: dict | None = None              # the result splat map (arrays)
    result_metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None    # (code, message)
    submitted_at: float = field(default_factory=time.monotonic)
    updated_at: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        """A terminal state was reached (result or error)."""
        return self.state in TERMINAL_STATES

    def result_splats(self):
        """The result as ``shared.splats.Splats`` (validated), or None."""
        if self.result is None:
            return None
        from .protocol import splats_from_fields
        return splats_from_fields(self.result, "result.splats")

    def preview_splats(self):
        if self.preview is None:
            return None
        from .protocol import splats_from_fields
        return splats_from_fields(self.preview, "progress.preview")


@dataclass
class UploadState:
    """One upload of files (their encoded bytes) to the backend, in ``chunk_size`` chunks.

    ``state``: opening (asked which chunks the server already has), sending, complete, failed
    (``error`` says why; ``BackendClient.upload`` with the same id and paths resumes).
    Bytes: ``total`` of all files, ``received`` stored on the server (its last word),
    ``skipped_bytes`` already there when this client opened the upload (not sent again),
    ``sent_bytes`` / ``chunks_sent`` sent by this client."""

    upload_id: str
    paths: list[Path]
    files: list[dict]                      # [{name, size, sha256}] as sent in the open
    chunk_size: int
    window: int = 4
    state: str = "opening"
    received: int = 0
    skipped_bytes: int = 0
    sent_bytes: int = 0
    chunks_sent: int = 0
    error: tuple[str, str] | None = None
    todo: deque = field(default_factory=deque)        # (file index, chunk index) still to send
    in_flight: int = 0

    @property
    def total(self) -> int:
        return sum(f["size"] for f in self.files)

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else self.received / self.total

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "failed")


def file_manifest(paths: list[str | os.PathLike]) -> list[dict]:
    """``[{name, size, sha256}]`` of files (names: their base names, which must differ)."""
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append({"name": Path(p).name, "size": os.path.getsize(p), "sha256": h.hexdigest()})
    return out


@dataclass
class _Pending:
    type: str
    job_id: str | None
    deadline: float


def _read_key(value: str | bytes | os.PathLike | None, secret: bool) -> bytes | None:
    """A z85 key given as the key itself or as a zmq certificate file."""
    if value is None:
        return None
    if isinstance(value, bytes) and len(value) == 40:
        return value
    if isinstance(value, str) and len(value) == 40 and not os.path.exists(value):
        return value.encode()
    import zmq.auth
    public, secret_key = zmq.auth.load_certificate(Path(os.fsdecode(value)))
    key = secret_key if secret else public
    if not key:
        raise ValueError(f"{os.fsdecode(value)} holds no {'secret' if secret else 'public'} key")
    return key


class BackendClient:
    """A DEALER connection to the backend at ``address`` (e.g. ``tcp://127.0.0.1:5555``).

    CurveZMQ (for a backend bound beyond loopback): ``server_public_key`` is the server's public
    key; ``public_key``/``secret_key`` are this client's pair (z85 strings/bytes or certificate
    files; a ``.key_secret`` certificate gives both). A refused client simply gets no replies:
    its requests time out as ``backend_not_responding``.

    Sends copy each frame into ZeroMQ. A zero-copy send makes pyzmq start a garbage-collector thread
    that releases the sent buffers later, and inside Blender that thread crashes the process
    (segfault) when it runs while ``bpy.ops.ed.undo_push`` does, which the add-on calls after every
    result (reproduced with bpy 5.0.1 and pyzmq 27.3; tests/test_client_in_blender.py). The copy
    costs about 0.1 s per 256 MB of images, once per submit. Receives stay zero-copy (no thread).
    """

    def __init__(self, address: str, timeout_s: float = 10.0, heartbeat_s: float | None = None,
                 server_public_key: str | bytes | os.PathLike | None = None,
                 public_key: str | bytes | os.PathLike | None = None,
                 secret_key: str | bytes | os.PathLike | None = None,
                 client_name: str = "splatbridge-client", limits: Limits = DEFAULT_LIMITS,
                 max_history: int = 10000):
        self.address = address
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = heartbeat_s
        self.client_name = client_name
        self.limits = limits
        self.max_history = max_history
        self.jobs: dict[str, JobState] = {}
        self.uploads: dict[str, UploadState] = {}
        self.server_info: dict[str, Any] | None = None   # fields of the last hello reply
        self.connected = False
        self.last_reply_at: float | None = None
        self._server_key = _read_key(server_public_key, secret=False)
        self._secret = _read_key(secret_key, secret=True)
        self._public = _read_key(public_key if public_key is not None else secret_key,
                                 secret=False)
        if self._server_key and not (self._secret and self._public):
            raise ValueError("CurveZMQ needs this client's key pair too (secret_key=...)")
        #: this client's session token (``shared.protocol.valid_session``), kept across reconnects;
        #: a secret between this client and the server
        self.session = secrets.token_hex(16)
        self.routing_id = b""                  # the current connection's (set by _open)
        self._pending: deque[_Pending] = deque()
        self._last_heartbeat = time.monotonic()
        self._ctx: zmq.Context[zmq.Socket] = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._open()

    # -- connection -----------------------------------------------------------------------------
    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        # A new random id per connection, so a reconnect never waits for the server to drop the
        # old one (the server refuses a second connection with an id in use). Printable, never
        # starting with a zero byte: libzmq numbers peers that send no id 0x00 + a counter, and a
        # peer-announced id that the counter reaches later aborts the server (backend.access).
        self.routing_id = secrets.token_hex(16).encode()
        sock.routing_id = self.routing_id
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_array_bytes)
        sock.sndhwm = 1000
        if self._server_key:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey = self._public
            sock.curve_secretkey = self._secret
        sock.connect(self.address)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self.connected = False

    def reconnect(self) -> None:
        """Drop the socket (and unanswered requests) and connect again, then say hello: the hello
        carries this client's session, so the server moves its jobs' messages to the new
        connection."""
        self.close()
        self._pending.clear()
        self._open()
        self.send_hello()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests (all return at once) ----------------------------------------------------------
    def _send(self, msg: Message) -> None:
        if self._sock is None:
            raise RuntimeError("the client is closed; call reconnect()")
        msg.session = self.session
        frames = encode(msg, self.limits)
        # A DEALER queues while the server is away; NOBLOCK so a full queue raises, not waits.
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=True)   # see the class docstring
        except zmq.Again:
            raise RuntimeError("the send queue to the backend is full: it is not reading "
                               "(is it running?)") from None
        self._pending.append(_Pending(msg.type, msg.job_id, time.monotonic() + self.timeout_s))

    def send_hello(self) -> None:
        self._send(Message("hello", None, {"client": self.client_name,
                                           "protocol": PROTOCOL_VERSION}))

    def submit(self, kind: str, params: dict, payload: dict | None = None,
               job_id: str | None = None) -> str:
        """Queue a job; returns its id (a new uuid4 hex unless given)."""
        job_id = job_id or uuid.uuid4().hex
        self._send(Message("submit", job_id, {"kind": kind, "params": params,
                                              "payload": payload or {}}))
        self.jobs[job_id] = JobState(job_id, kind=kind)
        return job_id

    def cancel(self, job_id: str) -> None:
        self._send(Message("cancel", job_id, {}))

    def status(self, job_id: str | None = None) -> None:
        """Ask for one job's status, or (no id) all jobs: this is also the heartbeat."""
        self._send(Message("status", job_id, {}))
        if job_id is None:
            self._last_heartbeat = time.monotonic()

    def fetch(self, job_id: str) -> None:
        """Ask for a finished job's result again (from the server's store)."""
        self.jobs.setdefault(job_id, JobState(job_id))
        self._send(Message("fetch", job_id, {}))

    def upload(self, paths: list[str | os.PathLike], upload_id: str | None = None,
               chunk_size: int = DEFAULT_CHUNK_BYTES, window: int = 4) -> str:
        """Start (or, with the id of an earlier one and the same files, resume) an upload of
        ``paths``; returns its id. ``poll`` then sends the chunks the server lacks, at most
        ``window`` unanswered at a time; progress in ``self.uploads[id]``. Hashes the files first
        (sha256, about 1 s per GB)."""
        upload_id = upload_id or uuid.uuid4().hex
        files = file_manifest(paths)
        names = [f["name"] for f in files]
        if len({n.lower() for n in names}) != len(names):
            raise ValueError(f"files to upload need distinct names: {names}")
        chunk_size = max(1, min(int(chunk_size), self.limits.max_array_bytes))
        self.uploads[upload_id] = UploadState(upload_id, [Path(p) for p in paths], files, chunk_size,
                                              max(1, int(window)))
        self._send(Message("upload", upload_id, {"files": files, "chunk_size": chunk_size}))
        return upload_id

    def _pump_upload(self, up: UploadState) -> None:
        while up.state == "sending" and up.todo and up.in_flight < up.window:
            fi, k = up.todo.popleft()
            offset = k * up.chunk_size
            with open(up.paths[fi], "rb") as f:
                f.seek(offset)
                data = f.read(min(up.chunk_size, up.files[fi]["size"] - offset))
            self._send(Message("upload", up.upload_id, {
                "file": fi, "offset": offset, "sha256": hashlib.sha256(data).hexdigest(),
                "data": np.frombuffer(data, np.uint8)}))
            up.in_flight += 1
            up.chunks_sent += 1
            up.sent_bytes += len(data)

    def _on_upload_reply(self, up: UploadState, msg: Message) -> None:
        f = msg.fields
        up.received = f.get("received", up.received)
        if "have" in f:                     # the answer to the open: send what is missing
            have = f["have"]
            up.skipped_bytes = up.received
            up.todo = deque((i, k) for i, e in enumerate(up.files)
                            for k in range(max(1, -(-e["size"] // up.chunk_size)))
                            if e["size"] and k not in set(have[i] if i < len(have) else ()))
            up.state = "sending"
        else:
            up.in_flight = max(0, up.in_flight - 1)
        if f.get("complete"):
            up.state = "complete"
            up.todo.clear()
            return
        self._pump_upload(up)

    @property
    def pending(self) -> int:
        """Requests still waiting for a reply."""
        return len(self._pending)

    # -- receiving ----------------------------------------------------------------------------
    def poll(self, max_messages: int = 100) -> list[Message]:
        """Everything that arrived (at most ``max_messages``) plus local timeout events; never
        blocks. Job states are updated before this returns."""
        out: list[Message] = []
        if self._sock is None:
            return out
        while len(out) < max_messages:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            # Whatever a reply holds, it costs one local bad_reply event, never the caller's
            # timer (inside Blender an exception here would stop the add-on's polling).
            try:
                msg = decode(frames, self.limits)
            except ProtocolError as exc:
                out.append(self._bad_reply(f"cannot read: {exc}", exc.job_id))
                continue
            except Exception as exc:
                out.append(self._bad_reply(f"cannot read ({type(exc).__name__}: {exc})", None))
                continue
            try:
                self._on_reply(msg)
            except Exception as exc:
                out.append(self._bad_reply(f"cannot apply: {msg.type} "
                                           f"({type(exc).__name__}: {exc})", msg.job_id))
                continue
            out.append(msg)
        out.extend(self._expire())
        if (self.heartbeat_s is not None and not self._pending
                and time.monotonic() - self._last_heartbeat >= self.heartbeat_s):
            self.status()
        return out

    @staticmethod
    def _bad_reply(what: str, job_id: str | None) -> Message:
        msg = make_error(LOCAL_BAD_REPLY_CODE, f"the backend sent a message this client {what}",
                         job_id)
        msg.fields["local"] = True
        return msg

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block (CLIs, tests) polling until ``predicate()`` is true or ``timeout`` seconds
        passed; returns the predicate's last value."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self._sock is None:
                return bool(predicate())
            self._sock.poll(int(min(left, 0.05) * 1000))     # ms; pyzmq truncates a float the same way

    def _expire(self) -> list[Message]:
        now = time.monotonic()
        events = []
        while self._pending and self._pending[0].deadline <= now:
            p = self._pending.popleft()
            self.connected = False
            what = p.type + (f" for job {p.job_id}" if p.job_id else "")
            msg = make_error(LOCAL_TIMEOUT_CODE, f"backend not responding: no reply to {what} "
                             f"within {self.timeout_s:g} s (is the server running at "
                             f"{self.address}?)", p.job_id)
            msg.fields["local"] = True
            msg.fields["request"] = p.type
            up = self.uploads.get(p.job_id) if p.job_id else None
            if up is not None and not up.finished:
                up.state, up.error = "failed", (LOCAL_TIMEOUT_CODE, msg.fields["message"])
            events.append(msg)
        return events

    def _settle(self, msg: Message) -> None:
        """Remove the oldest pending request this reply answers."""
        for i, p in enumerate(self._pending):
            if msg.type == "error":
                match = p.job_id == msg.job_id
            else:
                match = msg.type in _REPLIES.get(p.type, ()) and p.job_id == msg.job_id
            if match:
                del self._pending[i]
                return
        if msg.type == "error" and self._pending and msg.job_id is not None:
            return                     # a job's own failure: settles no request
        if msg.type == "error" and self._pending:
            del self._pending[0]        # an error about an unreadable request: the oldest one

    def _job(self, job_id: str) -> JobState:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = JobState(job_id)
        job.updated_at = time.monotonic()
        return job

    def _on_reply(self, msg: Message) -> None:
        self.connected = True
        self.last_reply_at = time.monotonic()
        self._settle(msg)
        f = msg.fields
        up = self.uploads.get(msg.job_id) if msg.job_id is not None else None
        if up is not None and msg.type in ("upload", "error"):
            if msg.type == "upload":
                self._on_upload_reply(up, msg)
            else:
                up.error = (f["code"], f["message"])
                up.state = "failed"
            return
        if msg.type == "hello":
            self.server_info = dict(f)
        elif msg.type == "accepted":
            job = self._job(msg.required_job_id())
            job.queue_position = f["queue_position"]
            if job.state == "submitted":
                job.state = "queued" if job.queue_position else "running"
        elif msg.type == "progress":
            job = self._job(msg.required_job_id())
            job.step, job.total = f["step"], f["total"]
            job.metrics = dict(f["metrics"])
            if job.state in ("submitted", "queued"):
                job.state = "running"
            job.queue_position = 0
            job.progress.append((job.step, job.total, job.metrics))
            if len(job.progress) > self.max_history:
                del job.progress[: len(job.progress) - self.max_history]
            if f.get("preview") is not None:
                job.preview = f["preview"]
        elif msg.type == "result":
            job = self._job(msg.required_job_id())
            job.result = f["splats"]
            job.result_metrics = dict(f.get("metrics") or {})
            job.meta = dict(f.get("meta") or {})
            job.state = "cancelled" if job.meta.get("cancelled") else "done"
            job.error = None
        elif msg.type == "error" and msg.job_id is not None:
            job = self._job(msg.job_id)
            job.error = (f["code"], f["message"])
            if job.state not in ("done", "cancelled") and f["code"] not in (
                    "not_finished", "duplicate_job"):
                # "cancelled": stopped in a set-up stage, before there was anything to return
                job.state = "cancelled" if f["code"] == "cancelled" else "failed"
        elif msg.type == "status":
            for entry in f.get("jobs", []):
                known = self.jobs.get(entry["job_id"])
                if known is not None:
                    job = known
                elif entry["job_id"] != msg.job_id:
                    continue           # a heartbeat lists other clients' jobs too
                else:
                    job = self._job(entry["job_id"])   # a job this client asked about by id
                job.updated_at = time.monotonic()
                job.kind = entry.get("kind", job.kind)
                if job.result is None or entry["state"] in ("queued", "running"):
                    job.state = entry["state"]
                job.step = entry.get("step", job.step)
                job.total = entry.get("total", job.total)
                job.queue_position = entry.get("queue_position")
                if entry.get("error"):
                    job.error = (entry["error"].get("code", ""), entry["error"].get("message", ""))
