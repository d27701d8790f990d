"""Who a client is, which of the server's files it may name, and whose jobs it sees.

**Identity.** Every message is attributed to one owner string:

- with CurveZMQ, ``curve:<z85 public key>``: the ZAP authenticator admits the key and libzmq gives
  it to every message as the ``User-Id`` property (pyzmq ``frame.get("User-Id")``);
- without CurveZMQ (loopback or ``ipc://`` only: ``backend.security.check_bind``),
  ``local:<user>``, the user the server runs as. The server cannot tell local users apart, so it
  treats every local client as its own user (on a machine shared with people you do not trust, use
  CurveZMQ on loopback too, or an ``ipc://`` socket in a private folder).

A job belongs to the owner that submitted it. ``status``, ``fetch`` and ``cancel`` see only the
caller's jobs (another's job is answered exactly as an unknown one); owners listed with
``serve --admin KEY`` see and cancel all. Records written before owners existed (no ``owner``) are
visible to local clients and admins.

**Connections and sessions.** A ROUTER routing id names one connection, never a client: the server
turns ``ROUTER_HANDOVER`` off, and each ``shared.client.BackendClient`` connection announces a fresh
random routing id (32 printable bytes). A client is followed across its connections by its
*session*: a random token (``shared.protocol.valid_session``) it makes once and sends in every
message's header (``session``), kept across ``reconnect()``. ``Sessions`` binds a token to the
owner that first uses it and to the connection (routing id, file descriptor) that last spoke with
it: the same owner speaking with the token from a new connection moves it there (a reconnect);
another owner using it is refused (``session_taken``, nothing done). A job's progress, result and
errors go to its submitting session's current connection only, while that is bound to the job's
owner; the binding ends when the connection closes (the ROUTER's socket monitor reports its file
descriptor), so nothing is sent on a routing id that a later connection reuses. Clients that send
no token (before sessions existed) get a session per connection (``rid:<routing id>``): their
jobs' messages stop when that connection closes (a fetch from a new one still works), and as they
reconnect under their old routing id, a reconnect the server sees before the old connection's end
is ignored (below) until they reconnect again.

What libzmq does with routing ids (``src/router.cpp``, ``router_t::identify_peer``, checked in its
source and against libzmq 4.3.5 here), and what the design takes from it:

- A peer that announces a routing id already in use: with ``ROUTER_HANDOVER`` the newcomer takes
  the route over and the old connection is terminated; that is how a peer that knew a victim's id
  received the victim's messages without ever speaking. Without handover the newcomer is not
  attached: libzmq neither reads its messages nor sends to it, and the existing connection keeps
  its route. Hence handover off. (A client can no longer reconnect under its old id before the
  server has seen the old connection close, hence a fresh id per connection and the session.)
- A peer that announces no id gets ``0x00`` + a 32-bit counter. Ids starting with a zero byte are
  *not* reserved: a peer may announce one. The counter starts at C ``rand()``, which libzmq never
  seeds, so in practice the first ROUTER of a process numbers peers from ``0x006b8b4567`` up. When
  the counter reaches an id a peer announced earlier, libzmq's ``zmq_assert`` aborts the process:
  on the previous server, 64 connections claiming the next ids and one connection without an id
  killed it (``tests/test_access.py``). The server therefore seeds ``rand()`` from the OS's random
  source before it makes its ROUTER (``seed_routing_id_counter``), and our clients always announce
  an id (printable, never starting with ``0x00``), so they never take a counter id. What remains: an
  allowed client that holds k connections with claimed ids aborts the server when one of the next
  anonymous connections hits one of them, about k / 2**32 per anonymous connection.
- The routing id is not a credential: it is neither secret (nothing relies on it being unknown)
  nor authenticated. Identity comes from CurveZMQ (or the local user); the session token is a
  secret only as a handle for reconnecting: a token learnt by another identity is useless to it,
  and on loopback every client is the same local user anyway.

**Server paths.** Settings marked ``server_path`` (``shared.jobspec.Setting``) name files on the
server's disk. ``PathPolicy`` resolves them (symlinks followed) at submit, and again when the job
starts (``PathPolicy.recheck``: a link swapped in between is refused then; what remains is the
moment between that check and the job opening its files), and refuses any that is
not inside the operator's roots (``serve --data-root DIR``, repeatable), or that is inside the job
store, with one message that does not depend on whether the path exists. Without ``--data-root``,
CurveZMQ clients may name no server path at all, and local clients any path the server's user can
read except the job store. Relative paths are taken inside the roots (the first root where the
path exists), never from the server's working directory; a relative ``images_dir`` is taken inside
the dataset. Settings whose value may instead be a Hugging Face model id (``Setting.path_or_id``
``"hub"``: ``org/name``, matched in full) keep such ids; a ``Setting.job_ref`` (an earlier job's id,
e.g. reconstruct's ``from_job``) must name a job of the caller's.
Paths inside a dataset (``file_path``, ``ply_file_path``, COLMAP image names) are confined to the
dataset's folder by ``backend.datasets``.
"""
from __future__ import annotations

