"""The ``.splat`` format of antimatter15/splat (the WebGL viewer), also read by SuperSplat & co.

No header: N records of 32 bytes, little-endian::

    f32 x, y, z            position
    f32 sx, sy, sz         linear scale (exp of the log scale)
    u8  r, g, b, a         r,g,b = (0.5 + SH_C0 * sh0) * 255, a = sigmoid(opacity) * 255
    u8  qw, qx, qy, qz     normalised quaternion * 128 + 128

Bytes are rounded to nearest (ties to even) and clamped to 0..255, as the viewer's
``Uint8ClampedArray`` does. Degree 0 only: SH rest coefficients are dropped on write and read
back as zeros. Colours outside 0..1 are clamped. The viewer's converter also sorts splats by size
and opacity; this writer keeps the given order. Coordinates are written as they are (the format
has no convention of its own; it carries the PLY's coordinates unchanged).

Round-trip bounds (read(write(s)) vs s): position exact; log scale within 1e-6 (f32 exp/log);
base colour 0.5 + SH_C0 * sh0 (if in 0..1) within 0.5/255; opacity sigmoid within 0.5/255;
unit quaternion components within ~1/128 (sign of q is free).
"""
from __future__ import annotations

import os

import numpy as np

from ..sh import SH_C0
from ..splats import Splats, logit, sigmoid
from ._common import PathLike, SplatFormatError, build_splats

RECORD = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)),
                   ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert RECORD.itemsize == 32

# Opacity bytes 0 and 255 map to these probabilities (not 0 and 1, whose logits are infinite);
# re-encoding gives the same byte back.
_ALPHA_EPS = 1e-6
# Smallest linear scale read (a stored 0 would have log scale -inf).
_MIN_SCALE = np.float32(1e-30)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def encode_splat(splats: Splats) -> np.ndarray:
    """Structured array of .splat records (dtype RECORD) for `splats`."""
    rec = np.empty(len(splats), dtype=RECORD)
    rec["position"] = splats.means
    rec["scale"] = splats.scales_linear()
    rec["rgba"][:, :3] = _to_u8((0.5 + SH_C0 * splats.sh0.astype(np.float64)) * 255.0)
    rec["rgba"][:, 3] = _to_u8(sigmoid(splats.opacities).astype(np.float64) * 255.0)
    rec["rot"] = _to_u8(splats.unit_quats().astype(np.float64) * 128.0 + 128.0)
    return rec


def decode_splat(rec: np.ndarray, path: PathLike = "<.splat data>") -> Splats:
    """Splats from a structured array of .splat records (dtype RECORD); +inf scales clamp
    (``_common.build_splats``), NaN is an error naming the field."""
    n = len(rec)
    q = (rec["rot"].astype(np.float32) - 128.0) / 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.maximum(norm, 1e-12), np.array([1, 0, 0, 0], np.float32))
    alpha = rec["rgba"][:, 3].astype(np.float64) / 255.0
    with np.errstate(invalid="ignore"):
        scales = np.log(np.where(np.isnan(rec["scale"]), np.nan, np.maximum(rec["scale"], _MIN_SCALE)))
    return build_splats(path, dict(
        means=rec["position"].astype(np.float32),
        quats=q.astype(np.float32),
        scales=scales.astype(np.float32),
        opacities=logit(alpha, eps=_ALPHA_EPS),
        sh0=((rec["rgba"][:, :3].astype(np.float32) / 255.0 - 0.5) / SH_C0).astype(np.float32),
        shN=np.zeros((n, 0, 3), np.float32),
    ), {"means": ["position x", "position y", "position z"], "scales": ["scale x", "scale y", "scale z"]})


def write_splat(path: PathLike, splats: Splats) -> None:
    """Write `splats` as a .splat file (degree 0: shN is dropped)."""
    encode_splat(splats).tofile(path)


def read_splat(path: PathLike) -> Splats:
    """Read a .splat file; SplatFormatError if its size is not a multiple of 32 bytes or values are bad."""
    size = os.path.getsize(path)
    if size % RECORD.itemsize:
        raise SplatFormatError(path, "file size",
                               f"{size} bytes is not a multiple of the 32-byte .splat record "
                               f"({size // RECORD.itemsize} records + {size % RECORD.itemsize} bytes; "
                               "truncated or not a .splat file)")
    rec = np.fromfile(path, dtype=RECORD)
    neg = (rec["scale"] < 0).any(axis=1)
    if neg.any():
        raise SplatFormatError(path, f"record {int(np.argmax(neg))}", "negative scale")
    return decode_splat(rec, path)
