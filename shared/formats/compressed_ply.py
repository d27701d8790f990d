"""Compressed PLY as SuperSplat / PlayCanvas write it (splat-transform ``write-compressed-ply``).

Binary little-endian PLY with up to three elements:

* ``chunk`` (one per 256 splats, float): ``min_x min_y min_z max_x max_y max_z``,
  ``min_scale_x.. max_scale_z`` (log scales, bounds clamped to [-20, 20]) and, in current files,
  ``min_r min_g min_b max_r max_g max_b`` (base colour 0.5 + SH_C0 * f_dc). Older files have only
  the first 12 properties; their colours are stored directly as 0..1.
* ``vertex`` (uint): ``packed_position`` 11-10-11 bits (x in bits 21-31, y 11-20, z 0-10) as
  fractions of the chunk's bounds; ``packed_scale`` the same for log scales; ``packed_color``
  8-8-8-8 (r in bits 24-31 ... opacity = sigmoid in bits 0-7); ``packed_rotation`` 2+10+10+10:
  the index (into w, x, y, z) of the largest-magnitude component of the normalised quaternion in
  bits 30-31 (its sign made positive), and the other three, in order, each as
  ``unorm10(q * sqrt(2)/2 + 0.5)``. ``unorm_b(v) = floor(v * (2^b - 1) + 0.5)`` clamped.
* ``sh`` (optional, uchar): ``f_rest_0..3K-1`` (channel-major as in the 3DGS PLY), each
  ``trunc((v / 8 + 0.5) * 256)`` clamped to 0..255; read back as ``((b + 0.5) / 256 - 0.5) * 8``
  except 0 -> -4 and 255 -> +4.

The writer sorts the splats in Morton (Z-order) of their positions, as splat-transform does, so
that each chunk is spatially compact (pass ``sort=False`` to keep the order; see
:func:`morton_order`). Coordinates are written as they are, like the 3DGS PLY.

Round-trip bounds, per chunk of 256 splats with extent E (max - min) of a quantity:
position within E_x/2047/2 (x, z) and E_y/1023/2 (y); log scale likewise (bounds clamped to
[-20, 20]); base colour within E_c/255/2; opacity sigmoid within 0.5/255; each quaternion
component (sign aligned) within about 0.0015; SH coefficients within 4/256 on [-4, 4) (clamped
outside).
"""
from __future__ import annotations

import numpy as np

from ..sh import SH_C0
from ..splats import Splats, logit, sigmoid
from ._common import (
    PathLike,
    PlyHeader,
    SplatFormatError,
    build_splats,
    check_property,
    column,
    read_ply_elements,
    read_ply_header,
    write_binary_ply,
)

CHUNK_SIZE = 256
CHUNK_PROPS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
               "min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
_SQRT1_2 = np.sqrt(0.5)

# byte -> SH value, as the PlayCanvas reader decodes it (0 and 255 map to the ends of the range)
_SH_DECODE = ((np.where(np.arange(256) == 0, 0.0, np.where(np.arange(256) == 255, 1.0,
                                                            (np.arange(256) + 0.5) / 256.0)) - 0.5) * 8.0
              ).astype(np.float32)


def is_compressed_ply(header: PlyHeader) -> bool:
    """True when the PLY header has the ``chunk`` element of this format."""
    return header.element("chunk") is not None


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices that sort points in Morton (Z-curve) order of a 21-bit-per-axis grid over their bounds."""
    p = np.asarray(means, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    extent = np.where(hi - lo > 0, hi - lo, 1.0)
    grid = np.clip((p - lo) / extent * (2**21 - 1), 0, 2**21 - 1).astype(np.uint64)
    code = np.zeros(len(p), np.uint64)
    for axis in range(3):
        v = grid[:, axis]
        # spread the 21 bits of v to every third bit (standard magic-number bit interleave)
        v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
        v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
        v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
        code |= v << np.uint64(2 - axis)
    return np.argsort(code, kind="stable")


def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return np.clip(np.floor(v * t + 0.5), 0, t).astype(np.uint32)


def _normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(x - lo) / (hi - lo) per chunk, 0 at or below lo, 1 at or above hi, 0 for a tiny range."""
    rng = hi - lo
    t = np.where(rng < 1e-5, 0.0, (x - lo) / np.where(rng < 1e-5, 1.0, rng))
    return np.where(x <= lo, 0.0, np.where(x >= hi, 1.0, t))


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return (_unorm(t[..., 0], 11) << 21) | (_unorm(t[..., 1], 10) << 11) | _unorm(t[..., 2], 11)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([((v >> 21) & 0x7FF) / 2047.0, ((v >> 11) & 0x3FF) / 1023.0, (v & 0x7FF) / 2047.0], -1)


