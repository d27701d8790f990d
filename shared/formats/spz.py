"""Niantic's ``.spz`` (nianticlabs/spz, ``load-spz.cc``): gzip of a 16-byte header + column data.

Header (little-endian): u32 magic 0x5053474e ("NGSP"), u32 version, u32 N, u8 SH degree,
u8 fractional bits, u8 flags (0x1 antialiased, 0x2 extensions follow), u8 reserved. Then, per
attribute for all splats: positions (3 x 24-bit signed fixed point with `fractional bits`;
version 1: 3 x float16), alphas (u8 sigmoid * 255), colours (u8 sh0 * 0.15 * 255 + 127.5: a
"wide" range, sh0 in about [-3.3, 3.3]), scales (u8 (log scale + 10) * 16), rotations
(version 3: u32 smallest-three, 2-bit index of the largest of x, y, z, w then per other component
a sign bit and 9 bits of |q| / sqrt(1/2); versions 1-2: u8 x, y, z of the w >= 0 quaternion at
q * 127.5 + 127.5), SH (u8 round(v * 128) + 128 per value, coefficient-major with RGB inner,
i.e. exactly our ``shN[N, K, 3]`` layout; the writer snaps degree-1 values to 5 bits and higher
to 4 bits, the spec's defaults, to help gzip).

Coordinates: the spec stores RUB (x right, y up, z back: three.js / OpenGL). Our world is
Blender's RFU (x right, y forward, z up), so the writer rotates by -90 degrees about X
(``(x, y, z) -> (x, z, -y)``, quaternions and SH rotated with it, as ``coordinateConverter(RFU,
RUB)`` in the reference does) and the reader rotates back. A Z-up Blender scene therefore
opens upright in Y-up web viewers, and a Y-up .spz capture opens upright in Blender.

Version 4 (the reference's default since 2025, ``NgspFileHeader``) is not gzipped: a 32-byte
header (magic, version, N, SH degree, fractional bits, flags, u8 number of streams, u32 byte
offset of the table of contents, 12 reserved bytes), then the TOC (per stream u64 compressed and
u64 uncompressed size) and one zstd frame per non-empty column, in the order above. Its columns
are those of version 3 (24-bit positions, smallest-three rotations). Writing defaults to version
4 (zstd level 12, as the reference); ``version=3`` or ``2`` writes the gzipped forms for older
readers. zstd comes from the ``zstandard`` package, imported only on the version-4 path.

Reading supports versions 1-4 (v1-3 gzipped or raw), SH degree 0-4 (degree 4 is truncated to 3,
with a warning, since our model stops at 3). Extensions (flag 0x2; the reference's
``extensions/README.md``): records ``u32 type, u32 byte length, payload`` back to back, in version
4 between the 32-byte header and the TOC, in versions 1-3 after the columns (at most
``MAX_EXTENSION_BYTES``). ``SPZ_ADOBE_coordinate_system`` (0xADBE0003, a u32: the axes the columns
are stored in, 1-16 as the reference's ``CoordinateSystem``, 0 meaning RUB) is applied: the file's
axes are turned (or mirrored, for a left-handed system) into ours, positions, rotations, scales
and SH alike. ``SPZ_ADOBE_safe_orbit_camera`` (0xADBE0002, viewer metadata) is skipped; any other
type is skipped with a warning, as the reference does.
Decompression is bounded by the header: a gzip stream is inflated only as far as the declared
splats need (and refused if more follows), a zstd stream only to its declared size, and a header
that declares more data than the compressed bytes could hold is refused before anything is
inflated. The antialiased flag is not kept.

Round-trip bounds (read(write(s)) vs s, coordinates rotated and back): position within
2^-(fb+1) m, fb = 12 (0.12 mm) unless the scene is larger than 2048 m, when fewer fractional bits
are used so that it fits; log scale within 1/32 on [-10, 5.94] (clamped outside); opacity
sigmoid within 0.5/255; sh0 within 0.5/38.25 on about [-3.33, 3.33]; quaternion components
(sign aligned) within 0.002 (v3); v2 keeps x, y, z (of the w >= 0 quaternion, in RUB) within
0.5/127.5 but derives w, so near w = 0 the rotation can be off by up to ~13 degrees; SH within
1/32 + 1/256 (degree 1) and 1/16 + 1/256 (degree 2-3) on [-1, 1) (clamped outside; the +1/256 is
the reference's rounding to 1/128 before it snaps to the bucket). The SH bounds hold per
coefficient in the file's RUB frame; rotating back to ours mixes the coefficients of a band
(the band's error norm is unchanged).
"""
from __future__ import annotations

