"""Read and write splat files: 3DGS PLY, SuperSplat compressed PLY, antimatter15 .splat, Niantic .spz,
PlayCanvas SOG (.sog zip or meta.json + WebP images); read mkkellogg's .ksplat.

``read_splats(path)`` picks the reader from the extension (``.ply`` is sniffed: a ``chunk``
element means compressed PLY); ``write_splats(path, splats, format=None)`` picks the writer from
``format`` or the extension (``.ply`` -> 3DGS PLY; pass ``format="compressed_ply"`` or use a
``.compressed.ply`` name for the compressed one). Every problem with a file raises
:class:`SplatFormatError` (a ValueError) whose message names the file, the element/property and
what is wrong. See each module's docstring for its layout, coordinate handling and precision.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..splats import Splats
from ._common import PathLike, SplatFormatError, read_ply_header
from .compressed_ply import is_compressed_ply, read_compressed_ply, write_compressed_ply
from .ksplat import read_ksplat
from .ply import read_ply, write_ply
from .sog import read_sog, set_webp_codec, write_sog
from .splat import read_splat, write_splat
from .spz import read_spz, write_spz

#: formats that can be written
FORMATS = ("ply", "compressed_ply", "splat", "spz", "sog")
#: formats that can be read (every written one, plus .ksplat)
READ_FORMATS = FORMATS + ("ksplat",)

#: file extensions (and the SOG folder layout's meta.json) -> format of a file with that name
EXTENSIONS = {".ply": "ply", ".compressed.ply": "compressed_ply", ".splat": "splat", ".spz": "spz",
              ".sog": "sog", "meta.json": "sog", ".ksplat": "ksplat"}

_WRITERS = {"ply": write_ply, "compressed_ply": write_compressed_ply, "splat": write_splat, "spz": write_spz,
            "sog": write_sog}
_READERS = {"ply": read_ply, "splat": read_splat, "spz": read_spz, "sog": read_sog, "ksplat": read_ksplat}

__all__ = ["FORMATS", "READ_FORMATS", "EXTENSIONS", "SplatFormatError", "declared_count", "detect_format",
           "read_splats", "set_webp_codec", "write_splats"]


def _format_from_name(path: PathLike) -> str | None:
    name = Path(path).name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    return None


def detect_format(path: PathLike) -> str:
    """Format of an existing file: from its extension, with .ply files sniffed for the chunk element."""
    fmt = _format_from_name(path)
    if fmt is None:
        raise SplatFormatError(path, "file name", f"unknown extension (expected one of "
                               f"{', '.join(sorted(set(EXTENSIONS)))})")
    if fmt in ("ply", "compressed_ply"):
        return "compressed_ply" if is_compressed_ply(read_ply_header(path)) else "ply"
    return fmt


def read_splats(path: PathLike) -> Splats:
    """Read any supported splat file into :class:`Splats` (Blender world space)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    fmt = detect_format(path)
    if fmt == "compressed_ply":
        return read_compressed_ply(path)
    return _READERS[fmt](path)


def write_splats(path: PathLike, splats: Splats, format: str | None = None, **options) -> None:
    """Write `splats` to `path` in `format` (one of FORMATS; default: from the file extension).

    `options` go to the format's writer (``write_ply(zero_rest_for_degree0=)``,
    ``write_compressed_ply(sort=)``, ``write_spz(version=, sh1_bits=, sh_rest_bits=, compresslevel=)``,
    ``write_sog(sort=)``; a ``.sog`` name writes the zip, ``meta.json`` the folder layout).
    """
    if format is None:
        format = _format_from_name(path)
        if format is None:
            raise SplatFormatError(path, "file name", "unknown extension; pass format= one of "
                                   f"{', '.join(FORMATS)}")
    if format not in _WRITERS:
        if format in READ_FORMATS:
            raise ValueError(f"splat format {format!r} can be read but not written (write one of "
                             f"{', '.join(FORMATS)})")
        raise ValueError(f"unknown splat format {format!r} (expected one of {', '.join(FORMATS)})")
    if not isinstance(splats, Splats):
        raise TypeError(f"write_splats needs a Splats, got {type(splats).__name__}")
    _WRITERS[format](path, splats, **options)


def declared_count(path: PathLike) -> int | None:
    """How many splats a file declares, from its header only (nothing is decoded; cheap for any
    size), or None when that cannot be told (unknown format, damaged header). For progress display:
    the real count comes from :func:`read_splats`."""
    import json
    import struct

    from ._common import BoundedGunzip
    from .sog import META_MAX_BYTES, _Source
    try:
        fmt = detect_format(path)
        if fmt in ("ply", "compressed_ply"):
            vertex = read_ply_header(path).element("vertex")
            return vertex.count if vertex is not None else None
        if fmt == "splat":
            return os.path.getsize(path) // 32
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if fmt == "spz":
            if head[:2] == b"\x1f\x8b":
                head = BoundedGunzip(path, head).read(16)
            return struct.unpack_from("<I", head, 8)[0] if head[:4] == b"NGSP" else None
        if fmt == "ksplat":
            return struct.unpack_from("<I", head, 16)[0] if len(head) >= 20 else None
        if fmt == "sog":
            src = _Source(path)
            try:
                meta = json.loads(src.read("meta.json" if src.zip is not None else src.meta_name, META_MAX_BYTES))
            finally:
                src.close()
            return int(meta["count"] if "count" in meta else meta["means"]["shape"][0])
    except (SplatFormatError, OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return None
    return None
