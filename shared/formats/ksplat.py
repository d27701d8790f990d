"""mkkellogg GaussianSplats3D's ``.ksplat`` (``SplatBuffer``), read only; the layout splat-transform's
``read-ksplat.ts`` decodes.

A 4096-byte main header (u8 major = 0, u8 minor >= 1, u32 max sections @4, u32 splat count @16,
u16 compression level @20, f32 min / max SH value @36 / @40, 0 meaning -1.5 / 1.5), then one
1024-byte header per section (u32 splats @0, u32 capacity @4, u32 bucket capacity @8, u32 bucket
count @12, f32 spatial block size @16, u16 bucket storage bytes @20, u32 quantisation range @24
(0: 1 or 32767 by level), u32 full buckets @32, u32 partial buckets @36, u16 SH degree @40),
then per section: the partial buckets' sizes (u32 each), the bucket centres (3 x f32 per
bucket), and ``capacity`` records of

========  ==========================  ====================================================
level     centre / scale / rotation   SH (degree 1-3; 9, 24 or 45 values)
========  ==========================  ====================================================
0         f32 x3 / f32 x3 / f32 x4     f32
1         u16 x3 / f16 x3 / f16 x4     f16
2         u16 x3 / f16 x3 / f16 x4     u8 mapped linearly onto [min SH, max SH]
========  ==========================  ====================================================

plus RGBA bytes after the rotation (RGB = (0.5 + SH_C0 * f_dc) * 255, A = opacity * 255).
Quantised centres are ``(u16 - range) * block_size / 2 / range + bucket centre``; scales are
linear (log taken; 0 reads as log scale -10), rotations w, x, y, z. SH values are grouped by
band, each band channel-major (``[R k0..k2, G .., B ..]`` for band 1, then band 2's 15, band 3's
21). Coordinates are as in the PLY the file was made from (no axis change), like our PLY.

Precision is the file's: level 0 is float32 (exact); level 1-2 positions within
``block_size / 2 / range / 2`` (block 5 m, range 32767: 0.04 mm), scales, rotations and (level 1)
SH as float16; level 2 SH within ``(max - min) / 255 / 2``; colours and opacity 8-bit.
"""
from __future__ import annotations

import os

import numpy as np

from ..sh import SH_C0
from ..splats import Splats
from ._common import PathLike, SplatFormatError, build_splats

MAIN_HEADER = 4096
SECTION_HEADER = 1024
# level -> (centre bytes, scale bytes, rotation bytes, SH bytes per value, default quantisation range)
LEVELS = {0: (12, 12, 16, 4, 1), 1: (6, 6, 8, 2, 32767), 2: (6, 6, 8, 1, 32767)}
SH_COUNT = (0, 9, 24, 45)

_SECTION = np.dtype([("splats", "<u4"), ("capacity", "<u4"), ("bucket_capacity", "<u4"), ("buckets", "<u4"),
                     ("block_size", "<f4"), ("bucket_storage", "<u2"), ("_pad0", "<u2"), ("range", "<u4"),
                     ("_pad1", "<u4"), ("full_buckets", "<u4"), ("partial_buckets", "<u4"), ("sh_degree", "<u2")])


def _sh_columns(count: int) -> np.ndarray:
    """For each stored SH value i, its (coefficient k, channel c) as k * 3 + c in our [K, 3] layout."""
    out = []
    for i in range(count):
        if i < 9:
            channel, coeff = i // 3, i % 3
        elif i < 24:
            channel, coeff = (i - 9) // 5, (i - 9) % 5 + 3
        else:
            channel, coeff = (i - 24) // 7, (i - 24) % 7 + 8
        out.append(coeff * 3 + channel)
    return np.array(out, np.int64)