import gzip
import warnings

import numpy as np

from ..sh import rotate_sh
from ..splats import SplatError, Splats, logit, sigmoid
from ._common import GZIP_MAX_RATIO, BoundedGunzip, PathLike, SplatFormatError, bounded_zstd, check_declared_size

MAGIC = 0x5053474E
HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("num_points", "<u4"), ("sh_degree", "u1"),
                   ("fractional_bits", "u1"), ("flags", "u1"), ("reserved", "u1")])
# version 4 (load-spz.cc NgspFileHeader): 32 bytes, then the TOC (u64 compressed, u64 uncompressed
# size per stream) at toc_offset, then the zstd frames in TOC order
HEADER_V4 = np.dtype([("magic", "<u4"), ("version", "<u4"), ("num_points", "<u4"), ("sh_degree", "u1"),
                      ("fractional_bits", "u1"), ("flags", "u1"), ("num_streams", "u1"),
                      ("toc_offset", "<u4"), ("reserved", "u1", (12,))])
assert HEADER_V4.itemsize == 32
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
COLOR_SCALE = 0.15
SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
_SQRT1_2 = np.float32(np.sqrt(0.5))

_SH_DECODE = ((np.arange(256, dtype=np.float32) - np.float32(128.0)) / np.float32(128.0)).astype(np.float32)

# Blender world (RFU) -> spz's RUB: (x, y, z) -> (x, z, -y), a -90 degree turn about X.
RFU_TO_RUB = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

EXT_SAFE_ORBIT_CAMERA = 0xADBE0002
EXT_COORDINATE_SYSTEM = 0xADBE0003
MAX_EXTENSION_BYTES = 1 << 20
# the reference's CoordinateSystem values: the directions of the file's x, y and z axes
COORDINATE_SYSTEMS = {1: "LDB", 2: "RDB", 3: "LUB", 4: "RUB", 5: "LDF", 6: "RDF", 7: "LUF", 8: "RUF",
                      9: "LFD", 10: "RFD", 11: "LFU", 12: "RFU", 13: "LBD", 14: "RBD", 15: "LBU", 16: "RBU"}
# each direction in our world (Blender's RFU: x right, y forward, z up)
_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "F": (0, 1, 0), "B": (0, -1, 0), "U": (0, 0, 1), "D": (0, 0, -1)}


def axes_to_world(system: str) -> np.ndarray:
    """3x3 signed permutation whose columns are the file's x, y, z axes of ``system`` (e.g. "RUB")
    in our world: ``p_world = M @ p_file``."""
    return np.array([_DIRECTIONS[c] for c in system], np.float64).T


def change_axes(splats: Splats, m: np.ndarray) -> Splats:
    """``splats`` given in the axes of ``m`` (a signed permutation, :func:`axes_to_world`), in our
    world. A proper ``m`` is a rotation (``Splats.transform``); an improper one (a left-handed
    file) mirrors: each Gaussian's rotation becomes M R M^T (the quaternion (w, det(M) M v)), its
    scales follow the axes (|M| s), SH coefficients follow g(d) = f(M^T d) (exact on any
    orthogonal matrix)."""
    m = np.asarray(m, np.float64)
    if np.linalg.det(m) > 0:
        t = np.eye(4)
        t[:3, :3] = m
        return splats.transform(t)
    q = splats.quats.astype(np.float64)
    quats = np.concatenate([q[:, :1], -(q[:, 1:] @ m.T)], axis=1)
    return Splats(means=splats.means.astype(np.float64) @ m.T, quats=quats,
                  scales=splats.scales @ np.abs(m).T, opacities=splats.opacities, sh0=splats.sh0,
                  shN=rotate_sh(splats.shN, m) if splats.shN.shape[1] else splats.shN)


