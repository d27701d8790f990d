"""The backend's ZeroMQ server: one ROUTER socket, one socket thread, one job worker.

The socket thread (the thread that calls ``Server.serve_forever``) owns the ROUTER socket: it
decodes and validates every request with ``shared.protocol``, answers ``hello``/``status``/
``cancel``/``fetch`` itself and hands ``submit`` to the ``JobRunner``. It never runs job work.
Messages produced by the worker (progress, result, job errors) arrive through a thread-safe
queue; the worker rings an inproc PUSH/PULL "doorbell" so the loop wakes at once.

Connections are told apart by their ROUTER routing id, clients by their identity
(``backend.access``: the CurveZMQ key, or the local user on loopback) and their session token.
Every job belongs to the identity that submitted it, and ``status``, ``fetch`` and ``cancel`` see
only the caller's jobs (admins: all). Progress and results go to the connection that last spoke
with the submitting session's token while it is bound to the job's owner (dropped otherwise: the
result stays in the store and ``fetch`` returns it to its owner). ``ROUTER_HANDOVER`` is off: a
peer announcing a routing id in use is ignored by libzmq, so no one takes a live connection's
route over; a client that reconnects comes back on a new routing id with its session token. The
socket monitor ends a connection's bindings when it closes. Why, and what libzmq does with
routing ids: ``backend.access``.

A submit passes the kind's spec, then ``backend.access.PathPolicy`` (server paths inside the
operator's roots) and ``backend.admission.Admission`` (queue caps, inputs cap, memory estimate)
before anything is stored. When the job starts, its server paths are checked again
(``PathPolicy.recheck``; refused: the job fails with ``path_not_allowed``).
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from backend.access import (
    Caller,
    PathPolicy,
    Sessions,
    frame_fd,
    local_owner,
    may_see,
    owner_of_frame,
    seed_routing_id_counter,
)
from backend.admission import Admission, Caps
from backend.capabilities import Capabilities, resolve_device
from backend.jobs import JOB_KINDS, Executor, Job, JobKinds, JobRunner
from backend.security import CurveKeys, apply_server_curve, check_bind
from backend.store import DEFAULT_MIN_FREE_BYTES, JobStore, Retention, payload_bytes
from backend.uploads import UploadStore
from shared.defaults import DEFAULT_ADDRESS
from shared.jobspec import JobError, Settings
from shared.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    Message,
    ProtocolError,
    decode,
    encode,
    error_from_exception,
    make_error,
    validate_finite,
)

log = logging.getLogger("splatbridge.server")

DEFAULT_BIND = DEFAULT_ADDRESS
_CLIENT_TYPES = ("hello", "submit", "cancel", "status", "fetch", "upload")
_CONNECTION_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class Peer(tuple):
    """Where a job's messages go: ``(session, owner)``; sent to the session's current connection
    only while it is bound to that owner (``backend.access.Sessions.route``)."""

    def __new__(cls, session: str, owner: str | None):
        return super().__new__(cls, (session, owner))

    @property
    def session(self) -> str:
        return self[0]

    @property
    def owner(self) -> str | None:
        return self[1]


def _check_payload_finite(value: Any, path: str) -> None:
    """NaN/Inf anywhere in the payload's float arrays is a ``bad_field`` error naming it."""
    if isinstance(value, np.ndarray):
        validate_finite(path, value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_payload_finite(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_payload_finite(v, f"{path}[{i}]")


class Server:
    """``Server(bind, store_dir, device).serve_forever()``; ``request_stop()`` from any thread
    (or SIGINT/SIGTERM when ``install_signal_handlers`` was called) ends it cleanly."""

    def __init__(self, bind: str = DEFAULT_BIND, store_dir: str | Path = "splatbridge-jobs",
                 device: str = "auto", curve: CurveKeys | None = None,
                 limits: Limits = DEFAULT_LIMITS, kinds: JobKinds = JOB_KINDS,
                 preview_interval_s: float = 1.0, retention: Retention | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES, executor: Executor | None = None,
                 data_roots: tuple = (), admins: frozenset[str] | set[str] = frozenset(),
                 caps: Caps | None = None):
        check_bind(bind, curve)           # SecurityError before anything is opened
        self.bind = bind
        self.limits = limits
        self.device = resolve_device(device)
        self.capabilities = Capabilities(self.device, kinds.installed())
        self.local_owner = local_owner()
        self.admins = frozenset(admins)
        self.sessions = Sessions()
        self.paths = PathPolicy(data_roots, store_dir, job_exists=self._job_exists)
        # the memory estimate is checked against this machine only when jobs run here
        self.admission = Admission(self.device, caps or Caps(), measure=executor is None)
        self._outbox: queue.Queue[tuple[Peer | bytes, list]] = queue.Queue()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._auth = None
        if not seed_routing_id_counter():
            log.warning("could not seed the C library's rand(): libzmq's ids for peers that send "
                        "none are predictable (see backend.access)")
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 1000
        self._router.router_handover = 0      # a routing id in use is never taken over
        self._router.setsockopt(zmq.MAXMSGSIZE, limits.max_array_bytes)
        self._monitor = self._router.get_monitor_socket(_CONNECTION_EVENTS)
        if curve is not None:
            self._auth = apply_server_curve(self._ctx, self._router, curve)
        try:
            self._router.bind(bind)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise OSError(f"cannot bind {bind}: {exc}") from None
        self._doorbell_addr = f"inproc://splatbridge-doorbell-{id(self)}"
        self._doorbell = self._ctx.socket(zmq.PULL)
        self._doorbell.bind(self._doorbell_addr)
        self._ring = self._ctx.socket(zmq.PUSH)
        self._ring.connect(self._doorbell_addr)
        self._ring_lock = threading.Lock()
        self.runner = JobRunner(JobStore(store_dir, min_free_bytes), self.device, self._post, kinds=kinds,
                                preview_interval_s=preview_interval_s,
                                retention=Retention() if retention is None else retention,
                                executor=executor, start_check=self._start_check)
        self.uploads = UploadStore(store_dir, min(limits.max_array_bytes, 64 << 20), min_free_bytes,
                                   max_client_bytes=self.admission.caps.max_uploads_bytes_per_client,
                                   keep_days=self.runner.retention.max_age_days if self.runner.retention else 0.0,
                                   in_use=self._uploads_in_use)
        log.info("SplatBridge backend listening on %s (device %s%s, store %s, CurveZMQ %s)",
                 bind, self.device,
                 f", {self.capabilities.gpu_name}" if self.capabilities.gpu_name else "",
                 Path(store_dir).resolve(), "on" if curve else "off")
        log.info("server paths: %s; %.2f GiB of %s memory for a job",
                 ", ".join(map(str, self.paths.roots)) if self.paths.roots else
                 ("none for CurveZMQ clients" if curve else "any outside the job store (local clients)"),
                 self.admission.memory / 2 ** 30, self.device)

    def _uploads_in_use(self) -> set[str]:
        """Uploads that queued and running jobs read (retention leaves them)."""
        return {str(j.params["upload"]) for j in self.runner.live_jobs() if j.params.get("upload")}

    # -- thread-safe hand-over from the worker ----------------------------------------------------
    def _post(self, identity: Peer | bytes, frames: list) -> None:
        self._outbox.put((identity, frames))
        with self._ring_lock:
            try:
                self._ring.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:     # doorbell full or closed: the loop drains the queue anyway
                pass

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop the loop (main thread only)."""
        def handler(signum, _frame):
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stop.set()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # -- loop ---------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._doorbell, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                # The timeout only bounds how late a signal is noticed; work wakes the poll.
                events = dict(poller.poll(250))
                if self._doorbell in events:
                    while True:
                        try:
                            self._doorbell.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._drain_outbox()
                if self._router in events:
                    for _ in range(100):      # bounded so the outbox is not starved
                        try:
                            parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle_safely(parts)
                        self._drain_outbox()
        finally:
            self._shutdown()

    def _handle_safely(self, parts: list) -> None:
        try:
            self._handle(parts)
        except Exception:     # e.g. the error reply itself failed: log it, keep serving
            log.error("error answering a message:\n%s", traceback.format_exc())

    def _drain_monitor(self) -> None:
        """Connections that closed (or file descriptors reused by new ones) end their routing
        ids' bindings; read before every push, so none goes to a connection that took a routing
        id over after its owner left."""
        while True:
            try:
                event = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if len(event) >= 1 and len(event[0]) >= 6:
                fd = int.from_bytes(event[0][2:6], "little", signed=True)
                self.sessions.connection_closed(fd)

    def _drain_outbox(self) -> None:
        self._drain_monitor()
        while True:
            try:
                identity, frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send_frames(identity, frames)

    def _send_frames(self, identity: Peer | bytes, frames: list) -> None:
        """Send to a routing id (a reply), or to a job's session (``Peer``): its current
        connection, if it has one bound to the job's owner, else nowhere."""
        if isinstance(identity, Peer):
            rid = self.sessions.route(identity.session, identity.owner)
            if rid is None:
                log.debug("not sent: session %s... has no connection of its owner now",
                          identity.session[:8])
                return
            identity = rid
        try:
            self._router.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as exc:
            log.warning("could not send to client %s: %s", identity.hex(), exc)

    def _reply(self, identity: bytes, msg: Message) -> None:
        try:
            frames = encode(msg, self.limits)
        except Exception as exc:
            log.error("reply %s could not be encoded:\n%s", msg.type, traceback.format_exc())
            frames = encode(make_error("internal_error", f"the server could not encode its "
                                       f"{msg.type} reply: {type(exc).__name__}: {exc}",
                                       msg.job_id))
        self._send_frames(identity, frames)

    def _handle(self, parts: list) -> None:
        """Answer one request. Whatever the message holds, it costs at most one error reply:
        a protocol fault gets its code, anything else ``internal_error`` with the traceback
        in the log; the loop goes on."""
        identity = parts[0].bytes
        frames = parts[1:]
        fd = -1
        if frames:
            # a new connection's ACCEPTED event precedes its first message: read it first, or it
            # would end the binding this message makes
            self._drain_monitor()
            owner = owner_of_frame(frames[0], self.local_owner if self._auth is None
                                   else "curve:unidentified")
            fd = frame_fd(frames[0])
            if not self.sessions.bind(identity, owner, fd):
                log.warning("refused a message on routing id %s: it belongs to another client",
                            identity.hex())
                self._reply(identity, make_error(
                    "routing_id_taken", "this routing id belongs to another client; connect with "
                    "a new random routing id"))
                return
        else:
            owner = self.local_owner
        caller = Caller(owner, admin=owner in self.admins)
        try:
            msg = decode(frames, self.limits)
        except ProtocolError as exc:
            log.info("rejected message from %s: %s", identity.hex(), exc)
            self._reply(identity, error_from_exception(exc))
            return
        except Exception as exc:     # a decoder bug must cost one reply, not the server
            log.error("error decoding a message from %s:\n%s", identity.hex(),
                      traceback.format_exc())
            self._reply(identity, make_error("internal_error", f"the server failed to read the "
                                             f"message: {type(exc).__name__}: {exc}"))
            return
        session = msg.session if msg.session is not None else Sessions.implicit(identity)
        if not self.sessions.attach(session, owner, identity, fd):
            log.warning("refused a message with the session token of another client (routing id %s)",
                        identity.hex())
            self._reply(identity, make_error(
                "session_taken", "this session token belongs to another client identity; make a new "
                "random one (a new BackendClient does)", msg.job_id))
            return
        try:
            self._dispatch(identity, msg, caller, session)
        except ProtocolError as exc:
            self._reply(identity, error_from_exception(exc))
        except JobError as exc:
            self._reply(identity, make_error(exc.code, exc.message, msg.job_id))
        except Exception as exc:     # a bug must cost one reply, not the server
            log.error("error handling %s:\n%s", msg.type, traceback.format_exc())
            self._reply(identity, make_error("internal_error", f"the server failed to handle "
                                             f"{msg.type}: {type(exc).__name__}: {exc}",
                                             msg.job_id))

    def _job_exists(self, viewer: str | None, job_id: str) -> bool:
        """Whether the store has ``job_id`` and ``viewer`` may see it (a ``job_ref`` setting)."""
        try:
            rec = self.runner.store.read(job_id)
        except (JobError, OSError, ValueError):
            return False
        return may_see(rec.get("owner"), viewer)

    def _start_check(self, job: Job) -> Settings:
        """A job's server paths checked again as it starts (``JobError('path_not_allowed')``)."""
        owner = job.owner if job.owner is not None else self.local_owner
        caller = Caller(owner, admin=owner in self.admins)
        return self.paths.recheck(caller, self.runner.kinds.spec(job.kind), job.settings, job.params)

    def _dispatch(self, identity: bytes, msg: Message, caller: Caller, session: str) -> None:
        t = msg.type
        peer = Peer(session, caller.owner)
        if t == "hello":
            fields = self.capabilities.hello_fields(PROTOCOL_VERSION)
            fields.update(self.runner.executor.hello_facts())     # a pool's GPUs, not the front's
            self._reply(identity, Message("hello", None, fields))
        elif t == "status":
            fields = {"jobs": self.runner.status(msg.job_id, viewer=caller.sees)}
            pool = self.runner.pool_status()
            if pool is not None:          # an executor with a cluster: its nodes and queues
                fields["pool"] = pool
            self._reply(identity, Message("status", msg.job_id, fields))
        elif t == "submit":
            payload = msg.fields.get("payload") or {}
            _check_payload_finite(payload, "fields.payload")
            kind = msg.fields["kind"]
            if "upload" in msg.fields["params"]:     # a job reading an upload: this client's, complete
                self.uploads.check_use(msg.fields["params"]["upload"], caller.owner)

            def admit(spec, settings):
                settings = self.paths.check(caller, spec, settings)
                mine, waiting, held = self.runner.load(caller.owner)
                self.admission.check(kind, settings, payload, caller.owner, mine, waiting, held,
                                     payload_bytes(payload))
                return settings

            pos = self.runner.submit(msg.required_job_id(), kind, msg.fields["params"], payload, peer,
                                     owner=caller.owner, admit=admit)
            self._reply(identity, Message("accepted", msg.job_id, {"queue_position": pos}))
        elif t == "cancel":
            entry = self.runner.cancel(msg.required_job_id(), peer, viewer=caller.sees)
            self._reply(identity, Message("status", msg.job_id, {"jobs": [entry]}))
        elif t == "fetch":
            self._reply(identity, self.runner.fetch(msg.required_job_id(), viewer=caller.sees))
        elif t == "upload":
            self._reply(identity, self.uploads.handle(msg, caller.owner))
        else:
            self._reply(identity, make_error(
                "unexpected_type", f"the server does not accept {t!r} messages; clients send "
                f"{', '.join(_CLIENT_TYPES)}", msg.job_id))

    def _shutdown(self) -> None:
        log.info("shutting down: stopping the running job and saving its state")
        t0 = time.monotonic()
        self.runner.shutdown()
        self._drain_outbox()          # the cancelled job's result, if its client is still there
        self._close_sockets()
        log.info("stopped (%.1f s)", time.monotonic() - t0)

    def _close_sockets(self) -> None:
        try:
            self._router.disable_monitor()
        except (zmq.ZMQError, AttributeError):
            pass
        for name in ("_ring", "_doorbell", "_monitor", "_router"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


def serve(bind: str = DEFAULT_BIND, store_dir: str | Path = "splatbridge-jobs",
          device: str = "auto", curve: CurveKeys | None = None) -> None:
    """Run a server in this process until SIGINT/SIGTERM."""
    server = Server(bind, store_dir, device, curve)
    server.install_signal_handlers()
    server.serve_forever()