def pack_rotation(quats: np.ndarray) -> np.ndarray:
    """2+10+10+10 smallest-three encoding of quaternions [N, 4] (w, x, y, z)."""
    q = quats.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    largest = np.argmax(np.abs(q), axis=1)
    sign = np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)
    q = q * sign[:, None]
    out = largest.astype(np.uint32)
    # the three other components, in w, x, y, z order
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        comp = q[np.arange(len(q)), others[:, j]]
        out = (out << 10) | _unorm(comp * _SQRT1_2 + 0.5, 10)
    return out


def unpack_rotation(v: np.ndarray) -> np.ndarray:
    """Quaternions [N, 4] (w, x, y, z) from the 2+10+10+10 encoding."""
    v = v.astype(np.uint32)
    abc = np.stack([(v >> 20) & 0x3FF, (v >> 10) & 0x3FF, v & 0x3FF], -1) / 1023.0
    abc = (abc - 0.5) / _SQRT1_2
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc * abc).sum(axis=1)))
    largest = (v >> 30).astype(np.int64)
    q = np.empty((len(v), 4))
    rows = np.arange(len(v))
    q[rows, largest] = m
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        q[rows, others[:, j]] = abc[:, j]
    return q


def _quantize_sh(shN: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """u8 [N, 3K] channel-major: trunc((v / 8 + 0.5) * 256) clamped to 0..255, in float64 like the JS."""
    n, k = shN.shape[:2]
    out = np.empty((n, 3 * k), np.uint8)
    for start in range(0, n, block):  # blocks keep the float64 temporaries in cache
        v = shN[start: start + block].transpose(0, 2, 1).reshape(-1, 3 * k).astype(np.float64)
        v *= 32.0
        v += 128.0
        np.floor(v, out=v)  # = trunc wherever the result survives the clamp below
        np.clip(v, 0.0, 255.0, out=v)
        out[start: start + block] = v
    return out


def write_compressed_ply(path: PathLike, splats: Splats, sort: bool = True) -> None:
    """Write `splats` as a SuperSplat compressed PLY (chunks of 256, quantised; see module doc)."""
    n = len(splats)
    order = morton_order(splats.means) if sort else np.arange(n)
    k = splats.shN.shape[1]
    if n == 0:
        elements = [("chunk", [(p, "float") for p in CHUNK_PROPS], np.zeros((0, 18), "<f4")),
                    ("vertex", [(p, "uint") for p in VERTEX_PROPS], np.zeros((0, 4), "<u4"))]
        if k:
            elements.append(("sh", [(f"f_rest_{i}", "uchar") for i in range(3 * k)], np.zeros((0, 3 * k), "u1")))
        write_binary_ply(path, elements)
        return
    num_chunks = -(-n // CHUNK_SIZE)
    padded = num_chunks * CHUNK_SIZE
    # pad the last chunk by repeating the last splat, as the reference does, so bounds are unchanged
    pad = order[np.minimum(np.arange(padded), n - 1)]

    def chunked(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64)[pad].reshape(num_chunks, CHUNK_SIZE, *a.shape[1:])

    pos = chunked(splats.means)
    scl = chunked(splats.scales)
    # float32 like the JS, which stores the colours back into a Float32Array before packing
    col = chunked((0.5 + SH_C0 * splats.sh0.astype(np.float64)).astype(np.float32))
    p_lo, p_hi = pos.min(axis=1, keepdims=True), pos.max(axis=1, keepdims=True)
    s_lo = np.clip(scl.min(axis=1, keepdims=True), -20, 20)
    s_hi = np.clip(scl.max(axis=1, keepdims=True), -20, 20)
    c_lo, c_hi = col.min(axis=1, keepdims=True), col.max(axis=1, keepdims=True)

    chunk = np.concatenate([p_lo, p_hi, s_lo, s_hi, c_lo, c_hi], axis=2).reshape(num_chunks, 18)
    packed_pos = _pack_111011(_normalize(pos, p_lo, p_hi)).reshape(padded)[:n]
    packed_scl = _pack_111011(_normalize(scl, s_lo, s_hi)).reshape(padded)[:n]
    cn = _normalize(col, c_lo, c_hi).reshape(padded, 3)[:n]
    alpha = sigmoid(splats.opacities[order]).astype(np.float64)
    packed_col = ((_unorm(cn[:, 0], 8) << 24) | (_unorm(cn[:, 1], 8) << 16)
                  | (_unorm(cn[:, 2], 8) << 8) | _unorm(alpha, 8))
    vertex = np.stack([packed_pos, pack_rotation(splats.quats[order]), packed_scl, packed_col], axis=1)

    elements = [("chunk", [(p, "float") for p in CHUNK_PROPS], chunk.astype("<f4")),
                ("vertex", [(p, "uint") for p in VERTEX_PROPS], vertex.astype("<u4"))]
    if k:
        sh = _quantize_sh(splats.shN)[order]  # permute the bytes, not the floats
        elements.append(("sh", [(f"f_rest_{i}", "uchar") for i in range(3 * k)], sh))
    write_binary_ply(path, elements)


def read_compressed_ply(path: PathLike, header: PlyHeader | None = None) -> Splats:
    """Read a SuperSplat compressed PLY; SplatFormatError naming the element/property on bad input."""
    header = header or read_ply_header(path)
    if header.format != "binary_little_endian":
        raise SplatFormatError(path, "header", f"compressed PLY must be binary_little_endian, not {header.format}")
    names = [e.name for e in header.elements]
    unexpected = [e for e in names if e not in ("chunk", "vertex", "sh")]
    if unexpected or "chunk" not in names or "vertex" not in names:
        raise SplatFormatError(path, "header", f"unexpected element layout {names} for a compressed PLY "
                               "(expected chunk, vertex and optionally sh)")
    chunk_el, vertex_el, sh_el = header.element("chunk"), header.element("vertex"), header.element("sh")
    assert chunk_el is not None and vertex_el is not None       # checked just above
    n = vertex_el.count
    if chunk_el.count != -(-n // CHUNK_SIZE):
        raise SplatFormatError(path, "element 'chunk'", f"{chunk_el.count} chunks for {n} splats "
                               f"(expected {-(-n // CHUNK_SIZE)}, one per {CHUNK_SIZE})")
    chunk_names = chunk_el.property_names()
    has_color = len(chunk_names) == 18
    if len(chunk_names) not in (12, 18):
        raise SplatFormatError(path, "element 'chunk'", f"{len(chunk_names)} properties (expected 12 or 18)")
    k = 0
    if sh_el is not None:
        m = len(sh_el.properties)
        if m not in (9, 24, 45):
            raise SplatFormatError(path, "element 'sh'", f"{m} f_rest properties (expected 9, 24 or 45)")
        if sh_el.count != n:
            raise SplatFormatError(path, "element 'sh'", f"{sh_el.count} rows for {n} splats")
        k = m // 3
    data = read_ply_elements(path, header, set(names))

    def chunk_col(name: str) -> np.ndarray:
        return column(path, header, chunk_el, data["chunk"], name, ("f4",)).astype(np.float64)

    ci = np.arange(n) // CHUNK_SIZE

    def lerp3(prefix: tuple[str, str], axes: tuple[str, str, str], t: np.ndarray) -> np.ndarray:
        lo = np.stack([chunk_col(prefix[0] + a) for a in axes], -1)[ci]
        hi = np.stack([chunk_col(prefix[1] + a) for a in axes], -1)[ci]
        return lo * (1 - t) + hi * t

    vcol = {p: column(path, header, vertex_el, data["vertex"], p, ("u4",)) for p in VERTEX_PROPS}
    means = lerp3(("min_", "max_"), ("x", "y", "z"), _unpack_111011(vcol["packed_position"]))
    scales = lerp3(("min_scale_", "max_scale_"), ("x", "y", "z"), _unpack_111011(vcol["packed_scale"]))
    c = vcol["packed_color"]
    c8 = np.stack([(c >> 24) & 0xFF, (c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF], -1) / 255.0
    rgb = lerp3(("min_", "max_"), ("r", "g", "b"), c8[:, :3]) if has_color else c8[:, :3]
    quats = unpack_rotation(vcol["packed_rotation"])
    if sh_el is not None and k:
        for i in range(3 * k):
            check_property(path, sh_el, f"f_rest_{i}", ("u1",))
        order = [sh_el.property_names().index(f"f_rest_{i}") for i in range(3 * k)]
        raw = data["sh"].view(np.uint8).reshape(n, 3 * k)[:, order]
        shN = _SH_DECODE[raw].reshape(n, 3, k).transpose(0, 2, 1)
    else:
        shN = np.zeros((n, 0, 3))
    with np.errstate(invalid="ignore", over="ignore"):
        arrays = dict(means=means, quats=quats, scales=scales, opacities=logit(c8[:, 3], eps=1e-6),
                      sh0=(rgb - 0.5) / SH_C0, shN=np.ascontiguousarray(shN))
    return build_splats(path, arrays, {
        "means": [f"element 'chunk' bounds of {a}" for a in "xyz"],
        "scales": [f"element 'chunk' bounds of scale_{a}" for a in "xyz"],
        "sh0": [f"element 'chunk' bounds of {c}" for c in "rgb"]})