def _parse_extensions(path: PathLike, data: bytes) -> str:
    """The coordinate system that the extension records ``data`` declare for the columns ("RUB"
    when none does)."""
    system = "RUB"
    off = 0
    while off < len(data):
        if len(data) - off < 8:
            raise SplatFormatError(path, "extensions", f"{len(data) - off} stray bytes at the end of the "
                                   "extension records (a record starts with u32 type, u32 length)")
        kind, length = (int(v) for v in np.frombuffer(data, "<u4", 2, off))
        off += 8
        if length > len(data) - off:
            raise SplatFormatError(path, f"extension 0x{kind:08x}", f"declares {length} bytes, "
                                   f"{len(data) - off} left")
        payload = data[off: off + length]
        off += length
        if kind == EXT_COORDINATE_SYSTEM:
            if length < 4:
                raise SplatFormatError(path, "extension coordinate_system", f"{length} bytes (needs a u32)")
            value = int(np.frombuffer(payload, "<u4", 1)[0])
            if value not in COORDINATE_SYSTEMS and value != 0:
                raise SplatFormatError(path, "extension coordinate_system", f"unknown coordinate system "
                                       f"{value} (0-16)")
            system = COORDINATE_SYSTEMS.get(value, "RUB")      # 0, unspecified: RUB, as the reference
        elif kind != EXT_SAFE_ORBIT_CAMERA:
            warnings.warn(f"{path}: unknown .spz extension 0x{kind:08x} ({length} bytes) skipped", stacklevel=4)
    return system


def _to_u8(x: np.ndarray) -> np.ndarray:
    """The reference's toUint8: round half away from zero, clamp to 0..255."""
    return np.clip(np.floor(np.asarray(x, np.float64) + 0.5), 0, 255).astype(np.uint8)


def _round_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def pack_quats_v3(quats_xyzw: np.ndarray) -> np.ndarray:
    """Smallest-three encoding (u32 [N]) of quaternions given as x, y, z, w."""
    q = quats_xyzw.astype(np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rows = np.arange(len(q))
    largest = np.argmax(np.abs(q), axis=1)
    negate = q[rows, largest] < 0
    comp = largest.astype(np.uint32)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        v = q[rows, others[:, j]]
        negbit = ((v < 0) ^ negate).astype(np.uint32)
        # |v| <= sqrt(1/2) in exact arithmetic; the clip only guards float rounding at the boundary
        mag = np.minimum((np.float32(511) * (np.abs(v) / _SQRT1_2) + np.float32(0.5)).astype(np.uint32), 511)
        comp = (comp << 10) | (negbit << 9) | mag
    return comp


def unpack_quats_v3(comp: np.ndarray) -> np.ndarray:
    """Quaternions [N, 4] as x, y, z, w from the smallest-three encoding."""
    comp = comp.astype(np.uint32)
    largest = (comp >> 30).astype(np.int64)
    rows = np.arange(len(comp))
    q = np.zeros((len(comp), 4), np.float32)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in (2, 1, 0):  # the last component packed sits in the lowest bits
        mag = (comp & 511).astype(np.float32)
        neg = ((comp >> 9) & 1).astype(bool)
        comp = comp >> 10
        v = _SQRT1_2 * mag / np.float32(511)
        q[rows, others[:, j]] = np.where(neg, -v, v)
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    return q


def pack_quats_v2(quats_xyzw: np.ndarray) -> np.ndarray:
    """u8 [N, 3]: x, y, z of the normalised quaternion with w >= 0, at q * 127.5 + 127.5."""
    q = quats_xyzw.astype(np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    q = q * np.where(q[:, 3:4] < 0, np.float32(-127.5), np.float32(127.5)) + np.float32(127.5)
    return _to_u8(q[:, :3])


def unpack_quats_v2(r: np.ndarray) -> np.ndarray:
    xyz = r.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1)))
    return np.concatenate([xyz, w[:, None]], axis=1).astype(np.float32)


