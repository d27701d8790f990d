"""Operations on splat sets: delete, separate, duplicate, merge, apply transform, split by labels.

Pure functions on ``shared.splats.Splats`` and boolean masks ``bool[N]`` (``shared.selection`` makes
them); each returns new ``Splats`` and never changes its inputs. Order is kept: the splats that stay
keep their relative order, so ``separate`` then ``merge`` (and ``merge`` then ``separate``) give back
the exact arrays. Transforms go through ``Splats.transform`` (means, quaternions, log scales and the SH
rotation of ``shared.sh``): the one copy of that math.

Spaces: a splat object holds its splats in object space and places them with its ``matrix_world``
(4x4, Blender's). Merging objects expresses every part in the target object's space:
``inverse(target) @ part_matrix`` per part, applied only when it is not the identity (so a part already
in the target's space keeps its values bit for bit).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .sh import REST_COUNT
from .splats import FIELDS, SplatError, Splats


def _mask(mask: np.ndarray, n: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool:
        raise SplatError("mask", f"a selection must be a bool array, got {m.dtype}")
    if m.shape != (n,):
        raise SplatError("mask", f"selection has shape {m.shape}, the splats are [{n}]")
    return m


def delete(splats: Splats, mask: np.ndarray) -> Splats:
    """The splats not selected (order kept)."""
    return splats.subset(~_mask(mask, len(splats)))


def separate(splats: Splats, mask: np.ndarray) -> tuple[Splats, Splats]:
    """(the splats not selected, the selected ones): the second becomes a new object with the same
    ``matrix_world`` as the source, so neither moves in the world. Order is kept in both."""
    m = _mask(mask, len(splats))
    return splats.subset(~m), splats.subset(m)


def duplicate(splats: Splats, mask: np.ndarray, matrix: np.ndarray | None = None) -> tuple[Splats, np.ndarray]:
    """The splats with copies of the selected ones appended (optionally moved by the 4x4 similarity
    ``matrix``, in the object's space), and the new selection: the copies (as Blender selects
    duplicates)."""
    m = _mask(mask, len(splats))
    idx = np.flatnonzero(m)
    n = len(splats)
    moved = matrix is not None and not _is_identity(matrix)
    out = {}
    for f in FIELDS:                             # written once, straight into the joined arrays
        src = getattr(splats, f)
        out[f] = np.empty((n + len(idx),) + src.shape[1:], np.float32)
        out[f][:n] = src
        if not moved:                            # indices from flatnonzero are in range: "clip" is unbuffered
            np.take(src, idx, axis=0, out=out[f][n:], mode="clip")
    if matrix is not None and moved:
        splats.subset(idx).transform_into(matrix, {f: out[f][n:] for f in FIELDS})
    selection = np.zeros(n + len(idx), bool)
    selection[n:] = True
    return Splats._derived(out), selection


def _is_identity(matrix: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(matrix, dtype=np.float64), np.eye(4)))


def relative_matrix(target_matrix_world: np.ndarray, part_matrix_world: np.ndarray) -> np.ndarray:
    """``inverse(target) @ part``: maps the part's object space into the target's (float64 4x4).
    Bit-exactly the identity when the two matrices are equal."""
    t = np.asarray(target_matrix_world, dtype=np.float64)
    p = np.asarray(part_matrix_world, dtype=np.float64)
    if np.array_equal(t, p):
        return np.eye(4)
    return np.linalg.inv(t) @ p


def merge(parts: Sequence[tuple[Splats, np.ndarray]], target_matrix_world: np.ndarray | None = None
          ) -> tuple[Splats, list[slice]]:
    """Join objects into one, each keeping its place in the world.

    ``parts``: (splats in object space, that object's ``matrix_world``) per object; the result is in
    the space of ``target_matrix_world`` (default: the first part's), SH padded to the highest degree
    among the parts. Returns the merged splats and the slice each part occupies (for undo, or to
    :func:`separate` a part again). A part whose matrix equals the target's keeps its values exactly.
    The relative transform of each part must be a similarity (uniform scale): ``SplatError`` otherwise.
    """
    parts = list(parts)
    if not parts:
        raise SplatError("parts", "nothing to merge")
    target = np.asarray(parts[0][1] if target_matrix_world is None else target_matrix_world, np.float64)
    total = sum(len(p) for p, _ in parts)
    k = REST_COUNT[max(p.sh_degree for p, _ in parts)]
    # one output allocation; each part is copied or transformed straight into its rows
    out = {f: np.empty((total,) + getattr(parts[0][0], f).shape[1:], np.float32) for f in FIELDS[:-1]}
    out["shN"] = np.empty((total, k, 3), np.float32)
    slices, start = [], 0
    for splats, matrix in parts:
        sl = slice(start, start + len(splats))
        rows = {f: out[f][sl] for f in FIELDS}
        kp = splats.shN.shape[1]
        rows["shN"][:, kp:] = 0.0                                     # SH padded to the highest degree
        rel = relative_matrix(target, matrix)
        if _is_identity(rel):
            for f in FIELDS:
                (rows[f][:, :kp] if f == "shN" else rows[f])[...] = getattr(splats, f)
        else:
            splats.transform_into(rel, rows)
        slices.append(sl)
        start += len(splats)
    return Splats._derived(out), slices


def apply_transform(splats: Splats, matrix_world: np.ndarray) -> Splats:
    """Bake the object's ``matrix_world`` into its splats (then set the object's matrix to the
    identity): means moved, quaternions rotated, log scales shifted, SH rotated. A similarity only:
    non-uniform scale, shear or mirroring raise ``SplatError`` (a Gaussian's log-scale + quaternion
    form cannot hold them exactly)."""
    if _is_identity(matrix_world):
        return splats.copy()
    return splats.transform(matrix_world)


def split_by_labels(splats: Splats, labels: np.ndarray) -> dict[int, Splats]:
    """One splat set per label value (``labels`` int[N], e.g. the segment job's), in increasing label
    order; every splat lands in exactly one set with its values unchanged and its order kept."""
    labels = np.asarray(labels)
    if labels.shape != (len(splats),) or labels.dtype.kind not in "iu":
        raise SplatError("labels", f"labels must be int[{len(splats)}], got {labels.dtype}{list(labels.shape)}")
    if len(labels) == 0:
        return {}
    # label codes 0..L-1 in increasing label order; one stable sort of the codes gives every label's rows
    # in their original order (radix sort for codes that fit 16 bits)
    lo, hi = int(labels.min()), int(labels.max())
    if hi - lo < 1 << 16:
        codes = (labels - lo).astype(np.uint16) if lo else labels.astype(np.uint16)
        counts = np.bincount(codes, minlength=hi - lo + 1)
        values = np.flatnonzero(counts) + lo
        counts = counts[counts > 0]
    else:
        values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        codes = inverse.reshape(-1).astype(np.uint16 if len(values) <= 1 << 16 else np.int64)
    if len(values) == 1:
        return {int(values[0]): splats.subset(np.arange(len(labels)))}
    order = np.argsort(codes, kind="stable")
    ends = np.cumsum(counts)
    return {int(v): splats.subset(order[e - c:e]) for v, c, e in zip(values, counts, ends, strict=True)}


__all__ = ["apply_transform", "delete", "duplicate", "merge", "relative_matrix", "separate", "split_by_labels"]
