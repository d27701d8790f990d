"""The fast paths of the editing functions (issue 14's 100 ms target) give what the plain formulas give:
quaternion product as a matrix, the zero-quaternion test, the transform's overflow check, label splits
with wide label ranges, merges into a higher SH degree, and inside-mesh tests of rays through vertices."""
from __future__ import annotations

import numpy as np
import pytest

from shared.edit_ops import duplicate, merge, split_by_labels
from shared.rotations import quat_left_matrix, quat_multiply, quat_to_matrix
from shared.selection import inside_mesh
from shared.sh import rotate_sh, sh_rotation_matrices
from shared.splats import FIELDS, SplatError, Splats, _nonzero_rows

pytestmark = pytest.mark.bpy_only


def test_quat_left_matrix_is_the_product():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4), rng.normal(size=(1000, 4))
    assert np.allclose(b @ quat_left_matrix(a).T, quat_multiply(a, b), atol=1e-15, rtol=0)
    assert not np.allclose(b @ quat_left_matrix(a), quat_multiply(a, b))      # the transpose is not


def test_nonzero_rows_is_the_constructors_test():
    rng = np.random.default_rng(1)
    for _ in range(300):
        q = (rng.normal(size=(40, 4)) * 10.0 ** rng.integers(-48, 3, (40, 1))).astype(np.float32)
        q[rng.random((40, 4)) < 0.4] = 0.0
        assert _nonzero_rows(q) == bool((np.einsum("ij,ij->i", q, q) > 0).all())
    assert not _nonzero_rows(np.array([[1, 0, 0, 0], [-0.0, 0, 1e-30, 0]], np.float32))   # 1e-30^2 underflows


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")     # the overflow is the point
def test_transform_overflow_raises_the_constructors_error():
    s = Splats.random(40000, 3, seed=3)
    big = np.diag([1e39, 1e39, 1e39, 1.0])            # means over float32's range
    with pytest.raises(SplatError, match="means: contains NaN or Inf"):
        s.transform(big)
    s.shN[39999, 0:3, 1] = 3e38              # finite; a rotation that gathers the band's length overflows
    raised = 0
    for q in np.random.default_rng(3).normal(size=(12, 4)):
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(q)
        if np.isfinite(rotate_sh(s.shN[39999:], m[:3, :3])).all():
            s.transform(m)                   # no false alarm
        else:
            raised += 1
            with pytest.raises(SplatError, match="shN: contains NaN or Inf"):
                s.transform(m)
    assert raised


def test_rotate_sh_matches_the_band_matrices():
    shN = np.random.default_rng(4).normal(size=(50000, 15, 3)).astype(np.float32)   # several row blocks
    r = quat_to_matrix(np.array([0.8, -0.1, 0.5, 0.3]))
    mats = sh_rotation_matrices(r, 3)
    want = np.concatenate([np.einsum("ij,njc->nic", m, shN[:, b * b - 1:(b + 1) * (b + 1) - 1].astype(np.float64))
                           for b, m in enumerate(mats, start=1)], axis=1)
    assert np.abs(rotate_sh(shN, r) - want).max() < 1e-5
    out = np.zeros((50000, 15, 3), np.float32)
    rotate_sh(shN[:, :8], r, out=out[:, :8])               # degree 2 into a degree-3 array's slice
    assert np.abs(out[:, :8] - want[:, :8]).max() < 1e-5 and not out[:, 8:].any()


def test_split_by_labels_wide_and_single_ranges():
    s = Splats.random(3000, 1, seed=5)
    rng = np.random.default_rng(5)
    for labels in ((rng.integers(0, 4, 3000) * 10**9 - 7).astype(np.int64),     # range over 16 bits
                   np.full(3000, -3, np.int16), rng.integers(0, 70000, 3000).astype(np.uint32)):
        parts = split_by_labels(s, labels)
        assert list(parts) == sorted(set(labels.tolist()))
        for v, p in parts.items():
            sel = s.subset(labels == v)
            assert all(np.array_equal(getattr(p, f), getattr(sel, f)) for f in FIELDS)


def test_merge_pads_and_duplicate_moves():
    a, b = Splats.random(500, 1, seed=6), Splats.random(300, 3, seed=7)
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(np.array([0.7, 0.1, 0.6, -0.2])) * 2.0
    m[:3, 3] = (1.0, 2.0, 3.0)
    merged, slices = merge([(a, m), (b, np.eye(4))], target_matrix_world=np.eye(4))
    want = Splats.concatenate([a.transform(m).with_sh_degree(3), b])
    assert all(np.array_equal(getattr(merged, f), getattr(want, f)) for f in FIELDS)
    mask = np.arange(500) % 3 == 0
    dup, sel = duplicate(a, mask, m)
    moved = a.subset(mask).transform(m)
    assert all(np.array_equal(getattr(dup, f)[500:], getattr(moved, f)) for f in FIELDS) and sel[500:].all()


def test_inside_mesh_rays_through_vertices_and_edges():
    # an octahedron: points straight below its vertices and edges (rays through them) and far ones
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    t = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    g = np.linspace(-1.2, 1.2, 25)
    p = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    want = np.abs(p).sum(axis=1) < 1.0 - 1e-9
    on = np.abs(np.abs(p).sum(axis=1) - 1.0) <= 1e-9                        # on the surface: either way
    got = inside_mesh(p, v, t)
    assert np.array_equal(got[~on], want[~on]) and want.sum() > 100