def _quantize_sh(x: np.ndarray, bits: int, block: int = 1 << 16) -> np.ndarray:
    """The reference's quantizeSH (legacy [-1, 1] form): round(x * 128) + 128 snapped to 2^(8-bits) buckets."""
    bucket = 1 << (8 - bits)
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), block):  # blocks keep the temporaries in cache
        y = x[start: start + block] * np.float32(128.0)
        q = np.abs(y)
        q += np.float32(0.5)
        np.floor(q, out=q)
        np.copysign(q, y, out=q)  # round half away from zero, like std::round
        q += np.float32(128 + bucket // 2)
        q *= np.float32(1.0 / bucket)  # exact: a power of two
        np.floor(q, out=q)  # = C's truncating division once clamped at 0
        q *= np.float32(bucket)
        np.clip(q, 0.0, 255.0, out=q)
        out[start: start + block] = q
    return out


def _pack_columns(splats: Splats, version: int, sh1_bits: int, sh_rest_bits: int
                  ) -> tuple[int, int, int, list[np.ndarray]]:
    """(N, SH degree, fractional bits, [positions, alphas, colours, scales, rotations, sh]) as
    uint8/uint32 column arrays of the spz layout, for `splats` in our world (RFU)."""
    if version not in (2, 3, 4):
        raise ValueError(f"spz version {version} cannot be written (2, 3 or 4)")
    if not (1 <= sh1_bits <= 8 and 1 <= sh_rest_bits <= 8):
        raise ValueError(f"SH bits must be 1..8, got sh1_bits={sh1_bits}, sh_rest_bits={sh_rest_bits}")
    s = splats.transform(RFU_TO_RUB)
    n, k = len(s), s.shN.shape[1]
    degree = {v: d for d, v in SH_DIM.items()}[k]

    max_abs = float(np.abs(s.means).max()) if n else 0.0
    frac_bits = 12
    while frac_bits > 0 and max_abs * (1 << frac_bits) > 2**23 - 1:
        frac_bits -= 1
    if max_abs * (1 << frac_bits) > 2**23 - 1:
        raise ValueError(f"positions up to {max_abs:g} m do not fit spz's 24-bit fixed point")
    fixed = _round_away(s.means.astype(np.float64) * (1 << frac_bits)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], -1).astype(np.uint8)

    alphas = _to_u8(sigmoid(s.opacities) * np.float32(255.0))
    colors = _to_u8(s.sh0 * np.float32(COLOR_SCALE * 255.0) + np.float32(0.5 * 255.0))
    scales = _to_u8((s.scales + np.float32(10.0)) * np.float32(16.0))
    xyzw = s.quats[:, [1, 2, 3, 0]]
    rotations = pack_quats_v3(xyzw).astype("<u4") if version >= 3 else pack_quats_v2(xyzw)
    sh = np.empty((n, k, 3), np.uint8)
    if k:
        sh[:, :3] = _quantize_sh(s.shN[:, :3], sh1_bits)
        sh[:, 3:] = _quantize_sh(s.shN[:, 3:], sh_rest_bits)
    return n, degree, frac_bits, [positions, alphas, colors, scales, rotations, sh]


def encode_spz(splats: Splats, version: int = 3, sh1_bits: int = 5, sh_rest_bits: int = 4,
               antialiased: bool = False) -> bytes:
    """The uncompressed legacy (v2/v3) .spz payload (16-byte header + columns) for `splats`."""
    if version not in (2, 3):
        raise ValueError(f"encode_spz makes the legacy payload of version 2 or 3, not {version}")
    n, degree, frac_bits, cols = _pack_columns(splats, version, sh1_bits, sh_rest_bits)
    header = np.zeros(1, HEADER)
    header[0] = (MAGIC, version, n, degree, frac_bits, FLAG_ANTIALIASED if antialiased else 0, 0)
    return b"".join(a.tobytes() for a in [header] + cols)


