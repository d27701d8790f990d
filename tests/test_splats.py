"""The splat data model: validation, activation, set operations, transforms."""
from __future__ import annotations

import numpy as np
import pytest

from shared.rotations import matrix_to_quat, quat_to_matrix
from shared.sh import SH_C0, eval_sh, rgb_to_sh0, sh_basis
from shared.splats import Splats, SplatError, logit, sigmoid

pytestmark = pytest.mark.bpy_only


def _covariances(s: Splats) -> np.ndarray:
    r = quat_to_matrix(s.quats)
    d = s.scales_linear().astype(np.float64) ** 2
    return np.einsum("nij,nj,nkj->nik", r, d, r)


def _rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_activation_values():
    s = Splats.from_activated(means=[[0, 0, 0]], quats=[[2, 0, 0, 0]], scales=[[0.1, 0.2, 0.4]],
                              alphas=[0.25], colors=[[1.0, 0.5, 0.0]])
    np.testing.assert_allclose(s.scales_linear(), [[0.1, 0.2, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(s.alphas(), [0.25], rtol=1e-5)
    np.testing.assert_allclose(s.unit_quats(), [[1, 0, 0, 0]])
    np.testing.assert_allclose(s.base_colors(), [[1.0, 0.5, 0.0]], atol=1e-6)
    assert s.sh0[0, 1] == pytest.approx(0.0) and s.sh0[0, 0] == pytest.approx(0.5 / SH_C0)
    assert sigmoid(np.array([1000.0, -1000.0])).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(sigmoid(logit(np.array([0.1, 0.5, 0.9]))), [0.1, 0.5, 0.9], rtol=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("means", np.zeros((4, 2), np.float32), r"means: shape \(4, 2\) is not \[N, 3\]"),
    ("quats", np.zeros((3, 4), np.float32), r"quats: shape \(3, 4\) does not match \(4, 4\)"),
    ("scales", np.zeros((4, 3), np.int32), "scales: dtype int32 is not floating point"),
    ("opacities", np.zeros((4, 1), np.float32), r"opacities: shape \(4, 1\) does not match \(4,\)"),
    ("shN", np.zeros((4, 5, 3), np.float32), "shN: K=5 coefficients is not an SH degree 0-3 layout"),
    ("sh0", None, "sh0: missing"),
])
def test_validation_names_the_field(field, value, message):
    arrays = Splats.random(4, sh_degree=1).to_arrays()
    arrays[field] = value
    with pytest.raises(SplatError, match=message):
        Splats(**arrays)


def test_nan_and_zero_quaternion_are_rejected():
    arrays = Splats.random(5).to_arrays()
    arrays["scales"] = arrays["scales"].copy()
    arrays["scales"][3, 1] = np.nan
    with pytest.raises(SplatError, match=r"scales: contains NaN or Inf \(first at splat 3\)"):
        Splats(**arrays)
    arrays = Splats.random(5).to_arrays()
    arrays["quats"] = arrays["quats"].copy()
    arrays["quats"][2] = 0
    with pytest.raises(SplatError, match="zero-length quaternion at splat 2"):
        Splats(**arrays)


def test_float64_is_stored_as_float32_and_float32_is_not_copied():
    s = Splats.random(10, sh_degree=2)
    again = Splats(**s.to_arrays())
    assert all(np.shares_memory(getattr(s, f), getattr(again, f)) for f in s.to_arrays())
    wide = Splats(**{k: v.astype(np.float64) for k, v in s.to_arrays().items()})
    assert wide.means.dtype == np.float32 and wide.allclose(s)


def test_subset_concatenate_and_sh_padding():
    a, b = Splats.random(7, sh_degree=0, seed=1), Splats.random(5, sh_degree=2, seed=2)
    both = Splats.concatenate([a, b])
    assert len(both) == 12 and both.sh_degree == 2
    assert (both.shN[:7] == 0).all()
    assert both.subset(slice(7, None)).allclose(b)
    mask = np.zeros(12, bool)
    mask[[0, 8]] = True
    picked = both.subset(mask)
    np.testing.assert_array_equal(picked.means, both.means[[0, 8]])
    with pytest.raises(SplatError, match=r"mask shape \(3,\) does not match N=12"):
        both.subset(np.ones(3, bool))
    assert b.with_sh_degree(1).shN.shape == (5, 3, 3)


def test_transform_moves_rotates_and_scales_gaussians():
    s = Splats.random(50, sh_degree=0, seed=3)
    rot = _rotation([1, 2, 3], 0.7)
    m = np.eye(4)
    m[:3, :3] = 2.0 * rot
    m[:3, 3] = [1, -2, 0.5]
    t = s.transform(m)
    np.testing.assert_allclose(t.means, s.means @ (2 * rot).T + [1, -2, 0.5], atol=1e-5)
    np.testing.assert_allclose(_covariances(t), 4 * rot @ _covariances(s) @ rot.T, atol=1e-7)
    np.testing.assert_allclose(t.opacities, s.opacities)


def test_transform_rotates_view_dependent_colour():
    s = Splats.random(20, sh_degree=3, seed=4)
    rot = _rotation([0.3, -1, 0.4], 2.1)
    m = np.eye(4)
    m[:3, :3] = rot
    t = s.transform(m)
    dirs = np.random.default_rng(0).normal(size=(20, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # seen along the rotated direction, a rotated splat looks as the original did
    np.testing.assert_allclose(eval_sh(t.sh0, t.shN, dirs @ rot.T), eval_sh(s.sh0, s.shN, dirs), atol=1e-5)
    # and this is not trivially true: the unrotated coefficients give another colour
    assert np.abs(eval_sh(s.sh0, s.shN, dirs @ rot.T) - eval_sh(s.sh0, s.shN, dirs)).max() > 1e-2


@pytest.mark.parametrize("matrix,message", [
    (np.diag([1.0, 2.0, 1.0, 1.0]), "non-uniform scale or shear"),
    (np.diag([-1.0, 1.0, 1.0, 1.0]), "mirrors"),
    (np.eye(3), "4x4"),
])
def test_transform_rejects_what_splats_cannot_hold(matrix, message):
    with pytest.raises(SplatError, match=message):
        Splats.random(3).transform(matrix)


def test_bounds():
    s = Splats.from_activated(means=[[0, 0, 0], [1, 2, 3]], quats=[[1, 0, 0, 0]] * 2,
                              scales=[[0.1] * 3, [0.5, 0.2, 0.1]], alphas=[0.5] * 2, colors=[[0.5] * 3] * 2)
    lo, hi = s.bounds()
    np.testing.assert_allclose(lo, [0, 0, 0])
    np.testing.assert_allclose(hi, [1, 2, 3])
    lo, hi = s.bounds(sigmas=3)
    np.testing.assert_allclose(lo, [-0.5, -0.3, -0.3], atol=1e-6)
    np.testing.assert_allclose(hi, [2.5, 3.5, 4.5], atol=1e-6)
    with pytest.raises(SplatError, match="empty splat set has no bounds"):
        s.subset(np.zeros(2, bool)).bounds()


def test_quaternion_matrix_round_trip():
    for q in np.random.default_rng(5).normal(size=(20, 4)):
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        np.testing.assert_allclose(matrix_to_quat(quat_to_matrix(q)), q, atol=1e-12)


def test_sh_basis_degree1_matches_3dgs_signs():
    b = sh_basis(np.array([[1.0, 0.0, 0.0]]), 1)[0]
    np.testing.assert_allclose(b[1:], [0, 0, -0.4886025119029199])
    np.testing.assert_allclose(rgb_to_sh0([0.5]), [0.0])
