"""Resumable file uploads into the job store: the server side of the ``upload`` message.

Files (photos, a video) travel as their encoded bytes, in chunks of a fixed size chosen by the
client at open. An upload is a folder ``<store>/.uploads/<upload id>/``::

    manifest.json          {"files": [{name, size, sha256}], "chunk_size", "owner", "created"}
    chunks/<f>_<k>         chunk k (bytes [k*chunk_size, ...)) of file f, written to a temporary
                           name and renamed, so a chunk on disk is always whole and checked
    files/<name>           a complete file, assembled from its chunks and checked against its sha256

Chunks already stored survive a client that dies or a closed socket (and a server restart): an
``upload`` open with the same id and the same files answers ``have`` (the stored chunk indices per
file) and the client sends only the others. A job names a complete upload with its ``upload``
setting (``upload_source``); an upload belongs to the client that opened it (``owner``: the
server's caller, ``backend.access``: ``curve:<public key>`` under CurveZMQ, else the local owner;
the id, a random uuid, is not guessable either).

Limits: the uploads one client holds (complete or not, by their declared sizes) may not exceed
``max_client_bytes`` (``serve --max-uploads-gb``): an open beyond it is refused with ``too_large``.
Retention: an upload that nothing touched (opened, resumed, sent a chunk, named by a submit) for
``keep_days`` (``serve --keep-days``, as jobs) is removed, unless a queued or running job reads it
(``in_use``); checked when a new upload is opened (at most every ``PRUNE_EVERY_S``) and at start,
where half-created folders of a killed open are removed too. The cost is one ``stat`` per upload.

Every bad request is a ``JobError`` whose code goes into an ``error`` reply; nothing here can stop
the server. Errors: ``unknown_upload``, ``bad_upload`` (open: names, sizes, a different manifest
under an existing id; a file whose assembled bytes do not match its sha256), ``bad_chunk`` (file
index, offset, length or hash wrong), ``disk_full``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.video_frames import VIDEO_EXTENSIONS
from shared.defaults import DEFAULT_KEEP_DAYS
from shared.jobspec import JobError
from shared.protocol import Message

UPLOADS_DIR = ".uploads"          # inside the job store's root; not a job id, so the store skips it
MAX_FILES = 10000
DEFAULT_MAX_CHUNK_BYTES = 64 << 20
DEFAULT_MAX_CLIENT_BYTES = 32 << 30
PRUNE_EVERY_S = 600.0

log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,199}")


def uploads_root(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / UPLOADS_DIR


@dataclass
class _Upload:
    folder: Path
    files: list[dict]
    chunk_size: int
    owner: str
    have: list[set[int]] = field(default_factory=list)     # stored chunk indices per file
    done: list[bool] = field(default_factory=list)         # file assembled and checked

    def chunks_of(self, f: int) -> int:
        return max(1, -(-self.files[f]["size"] // self.chunk_size))

    def received(self) -> int:
        total = 0
        for f, entry in enumerate(self.files):
            if self.done[f]:
                total += entry["size"]
            else:
                total += sum(min(self.chunk_size, entry["size"] - k * self.chunk_size) for k in self.have[f])
        return total

    def total(self) -> int:
        return sum(e["size"] for e in self.files)

    def complete(self) -> bool:
        return all(self.done)


class UploadStore:
    """The uploads of one job store. ``handle(msg, owner)`` answers one ``upload`` message."""

    def __init__(self, store_root: str | os.PathLike, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                 min_free_bytes: int = 0, max_client_bytes: int = DEFAULT_MAX_CLIENT_BYTES,
                 keep_days: float = DEFAULT_KEEP_DAYS, in_use: Callable[[], set[str]] = set,
                 clock: Callable[[], float] = time.time):
        """``max_client_bytes``, ``keep_days``: 0 turns the limit off. ``in_use``: the ids of the
        uploads that queued and running jobs read (never removed)."""
        self.root = uploads_root(store_root)
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.max_client_bytes = int(max_client_bytes)
        self.keep_days = float(keep_days)
        self.in_use = in_use
        self.clock = clock
        self._open: dict[str, _Upload] = {}
        self._pruned_at = -1e18
        if self.root.is_dir():
            for p in [*self.root.glob(".creating-*"), *self.root.glob(".removing-*")]:
                shutil.rmtree(p, ignore_errors=True)
            self.maybe_prune()

    # -- retention ------------------------------------------------------------------------------
    def maybe_prune(self) -> list[str]:
        """``prune()`` unless it ran less than ``PRUNE_EVERY_S`` ago."""
        now = self.clock()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return []
        self._pruned_at = now
        return self.prune(now)

    def prune(self, now: float | None = None) -> list[str]:
        """Remove the uploads untouched for more than ``keep_days`` that no live job reads;
        returns their ids."""
        if self.keep_days <= 0 or not self.root.is_dir():
            return []
        limit = (self.clock() if now is None else now) - self.keep_days * 86400.0
        keep = self.in_use()
        gone = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or folder.name in keep:
                continue
            try:
                if folder.stat().st_mtime >= limit:
                    continue
            except OSError:
                continue
            doomed = self.root / f".removing-{folder.name}"
            try:
                os.replace(folder, doomed)       # a reader sees the whole upload or none of it
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            self._open.pop(folder.name, None)
            gone.append(folder.name)
        if gone:
            log.info("uploads untouched for %g days removed: %s", self.keep_days, ", ".join(gone))
        return gone

    def _touch(self, up: _Upload) -> None:
        try:
            os.utime(up.folder)
        except OSError:
            pass

    def client_bytes(self, owner: str) -> int:
        """Declared bytes of the uploads ``owner`` holds now."""
        total = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if folder.name.startswith("."):
                continue
            up = self._load(folder.name)
            if up is not None and up.owner == owner:
                total += sum(int(e["size"]) for e in up.files)
        return total

    # -- messages -------------------------------------------------------------------------------
    def handle(self, msg: Message, owner: str = "") -> Message:
        f = msg.fields
        uid = msg.required_job_id()
        if "files" in f:
            extra = sorted(set(f) - {"files", "chunk_size"})
            if extra:
                raise JobError("bad_upload", f"upload {uid}: an open carries only files and chunk_size, "
                                             f"not {extra}")
            up = self.open(uid, f["files"], f.get("chunk_size"), owner)
            return self._state(uid, up, with_have=True)
        need = ("file", "offset", "sha256", "data")
        missing = [k for k in need if k not in f]
        if missing:
            raise JobError("bad_chunk", f"upload {uid}: a chunk needs {', '.join(need)} (missing "
                                        f"{', '.join(missing)}); an open needs files")
        up = self.put_chunk(uid, f["file"], f["offset"], f["sha256"], f["data"], owner)
        return self._state(uid, up, with_have=False)

    @staticmethod
    def _state(uid: str, up: _Upload, with_have: bool) -> Message:
        fields: dict[str, Any] = {"received": up.received(), "total": up.total(), "complete": up.complete()}
        if with_have:
            fields["have"] = [list(range(up.chunks_of(i))) if up.done[i] else sorted(up.have[i])
                              for i in range(len(up.files))]
        return Message("upload", uid, fields)

    # -- open / resume ----------------------------------------------------------------------------
    def open(self, uid: str, files: list[dict], chunk_size: int | None, owner: str) -> _Upload:
        """Open a new upload or resume one (same files, same chunk size, same owner)."""
        if chunk_size is None or not 1 <= chunk_size <= self.max_chunk_bytes:
            raise JobError("bad_upload", f"upload {uid}: chunk_size {chunk_size} must be 1-"
                                         f"{self.max_chunk_bytes} bytes")
        if not 1 <= len(files) <= MAX_FILES:
            raise JobError("bad_upload", f"upload {uid}: {len(files)} files; 1-{MAX_FILES} allowed")
        names = set()
        for e in files:
            name = e["name"]
            if not _NAME_RE.fullmatch(name) or name.endswith((".", " ")):
                raise JobError("bad_upload", f"upload {uid}: file name {name!r} is not allowed (a plain "
                                             "file name: letters, digits, . _ - space ( ) +; no folders)")
            if name.lower() in names:
                raise JobError("bad_upload", f"upload {uid}: file name {name!r} appears twice")
            names.add(name.lower())
        manifest = [{"name": e["name"], "size": int(e["size"]), "sha256": e["sha256"]} for e in files]
        up = self._load(uid)
        if up is not None:
            if up.owner != owner:
                raise self._unknown(uid)
            if up.files != manifest or up.chunk_size != chunk_size:
                raise JobError("bad_upload", f"upload {uid} already exists with other files or another "
                                             "chunk size; resume it with the same files, or use a new id")
            self._touch(up)
            return up
        self.maybe_prune()
        need = sum(e["size"] for e in manifest)
        if self.max_client_bytes > 0:
            held = self.client_bytes(owner)
            if held + need > self.max_client_bytes:
                raise JobError("too_large", f"upload {uid}: {_gib(need)} more would make this client's "
                                            f"uploads {_gib(held + need)}, over the backend's limit of "
                                            f"{_gib(self.max_client_bytes)} per client (serve "
                                            f"--max-uploads-gb); uploads untouched for {self.keep_days:g} "
                                            "days are removed")
        free = shutil.disk_usage(self.root.parent if self.root.parent.exists() else ".").free
        if need + self.min_free_bytes > free:
            raise JobError("disk_full", f"upload {uid}: {need} bytes do not fit on the backend's disk "
                                        f"({free} bytes free, {self.min_free_bytes} kept free)")
        folder = self.root / uid
        tmp = self.root / f".creating-{uid}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "chunks").mkdir(parents=True)
        (tmp / "files").mkdir()
        (tmp / "manifest.json").write_text(json.dumps({"files": manifest, "chunk_size": chunk_size,
                                                       "owner": owner, "created": time.time()}))
        os.replace(tmp, folder)
        up = _Upload(folder, manifest, chunk_size, owner, [set() for _ in manifest],
                     [False] * len(manifest))
        self._open[uid] = up
        for i, e in enumerate(manifest):
            if e["size"] == 0:
                self._assemble(uid, up, i)
        return up

    def _load(self, uid: str) -> _Upload | None:
        up = self._open.get(uid)
        if up is not None:
            return up
        folder = self.root / uid
        try:
            meta = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        files = meta["files"]
        up = _Upload(folder, files, int(meta["chunk_size"]), meta.get("owner", ""),
                     [set() for _ in files], [False] * len(files))
        for i, e in enumerate(files):
            up.done[i] = (folder / "files" / e["name"]).is_file()
        for p in (folder / "chunks").iterdir():
            m = re.fullmatch(r"(\d+)_(\d+)", p.name)
            if m is None:               # a temporary left by a write that did not finish
                p.unlink(missing_ok=True)
                continue
            fi, k = int(m.group(1)), int(m.group(2))
            if fi < len(files) and not up.done[fi]:
                up.have[fi].add(k)
        self._open[uid] = up
        return up

    @staticmethod
    def _unknown(uid: str) -> JobError:
        return JobError("unknown_upload", f"no upload {uid} on this backend (never opened, freed, or "
                                          "another client's): open it with its files first")

    # -- chunks ---------------------------------------------------------------------------------
    def put_chunk(self, uid: str, file: int, offset: int, sha256: str, data: np.ndarray,
                  owner: str) -> _Upload:
        """Check and store one chunk; a file whose chunks are all there is assembled and checked."""
        up = self._load(uid)
        if up is None or up.owner != owner:
            raise self._unknown(uid)
        if not 0 <= file < len(up.files):
            raise JobError("bad_chunk", f"upload {uid}: file index {file} out of range (the upload has "
                                        f"{len(up.files)} files)")
        entry = up.files[file]
        name, size, cs = entry["name"], entry["size"], up.chunk_size
        if offset % cs:
            raise JobError("bad_chunk", f"upload {uid}: offset {offset} of {name!r} is not on a chunk "
                                        f"boundary (chunk size {cs} bytes)")
        if offset >= size:
            raise JobError("bad_chunk", f"upload {uid}: offset {offset} is out of range for {name!r} "
                                        f"({size} bytes)")
        expected = min(cs, size - offset)
        if data.nbytes != expected:
            raise JobError("bad_chunk", f"upload {uid}: the chunk at offset {offset} of {name!r} has "
                                        f"{data.nbytes} bytes; expected {expected}")
        digest = hashlib.sha256(data.data).hexdigest()     # .data: the array's memoryview
        if digest != sha256:
            raise JobError("bad_chunk", f"upload {uid}: the chunk at offset {offset} of {name!r} does "
                                        f"not match its sha256 (got {digest[:12]}..., declared "
                                        f"{sha256[:12]}...): send it again")
        k = offset // cs
        if up.done[file] or k in up.have[file]:
            return up                      # a resend: already stored
        path = up.folder / "chunks" / f"{file}_{k}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise JobError("disk_full", f"upload {uid}: the chunk could not be stored ({exc})") from None
        up.have[file].add(k)
        self._touch(up)
        if len(up.have[file]) == up.chunks_of(file):
            self._assemble(uid, up, file)
        return up

    def _assemble(self, uid: str, up: _Upload, file: int) -> None:
        entry = up.files[file]
        chunks = [up.folder / "chunks" / f"{file}_{k}" for k in range(up.chunks_of(file))]
        final = up.folder / "files" / entry["name"]
        tmp = final.with_name("." + final.name + ".tmp")
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for c in chunks if entry["size"] else []:
                data = c.read_bytes()
                h.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != entry["sha256"]:
            tmp.unlink(missing_ok=True)
            for c in chunks:
                c.unlink(missing_ok=True)
            up.have[file].clear()
            raise JobError("bad_upload", f"upload {uid}: {entry['name']!r} assembled from its chunks does "
                                         "not match its sha256; its chunks were dropped: send them again")
        os.replace(tmp, final)
        up.done[file] = True
        for c in chunks:
            c.unlink(missing_ok=True)

    # -- use by jobs ------------------------------------------------------------------------------
    def check_use(self, uid: Any, owner: str) -> None:
        """At submit: a job's ``upload`` setting names a complete upload of this client."""
        if not isinstance(uid, str):
            return                         # the kind's spec reports the type
        up = self._load(uid) if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", uid) else None
        if up is None or up.owner != owner:
            raise JobError("bad_params", f"upload {uid!r}: no such upload of this client on this backend")
        if not up.complete():
            raise JobError("bad_params", f"upload {uid!r} is not complete ({up.received()} of "
                                         f"{up.total()} bytes, {sum(up.done)} of {len(up.files)} files): "
                                         "finish it before submitting")
        self._touch(up)


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def upload_source(store_root: str | os.PathLike, uid: str) -> Path:
    """The path a job reads for a complete upload: its one video file, or its folder of photos."""
    folder = uploads_root(store_root) / uid
    try:
        meta = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        raise JobError("bad_params", f"upload {uid!r}: no such upload on this backend") from None
    files = [folder / "files" / e["name"] for e in meta["files"]]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise JobError("bad_params", f"upload {uid!r} is not complete: {len(missing)} file(s) missing")
    if len(files) == 1 and files[0].suffix.lower() in VIDEO_EXTENSIONS:
        return files[0]
    return folder / "files"

