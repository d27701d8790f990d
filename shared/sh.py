"""Real spherical harmonics as 3D Gaussian Splatting uses them (degree 0-3).

Basis order and signs follow the reference 3DGS implementation (and gsplat): for a unit
direction (x, y, z) the 16 basis functions are C0; -C1 y, C1 z, -C1 x; the five degree-2 and
seven degree-3 terms below. Colour = 0.5 + sum_k coeff_k * Y_k(dir), clamped at 0.
"""
from __future__ import annotations

import numpy as np

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

#: number of non-DC coefficients K for each degree (shN has shape [N, K, 3])
REST_COUNT = {0: 0, 1: 3, 2: 8, 3: 15}


def degree_from_rest_count(k: int) -> int:
    """SH degree for K non-DC coefficients; raises ValueError for K not in {0, 3, 8, 15}."""
    for degree, count in REST_COUNT.items():
        if count == k:
            return degree
    raise ValueError(f"{k} SH rest coefficients is not a degree 0-3 layout (expected 0, 3, 8 or 15)")


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    """DC coefficient whose colour is ``rgb`` (linear 0..1)."""
    return (np.asarray(rgb, dtype=np.float32) - 0.5) / SH_C0


def sh0_to_rgb(sh0: np.ndarray) -> np.ndarray:
    """Colour of the DC term alone (not clamped)."""
    return np.asarray(sh0, dtype=np.float32) * SH_C0 + 0.5


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Basis values [..., (degree+1)^2] for unit directions ``dirs`` [..., 3]."""
    dirs = np.asarray(dirs, dtype=np.float64)
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [np.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy),
                SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return np.stack(out, axis=-1)


def eval_sh(sh0: np.ndarray, shN: np.ndarray, dirs: np.ndarray, degree: int | None = None) -> np.ndarray:
    """RGB [N, 3] of splats seen along unit ``dirs`` [N, 3] (camera -> splat), clamped at 0.

    ``degree`` limits the bands used (default: all that ``shN`` holds).
    """
    full = degree_from_rest_count(shN.shape[1])
    degree = full if degree is None else min(degree, full)
    basis = sh_basis(dirs, degree)                                   # [N, B]
    coeffs = np.concatenate([sh0[:, None, :], shN[:, : (degree + 1) ** 2 - 1, :]], axis=1)
    rgb = np.einsum("nb,nbc->nc", basis, coeffs) + 0.5
    return np.maximum(rgb, 0.0).astype(np.float32)


def _fibonacci_dirs(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=-1)


_SAMPLE_DIRS = _fibonacci_dirs(64)


def sh_rotation_matrices(rotation: np.ndarray, degree: int) -> list[np.ndarray]:
    """Per-band matrices D_l ((2l+1) x (2l+1)), l = 1..degree, that rotate SH coefficients.

    If f(d) = sum_k c_k Y_k(d), then the rotated function g(d) = f(R^T d) has coefficients
    D_l @ c_l per band. Solved by least squares on 64 directions: exact, because each band
    spans a rotation-invariant space, and independent of the basis' sign conventions.
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    basis = sh_basis(_SAMPLE_DIRS, degree)
    basis_rotated = sh_basis(_SAMPLE_DIRS @ rotation, degree)          # rows: (R^T d)^T
    mats = []
    for band in range(1, degree + 1):
        sl = slice(band * band, (band + 1) * (band + 1))
        mats.append(np.linalg.lstsq(basis[:, sl], basis_rotated[:, sl], rcond=None)[0])
    return mats


#: rows per block when rotating SH: a block's [rows, 3K] input, product and output stay in the L2 cache
SH_BLOCK = 16384


def sh_rotation_operator(rotation: np.ndarray, degree: int) -> list[tuple[int, int, np.ndarray]]:
    """The SH rotation of :func:`sh_rotation_matrices` as right-multiplications of the flat coefficient
    rows: ``[(k0, k1, M)]`` with ``shN'[:, k0:k1].reshape(N, -1) = shN[:, k0:k1].reshape(N, -1) @ M``
    (M float32 [3(k1-k0), 3(k1-k0)], the bands' block-diagonal matrix Kronecker'd with the RGB identity).
    Bands 1 and 2 share one product (24 columns) and band 3 has its own (21): on numpy's BLAS this is
    faster than one 45x45 product (2025 multiply-adds per splat, mostly by zero) and than three small ones."""
    mats = sh_rotation_matrices(rotation, degree)
    groups = [(1, min(degree, 2))] + ([(3, 3)] if degree >= 3 else [])
    out = []
    for first, last in groups:
        k0, k1 = first * first - 1, (last + 1) * (last + 1) - 1
        block = np.zeros((k1 - k0, k1 - k0))
        for band in range(first, last + 1):
            sl = slice(band * band - 1 - k0, (band + 1) * (band + 1) - 1 - k0)
            block[sl, sl] = mats[band - 1]
        out.append((k0, k1, np.ascontiguousarray(np.kron(block, np.eye(3)).T, dtype=np.float32)))
    return out


def apply_sh_rotation(operator: list[tuple[int, int, np.ndarray]], shN: np.ndarray, out: np.ndarray) -> None:
    """``out`` [N, >=K, 3] (its first K coefficients) = ``shN`` [N, K, 3] rotated by ``operator``
    (:func:`sh_rotation_operator`), in blocks of ``SH_BLOCK`` rows. ``out`` may be row and coefficient
    slices of a larger array (merging into a higher degree) and may be ``shN`` itself."""
    n = len(shN)
    for c0 in range(0, n, SH_BLOCK):
        c1 = min(n, c0 + SH_BLOCK)
        x = shN[c0:c1]
        for k0, k1, mat in operator:
            prod = x[:, k0:k1].reshape(c1 - c0, 3 * (k1 - k0)) @ mat
            out[c0:c1, k0:k1] = prod.reshape(c1 - c0, k1 - k0, 3)


def rotate_sh(shN: np.ndarray, rotation: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rotate non-DC coefficients ``shN`` [N, K, 3] by the 3x3 rotation ``rotation`` (float32 result,
    into ``out`` when given: [N, K, 3] float32). Per band group, one BLAS product per block of rows
    (:func:`apply_sh_rotation`)."""
    degree = degree_from_rest_count(shN.shape[1])
    if out is None:
        out = np.empty(shN.shape, np.float32)
    if degree == 0:
        return out
    apply_sh_rotation(sh_rotation_operator(rotation, degree), np.asarray(shN, dtype=np.float32), out)
    return out