def encode_spz_v4(splats: Splats, sh1_bits: int = 5, sh_rest_bits: int = 4, antialiased: bool = False,
                  level: int = 12) -> bytes:
    """A complete version-4 .spz file: 32-byte NGSP header, TOC, one zstd frame per non-empty column."""
    try:
        import zstandard
    except ImportError:
        raise RuntimeError("writing .spz version 4 needs the 'zstandard' package (write version 3 "
                           "instead, or install zstandard)") from None
    n, degree, frac_bits, cols = _pack_columns(splats, 4, sh1_bits, sh_rest_bits)
    raw = [c.tobytes() for c in cols if c.size]
    cctx = zstandard.ZstdCompressor(level=level)
    frames = [cctx.compress(r) for r in raw]
    header = np.zeros(1, HEADER_V4)
    header[0]["magic"], header[0]["version"], header[0]["num_points"] = MAGIC, 4, n
    header[0]["sh_degree"], header[0]["fractional_bits"] = degree, frac_bits
    header[0]["flags"] = FLAG_ANTIALIASED if antialiased else 0
    header[0]["num_streams"], header[0]["toc_offset"] = len(frames), HEADER_V4.itemsize
    toc = np.array([(len(f), len(r)) for f, r in zip(frames, raw, strict=True)], "<u8").reshape(-1, 2)
    return header.tobytes() + toc.tobytes() + b"".join(frames)


def _column_sizes(n: int, version: int, degree: int) -> dict[str, int]:
    k = SH_DIM[degree]
    return {"positions": n * (6 if version == 1 else 9), "alphas": n, "colors": n * 3, "scales": n * 3,
            "rotations": n * (4 if version >= 3 else 3), "sh": n * k * 3}


def _check_header(path: PathLike, version: int, degree: int, frac_bits: int, flags: int) -> None:
    if degree not in SH_DIM:
        raise SplatFormatError(path, "header sh_degree", f"SH degree {degree} is not supported (0-4)")
    if frac_bits > 23:
        raise SplatFormatError(path, "header fractional_bits", f"{frac_bits} fractional bits (at most 23 fit)")


def _decode_columns(path: PathLike, version: int, n: int, degree: int, frac_bits: int,
                    cols: dict[str, np.ndarray], system: str = "RUB") -> Splats:
    """Splats (in our world, RFU) from the uint8 column arrays of any version, stored in the axes
    ``system`` (RUB unless an extension says otherwise)."""
    k = SH_DIM[degree]
    if version == 1:
        means = cols["positions"].view("<f2").reshape(n, 3).astype(np.float32)
    else:
        b = cols["positions"].reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = fixed.astype(np.float32) * np.float32(1.0 / (1 << frac_bits))
    if version >= 3:
        xyzw = unpack_quats_v3(cols["rotations"].view("<u4"))
    else:
        xyzw = unpack_quats_v2(cols["rotations"].reshape(n, 3))
    quats = xyzw[:, [3, 0, 1, 2]]
    bad = ~(np.einsum("ij,ij->i", quats, quats) > 0)
    quats[bad] = (1.0, 0.0, 0.0, 0.0)  # a v2 byte triple outside the unit ball decodes to 0
    sh = _SH_DECODE[cols["sh"].reshape(n, k, 3)]
    if degree == 4:
        warnings.warn(f"{path}: SH degree 4 truncated to 3 (SplatBridge stores degree 0-3)", stacklevel=4)
        sh = sh[:, :15]
    try:
        rub = Splats(
            means=means,
            quats=quats,
            scales=cols["scales"].reshape(n, 3).astype(np.float32) / np.float32(16.0) - np.float32(10.0),
            opacities=logit(cols["alphas"].astype(np.float64) / 255.0),
            sh0=((cols["colors"].reshape(n, 3).astype(np.float32) / np.float32(255.0) - np.float32(0.5))
                 / np.float32(COLOR_SCALE)),
            shN=np.ascontiguousarray(sh),
        )
    except SplatError as exc:
        raise SplatFormatError(path, f"field '{exc.field}'", str(exc)) from None
    try:
        return change_axes(rub, axes_to_world(system))
    except SplatError as exc:
        raise SplatFormatError(path, f"field '{exc.field}'", str(exc)) from None