import getpass
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.jobspec import JobError, JobSpec, Settings
from shared.protocol import valid_job_id

LOCAL_PREFIX = "local:"
CURVE_PREFIX = "curve:"

#: A Hugging Face model id, matched in full (``re.fullmatch``: no trailing newline slips through).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def local_owner() -> str:
    """The owner of local clients: the user this server runs as."""
    try:
        user = getpass.getuser()
    except Exception:          # no user name (a container without passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return LOCAL_PREFIX + user


@dataclass(frozen=True)
class Caller:
    """The client behind one message."""

    owner: str
    admin: bool = False

    @property
    def local(self) -> bool:
        return self.owner.startswith(LOCAL_PREFIX)

    @property
    def sees(self) -> str | None:
        """The owner whose jobs this caller sees; ``None``: every job (an admin)."""
        return None if self.admin else self.owner


def may_see(record_owner: str | None, viewer: str | None) -> bool:
    """Whether a job owned by ``record_owner`` is visible to ``viewer`` (``None``: everyone's)."""
    if viewer is None or record_owner == viewer:
        return True
    return record_owner is None and viewer.startswith(LOCAL_PREFIX)


def read_admin_keys(paths: Iterable[str | os.PathLike]) -> set[str]:
    """Owner strings of the public keys in ``paths`` (certificate files ``*.key``, or folders of
    them). Raises ``ValueError`` naming a path that holds no key."""
    import zmq.auth
    owners = set()
    for p in map(Path, paths):
        files = sorted(p.glob("*.key")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"--admin {p}: no public-key certificate (*.key) there")
        for f in files:
            try:
                public, _ = zmq.auth.load_certificate(f)
            except Exception as exc:
                raise ValueError(f"--admin {f}: cannot read the key ({exc})") from None
            owners.add(CURVE_PREFIX + public.decode("ascii"))
    return owners