def read_ksplat(path: PathLike) -> Splats:
    """Read a .ksplat file (compression level 0, 1 or 2); SplatFormatError names the problem."""
    size = os.path.getsize(path)
    if size < MAIN_HEADER:
        raise SplatFormatError(path, "header", f"{size} bytes is smaller than the 4096-byte .ksplat header")
    data = np.fromfile(path, np.uint8)
    head = data[:MAIN_HEADER]
    major, minor = int(head[0]), int(head[1])
    if major != 0 or minor < 1:
        raise SplatFormatError(path, "header version", f"version {major}.{minor} is not supported (0.1 or newer "
                               "0.x); not a .ksplat file?")
    max_sections = int(head[4:8].view("<u4")[0])
    n_total = int(head[16:20].view("<u4")[0])
    level = int(head[20:22].view("<u2")[0])
    if level not in LEVELS:
        raise SplatFormatError(path, "header compression level", f"{level} is not 0, 1 or 2")
    sh_lo = float(head[36:40].view("<f4")[0]) or -1.5
    sh_hi = float(head[40:44].view("<f4")[0]) or 1.5
    if MAIN_HEADER + max_sections * SECTION_HEADER > size:
        raise SplatFormatError(path, "header max sections", f"{max_sections} section headers do not fit the "
                               f"file's {size} bytes")
    # the section headers are 1024 bytes apart, not packed
    sections = np.array([np.frombuffer(data, _SECTION, 1, MAIN_HEADER + i * SECTION_HEADER)[0]
                         for i in range(max_sections)], _SECTION)
    declared = int(sections["splats"].sum()) if max_sections else 0
    if declared != n_total:
        raise SplatFormatError(path, "header splat count", f"{n_total} splats, but the sections hold {declared}")
    degrees = [int(d) for d, c in zip(sections["sh_degree"], sections["splats"], strict=True) if c]
    if any(d > 3 for d in degrees):
        raise SplatFormatError(path, "section SH degree", f"degree {max(degrees)} is not 0-3")
    degree = max(degrees, default=0)
    k_out = (0, 3, 8, 15)[degree]
    c_bytes, s_bytes, r_bytes, h_bytes, default_range = LEVELS[level]

    parts: dict[str, list[np.ndarray]] = {f: [] for f in ("means", "scales", "quats", "rgba", "shN")}
    offset = MAIN_HEADER + max_sections * SECTION_HEADER
    for si, sec in enumerate(sections):
        count, capacity = int(sec["splats"]), int(sec["capacity"])
        bucket_cap, buckets = int(sec["bucket_capacity"]), int(sec["buckets"])
        full, partial = int(sec["full_buckets"]), int(sec["partial_buckets"])
        sec_degree = int(sec["sh_degree"])
        if sec_degree > 3:
            raise SplatFormatError(path, f"section {si} SH degree", f"{sec_degree} is not 0-3")
        n_sh = SH_COUNT[sec_degree]
        rec = c_bytes + s_bytes + r_bytes + 4 + n_sh * h_bytes
        bucket_bytes = int(sec["bucket_storage"]) * buckets + 4 * partial
        end = offset + bucket_bytes + rec * capacity
        if count > capacity or end > size:
            raise SplatFormatError(path, f"section {si}", f"truncated or inconsistent: {count} splats in room for "
                                   f"{capacity}, data up to byte {end} of {size}")
        where = f"section {si}"
        if count == 0:
            offset = end
            continue
        recs = data[offset + bucket_bytes: offset + bucket_bytes + rec * count].reshape(count, rec)
        if level == 0:
            means = recs[:, :12].copy().view("<f4").astype(np.float64)
            scales_lin = recs[:, 12:24].copy().view("<f4")
            quats = recs[:, 24:40].copy().view("<f4")
        else:
            q_range = int(sec["range"]) or default_range
            if buckets * 12 + 4 * partial > bucket_bytes:
                raise SplatFormatError(path, where, "bucket storage too small for the bucket centres")
            sizes = data[offset: offset + 4 * partial].copy().view("<u4").astype(np.int64)
            centres = data[offset + 4 * partial: offset + 4 * partial + 12 * buckets].copy().view("<f4")
            centres = centres.reshape(buckets, 3).astype(np.float64)
            idx = np.arange(count)
            bucket = np.minimum(idx // max(bucket_cap, 1), full)
            if partial:
                starts = full * bucket_cap + np.concatenate([[0], np.cumsum(sizes)])
                in_partial = idx >= full * bucket_cap
                bucket = np.where(in_partial, full + np.searchsorted(starts, idx, side="right") - 1, bucket)
            if count and (bucket.max() >= buckets):
                raise SplatFormatError(path, where, f"splats refer to bucket {int(bucket.max())} of {buckets}")
            u = recs[:, :6].copy().view("<u2").astype(np.float64)
            means = (u - q_range) * (float(sec["block_size"]) / 2.0 / q_range) + centres[bucket]
            scales_lin = recs[:, 6:12].copy().view("<f2").astype(np.float32)
            quats = recs[:, 12:20].copy().view("<f2").astype(np.float32)
        rgba = recs[:, c_bytes + s_bytes + r_bytes: c_bytes + s_bytes + r_bytes + 4]
        shN = np.zeros((count, k_out * 3), np.float32)
        if n_sh:
            raw = recs[:, rec - n_sh * h_bytes:]
            if level == 0:
                vals = raw.copy().view("<f4")
            elif level == 1:
                vals = raw.copy().view("<f2").astype(np.float32)
            else:
                vals = (sh_lo + raw.astype(np.float64) / 255.0 * (sh_hi - sh_lo)).astype(np.float32)
            shN[:, _sh_columns(n_sh)] = vals
        parts["means"].append(means)
        parts["scales"].append(scales_lin)
        parts["quats"].append(quats)
        parts["rgba"].append(rgba)
        parts["shN"].append(shN)
        offset = end
    if not parts["means"]:
        raise SplatFormatError(path, "header", "the file holds no splats")
    means = np.concatenate(parts["means"])
    scales_lin = np.concatenate(parts["scales"]).astype(np.float64)
    rgba = np.concatenate(parts["rgba"]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(scales_lin > 0, np.log(np.where(scales_lin > 0, scales_lin, 1.0)), -10.0)
        scales = np.where(np.isnan(scales_lin), np.nan, scales)
    alpha = np.clip(rgba[:, 3] / 255.0, 1e-6, 1 - 1e-6)
    quats = np.concatenate(parts["quats"]).astype(np.float32)
    bad_q = ~(np.einsum("ij,ij->i", quats, quats) > 0)
    quats[bad_q & np.isfinite(quats).all(axis=1)] = (1.0, 0.0, 0.0, 0.0)
    return build_splats(path, dict(
        means=means, quats=quats, scales=scales, opacities=np.log(alpha / (1 - alpha)),
        sh0=(rgba[:, :3] / 255.0 - 0.5) / SH_C0,
        shN=np.concatenate(parts["shN"]).reshape(len(means), k_out, 3)),
        {"means": ["centre x", "centre y", "centre z"], "scales": ["scale x", "scale y", "scale z"],
         "quats": ["rotation w", "rotation x", "rotation y", "rotation z"]})
