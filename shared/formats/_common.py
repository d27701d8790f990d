"""Pieces shared by the splat file readers and writers: the error type and a PLY header parser.

PLY (https://paulbourke.net/dataformats/ply/) is used by two of our formats (the 3DGS reference
PLY and the SuperSplat/PlayCanvas compressed PLY), so the header grammar and the mapping of PLY
scalar types to numpy dtypes live here once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

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