class Sessions:
    """Routing id -> (owner, file descriptor) of the ROUTER's connections, and session token ->
    (owner, current routing id, file descriptor) (socket thread only; see the module docstring).
    Bounded: the least recently used entries go first."""

    def __init__(self, max_bindings: int = 10000, max_sessions: int = 10000):
        self._bound: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._sessions: OrderedDict[str, list] = OrderedDict()    # token -> [owner, rid | None, fd]
        self._max = max_bindings
        self._max_sessions = max_sessions

    @staticmethod
    def implicit(routing_id: bytes) -> str:
        """The session of a client that sends no token: its connection's own."""
        return "rid:" + routing_id.hex()

    def bind(self, routing_id: bytes, owner: str, fd: int) -> bool:
        """Attribute a message on ``routing_id`` (from connection ``fd``) to ``owner``. False when
        the routing id is bound to another owner: the message must be refused; the binding is
        dropped too, as that connection is no longer the owner's."""
        old = self._bound.get(routing_id)
        if old is not None and old[0] != owner:
            del self._bound[routing_id]
            return False
        self._bound[routing_id] = (owner, fd)
        self._bound.move_to_end(routing_id)
        while len(self._bound) > self._max:
            self._bound.popitem(last=False)
        return True

    def attach(self, session: str, owner: str, routing_id: bytes, fd: int) -> bool:
        """``owner`` spoke with ``session`` on ``routing_id`` (connection ``fd``): the session's
        messages go there from now on. False (nothing changed) when the session belongs to
        another owner."""
        entry = self._sessions.get(session)
        if entry is not None and entry[0] != owner:
            return False
        self._sessions[session] = [owner, routing_id, fd]
        self._sessions.move_to_end(session)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
        return True

    def route(self, session: str, owner: str | None) -> bytes | None:
        """The routing id a job of ``owner`` submitted in ``session`` may send to now; ``None``
        when the session is not connected, not ``owner``'s, or its connection's routing id is
        no longer bound to ``owner``. (``owner`` ``None``: a job without an owner, e.g. one
        submitted by a test runner: the session's owner is not checked.)"""
        entry = self._sessions.get(session)
        if entry is None or entry[1] is None:
            return None
        sess_owner, rid, _ = entry
        if owner is not None and sess_owner != owner:
            return None
        bound = self._bound.get(rid)
        if bound is None or bound[0] != sess_owner:
            return None
        return rid

    def owner_of(self, routing_id: bytes) -> str | None:
        b = self._bound.get(routing_id)
        return b[0] if b else None

    def connection_closed(self, fd: int) -> None:
        """The connection ``fd`` closed (or a new one reuses the number): its routing ids'
        bindings end and its sessions are disconnected (they keep their owner)."""
        if fd < 0:
            return
        for rid in [r for r, (_, f) in self._bound.items() if f == fd]:
            del self._bound[rid]
        for entry in self._sessions.values():
            if entry[2] == fd:
                entry[1], entry[2] = None, -1

    def may_push(self, routing_id: bytes, owner: str | None) -> bool:
        """Whether a message of a job of ``owner`` may go to ``routing_id`` now (bound to that
        owner; ``None``: a job without an owner: always)."""
        if owner is None:
            return True
        b = self._bound.get(routing_id)
        return b is not None and b[0] == owner