def _parse_legacy_header(path: PathLike, head: bytes) -> tuple[int, int, int, int, int]:
    if len(head) < 8:
        raise SplatFormatError(path, "header", f"only {len(head)} bytes (a .spz header is 16)")
    magic, version = np.frombuffer(head, "<u4", 2)
    if magic != MAGIC:
        raise SplatFormatError(path, "header magic", f"0x{int(magic):08x} is not 0x{MAGIC:08x} ('NGSP'); "
                               "not a .spz file")
    if version not in (1, 2, 3):
        raise SplatFormatError(path, "header version", f"version {int(version)} is not supported in a gzip "
                               "stream (1, 2 or 3; version 4 files are not gzipped)")
    if len(head) < HEADER.itemsize:
        raise SplatFormatError(path, "header", f"truncated: {len(head)} bytes (a .spz header is 16)")
    h = np.frombuffer(head, HEADER, 1)[0]
    version, n, degree = int(h["version"]), int(h["num_points"]), int(h["sh_degree"])
    frac_bits, flags = int(h["fractional_bits"]), int(h["flags"])
    _check_header(path, version, degree, frac_bits, flags)
    return version, n, degree, frac_bits, flags


def decode_spz(path: PathLike, data: bytes) -> Splats:
    """Splats (in our world, RFU) from an uncompressed legacy (v1-v3) payload; `path` is for messages."""
    version, n, degree, frac_bits, flags = _parse_legacy_header(path, data[:HEADER.itemsize])
    sizes = _column_sizes(n, version, degree)
    need = HEADER.itemsize + sum(sizes.values())
    if len(data) < need:
        raise SplatFormatError(path, "data", f"truncated: {n} splats of SH degree {degree} (version "
                               f"{version}) need {need} bytes after decompression, found {len(data)}")
    cols: dict[str, np.ndarray] = {}
    off = HEADER.itemsize
    for name, size in sizes.items():
        cols[name] = np.frombuffer(data, np.uint8, size, off)
        off += size
    system = _parse_extensions(path, data[need:]) if flags & FLAG_EXTENSIONS else "RUB"
    return _decode_columns(path, version, n, degree, frac_bits, cols, system)


def _read_gzipped(path: PathLike, raw: bytes) -> Splats:
    """A gzipped legacy file, decompressed no further than its header declares."""
    gz = BoundedGunzip(path, raw)
    head = gz.read(HEADER.itemsize, "header")
    version, n, degree, frac_bits, flags = _parse_legacy_header(path, head)
    sizes = _column_sizes(n, version, degree)
    total = sum(sizes.values())
    check_declared_size(path, "header num_points", HEADER.itemsize + total, len(raw), GZIP_MAX_RATIO)
    try:
        body = gz.read(total, f"the {n} splats the header declares")
    except SplatFormatError as exc:
        if "truncated" not in exc.problem:
            raise
        raise SplatFormatError(path, "data", f"truncated: {n} splats of SH degree {degree} (version "
                               f"{version}) need {HEADER.itemsize + total} bytes after decompression, found "
                               f"{exc.problem.split('ended after ')[1].split(' ')[0]} after the header") from None
    system = "RUB"
    if flags & FLAG_EXTENSIONS:
        system = _parse_extensions(path, gz.read_rest(MAX_EXTENSION_BYTES, "the extension records"))
    else:
        gz.expect_end(f"the {n} splats its header declares")
    cols: dict[str, np.ndarray] = {}
    off = 0
    for name, size in sizes.items():
        cols[name] = np.frombuffer(body, np.uint8, size, off)
        off += size
    return _decode_columns(path, version, n, degree, frac_bits, cols, system)


