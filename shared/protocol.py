"""SplatBridge wire protocol: message types, multipart framing, validation and size limits.

A message is a ZeroMQ multipart message::

    frame 0      msgpack map {"type": str, "v": PROTOCOL_VERSION, "job_id": str | None, "fields": map,
                              optional "session": str}
    frame 1..n   raw array bytes (C order, little-endian), one frame per array

``session`` (client to server only) is the client's random session token
(``valid_session``: 16-64 characters of ``[A-Za-z0-9_-]``); the server routes a job's messages
to the connection that last spoke with its submitter's token (``backend.access.Sessions``).

An array anywhere inside ``fields`` (in maps or lists, at any depth) is written in the header as
``{"__nd__": [dtype, shape, frame_index]}``; ``frame_index`` counts the frames that follow the
header (0 = frame 1 of the multipart message). Each frame is referenced exactly once.
Allowed dtypes: ``bool, u1, i4, u4, i8, f2, f4, f8`` (little-endian only). Arrays with zero
elements are allowed, but every dimension of every array, empty or not, is at most
``max_dimension(itemsize, limits)`` (``bad_array`` otherwise), on encode and on decode.

``encode`` hands out memoryviews of the arrays themselves (no copy unless an array is not
C-contiguous or not little-endian); ``decode`` wraps the frames with ``np.frombuffer`` (zero copy,
the arrays are read-only views of the frames). No pickle, no base64.

Everything is validated on both ends, and sizes are checked from the declared shapes before any
array is touched: a bad message raises a ``ProtocolError`` whose ``code`` is the short tag that goes
into an ``error`` reply. The receiver should also set ``zmq.MAXMSGSIZE`` to
``limits.max_array_bytes`` so that zmq itself refuses oversize frames before buffering them
(zmq applies the option to each frame of a multipart message, not to their sum).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

if TYPE_CHECKING:  # imported lazily at run time so that the protocol does not depend on it
    from .splats import Splats

PROTOCOL_VERSION = 1

MESSAGE_TYPES = ("hello", "submit", "accepted", "progress", "result", "error", "cancel", "status",
                 "fetch", "upload")
JOB_STATES = ("queued", "running", "done", "cancelled", "failed")
SPLAT_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")

# Wire dtype name -> numpy dtype (explicitly little-endian).
DTYPES: dict[str, np.dtype] = {
    "bool": np.dtype("?"),
    "u1": np.dtype("u1"),
    "i4": np.dtype("<i4"),
    "u4": np.dtype("<u4"),
    "i8": np.dtype("<i8"),
    "f2": np.dtype("<f2"),
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
}
_WIRE_NAME = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items()}
_ND = "__nd__"
_MAX_NDIM = 32                                   # numpy's own limit
# Patterns are used with fullmatch: "$" would also match before a final newline ("abc\n").
_JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # also a folder name in the job store
_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_HEADER_KEYS = frozenset({"type", "v", "job_id", "fields"})


def valid_job_id(job_id: Any) -> bool:
    """True for a string of 1-64 characters of ``[A-Za-z0-9_-]`` (nothing else, no newline):
    the rule for job ids on the wire and for job folder names in the store."""
    return isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) is not None


def valid_session(session: Any) -> bool:
    """True for a session token: a string of 16-64 characters of ``[A-Za-z0-9_-]``."""
    return isinstance(session, str) and _SESSION_RE.fullmatch(session) is not None


def _check_session(session: Any, job_id: str | None) -> None:
    if session is not None and not valid_session(session):
        raise BadField(f"session: expected 16-64 characters of [A-Za-z0-9_-], got "
                       f"{_short(session)}", job_id)


def max_dimension(itemsize: int, limits: Limits) -> int:
    """The largest length one array dimension may have: the number of ``itemsize``-byte elements
    in ``limits.max_array_bytes``. Applies to every dimension, also of arrays with zero elements
    (``[0, 2**62]`` holds 0 bytes but no buffer can back such a shape)."""
    return limits.max_array_bytes // max(1, itemsize)


@dataclass(frozen=True)
class Limits:
    """Size caps, all in bytes except ``max_frames`` (header included) and ``max_depth``
    (levels of maps/lists inside ``fields``)."""

    max_header_bytes: int = 1 << 20     # 1 MiB
    max_array_bytes: int = 2 << 30      # 2 GiB for one array
    max_total_bytes: int = 4 << 30      # 4 GiB for the whole multipart message
    max_frames: int = 64
    max_depth: int = 32


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

class ProtocolError(Exception):
    """A message that breaks the protocol. ``code`` is a stable short tag for ``error`` replies;
    ``job_id`` is the message's job id when it could be read (so the reply can name the job)."""

    code = "protocol_error"

    def __init__(self, code: str, message: str, job_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class _TaggedError(ProtocolError):
    """A ProtocolError whose code is fixed by its class: raised as ``Cls(message, job_id)``."""

    code = "protocol_error"

    def __init__(self, message: str, job_id: str | None = None):
        super().__init__(type(self).code, message, job_id)


class MalformedHeader(_TaggedError):
    """Frame 0 is not a msgpack map of the right shape, or there are no frames at all."""
    code = "malformed_header"


class UnknownMessageType(_TaggedError):
    code = "unknown_type"


class VersionMismatch(_TaggedError):
    code = "version_mismatch"


class BadArray(_TaggedError):
    """An ``__nd__`` reference is wrong: spec, dtype, shape, frame index or frame length."""
    code = "bad_array"


class SizeLimitExceeded(_TaggedError):
    code = "too_large"


class MissingField(_TaggedError):
    code = "missing_field"


class BadField(_TaggedError):
    """A field is present but has the wrong type or value."""
    code = "bad_field"


# ----------------------------------------------------------------------------------------------
# Message
# ----------------------------------------------------------------------------------------------

@dataclass
class Message:
    """One protocol message. ``fields`` holds plain msgpack values and numpy arrays;
    ``session`` is the sending client's session token (client messages only; ``None``: none)."""

    type: str
    job_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    session: str | None = None

    def required_job_id(self) -> str:
        """``job_id`` of a message type that must carry one (submit, accepted, progress, result, cancel,
        fetch, upload: ``decode`` refuses them without it); ``MissingField`` when it is absent."""
        if self.job_id is None:
            raise MissingField(f"job_id: a {self.type} message needs a job_id")
        return self.job_id


def make_error(code: str, message: str, job_id: str | None = None) -> Message:
    """An ``error`` message; ``code`` is a short lowercase tag (e.g. ``unknown_job``)."""
    return Message("error", job_id, {"code": code, "message": message})


def error_from_exception(exc: ProtocolError) -> Message:
    """The ``error`` reply for a rejected message."""
    return make_error(exc.code, exc.message, exc.job_id)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------

def _wire_array(arr: np.ndarray, path: str) -> tuple[str, np.ndarray]:
    """The wire dtype name and a C-contiguous little-endian version of ``arr`` (same object
    when it already is one)."""
    dt = arr.dtype
    name = _WIRE_NAME.get((dt.kind, dt.itemsize)) if dt.fields is None and not dt.subdtype else None
    if name is None:
        raise BadArray(f"{path}: dtype {dt.str!r} is not allowed on the wire "
                       f"(allowed: {', '.join(DTYPES)})")
    if dt.str[0] == ">":
        arr = arr.astype(DTYPES[name])
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return name, arr if arr.flags.c_contiguous else arr.copy(order="C")


def _pack_value(value: Any, path: str, frames: list, limits: Limits, depth: int) -> Any:
    if isinstance(value, np.ndarray):
        name, arr = _wire_array(value, path)
        if arr.nbytes > limits.max_array_bytes:
            raise SizeLimitExceeded(f"{path}: array of {arr.nbytes} bytes exceeds the "
                                    f"{limits.max_array_bytes}-byte limit")
        _check_dimensions(arr.shape, arr.dtype.itemsize, name, path, limits)
        frames.append(arr.reshape(-1).view(np.uint8).data)     # .data: the array's memoryview
        return {_ND: [name, list(arr.shape), len(frames) - 2]}
    if depth > limits.max_depth:
        raise SizeLimitExceeded(f"{path}: nested deeper than {limits.max_depth} levels")
    if isinstance(value, dict):
        if _ND in value:
            raise BadField(f"{path}: the key {_ND!r} is reserved for arrays")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadField(f"{path}: map key {k!r} is not a string")
            out[k] = _pack_value(v, f"{path}.{k}", frames, limits, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_pack_value(v, f"{path}[{i}]", frames, limits, depth + 1)
                for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.generic):   # numpy scalars (np.float32(1.0), np.int64(3), ...)
        return _pack_value(value.item(), path, frames, limits, depth)
    raise BadField(f"{path}: value of type {type(value).__name__} cannot be sent")


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """Frames for ``msg``: the msgpack header, then one memoryview per array.

    The message is validated as ``decode`` would validate it (type, job id, field schema, sizes),
    so a bad message fails at the sender. The memoryviews keep their arrays alive; do not modify
    the arrays until the frames are sent.
    """
    if not isinstance(msg, Message):
        raise TypeError(f"encode() takes a Message, not {type(msg).__name__}")
    _check_type_and_job_id(msg.type, msg.job_id, None)
    _check_session(msg.session, msg.job_id)
    if not isinstance(msg.fields, dict):
        raise BadField("fields: must be a map", msg.job_id)
    frames: list[bytes | memoryview] = [b""]
    try:
        packed_fields = _pack_value(msg.fields, "fields", frames, limits, 0)
        _check_fields(msg.type, msg.job_id, msg.fields)
    except ProtocolError as exc:
        exc.job_id = msg.job_id
        raise
    head: dict[str, Any] = {"type": msg.type, "v": PROTOCOL_VERSION, "job_id": msg.job_id,
                            "fields": packed_fields}
    if msg.session is not None:
        head["session"] = msg.session
    try:
        header = msgpack.packb(head, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as exc:   # e.g. an int beyond 64 bits
        raise BadField(f"fields: cannot be packed ({exc})", msg.job_id) from None
    frames[0] = header
    _check_sizes(frames, limits, msg.job_id)
    return frames


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

def _as_bytes_view(frame: Any, index: int) -> memoryview:
    """A flat byte memoryview of a frame (bytes, bytearray, memoryview, zmq.Frame, ndarray...)."""
    buf = getattr(frame, "buffer", frame)   # zmq.Frame exposes its data as .buffer
    try:
        view = memoryview(buf)
    except TypeError:
        cls = MalformedHeader if index == 0 else BadArray
        raise cls(f"frame {index}: {type(frame).__name__} has no buffer") from None
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        if not view.c_contiguous:
            raise BadArray(f"frame {index}: buffer is not contiguous")
        view = view.cast("B")
    return view


def _check_sizes(views: Sequence[Any], limits: Limits, job_id: str | None) -> None:
    if len(views) > limits.max_frames:
        raise SizeLimitExceeded(f"{len(views)} frames exceed the limit of {limits.max_frames}",
                                job_id)
    if len(views[0]) > limits.max_header_bytes:
        raise SizeLimitExceeded(f"header of {len(views[0])} bytes exceeds the "
                                f"{limits.max_header_bytes}-byte limit", job_id)
    total = sum(memoryview(v).nbytes for v in views)
    if total > limits.max_total_bytes:
        raise SizeLimitExceeded(f"message of {total} bytes exceeds the "
                                f"{limits.max_total_bytes}-byte limit", job_id)


def _check_dimensions(shape: Sequence[int], itemsize: int, name: str, path: str,
                      limits: Limits) -> None:
    """The zero-size rule, on both ends: arrays with no elements are allowed, but every
    dimension, zero-size array or not, is at most ``max_dimension`` (a ``bad_array`` error)."""
    bound = max_dimension(itemsize, limits)
    for axis, d in enumerate(shape):
        if d > bound:
            raise BadArray(f"{path}: dimension {axis} of shape {tuple(shape)} {name} is {d}, over "
                           f"the limit of {bound} (the {limits.max_array_bytes}-byte array limit "
                           f"in {itemsize}-byte elements; this applies to empty arrays too)")


class _Unpacker:
    """Replaces ``__nd__`` references by arrays over the frames, checking every reference."""

    def __init__(self, views: list[memoryview], limits: Limits):
        self.views = views          # the frames after the header
        self.limits = limits
        self.used = [False] * len(views)

    def value(self, value: Any, path: str, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise SizeLimitExceeded(f"{path}: nested deeper than {self.limits.max_depth} levels")
        if isinstance(value, dict):
            if _ND in value:
                return self.array(value, path)
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise MalformedHeader(f"{path}: map key {k!r} is not a string")
                out[k] = self.value(v, f"{path}.{k}", depth + 1)
            return out
        if isinstance(value, list):
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        raise MalformedHeader(f"{path}: msgpack value of type {type(value).__name__} "
                              "is not allowed")

    def array(self, ref: dict, path: str) -> np.ndarray:
        spec = ref[_ND]
        if len(ref) != 1:
            raise BadArray(f"{path}: an array reference has only the key {_ND!r}")
        if not isinstance(spec, list) or len(spec) != 3:
            raise BadArray(f"{path}: {_ND} must be [dtype, shape, frame_index]")
        name, shape, index = spec
        if not isinstance(name, str) or name not in DTYPES:
            hint = " (big-endian arrays are not allowed)" if isinstance(name, str) and \
                name.startswith(">") else ""
            raise BadArray(f"{path}: dtype {name!r} is not allowed{hint}; "
                           f"allowed: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(
                type(d) is int and d >= 0 for d in shape):
            raise BadArray(f"{path}: shape {shape!r} must be a list of at most {_MAX_NDIM} "
                           "non-negative integers")
        dtype = DTYPES[name]
        nbytes = math.prod(shape) * dtype.itemsize    # Python ints: no overflow
        if nbytes > self.limits.max_array_bytes:
            raise SizeLimitExceeded(f"{path}: declared shape {tuple(shape)} {name} is {nbytes} "
                                    f"bytes, over the {self.limits.max_array_bytes}-byte limit")
        _check_dimensions(shape, dtype.itemsize, name, path, self.limits)   # empty arrays too
        if type(index) is not int or not 0 <= index < len(self.views):
            raise BadArray(f"{path}: frame index {index!r} out of range "
                           f"(the message has {len(self.views)} array frames)")
        if self.used[index]:
            raise BadArray(f"{path}: frame {index} is referenced twice")
        self.used[index] = True
        view = self.views[index]
        if view.nbytes != nbytes:
            raise BadArray(f"{path}: frame {index} has {view.nbytes} bytes but shape "
                           f"{tuple(shape)} {name} needs {nbytes}")
        try:        # the checks above make this safe; kept so numpy can never stop a server
            arr = np.frombuffer(view, dtype=dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise BadArray(f"{path}: shape {tuple(shape)} {name} cannot be made: {exc}") from None
        if name == "bool" and arr.size and np.frombuffer(view, np.uint8).max() > 1:
            raise BadArray(f"{path}: bool array holds bytes other than 0 and 1")
        return arr


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse and validate a multipart message (frames as bytes, memoryviews or zmq.Frames).

    Arrays are read-only ``np.frombuffer`` views of the frames (zero copy): keep the frames
    alive as long as the arrays, and copy an array before modifying it.
    Raises a ``ProtocolError`` subclass naming the offending field or frame.
    """
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise MalformedHeader("a message needs at least the header frame")
    if len(frames) > limits.max_frames:
        raise SizeLimitExceeded(f"{len(frames)} frames exceed the limit of {limits.max_frames}")
    views = [_as_bytes_view(f, i) for i, f in enumerate(frames)]
    _check_sizes(views, limits, None)
    try:
        header = msgpack.unpackb(views[0], raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise MalformedHeader(f"header is not valid msgpack ({detail})") from None
    if not isinstance(header, dict):
        raise MalformedHeader(f"header must be a msgpack map, got {type(header).__name__}")
    job_id = header.get("job_id")
    job_id_hint = job_id if valid_job_id(job_id) else None
    keys = set(header)
    if keys - {"session"} != _HEADER_KEYS:
        missing = sorted(_HEADER_KEYS - keys, key=str)
        extra = sorted(keys - _HEADER_KEYS - {"session"}, key=str)
        raise MalformedHeader(f"header keys must be {sorted(_HEADER_KEYS)} and optionally "
                              f"'session' (missing {missing}, unexpected {extra})", job_id_hint)
    version = header["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise VersionMismatch(f"protocol version {version!r}; this side speaks "
                              f"{PROTOCOL_VERSION}", job_id_hint)
    _check_type_and_job_id(header["type"], job_id, job_id_hint)
    session = header.get("session")
    _check_session(session, job_id_hint)
    if not isinstance(header["fields"], dict):
        raise MalformedHeader(f"fields must be a map, got {type(header['fields']).__name__}",
                              job_id)
    unpacker = _Unpacker(views[1:], limits)
    try:
        fields = unpacker.value(header["fields"], "fields", 0)
        unused = [i for i, u in enumerate(unpacker.used) if not u]
        if unused:
            raise BadArray(f"array frames {unused} are not referenced by any field")
        _check_fields(header["type"], job_id, fields)
    except ProtocolError as exc:
        exc.job_id = job_id
        raise
    return Message(header["type"], job_id, fields, session)


# ----------------------------------------------------------------------------------------------
# Per-type schemas
# ----------------------------------------------------------------------------------------------

Check = Callable[[str, Any], None]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _typed(kind: str, pred: Callable[[Any], bool]) -> Check:
    def check(path: str, v: Any) -> None:
        if not pred(v):
            raise BadField(f"{path}: expected {kind}, got {type(v).__name__} {_short(v)}")
    return check


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{list(v.shape)}"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_str = _typed("a string", lambda v: isinstance(v, str))
_bool = _typed("a bool", lambda v: isinstance(v, (bool, np.bool_)))
_int = _typed("an integer", _is_int)
_count = _typed("a non-negative integer", lambda v: _is_int(v) and v >= 0)
_map = _typed("a map", lambda v: isinstance(v, dict))
_list = _typed("a list", lambda v: isinstance(v, (list, tuple)))
_str_list = _typed("a list of strings",
                   lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v))
_code = _typed("a short lowercase tag", lambda v: isinstance(v, str) and _CODE_RE.fullmatch(v) is not None)


def _optional(check: Check) -> Check:
    def inner(path: str, v: Any) -> None:
        if v is not None:
            check(path, v)
    return inner


def _either(kind: str, *checks: Check) -> Check:
    def inner(path: str, v: Any) -> None:
        for c in checks:
            try:
                c(path, v)
                return
            except BadField:
                pass
        raise BadField(f"{path}: expected {kind}, got {type(v).__name__} {_short(v)}")
    return inner


def _splat_map(path: str, v: Any) -> None:
    """Shallow check of a splat map (keys known, required ones present, values arrays);
    ``splats_from_fields`` does the full validation through ``Splats``. ``shN`` may be absent
    (degree 0), as ``Splats.from_arrays`` allows."""
    _map(path, v)
    for k in SPLAT_KEYS:
        if k not in v:
            if k == "shN":
                continue
            raise MissingField(f"{path}.{k}: missing from the splat map")
        if not isinstance(v[k], np.ndarray):
            raise BadField(f"{path}.{k}: expected an array, got {type(v[k]).__name__}")
    extra = sorted(set(v) - set(SPLAT_KEYS))
    if extra:
        raise BadField(f"{path}: unexpected key(s) {extra} in a splat map")


def _jobs(path: str, v: Any) -> None:
    _list(path, v)
    for i, job in enumerate(v):
        p = f"{path}[{i}]"
        _map(p, job)
        _check_map(p, job, _JOB_ENTRY, open_map=True)
        if job["state"] not in JOB_STATES:
            raise BadField(f"{p}.state: {job['state']!r} is not one of {', '.join(JOB_STATES)}")


_sha256 = _typed("a sha256 hex digest (64 lowercase hex digits)",
                 lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
_u1_array = _typed("a u1 array of one dimension (the chunk's bytes)",
                   lambda v: isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 1)
_UPLOAD_FILE: dict[str, tuple[bool, Check]] = {"name": (True, _str), "size": (True, _count),
                                                "sha256": (True, _sha256)}


def _upload_files(path: str, v: Any) -> None:
    _list(path, v)
    for i, entry in enumerate(v):
        _map(f"{path}[{i}]", entry)
        _check_map(f"{path}[{i}]", entry, _UPLOAD_FILE)


# key -> (required, check)
_JOB_ENTRY: dict[str, tuple[bool, Check]] = {
    "job_id": (True, _str), "kind": (False, _str), "state": (True, _str),
    "step": (False, _count), "total": (False, _count), "queue_position": (False, _optional(_count)),
}

SCHEMAS: dict[str, dict[str, tuple[bool, Check]]] = {
    "hello": {
        "protocol": (True, _int), "client": (False, _str), "server_version": (False, _str),
        "device": (False, _str), "cuda": (False, _bool), "gsplat_cuda": (False, _bool),
        "gpu_name": (False, _optional(_str)), "gpu_memory_bytes": (False, _optional(_count)),
        "job_kinds": (False, _str_list), "models": (False, _either("a list or map", _list, _map)),
    },
    "submit": {"kind": (True, _str), "params": (True, _map), "payload": (False, _map)},
    "accepted": {"queue_position": (True, _count)},
    "progress": {"step": (True, _count), "total": (True, _count), "metrics": (True, _map),
                 "preview": (False, _optional(_splat_map))},
    "result": {"splats": (True, _splat_map), "metrics": (False, _map), "meta": (False, _map)},
    "error": {"code": (True, _code), "message": (True, _str), "details": (False, _map)},
    "cancel": {},
    "status": {"jobs": (False, _jobs), "pool": (False, _map)},   # pool: a Ray executor's nodes/queues
    "fetch": {},
    # job_id = the upload id. c->s: open/resume (``files``, ``chunk_size``) or one chunk (``file``,
    # ``offset``, ``sha256``, ``data``); s->c: the upload's state (``have`` after an open).
    "upload": {"files": (False, _upload_files), "chunk_size": (False, _count),
               "file": (False, _count), "offset": (False, _count), "sha256": (False, _sha256),
               "data": (False, _u1_array), "received": (False, _count), "total": (False, _count),
               "complete": (False, _bool), "have": (False, _list)},
}

# Types whose job_id is required; the others take an optional one.
_NEEDS_JOB_ID = {"submit", "accepted", "progress", "result", "cancel", "fetch", "upload"}


def _check_type_and_job_id(mtype: Any, job_id: Any, hint: str | None) -> None:
    if not isinstance(mtype, str):
        raise MalformedHeader(f"type must be a string, got {type(mtype).__name__}", hint)
    if mtype not in SCHEMAS:
        raise UnknownMessageType(f"unknown message type {_short(mtype)}; known: "
                                 f"{', '.join(MESSAGE_TYPES)}", hint)
    if job_id is None:
        if mtype in _NEEDS_JOB_ID:
            raise MissingField(f"job_id: a {mtype} message needs a job_id")
    elif not valid_job_id(job_id):
        raise BadField(f"job_id: {_short(job_id)} is not 1-64 characters of [A-Za-z0-9_-]")


def _check_map(path: str, fields: dict, schema: dict[str, tuple[bool, Check]],
               open_map: bool = False) -> None:
    for key, (required, check) in schema.items():
        if key not in fields:
            if required:
                raise MissingField(f"{path}.{key}: required")
            continue
        check(f"{path}.{key}", fields[key])
    if not open_map:
        extra = sorted(set(fields) - set(schema))
        if extra:
            raise BadField(f"{path}: unexpected field(s) {extra}; "
                           f"allowed: {sorted(schema) or 'none'}")


def _check_fields(mtype: str, job_id: str | None, fields: dict) -> None:
    _check_map("fields", fields, SCHEMAS[mtype])
    if mtype == "progress" and fields["step"] > fields["total"]:
        raise BadField(f"fields.step: {fields['step']} is past total {fields['total']}")


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------

def validate_finite(name: str, array: np.ndarray) -> None:
    """Raise ``BadField`` naming ``name`` when a float array holds NaN or Inf.
    Integer and bool arrays always pass."""
    if not isinstance(array, np.ndarray):
        raise BadField(f"{name}: expected an array, got {type(array).__name__}")
    if array.dtype.kind != "f" or array.size == 0:
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise BadField(f"{name}: {len(bad)} non-finite value(s) (NaN/Inf), first at index "
                       f"{first if array.ndim != 1 else first[0]}")


def splats_to_fields(splats: Splats) -> dict[str, np.ndarray]:
    """The splat map for the wire (``Splats.to_arrays()``)."""
    return splats.to_arrays()


def splats_from_fields(fields: Any, name: str = "splats") -> Splats:
    """A ``Splats`` from a decoded splat map. ``name`` is the field's path for error messages.

    ``Splats`` checks shapes, dtypes and finiteness (and keeps the wire's arrays without copying
    when they are float32); every failure is a ``BadField``/``MissingField`` naming the field,
    e.g. ``fields.splats.sh0: contains NaN or Inf (first at splat 3)``.
    """
    from .splats import SplatError, Splats

    _splat_map(name, fields)
    try:
        return Splats.from_arrays(fields)
    except SplatError as exc:
        raise BadField(f"{name}.{exc}") from None
    except (ValueError, TypeError) as exc:
        raise BadField(f"{name}: {exc}") from None
