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

from .splats import SplatError, Splats


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
    copies = splats.subset(m)
    if matrix is not None and not _is_identity(matrix):
        copies = copies.transform(matrix)
    out = Splats.concatenate([splats, copies])
    selection = np.zeros(len(out), bool)
    selection[len(splats):] = True
    return out, selection


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
    out, slices, start = [], [], 0
    for splats, matrix in parts:
        rel = relative_matrix(target, matrix)
        out.append(splats if _is_identity(rel) else splats.transform(rel))
        slices.append(slice(start, start + len(splats)))
        start += len(splats)
    return Splats.concatenate(out), slices


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
    return {int(v): splats.subset(labels == v) for v in np.unique(labels)}


__all__ = ["apply_transform", "delete", "duplicate", "merge", "relative_matrix", "separate", "split_by_labels"]