class PathPolicy:
    """Checks and resolves the ``server_path`` settings of a submit (see the module docstring)."""

    def __init__(self, roots: Iterable[str | os.PathLike] = (), store: str | os.PathLike | None = None,
                 job_exists: Callable[[str | None, str], bool] | None = None):
        given_roots = list(roots)
        self.roots = [Path(os.path.realpath(r)) for r in given_roots]
        for given, real in zip(given_roots, self.roots, strict=True):
            if not real.is_dir():
                raise ValueError(f"--data-root {given}: not a folder")
        self.store = Path(os.path.realpath(store)) if store is not None else None
        # (owner, job id) -> True when that owner has that job (reconstruct's model = a job id)
        self.job_exists = job_exists

    def _roots_for(self, caller: Caller) -> list[Path] | None:
        """The caller's roots; ``None``: any path (a local client with no --data-root)."""
        if self.roots:
            return self.roots
        return None if caller.local else []

    def _refused(self, kind: str, name: str, value: str, roots: list[Path] | None) -> JobError:
        shown = value if len(value) <= 120 else value[:117] + "..."
        if roots == []:
            where = ("this server shares no folders with remote clients (its operator can share "
                     "some with serve --data-root DIR); send the data in the job's payload instead")
        elif roots is None:
            where = ("the job store and relative paths are not allowed (give an absolute path "
                     "outside the server's job store)")
        else:
            where = "the folders this server shares are: " + ", ".join(str(r) for r in roots)
        return JobError("path_not_allowed", f"{kind} setting {name}={shown!r} is not a path this "
                                            f"client may use: {where}")

    @staticmethod
    def _inside(path: Path, root: Path) -> bool:
        return path == root or root in path.parents

    def resolve(self, caller: Caller, kind: str, name: str, value: str, base: Path | None = None) -> str:
        """``value`` as an absolute real path the caller may use; ``JobError('path_not_allowed')``
        otherwise (the same message whether or not the path exists)."""
        roots = self._roots_for(caller)
        if "\0" in value:
            raise self._refused(kind, name, value.replace("\0", "\\0"), roots)
        p = Path(value)
        if p.is_absolute():
            candidates = [p]
        elif base is not None:
            candidates = [base / p]
        elif roots:
            candidates = [r / p for r in roots]
        else:
            raise self._refused(kind, name, value, roots)
        real = None
        for c in candidates:
            r = Path(os.path.realpath(c))
            if real is None or os.path.lexists(r):
                real = r
                if os.path.lexists(r):
                    break
        assert real is not None
        if self.store is not None and self._inside(real, self.store):
            raise self._refused(kind, name, value, roots)
        if roots is not None and not any(self._inside(real, r) for r in roots):
            raise self._refused(kind, name, value, roots)
        return str(real)

    def check(self, caller: Caller, spec: JobSpec, settings: Settings) -> Settings:
        """``settings`` with every ``server_path`` setting resolved (or kept as an id, see
        ``Setting.path_or_id``); raises ``JobError('path_not_allowed')``."""
        changes: dict[str, Any] = {}
        dataset: Path | None = None
        for s in spec.settings:
            value = settings.get(s.name)
            if value is None or value == "" or not (s.server_path or getattr(s, "job_ref", False)):
                continue
            if not isinstance(value, str):
                raise JobError("bad_params", f"{spec.kind} setting {s.name} must be text")
            if getattr(s, "job_ref", False):             # an earlier job: the caller's own only
                if not (valid_job_id(value) and self.job_exists is not None
                        and self.job_exists(caller.sees, value)):
                    raise JobError("bad_params", f"{spec.kind} setting {s.name}={value[:80]!r}: no "
                                                 "such job of yours on this server")
                continue
            if getattr(s, "path_or_id", "") == "hub" and HUB_ID.fullmatch(value):
                continue                                  # a model hub id, not a path
            base = None
            if s.name == "images_dir" and dataset is not None and not Path(value).is_absolute():
                base = dataset if dataset.is_dir() else dataset.parent
            resolved = self.resolve(caller, spec.kind, s.name, value, base)
            if s.name == "dataset_path":
                dataset = Path(resolved)
            changes[s.name] = resolved
        return settings.replace(**changes) if changes else settings

    def recheck(self, caller: Caller, spec: JobSpec, settings: Settings,
                params: Mapping[str, Any]) -> Settings:
        """The check again when the job starts: its ``server_path`` settings resolved anew from
        the values the client sent (``params``), so a path whose links changed since the submit
        (a symlink swapped to point outside the roots) is refused now, with the words a submit
        of the same value gets. Returns ``settings`` with the paths as they resolve now."""
        sent = {s.name: params[s.name] for s in spec.settings
                if s.server_path and isinstance(params.get(s.name), str)}
        return self.check(caller, spec, settings.replace(**sent) if sent else settings)


def seed_routing_id_counter() -> bool:
    """Seed C ``rand()`` from the OS's random source, so that a ROUTER made afterwards starts its
    counter of ids for peers that announce none (``0x00`` + 32 bits) at an unpredictable value
    (libzmq never seeds ``rand()``: see the module docstring). Call it before making the ROUTER.
    False where the C library cannot be reached (then the counter stays predictable)."""
    import ctypes
    import secrets
    try:
        libc = ctypes.CDLL(None)          # the process's own C library: libzmq's rand() is its
        libc.srand(ctypes.c_uint(secrets.randbits(32)))
    except (OSError, AttributeError, TypeError):     # e.g. Windows: no process-wide C library handle
        return False
    return True


def owner_of_frame(frame: Any, fallback: str) -> str:
    """The owner of a received frame: ``curve:<key>`` from the ZAP ``User-Id`` property when an
    authenticator set one, else ``fallback`` (the local owner)."""
    try:
        user = frame.get("User-Id")
    except Exception:          # no ZAP handler on this socket: the property is absent
        user = None
    if isinstance(user, bytes):
        user = user.decode("ascii", "replace")
    if user and user != "anonymous":
        return CURVE_PREFIX + user
    return fallback


def frame_fd(frame: Any) -> int:
    """The file descriptor of the connection a frame came in on (-1: unknown, e.g. inproc)."""
    import zmq
    try:
        return int(frame.get(zmq.SRCFD))
    except Exception:
        return -1


__all__ = ["Caller", "PathPolicy", "Sessions", "HUB_ID", "local_owner", "may_see", "owner_of_frame",
           "frame_fd", "read_admin_keys", "seed_routing_id_counter"]
