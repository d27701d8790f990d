"""Pieces shared by the splat file readers and writers: the error type and a PLY header parser.

PLY (https://paulbourke.net/dataformats/ply/) is used by two of our formats (the 3DGS reference
PLY and the SuperSplat/PlayCanvas compressed PLY), so the header grammar and the mapping of PLY
scalar types to numpy dtypes live here once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..splats import SplatError, Splats

PathLike = str | os.PathLike


class SplatFormatError(ValueError):
    """A splat file that cannot be read or written.

    The message names the file, the element/property (or header field) concerned and the problem,
    e.g. ``"scene.ply: element 'vertex': missing property 'opacity'"``.
    """

    def __init__(self, path: PathLike, where: str, problem: str) -> None:
        self.path = os.fspath(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")


# PLY scalar type names (both spellings of the spec) -> numpy type code without byte order.
PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}

PLY_FORMATS: dict[str, str] = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "ascii"}

_MAX_HEADER_BYTES = 1 << 20
_END_HEADER = b"end_header"


@dataclass
class PlyProperty:
    name: str
    type_name: str  # as written in the header, e.g. "float"
    code: str  # numpy type code, e.g. "f4"


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty] = field(default_factory=list)

    def property_names(self) -> list[str]:
        return [p.name for p in self.properties]

    def find(self, name: str) -> PlyProperty | None:
        for p in self.properties:
            if p.name == name:
                return p
        return None

    def dtype(self, byte_order: str) -> np.dtype:
        """Structured dtype of one record in a binary file (byte_order '<' or '>')."""
        return np.dtype([(p.name, byte_order + p.code) for p in self.properties])


@dataclass
class PlyHeader:
    format: str  # "binary_little_endian", "binary_big_endian" or "ascii"
    elements: list[PlyElement]
    size: int  # bytes up to and including the newline after end_header
    comments: list[str] = field(default_factory=list)

    @property
    def byte_order(self) -> str:
        return PLY_FORMATS[self.format]

    def element(self, name: str) -> PlyElement | None:
        for e in self.elements:
            if e.name == name:
                return e
        return None


def read_ply_header(path: PathLike) -> PlyHeader:
    """Parse the header of a PLY file; raises SplatFormatError for anything malformed.

    List properties (`property list ...`) are rejected: no splat format uses them and they make
    binary records variable-sized.
    """
    with open(path, "rb") as f:
        buf = b""
        while True:
            chunk = f.read(65536)
            buf += chunk
            end = buf.find(_END_HEADER)
            if end >= 0:
                nl = buf.find(b"\n", end)
                if nl >= 0:
                    break
            if not chunk or len(buf) > _MAX_HEADER_BYTES:
                if not buf.startswith(b"ply"):
                    raise SplatFormatError(path, "header", "not a PLY file (does not start with 'ply')")
                raise SplatFormatError(path, "header", "no 'end_header' line (truncated or not a PLY file)")
    size = nl + 1
    try:
        text = buf[:size].decode("ascii")
    except UnicodeDecodeError:
        raise SplatFormatError(path, "header", "header is not ASCII text") from None
    lines = [ln.strip() for ln in text.splitlines()]
    if not lines or lines[0] != "ply":
        raise SplatFormatError(path, "header", "not a PLY file (first line is not 'ply')")
    fmt: str | None = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for ln in lines[1:]:
        if not ln:
            continue
        words = ln.split()
        key = words[0]
        if key in ("comment", "obj_info"):
            comments.append(ln[len(key):].strip())
        elif key == "format":
            if len(words) != 3 or words[1] not in PLY_FORMATS:
                raise SplatFormatError(path, "header", f"unsupported format line {ln!r} "
                                       f"(expected one of {', '.join(PLY_FORMATS)} with version 1.0)")
            if words[2] != "1.0":
                raise SplatFormatError(path, "header", f"unsupported PLY version {words[2]!r} (expected 1.0)")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise SplatFormatError(path, "header", f"malformed element line {ln!r}")
            elements.append(PlyElement(words[1], int(words[2])))
        elif key == "property":
            if not elements:
                raise SplatFormatError(path, "header", f"property before any element: {ln!r}")
            el = elements[-1]
            if len(words) >= 2 and words[1] == "list":
                name = words[-1]
                raise SplatFormatError(path, f"element '{el.name}' property '{name}'",
                                       "list properties are not supported")
            if len(words) != 3:
                raise SplatFormatError(path, f"element '{el.name}'", f"malformed property line {ln!r}")
            type_name, name = words[1], words[2]
            if type_name not in PLY_TYPES:
                raise SplatFormatError(path, f"element '{el.name}' property '{name}'",
                                       f"unknown PLY type {type_name!r}")
            if el.find(name) is not None:
                raise SplatFormatError(path, f"element '{el.name}' property '{name}'", "duplicate property")
            el.properties.append(PlyProperty(name, type_name, PLY_TYPES[type_name]))
        elif key == "end_header":
            break
        else:
            raise SplatFormatError(path, "header", f"unexpected header line {ln!r}")
    if fmt is None:
        raise SplatFormatError(path, "header", "missing 'format' line")
    return PlyHeader(fmt, elements, size, comments)


def read_ply_elements(path: PathLike, header: PlyHeader, wanted: set[str]) -> dict[str, np.ndarray]:
    """Read the data of the elements named in `wanted`.

    Binary files give a structured array per element (a view on the file's bytes, in the file's
    byte order); ASCII files give a float64 array [count, n_properties]. Elements after the last
    wanted one are not read. Raises SplatFormatError if the data is shorter than the header says.
    """
    out: dict[str, np.ndarray] = {}
    last = max((i for i, e in enumerate(header.elements) if e.name in wanted), default=-1)
    if last < 0:
        return out
    if header.format == "ascii":
        with open(path, "rb") as f:
            f.seek(header.size)
            body = f.read().decode("ascii", errors="replace").splitlines()
        row = 0
        for el in header.elements[: last + 1]:
            lines = body[row: row + el.count]
            row += el.count
            if el.name not in wanted:
                continue
            width = len(el.properties)
            try:
                values = np.array(" ".join(lines).split(), dtype=np.float64)
            except ValueError:
                raise SplatFormatError(path, f"element '{el.name}'", "non-numeric value in ASCII data") from None
            if values.size != el.count * width:
                raise SplatFormatError(path, f"element '{el.name}'",
                                       f"truncated or malformed ASCII data: expected {el.count} rows of "
                                       f"{width} values, found {values.size} values")
            out[el.name] = values.reshape(el.count, width)
        return out
    file_size = os.path.getsize(path)
    offset = header.size
    with open(path, "rb") as f:
        for el in header.elements[: last + 1]:
            dt = el.dtype(header.byte_order)
            nbytes = dt.itemsize * el.count
            if offset + nbytes > file_size:
                raise SplatFormatError(path, f"element '{el.name}'",
                                       f"truncated: {el.count} records of {dt.itemsize} bytes need {nbytes} "
                                       f"bytes but only {max(file_size - offset, 0)} remain")
            if el.name in wanted:
                f.seek(offset)
                out[el.name] = np.fromfile(f, dtype=dt, count=el.count)
            offset += nbytes
    return out


def check_property(path: PathLike, el: PlyElement, name: str,
                   allowed: tuple[str, ...] = ("f4", "f8")) -> PlyProperty:
    """The property `name` of `el`; SplatFormatError if it is missing or its type is not allowed."""
    prop = el.find(name)
    if prop is None:
        raise SplatFormatError(path, f"element '{el.name}'", f"missing property '{name}'")
    if prop.code not in allowed:
        names = [k for k, v in PLY_TYPES.items() if v in allowed and not k[-1].isdigit()]
        raise SplatFormatError(path, f"element '{el.name}' property '{name}'",
                               f"unsupported type '{prop.type_name}' (expected {' or '.join(names)})")
    return prop


def column(path: PathLike, header: PlyHeader, el: PlyElement, data: np.ndarray, name: str,
           allowed: tuple[str, ...] = ("f4", "f8")) -> np.ndarray:
    """One property of an element as a native-order array (float32 for float types).

    Raises SplatFormatError naming the property when it is missing or has a type not in `allowed`.
    """
    prop = check_property(path, el, name, allowed)
    if header.format == "ascii":
        col = data[:, el.property_names().index(name)]
    else:
        col = data[name]
    target = np.float32 if prop.code[0] == "f" else np.dtype(prop.code)
    return np.ascontiguousarray(col, dtype=target)


def write_binary_ply(path: PathLike, elements: list[tuple[str, list[tuple[str, str]], np.ndarray]],
                     comments: tuple[str, ...] = ()) -> None:
    """Write a binary little-endian PLY.

    `elements`: (name, [(property name, PLY type name)], data) with data either a 2-D array whose
    columns are the properties (all one type) or a structured array with matching fields.
    """
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {c}" for c in comments]
    for name, props, data in elements:
        lines.append(f"element {name} {len(data)}")
        lines += [f"property {t} {p}" for p, t in props]
    lines.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        for _, _, data in elements:
            np.ascontiguousarray(data).tofile(f)


# -- one rule for non-finite values in every reader ---------------------------------------

_F32_MAX = np.float32(np.finfo(np.float32).max)


def clamp_infinite(path: PathLike, where: str, values: np.ndarray) -> np.ndarray:
    """``values`` as float32 with +-inf clamped to the nearest finite float32 (+-3.4e38).

    The one rule every reader applies to opacity and scale (splat-transform writes +inf opacity
    for fully opaque splats). NaN is never guessed: it raises SplatFormatError naming `where`
    (the property or field) and the first splat that has it.
    """
    values = np.asarray(values, dtype=np.float32)
    nan = np.isnan(values)
    if nan.any():
        first = int(np.argmax(nan.reshape(len(values), -1).any(axis=1))) if values.ndim else 0
        raise SplatFormatError(path, where, f"contains NaN (first at splat {first})")
    if np.isinf(values).any():
        values = np.clip(values, -_F32_MAX, _F32_MAX)
    return values


def check_finite(path: PathLike, where: str, values: np.ndarray) -> None:
    """SplatFormatError naming `where` when `values` holds NaN or +-inf (positions, rotations,
    colours: fields where no clamp would be right)."""
    bad = ~np.isfinite(values)
    if bad.any():
        flat = bad.reshape(len(values), -1).any(axis=1) if values.ndim else bad
        first = int(np.argmax(flat))
        what = "NaN" if np.isnan(values).any() else "Inf"
        raise SplatFormatError(path, where, f"contains {what} (first at splat {first})")


# -- bounded decompression ------------------------------------------------------------------

#: Most output one input byte of a deflate stream can produce (258 bytes per 2 bits, plus slack).
GZIP_MAX_RATIO = 1032
#: The same bound for zstd (the reference spz loader uses 1024 for its whole file).
ZSTD_MAX_RATIO = 1 << 15


def check_declared_size(path: PathLike, where: str, declared: int, compressed_size: int, ratio: int) -> None:
    """SplatFormatError when a header declares more decompressed bytes than `compressed_size`
    bytes of the codec can produce: the header lies (damaged or hostile), and nothing is read."""
    if declared > compressed_size * ratio + 4096:
        raise SplatFormatError(path, where, f"declares {declared} bytes of data, more than the "
                               f"{compressed_size}-byte compressed stream can hold (at most "
                               f"{compressed_size * ratio + 4096}); damaged or hostile file")


class BoundedGunzip:
    """Incremental gzip decompression that never produces more than asked for.

    ``read(n)`` returns exactly n bytes or raises SplatFormatError (truncated / corrupt), so a
    reader can read a header, compute the payload size it declares and then read just that;
    :meth:`expect_end` then fails if the stream holds more (a decompression bomb). Peak memory is
    the bytes read plus the compressed input.
    """

    def __init__(self, path: PathLike, data: bytes) -> None:
        import zlib
        self.path = path
        self._zlib = zlib
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending: memoryview | None = memoryview(data)
        self.compressed_size = len(data)
        self.produced = 0

    def _chunk(self, most: int, what: str) -> bytes:
        """Up to ``most`` more bytes of output (continuing into a next gzip member); b"" at the end."""
        while True:
            try:
                if self._d.unconsumed_tail:
                    chunk = self._d.decompress(self._d.unconsumed_tail, most)
                elif self._pending is not None and len(self._pending):
                    src, self._pending = self._pending, None
                    chunk = self._d.decompress(src, most)
                else:
                    chunk = b""
            except self._zlib.error as exc:
                raise SplatFormatError(self.path, "gzip stream", f"corrupt in {what} ({exc})") from None
            if chunk or not (self._d.eof and self._d.unused_data[:2] == b"\x1f\x8b"):
                return chunk
            rest = self._d.unused_data                      # a second gzip member
            self._d = self._zlib.decompressobj(16 + self._zlib.MAX_WBITS)
            self._pending = memoryview(rest)

    def read(self, n: int, what: str = "data") -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._chunk(n - got, what)
            if not chunk:
                raise SplatFormatError(self.path, what, f"truncated: needed {n} bytes of {what}, the gzip "
                                       f"stream ended after {got} (at byte {self.produced + got} of its output)")
            parts.append(chunk)
            got += len(chunk)
        self.produced += got
        return b"".join(parts)

    def read_rest(self, limit: int, what: str = "data") -> bytes:
        """The rest of the stream (to its end), at most ``limit`` bytes; SplatFormatError beyond."""
        parts: list[bytes] = []
        got = 0
        while chunk := self._chunk(limit + 1 - got, what):
            parts.append(chunk)
            got += len(chunk)
            if got > limit:
                raise SplatFormatError(self.path, what, f"more than {limit} bytes (a decompression bomb or a "
                                       "damaged file); refused")
        self.produced += got
        return b"".join(parts)

    def expect_end(self, declared: str) -> None:
        """SplatFormatError if the stream produces any byte beyond what was read."""
        try:
            extra = self._d.decompress(self._d.unconsumed_tail, 1) if self._d.unconsumed_tail else (
                self._d.decompress(self._pending, 1) if self._pending is not None and len(self._pending) else b"")
        except self._zlib.error as exc:
            raise SplatFormatError(self.path, "gzip stream", f"corrupt after the data ({exc})") from None
        if extra:
            raise SplatFormatError(self.path, "gzip stream", f"holds more data than {declared} "
                                   "(a decompression bomb or a damaged file); refused")


def bounded_zstd(path: PathLike, where: str, data: bytes, size: int) -> bytes:
    """Decompress one zstd frame that must hold exactly `size` bytes, never producing more than
    size + 1 (so a bomb costs no memory). Needs the ``zstandard`` package (imported here, lazily)."""
    try:
        import zstandard
    except ImportError:
        raise SplatFormatError(path, where, "zstd-compressed data needs the 'zstandard' package, which is "
                               "not installed (the SplatBridge extension bundles it)") from None
    import io
    check_declared_size(path, where, size, len(data), ZSTD_MAX_RATIO)
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False) as r:
            out = bytearray()
            while len(out) < size + 1:
                chunk = r.read(size + 1 - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise SplatFormatError(path, where, f"corrupt zstd data ({exc})") from None
    if len(out) != size:
        problem = (f"decompresses to more than the {size} bytes declared (a decompression bomb or a damaged "
                   "file); refused" if len(out) > size else
                   f"truncated: decompresses to {len(out)} bytes, {size} declared")
        raise SplatFormatError(path, where, problem)
    return bytes(out)


#: the fields whose +-inf the readers clamp (everything else non-finite is an error)
CLAMPED_FIELDS = ("opacities", "scales")


def build_splats(path: PathLike, arrays: dict[str, np.ndarray],
                 labels: dict[str, list[str]] | None = None) -> Splats:
    """Splats from decoded field arrays, with the one non-finite rule of every reader.

    +-inf in ``opacities`` or ``scales`` clamps to the nearest finite float32 (:func:`clamp_infinite`);
    NaN anywhere, or +-inf elsewhere, raises SplatFormatError naming the file's own property
    (``labels[field][column]``, e.g. ``"element 'vertex' property 'opacity'"``) and the first splat.
    """
    labels = labels or {}
    out: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            n = arr.shape[0]
            cols = arr.reshape(n, -1)
            names = labels.get(key) or [f"field '{key}'"]
            for j in range(cols.shape[1]):
                col = cols[:, j]
                if np.isfinite(col).all():
                    continue
                where = names[j] if j < len(names) else names[0]
                if key in CLAMPED_FIELDS:
                    clamp_infinite(path, where, col)   # raises on NaN
                else:
                    check_finite(path, where, col)
            if key in CLAMPED_FIELDS:
                arr = np.clip(arr, -_F32_MAX, _F32_MAX)
        out[key] = arr
    try:
        return Splats(**out)
    except SplatError as exc:
        raise SplatFormatError(path, f"field '{exc.field}'", str(exc)) from None