def _read_v4(path: PathLike, raw: bytes) -> Splats:
    """A version-4 file: NGSP header, TOC, zstd streams (each decompressed to exactly its size)."""
    if len(raw) < HEADER_V4.itemsize:
        raise SplatFormatError(path, "header", f"truncated: {len(raw)} bytes (a version 4 header is 32)")
    h = np.frombuffer(raw, HEADER_V4, 1)[0]
    version, n, degree = int(h["version"]), int(h["num_points"]), int(h["sh_degree"])
    frac_bits, flags = int(h["fractional_bits"]), int(h["flags"])
    if version != 4:
        raise SplatFormatError(path, "header version", f"version {version} is not supported (1-4)")
    _check_header(path, version, degree, frac_bits, flags)
    sizes = {k: v for k, v in _column_sizes(n, version, degree).items() if v}
    num_streams, toc = int(h["num_streams"]), int(h["toc_offset"])
    if num_streams != len(sizes):
        raise SplatFormatError(path, "header num_streams", f"{num_streams} streams, expected {len(sizes)} for "
                               f"{n} splats of SH degree {degree}")
    if toc < HEADER_V4.itemsize or toc + 16 * num_streams > len(raw):
        raise SplatFormatError(path, "header toc_offset", f"table of contents at byte {toc} (+{16 * num_streams}) "
                               f"does not fit the file's {len(raw)} bytes")
    system = _parse_extensions(path, raw[HEADER_V4.itemsize: toc]) if flags & FLAG_EXTENSIONS else "RUB"
    entries = np.frombuffer(raw, "<u8", 2 * num_streams, toc).reshape(-1, 2)
    off = toc + 16 * num_streams
    cols: dict[str, np.ndarray] = {name: np.zeros(0, np.uint8) for name in ("positions", "alphas", "colors",
                                                                            "scales", "rotations", "sh")}
    for (name, size), (csize, usize) in zip(sizes.items(), entries.tolist(), strict=True):
        if usize != size:
            raise SplatFormatError(path, f"stream '{name}'", f"declares {usize} bytes, expected {size} for {n} "
                                   f"splats of SH degree {degree}")
        if csize > len(raw) - off:
            raise SplatFormatError(path, f"stream '{name}'", f"truncated: {csize} compressed bytes declared, "
                                   f"{len(raw) - off} left in the file")
        cols[name] = np.frombuffer(bounded_zstd(path, f"stream '{name}'", raw[off: off + csize], size), np.uint8)
        off += csize
    if off != len(raw):
        raise SplatFormatError(path, "data", f"{len(raw) - off} bytes after the last stream")
    return _decode_columns(path, version, n, degree, frac_bits, cols, system)


def write_spz(path: PathLike, splats: Splats, version: int = 4, sh1_bits: int = 5, sh_rest_bits: int = 4,
              compresslevel: int | None = None) -> None:
    """Write `splats` as .spz: version 4 (zstd, the reference's default) unless `version` is 3 or 2
    (gzipped, for older readers). `compresslevel`: zstd level (default 12, the reference's) for v4,
    gzip level (default 6) for v2/v3."""
    if version == 4:
        data = encode_spz_v4(splats, sh1_bits=sh1_bits, sh_rest_bits=sh_rest_bits,
                             level=12 if compresslevel is None else compresslevel)
        with open(path, "wb") as f:
            f.write(data)
        return
    payload = encode_spz(splats, version=version, sh1_bits=sh1_bits, sh_rest_bits=sh_rest_bits)
    with open(path, "wb") as f:
        # mtime=0: the same splats give the same bytes
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6 if compresslevel is None else compresslevel,
                           mtime=0) as gz:
            gz.write(payload)


def read_spz(path: PathLike) -> Splats:
    """Read a .spz file of any version (v4 NGSP+zstd, gzipped v1-v3, or a raw v1-v3 payload).

    Decompression is bounded by the header: no more than the declared splats' bytes are ever
    produced, so a decompression bomb fails with SplatFormatError at small memory cost.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        return _read_gzipped(path, raw)
    if len(raw) >= 8 and raw[:4] == b"NGSP" and int(np.frombuffer(raw, "<u4", 1, 4)[0]) >= 4:
        return _read_v4(path, raw)
    return decode_spz(path, raw)
