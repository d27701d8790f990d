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

**Routing ids.** A DEALER chooses its routing id. ``Sessions`` binds a routing id to the owner that
first speaks on it: a message from another owner on a bound routing id is refused, and progress and
results of a job go to its submitter's routing id only while that routing id is bound to the job's
owner. A binding ends when its connection closes (the ROUTER's socket monitor reports the file
descriptor) or when another owner speaks on it, so a routing id reused by someone else receives
nothing of the old owner's jobs.

**Server paths.** Settings marked ``server_path`` (``shared.jobspec.Setting``) name files on the
server's disk. ``PathPolicy`` resolves them (symlinks followed) at submit and refuses any that is
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
from collections.abc import Callable, Iterable
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
    """Routing id -> (owner, file descriptor) bindings of the ROUTER's connections (socket thread
    only). Bounded: the oldest bindings go first (their routing ids then bind anew)."""

    def __init__(self, max_bindings: int = 10000):
        self._bound: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._max = max_bindings

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

    def owner_of(self, routing_id: bytes) -> str | None:
        b = self._bound.get(routing_id)
        return b[0] if b else None

    def connection_closed(self, fd: int) -> None:
        """The connection ``fd`` closed (or a new one reuses the number): its bindings end."""
        for rid in [r for r, (_, f) in self._bound.items() if f == fd and fd >= 0]:
            del self._bound[rid]

    def may_push(self, routing_id: bytes, owner: str | None) -> bool:
        """Whether a job of ``owner`` may send to ``routing_id`` now (``None``: a job without an
        owner, e.g. one run by a test runner: always)."""
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
           "frame_fd", "read_admin_keys"]
