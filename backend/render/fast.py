"""Fast CPU rasterizer: gsplat's pipeline as Numba kernels (compiled by Numba's bundled LLVM: no
system compiler; Numba wheels exist for Linux, Windows and macOS on x86-64 and arm64), each with a
hand-written backward, behind the reference's input checks, render modes and ``info``
(``reference.rasterize_with``).

- ``_project_forward`` / ``_project_backward``: EWA projection (classic mode) and SH colours up to
  degree 3, float64, one autograd node; gradients to means, quats, scales and SH coefficients.
  Antialiased mode, per-camera colours and SH degree 4 use the reference's torch projection.
- ``_bin_tiles``: the (Gaussian, tile) pairs by a counting sort of the depth order.
- ``_forward_kernel`` / ``_backward_kernel``: per-tile compositing and gsplat's back-to-front
  backward (from each pixel's final transmittance), float32 like gsplat and the reference, the
  background blended in (colour + (1 - alpha) background) and its gradient taken in the kernels.
  Per Gaussian, the rows of the tile it reaches are one branch-free loop over a flat per-tile
  state array (one base pointer: LLVM vectorises it at the CPU's full width without runtime
  alias checks); the backward's per-Gaussian sums are reassociated into vector registers (only
  the sums: alpha and the cut-offs are exact IEEE float32, the forward's bit for bit). Gradients
  to means2d, conics, colours, opacities, the background, and (``absgrad=True``, as gsplat) the
  per-pixel sums of |d loss / d means2d| in ``info["means2d"].absgrad`` [C,N,2] during backward.

What it computes is ``reference.rasterize_reference``'s (= gsplat 1.5.3's) to float rounding
(tests/test_render_fast.py): 16x16 tiles, front to back by depth, alpha = min(0.999, o exp(-sigma))
skipped when < 1/255 or sigma < 0 (exp by a polynomial, relative error < 2e-5), a pixel stops
before the Gaussian that would bring its transmittance to <= 1e-4.

Tensors on another device (Apple's MPS, or CUDA without gsplat's extension) are rasterized on the
CPU: inputs and results are copied there and back inside the autograd functions (untested here).
Threads: ``torch.get_num_threads()``; one thread runs serial kernels (callable from many threads at
once), more run ``prange`` kernels on Numba's workqueue pool, one call at a time. The first call
compiles the kernels (about 11 CPU-seconds for the serial ones on this project's 2-core EPYC
build box, a minute on a slow CPU); Numba caches them beside this file (``__pycache__``) when the
folder is writable (then a first call takes ~0.3 s), else compiles once per process.
"""
from __future__ import annotations

import math
import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from .reference import ALPHA_MAX, ALPHA_THRESHOLD, RADIUS_SIGMAS, T_STOP, TILE_SIZE, project_and_shade, rasterize_with

# error_model numpy: no branch per division
_JIT: dict[str, Any] = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")

if "NUMBA_THREADING_LAYER" not in os.environ:
    # Numba's own pool: no spinning OpenMP workers competing with torch's between calls
    numba.config.THREADING_LAYER = "workqueue"     # type: ignore[attr-defined]  # config attributes are set at run time
_PARALLEL_LOCK = threading.Lock()     # the workqueue layer must not be entered from two threads at once


class _Kernel:
    """A kernel compiled twice on demand: serial (one thread: no pool, callable from any thread at
    once) and parallel over ``numba.prange`` (``torch.get_num_threads()`` threads, one call at a time)."""

    def __init__(self, fn: Callable) -> None:
        self.serial = numba.njit(parallel=False, **_JIT)(fn)
        par = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__)
        par.__qualname__ = fn.__qualname__ + "_parallel"     # its own cache file
        self.parallel = numba.njit(parallel=True, **_JIT)(par)
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any) -> Any:
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        if threads == 1:
            return self.serial(*args)
        with _PARALLEL_LOCK:
            numba.set_num_threads(threads)
            return self.parallel(*args)


def _kernel(fn: Callable) -> _Kernel:
    return _Kernel(fn)


@numba.njit(**_JIT)
def _sh_basis(x, y, z, b, gx, gy, gz):
    """gsplat's real SH basis (degrees 0-3, 16 values) at the unit direction (x, y, z) into ``b``,
    and its partial derivatives into ``gx``, ``gy``, ``gz`` (generated from the basis with sympy)."""
    b[0] = 0.2820947917738781
    b[1] = -0.48860251190292*y
    b[2] = 0.48860251190292*z
    b[3] = -0.48860251190292*x
    b[4] = 1.092548430592079*x*y
    b[5] = -1.092548430592079*y*z
    b[6] = 0.9461746957575601*z**2 - 0.3153915652525201
    b[7] = -1.092548430592079*x*z
    b[8] = 0.5462742152960395*x**2 - 0.5462742152960395*y**2
    b[9] = -1.770130769779931*x**2*y + 0.5900435899266435*y**3
    b[10] = 2.890611442640554*x*y*z
    b[11] = -2.285228997322329*y*z**2 + 0.4570457994644658*y
    b[12] = 1.865881662950577*z**3 - 1.119528997770346*z
    b[13] = -2.285228997322329*x*z**2 + 0.4570457994644658*x
    b[14] = 1.445305721320277*x**2*z - 1.445305721320277*y**2*z
    b[15] = -0.5900435899266435*x**3 + 1.770130769779931*x*y**2
    gx[0] = 0
    gy[0] = 0
    gz[0] = 0
    gx[1] = 0
    gy[1] = -0.488602511902920
    gz[1] = 0
    gx[2] = 0
    gy[2] = 0
    gz[2] = 0.488602511902920
    gx[3] = -0.488602511902920
    gy[3] = 0
    gz[3] = 0
    gx[4] = 1.092548430592079*y
    gy[4] = 1.092548430592079*x
    gz[4] = 0
    gx[5] = 0
    gy[5] = -1.092548430592079*z
    gz[5] = -1.092548430592079*y
    gx[6] = 0
    gy[6] = 0
    gz[6] = 1.89234939151512*z
    gx[7] = -1.092548430592079*z
    gy[7] = 0
    gz[7] = -1.092548430592079*x
    gx[8] = 1.092548430592079*x
    gy[8] = -1.092548430592079*y
    gz[8] = 0
    gx[9] = -3.540261539559861*x*y
    gy[9] = -1.770130769779931*x**2 + 1.770130769779931*y**2
    gz[9] = 0
    gx[10] = 2.890611442640554*y*z
    gy[10] = 2.890611442640554*x*z
    gz[10] = 2.890611442640554*x*y
    gx[11] = 0
    gy[11] = 0.4570457994644658 - 2.285228997322329*z**2
    gz[11] = -4.570457994644658*y*z
    gx[12] = 0
    gy[12] = 0
    gz[12] = 5.597644988851731*z**2 - 1.119528997770346
    gx[13] = 0.4570457994644658 - 2.285228997322329*z**2
    gy[13] = 0
    gz[13] = -4.570457994644658*x*z
    gx[14] = 2.890611442640554*x*z
    gy[14] = -2.890611442640554*y*z
    gz[14] = 1.445305721320277*x**2 - 1.445305721320277*y**2
    gx[15] = -1.770130769779931*x**2 + 1.770130769779931*y**2
    gy[15] = 3.540261539559861*x*y
    gz[15] = 0


@numba.njit(**_JIT)
def _rotmat(w, x, y, z, R):
    """Rotation matrix of the unit quaternion (w, x, y, z) into R [3,3] (gsplat's convention)."""
    R[0, 0] = 1.0 - 2.0 * (y * y + z * z)
    R[0, 1] = 2.0 * (x * y - w * z)
    R[0, 2] = 2.0 * (x * z + w * y)
    R[1, 0] = 2.0 * (x * y + w * z)
    R[1, 1] = 1.0 - 2.0 * (x * x + z * z)
    R[1, 2] = 2.0 * (y * z - w * x)
    R[2, 0] = 2.0 * (x * z - w * y)
    R[2, 1] = 2.0 * (y * z + w * x)
    R[2, 2] = 1.0 - 2.0 * (x * x + y * y)


@numba.njit(**_JIT)
def _world_cov(quat, scale, R, M):
    """R = R(q / |q|) and M = R diag(s) (Sigma = M M^T); returns |q|."""
    qn = math.sqrt(quat[0] ** 2 + quat[1] ** 2 + quat[2] ** 2 + quat[3] ** 2)
    _rotmat(quat[0] / qn, quat[1] / qn, quat[2] / qn, quat[3] / qn, R)
    for i in range(3):
        for j in range(3):
            M[i, j] = R[i, j] * scale[j]
    return qn


@numba.njit(**_JIT)
def _jacobian(x, y, z, fx, fy, lim_xn, lim_xp, lim_yn, lim_yp):
    """gsplat's persp_proj Jacobian terms with the mean clamped to 1.3x the field of view:
    (J00, J02, J11, J12, tx, ty, clamped_x, clamped_y)."""
    ux = x / z
    uy = y / z
    cx_ = ux < -lim_xn or ux > lim_xp
    cy_ = uy < -lim_yn or uy > lim_yp
    tx = z * min(max(ux, -lim_xn), lim_xp)
    ty = z * min(max(uy, -lim_yn), lim_yp)
    return fx / z, -fx * tx / (z * z), fy / z, -fy * ty / (z * z), tx, ty, cx_, cy_


@numba.njit(**_JIT)
def _fov_limits(K, width, height):
    """(lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos) of gsplat's persp_proj for intrinsics K."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tfx = 0.5 * width / fx
    tfy = 0.5 * height / fy
    return cx / fx + 0.3 * tfx, (width - cx) / fx + 0.3 * tfx, cy / fy + 0.3 * tfy, (height - cy) / fy + 0.3 * tfy


_CHUNK = 256      # Gaussians per parallel work item (scratch matrices are allocated once per item)


@_kernel
def _project_forward(means, quats, scales, opac, viewmats, Ks, width, height, eps2d, near, far,
                     sh, sh_degree, campos, out_means2d, out_conics, out_depths, out_radii, out_colors):
    """Project N Gaussians into C cameras (``reference.project_gaussians``, classic mode) and, when
    ``sh_degree`` >= 0, evaluate their SH colours (``reference.project_and_shade``). Inputs float64."""
    C = viewmats.shape[0]
    N = means.shape[0]
    n_bases = (sh_degree + 1) ** 2
    for chunk in numba.prange((N + _CHUNK - 1) // _CHUNK):
        R = np.empty((3, 3))
        M = np.empty((3, 3))
        RM = np.empty((3, 3))
        Sc = np.empty((3, 3))
        b = np.empty(16)
        gx = np.empty(16)
        gy = np.empty(16)
        gz = np.empty(16)
        for n in range(chunk * _CHUNK, min(N, (chunk + 1) * _CHUNK)):
            o = opac[n]
            _world_cov(quats[n], scales[n], R, M)
            for c in range(C):
                V = viewmats[c]
                K = Ks[c]
                x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
                y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
                z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
                out_depths[c, n] = z
                if sh_degree >= 0:
                    d0 = means[n, 0] - campos[c, 0]
                    d1 = means[n, 1] - campos[c, 1]
                    d2 = means[n, 2] - campos[c, 2]
                    dn = max(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)
                    _sh_basis(d0 / dn, d1 / dn, d2 / dn, b, gx, gy, gz)
                    for ch in range(3):
                        v = 0.5
                        for k in range(n_bases):
                            v += b[k] * sh[n, k, ch]
                        out_colors[c, n, ch] = max(v, 0.0)
                if not (z >= near and z <= far):
                    continue
                for i in range(3):                              # camera covariance Rv Sigma Rv^T
                    for j in range(3):
                        RM[i, j] = V[i, 0] * M[0, j] + V[i, 1] * M[1, j] + V[i, 2] * M[2, j]
                for i in range(3):
                    for j in range(3):
                        Sc[i, j] = RM[i, 0] * RM[j, 0] + RM[i, 1] * RM[j, 1] + RM[i, 2] * RM[j, 2]
                lxn, lxp, lyn, lyp = _fov_limits(K, width, height)
                j00, j02, j11, j12, tx, ty, _, _ = _jacobian(x, y, z, K[0, 0], K[1, 1], lxn, lxp, lyn, lyp)
                # cov2 = J Sc J^T with J = [[j00, 0, j02], [0, j11, j12]], plus eps2d on the diagonal
                a = j00 * j00 * Sc[0, 0] + 2.0 * j00 * j02 * Sc[0, 2] + j02 * j02 * Sc[2, 2] + eps2d
                bb = j00 * j11 * Sc[0, 1] + j00 * j12 * Sc[0, 2] + j02 * j11 * Sc[2, 1] + j02 * j12 * Sc[2, 2]
                cc = j11 * j11 * Sc[1, 1] + 2.0 * j11 * j12 * Sc[1, 2] + j12 * j12 * Sc[2, 2] + eps2d
                det = a * cc - bb * bb
                mx = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * z) / z
                my = (K[1, 0] * x + K[1, 1] * y + K[1, 2] * z) / z
                out_means2d[c, n, 0] = mx
                out_means2d[c, n, 1] = my
                if not det > 0.0:
                    continue
                out_conics[c, n, 0] = cc / det
                out_conics[c, n, 1] = -bb / det
                out_conics[c, n, 2] = a / det
                if o < ALPHA_THRESHOLD:
                    continue
                extend = min(math.sqrt(2.0 * math.log(max(o, ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), RADIUS_SIGMAS)
                rx = math.ceil(extend * math.sqrt(max(a, 0.0)))
                ry = math.ceil(extend * math.sqrt(max(cc, 0.0)))
                if rx <= 0 and ry <= 0:
                    continue
                if mx + rx <= 0 or mx - rx >= width or my + ry <= 0 or my - ry >= height:
                    continue
                out_radii[c, n, 0] = rx
                out_radii[c, n, 1] = ry


@_kernel
def _project_backward(means, quats, scales, viewmats, Ks, width, height, eps2d, sh, sh_degree, campos,
                      radii, colors, v_means2d, v_conics, v_depths, v_colors,
                      g_means, g_quats, g_scales, g_sh):
    """The vector-Jacobian product of ``_project_forward``: gradients of means, quats, scales and
    SH coefficients from those of means2d, conics, depths and colours (gsplat's projection and SH
    backward, in float64). Culled Gaussians (radii 0) get none through means2d and conics."""
    C = viewmats.shape[0]
    N = means.shape[0]
    n_bases = (sh_degree + 1) ** 2
    for chunk in numba.prange((N + _CHUNK - 1) // _CHUNK):
        R = np.empty((3, 3))
        M = np.empty((3, 3))
        RM = np.empty((3, 3))
        Sc = np.empty((3, 3))
        b = np.empty(16)
        gx = np.empty(16)
        gy = np.empty(16)
        gz = np.empty(16)
        T33 = np.empty((3, 3))
        vSc = np.empty((3, 3))
        vS = np.empty((3, 3))
        VM = np.empty((3, 3))
        VR = np.empty((3, 3))
        for n in range(chunk * _CHUNK, min(N, (chunk + 1) * _CHUNK)):
            qn = _world_cov(quats[n], scales[n], R, M)
            vS[:, :] = 0.0                 # d loss / d Sigma (world covariance), summed over cameras
            gm0 = gm1 = gm2 = 0.0
            for c in range(C):
                V = viewmats[c]
                K = Ks[c]
                if sh_degree >= 0:
                    d0 = means[n, 0] - campos[c, 0]
                    d1 = means[n, 1] - campos[c, 1]
                    d2 = means[n, 2] - campos[c, 2]
                    dn = max(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2), 1e-12)
                    ux, uy, uz = d0 / dn, d1 / dn, d2 / dn
                    _sh_basis(ux, uy, uz, b, gx, gy, gz)
                    vu0 = vu1 = vu2 = 0.0
                    for ch in range(3):
                        if colors[c, n, ch] <= 0.0:
                            continue            # max(0, .) is flat here
                        vc = v_colors[c, n, ch]
                        for k in range(n_bases):
                            g_sh[n, k, ch] += b[k] * vc
                            coef = sh[n, k, ch] * vc
                            vu0 += coef * gx[k]
                            vu1 += coef * gy[k]
                            vu2 += coef * gz[k]
                    # through d / |d|: (I - u u^T) / |d|
                    dot = vu0 * ux + vu1 * uy + vu2 * uz
                    gm0 += (vu0 - dot * ux) / dn
                    gm1 += (vu1 - dot * uy) / dn
                    gm2 += (vu2 - dot * uz) / dn
                x = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
                y = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
                z = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
                vp0 = 0.0
                vp1 = 0.0
                vp2 = v_depths[c, n]
                if radii[c, n, 0] > 0 and radii[c, n, 1] > 0:
                    # scalar code and constant-bound loops (LLVM unrolls them; no array views or
                    # calls per Gaussian): camera covariance Sc = (Rv M)(Rv M)^T
                    for i in range(3):
                        for j in range(3):
                            RM[i, j] = V[i, 0] * M[0, j] + V[i, 1] * M[1, j] + V[i, 2] * M[2, j]
                    for i in range(3):
                        for j in range(3):
                            Sc[i, j] = RM[i, 0] * RM[j, 0] + RM[i, 1] * RM[j, 1] + RM[i, 2] * RM[j, 2]
                    fx, fy = K[0, 0], K[1, 1]
                    lxn, lxp, lyn, lyp = _fov_limits(K, width, height)
                    j00, j02, j11, j12, tx, ty, clx, cly = _jacobian(x, y, z, fx, fy, lxn, lxp, lyn, lyp)
                    # cov2 = J Sc J^T + eps2d I, J = [[j00, 0, j02], [0, j11, j12]]
                    h00 = j00 * Sc[0, 0] + j02 * Sc[2, 0]
                    h01 = j00 * Sc[0, 1] + j02 * Sc[2, 1]
                    h02 = j00 * Sc[0, 2] + j02 * Sc[2, 2]
                    h10 = j11 * Sc[1, 0] + j12 * Sc[2, 0]
                    h11 = j11 * Sc[1, 1] + j12 * Sc[2, 1]
                    h12 = j11 * Sc[1, 2] + j12 * Sc[2, 2]
                    a = h00 * j00 + h02 * j02 + eps2d
                    bb = 0.5 * ((h01 * j11 + h02 * j12) + (h10 * j00 + h12 * j02))
                    cc = h11 * j11 + h12 * j12 + eps2d
                    det = a * cc - bb * bb
                    p00, p01, p11 = cc / det, -bb / det, a / det     # P = cov2^-1 (symmetric)
                    # conic = (P00, P01, P11); P01 is used once: split its gradient over P01 and P10
                    g00 = v_conics[c, n, 0]
                    g01 = 0.5 * v_conics[c, n, 1]
                    g11 = v_conics[c, n, 2]
                    q00 = p00 * g00 + p01 * g01                     # P G
                    q01 = p00 * g01 + p01 * g11
                    q10 = p01 * g00 + p11 * g01
                    q11 = p01 * g01 + p11 * g11
                    u00 = -(q00 * p00 + q01 * p01)                  # d loss / d cov2 = -P G P
                    u01 = -(q00 * p01 + q01 * p11)
                    u10 = -(q10 * p00 + q11 * p01)
                    u11 = -(q10 * p01 + q11 * p11)
                    # J^T V2 J (3x3, rows of J^T V2: (t_i0, t_i1))
                    t00, t01 = j00 * u00, j00 * u01
                    t10, t11 = j11 * u10, j11 * u11
                    t20, t21 = j02 * u00 + j12 * u10, j02 * u01 + j12 * u11
                    vSc[0, 0], vSc[0, 1], vSc[0, 2] = t00 * j00, t01 * j11, t00 * j02 + t01 * j12
                    vSc[1, 0], vSc[1, 1], vSc[1, 2] = t10 * j00, t11 * j11, t10 * j02 + t11 * j12
                    vSc[2, 0], vSc[2, 1], vSc[2, 2] = t20 * j00, t21 * j11, t20 * j02 + t21 * j12
                    # d loss / d J = 2 V2 J Sc (the entries J has)
                    w00, w01, w02 = u00 * j00, u01 * j11, u00 * j02 + u01 * j12
                    w10, w11, w12 = u10 * j00, u11 * j11, u10 * j02 + u11 * j12
                    vj00 = 2.0 * (w00 * Sc[0, 0] + w01 * Sc[1, 0] + w02 * Sc[2, 0])
                    vj02 = 2.0 * (w00 * Sc[0, 2] + w01 * Sc[1, 2] + w02 * Sc[2, 2])
                    vj11 = 2.0 * (w10 * Sc[0, 1] + w11 * Sc[1, 1] + w12 * Sc[2, 1])
                    vj12 = 2.0 * (w10 * Sc[0, 2] + w11 * Sc[1, 2] + w12 * Sc[2, 2])
                    # d loss / d Sigma += Rv^T vSc Rv
                    for i in range(3):
                        for j in range(3):
                            T33[i, j] = V[0, i] * vSc[0, j] + V[1, i] * vSc[1, j] + V[2, i] * vSc[2, j]
                    for i in range(3):
                        for j in range(3):
                            vS[i, j] += T33[i, 0] * V[0, j] + T33[i, 1] * V[1, j] + T33[i, 2] * V[2, j]
                    # means2d = (K[:2] p) / z
                    vm0 = v_means2d[c, n, 0]
                    vm1 = v_means2d[c, n, 1]
                    m0 = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * z) / z
                    m1 = (K[1, 0] * x + K[1, 1] * y + K[1, 2] * z) / z
                    vp0 += (vm0 * K[0, 0] + vm1 * K[1, 0]) / z
                    vp1 += (vm0 * K[0, 1] + vm1 * K[1, 1]) / z
                    vp2 += (vm0 * K[0, 2] + vm1 * K[1, 2]) / z - (vm0 * m0 + vm1 * m1) / z
                    # J's entries: j00 = fx/z, j02 = -fx tx/z^2, j11 = fy/z, j12 = -fy ty/z^2
                    z2 = z * z
                    v_tx = vj02 * (-fx / z2)
                    v_ty = vj12 * (-fy / z2)
                    vp2 += (vj00 * (-fx / z2) + vj11 * (-fy / z2)
                            + vj02 * (2.0 * fx * tx / (z2 * z)) + vj12 * (2.0 * fy * ty / (z2 * z)))
                    # tx = z clamp(x/z): d/dx = 1 unclamped; d/dz = tx/z clamped
                    if clx:
                        vp2 += v_tx * tx / z
                    else:
                        vp0 += v_tx
                    if cly:
                        vp2 += v_ty * ty / z
                    else:
                        vp1 += v_ty
                # p = Rv mean + t
                gm0 += V[0, 0] * vp0 + V[1, 0] * vp1 + V[2, 0] * vp2
                gm1 += V[0, 1] * vp0 + V[1, 1] * vp1 + V[2, 1] * vp2
                gm2 += V[0, 2] * vp0 + V[1, 2] * vp1 + V[2, 2] * vp2
            g_means[n, 0] = gm0
            g_means[n, 1] = gm1
            g_means[n, 2] = gm2
            # Sigma = M M^T, M = R diag(s), R = R(q / |q|)
            for i in range(3):
                for j in range(3):
                    T33[i, j] = vS[i, j] + vS[j, i]
            for i in range(3):
                for j in range(3):
                    VM[i, j] = T33[i, 0] * M[0, j] + T33[i, 1] * M[1, j] + T33[i, 2] * M[2, j]
            for j in range(3):
                acc = 0.0
                for i in range(3):
                    VR[i, j] = VM[i, j] * scales[n, j]
                    acc += VM[i, j] * R[i, j]
                g_scales[n, j] = acc
            w, x, y, z = quats[n, 0] / qn, quats[n, 1] / qn, quats[n, 2] / qn, quats[n, 3] / qn
            vw = 2.0 * (x * (VR[2, 1] - VR[1, 2]) + y * (VR[0, 2] - VR[2, 0]) + z * (VR[1, 0] - VR[0, 1]))
            vx = (2.0 * (y * (VR[1, 0] + VR[0, 1]) + z * (VR[2, 0] + VR[0, 2]) + w * (VR[2, 1] - VR[1, 2]))
                  - 4.0 * x * (VR[2, 2] + VR[1, 1]))
            vy = (2.0 * (x * (VR[1, 0] + VR[0, 1]) + w * (VR[0, 2] - VR[2, 0]) + z * (VR[1, 2] + VR[2, 1]))
                  - 4.0 * y * (VR[2, 2] + VR[0, 0]))
            vz = (2.0 * (w * (VR[1, 0] - VR[0, 1]) + x * (VR[2, 0] + VR[0, 2]) + y * (VR[1, 2] + VR[2, 1]))
                  - 4.0 * z * (VR[1, 1] + VR[0, 0]))
            dot = vw * w + vx * x + vy * y + vz * z
            g_quats[n, 0] = (vw - dot * w) / qn
            g_quats[n, 1] = (vx - dot * x) / qn
            g_quats[n, 2] = (vy - dot * y) / qn
            g_quats[n, 3] = (vz - dot * z) / qn


@numba.njit(**_JIT)
def _bin_tiles(means2d, radii, order, tile_w, tile_h):
    """(gaussian id, tile) intersections grouped by tile, front to back within a tile: a counting
    sort of the depth ``order``. The box arithmetic is ``reference._tile_intersections``'s.
    Returns gid [M], tile offsets and counts [tiles], tiles_per_gauss i32[N]."""
    n = means2d.shape[0]
    n_tiles = tile_w * tile_h
    box = np.zeros((n, 4), np.int64)
    tiles_per_gauss = np.zeros(n, np.int32)
    tile_counts = np.zeros(n_tiles, np.int64)
    for g in range(n):
        if radii[g, 0] <= 0 or radii[g, 1] <= 0:
            continue
        tx = means2d[g, 0] / TILE_SIZE
        ty = means2d[g, 1] / TILE_SIZE
        trx = radii[g, 0] / TILE_SIZE
        try_ = radii[g, 1] / TILE_SIZE
        x0 = min(max(math.floor(tx - trx), 0), tile_w)
        y0 = min(max(math.floor(ty - try_), 0), tile_h)
        x1 = min(max(math.ceil(tx + trx), 0), tile_w)
        y1 = min(max(math.ceil(ty + try_), 0), tile_h)
        box[g, 0], box[g, 1], box[g, 2], box[g, 3] = x0, y0, x1, y1
        c = max(x1 - x0, 0) * max(y1 - y0, 0)
        tiles_per_gauss[g] = c
        for ty_ in range(y0, y1):
            for tx_ in range(x0, x1):
                tile_counts[ty_ * tile_w + tx_] += 1
    tile_offsets = np.zeros(n_tiles, np.int64)
    total = 0
    for t in range(n_tiles):
        tile_offsets[t] = total
        total += tile_counts[t]
    fill = tile_offsets.copy()
    gid = np.empty(total, np.int64)
    for j in range(n):
        g = order[j]
        if tiles_per_gauss[g] == 0:
            continue
        for ty_ in range(box[g, 1], box[g, 3]):
            for tx_ in range(box[g, 0], box[g, 2]):
                t = ty_ * tile_w + tx_
                gid[fill[t]] = g
                fill[t] += 1
    return gid, tile_offsets, tile_counts, tiles_per_gauss


_F = np.float32


@numba.njit(**_JIT)
def _exp_neg(s):
    """exp(-s) for s in [0, 16] in float32 arithmetic only (so that LLVM vectorises the loops that
    call it): exp(-s/8)^8 with a degree-7 Taylor polynomial; relative error < 2e-5 for s <= 6,
    where alpha can still reach 1/255 (beyond it < 6 %, far below the cut)."""
    y = s * _F(-0.125)
    p = _F(1.0) + y * (_F(1.0) + y * (_F(0.5) + y * (_F(1.0 / 6) + y * (_F(1.0 / 24) + y * (
        _F(1.0 / 120) + y * (_F(1.0 / 720) + y * _F(1.0 / 5040)))))))
    p = p * p
    p = p * p
    return p * p


@numba.njit(**_JIT)
def _gaussian_rows(g, means2d, conics, opac, radii, x0, y0, x1, y1):
    """A Gaussian's float32 parameters and its box clipped to the tile [x0,x1) x [y0,y1)."""
    mx = _F(means2d[g, 0])
    my = _F(means2d[g, 1])
    ca = _F(conics[g, 0])
    cb = _F(conics[g, 1])
    cc = _F(conics[g, 2])
    op = _F(opac[g])
    bx0 = max(x0, math.ceil(mx - radii[g, 0] - 0.5))
    bx1 = min(x1, math.floor(mx + radii[g, 0] - 0.5) + 1)
    by0 = max(y0, math.ceil(my - radii[g, 1] - 0.5))
    by1 = min(y1, math.floor(my + radii[g, 1] - 0.5) + 1)
    # (numba types this kernel; mypy cannot type max() of a numpy float32 and a float)
    sig_max = math.log(max(op, ALPHA_THRESHOLD) * 255.0) + 1e-3   # type: ignore[operator]  # beyond it alpha < 1/255
    # only rows that the ellipse 0.5 (a dx^2 + c dy^2) + b dx dy <= sig_max reaches: there
    # |dy| <= sqrt(2 sig_max a / (a c - b^2)) (elsewhere every pixel's alpha is below 1/255)
    det = float(ca) * float(cc) - float(cb) * float(cb)
    if det > 0.0 and ca > 0.0:
        ext = math.sqrt(2.0 * sig_max * float(ca) / det)
        by0 = max(by0, math.ceil(float(my) - ext - 0.5 - 1e-3))
        by1 = min(by1, math.floor(float(my) + ext - 0.5 + 1e-3) + 1)
    return mx, my, ca, cb, cc, op, bx0, bx1, by0, by1, sig_max


# The per-tile state of the compositing kernels: one flat float32 array [_S_ROWS * 256], a row per
# quantity, a lane per pixel of the tile (row-major). One base pointer at constant offsets: LLVM
# proves the row loops' loads and stores independent (no runtime alias checks) and vectorises
# them at full width. RGB (D = 3, the trainer's case) keeps its colour sums and gradients in the
# state (_S_V*, _S_B*); other D use the same rows as per-lane scratch and [D, 256] arrays.
_NPIX = TILE_SIZE * TILE_SIZE
_S_T, _S_TVA, _S_LAST, _S_V0, _S_V1, _S_V2, _S_B0, _S_B1, _S_B2, _S_X, _S_Y = (r * _NPIX for r in range(11))
_S_ROWS = 11
_REASSOC: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
# the forward's row loops: sums reassociated, no fused multiply-adds (its images stay the reference's to
# the last bit of float32 rounding)
_REASSOC_FWD: dict[str, Any] = dict(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})


@numba.njit(**_JIT)
def _pixel_alpha(px, py, mx, my, ca, cb, cc, op):
    """The Gaussian (mean mx, my, conic ca, cb, cc, opacity op) at the pixel centre (px, py),
    float32, exact IEEE arithmetic: the forward and the backward share it bit for bit. Returns
    dx, dy (mean - pixel), vis = exp(-sigma), raw = op vis, alpha = min(0.999, raw) and whether
    it counts (sigma >= 0 and alpha >= 1/255)."""
    dx = mx - px
    dy = my - py
    sigma = _F(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    vis = _exp_neg(min(max(sigma, _F(0.0)), _F(16.0)))
    raw = op * vis
    alpha = min(_F(ALPHA_MAX), raw)
    return dx, dy, vis, raw, alpha, (sigma >= _F(0.0)) & (alpha >= _F(ALPHA_THRESHOLD))


@numba.njit(**_JIT)
def _fwd_pixel(px, py, T, last, k1, mx, my, ca, cb, cc, op):
    """One pixel of the forward for the Gaussian whose rank + 1 is ``k1`` (float): pixel centre
    (px, py), transmittance ``T`` (negative: the pixel is done) and ``last`` (float). Returns them
    updated, the Gaussian's weight alpha T, and 1.0 if it finished the pixel, else 0.0. Exact
    IEEE float32 (no fastmath)."""
    _, _, _, _, alpha, hit = _pixel_alpha(px, py, mx, my, ca, cb, cc, op)
    ok = hit & (T > _F(0.0))
    nt = T * (_F(1.0) - alpha)
    stop = ok & (nt <= _F(T_STOP))
    use = ok & (nt > _F(T_STOP))
    return (-T if stop else (nt if use else T), k1 if use else last, alpha * T if use else _F(0.0),
            _F(1.0) if stop else _F(0.0))


# The row loops below reassociate only their sums (the pixel maths is in the functions above,
# compiled without fastmath): the pixel count is a float32 sum of 0s and 1s, exact in any order
# (an integer count would halve LLVM's vector width); gradient sums stay in vector registers.

@numba.njit(**_REASSOC_FWD)
def _fwd_rows_rgb(s, n, k1, mx, my, ca, cb, cc, op, c0, c1, c2):
    """``_fwd_pixel`` over lanes [0, n) of the state ``s``, the colour accumulated in rows
    ``_S_B0..2``. Returns how many pixels it finished."""
    stopped = _F(0.0)
    for j in range(n):
        t, last, w, stop = _fwd_pixel(s[_S_X + j], s[_S_Y + j], s[_S_T + j], s[_S_LAST + j], k1, mx, my,
                                      ca, cb, cc, op)
        s[_S_T + j] = t
        s[_S_LAST + j] = last
        s[_S_B0 + j] += c0 * w
        s[_S_B1 + j] += c1 * w
        s[_S_B2 + j] += c2 * w
        stopped += stop
    return int(stopped)


@numba.njit(**_REASSOC_FWD)
def _fwd_rows_any(s, acc, n, k1, mx, my, ca, cb, cc, op, col):
    """``_fwd_rows_rgb`` for any number of channels: the weights in row ``_S_B0``, the colour
    ``col`` [D] accumulated into ``acc`` [D, n]."""
    stopped = _F(0.0)
    for j in range(n):
        t, last, w, stop = _fwd_pixel(s[_S_X + j], s[_S_Y + j], s[_S_T + j], s[_S_LAST + j], k1, mx, my,
                                      ca, cb, cc, op)
        s[_S_T + j] = t
        s[_S_LAST + j] = last
        s[_S_B0 + j] = w
        stopped += stop
    for d in range(acc.shape[0]):
        cd = _F(col[d])
        for j in range(n):
            acc[d, j] += cd * s[_S_B0 + j]
    return int(stopped)


@numba.njit(**_JIT)
def _forward_tile(tile, means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                    tile_w, background, out_color, out_alpha, out_last, out_t):
    """``_forward_kernel`` for one tile."""
    D = colors.shape[1]
    cnt = tile_counts[tile]
    x0 = (tile % tile_w) * TILE_SIZE
    y0 = (tile // tile_w) * TILE_SIZE
    x1 = min(x0 + TILE_SIZE, width)
    y1 = min(y0 + TILE_SIZE, height)
    start = tile_offsets[tile]
    st = np.zeros(_S_ROWS * _NPIX, _F)
    acc = np.zeros((D if D != 3 else 0, _NPIX), _F)
    for i in range(_NPIX):
        st[_S_X + i] = _F(x0 + i % TILE_SIZE + 0.5)
        st[_S_Y + i] = _F(y0 + i // TILE_SIZE + 0.5)
        inside = (x0 + i % TILE_SIZE < x1) & (y0 + i // TILE_SIZE < y1)
        st[_S_T + i] = _F(1.0) if inside else _F(-1.0)      # pixels outside the image: done
    n_live = (x1 - x0) * (y1 - y0)
    for k in range(cnt):
        if n_live <= 0:
            break
        g = gid[start + k]
        mx, my, ca, cb, cc, op, bx0, bx1, by0, by1, sig_max = _gaussian_rows(
            g, means2d, conics, opac, radii, x0, y0, x1, y1)
        if by0 >= by1:
            continue
        i0 = (by0 - y0) * TILE_SIZE
        n = (by1 - by0) * TILE_SIZE
        # slices from the first row: indices from 0 let LLVM drop the negative-index wraparound
        if D == 3:
            n_live -= _fwd_rows_rgb(st[i0:], n, _F(k + 1), mx, my, ca, cb, cc, op,
                                    _F(colors[g, 0]), _F(colors[g, 1]), _F(colors[g, 2]))
        else:
            n_live -= _fwd_rows_any(st[i0:], acc[:, i0:], n, _F(k + 1), mx, my, ca, cb, cc, op, colors[g])
    for py in range(y0, y1):
        for px in range(x0, x1):
            i = (py - y0) * TILE_SIZE + (px - x0)
            t = abs(st[_S_T + i])
            out_alpha[py, px] = 1.0 - t
            rest = 1.0 - out_alpha[py, px]          # the driver's colour + (1 - alpha) background
            if D == 3:
                out_color[py, px, 0] = st[_S_B0 + i] + rest * background[0]
                out_color[py, px, 1] = st[_S_B1 + i] + rest * background[1]
                out_color[py, px, 2] = st[_S_B2 + i] + rest * background[2]
            else:
                for d in range(D):
                    out_color[py, px, d] = acc[d, i] + rest * background[d]
            out_last[py, px] = np.int32(st[_S_LAST + i])
            out_t[py, px] = t


@_kernel
def _forward_kernel(means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                    tile_w, background, out_color, out_alpha, out_last, out_t):
    """Composite every tile: colour [H,W,D] (plus (1 - alpha) ``background`` [D]), alpha [H,W],
    per pixel the number of the tile's Gaussians visited (``last``) and the final transmittance
    ``t`` (both for the backward).

    Each tile walks its Gaussians front to back, over the rows of a Gaussian's box (``radii``)
    that its ellipse alpha >= 1/255 reaches (``_gaussian_rows``), testing every pixel of those
    rows as the reference does: those rows' pixels as one branch-free float32 loop over the
    tile's state (several vectors in flight); a finished pixel carries its transmittance negated."""
    n_tiles = tile_offsets.shape[0]
    for tile in numba.prange(n_tiles):
        _forward_tile(tile, means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                      tile_w, background, out_color, out_alpha, out_last, out_t)


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _bwd_pixel(px, py, last, T, kf, mx, my, ca, cb, cc, op):
    """The part of one pixel's backward that does not depend on colours, for the Gaussian at
    depth rank ``kf`` (float): pixel centre (px, py), the forward's ``last`` (float) and the
    transmittance ``T`` behind the Gaussian. Returns dx, dy, vis, raw, its weight's alpha (0
    where it did not contribute), 1 / (1 - alpha), the transmittance in front of it and whether
    d loss / d alpha reaches sigma (it contributed and alpha was not clamped). Alpha and the
    cut-offs are the forward's bit for bit (``_pixel_alpha``)."""
    dx, dy, vis, raw, alpha, hit = _pixel_alpha(px, py, mx, my, ca, cb, cc, op)
    ok = hit & (kf < last)
    ra = _F(1.0) / (_F(1.0) - alpha)
    return (dx, dy, vis, raw, alpha if ok else _F(0.0), ra, T * ra if ok else T,
            ok & (raw <= _F(ALPHA_MAX)))


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _geometry_grads(v_a, live, dx, dy, vis, raw, ca, cb, cc):
    """A pixel's gradients to means2d x, y, |x|, |y|, conic a, b, c and opacity from
    ``v_a`` = d loss / d alpha (used where ``live``)."""
    v_am = v_a if live else _F(0.0)
    v_sigma = -raw * v_am
    gx = v_sigma * (ca * dx + cb * dy)
    gy = v_sigma * (cb * dx + cc * dy)
    return (gx, gy, abs(gx), abs(gy), _F(0.5) * v_sigma * dx * dx, v_sigma * dx * dy,
            _F(0.5) * v_sigma * dy * dy, vis * v_am)


@numba.njit(**_JIT)
def _put_grads(out, gx, gy, agx, agy, ga, gb, gc, go):
    """A row of ``per`` [8 + D]: means2d x, y, |x|, |y| and conic a, b, c first, opacity last
    (the colours' D columns in between are the caller's)."""
    out[0], out[1], out[2], out[3], out[4], out[5], out[6] = gx, gy, agx, agy, ga, gb, gc
    out[out.shape[0] - 1] = go


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _colour_grads_rgb(tva, ra, t, wgt, v0, v1, v2, b0, b1, b2, c0, c1, c2):
    """d loss / d alpha of one pixel (through 1 - T_final, this colour and the colour behind,
    ``tva`` = final T * d loss / d pixel alpha) and the colour behind with this Gaussian's."""
    v_a = tva * ra + (c0 * t - b0 * ra) * v0 + (c1 * t - b1 * ra) * v1 + (c2 * t - b2 * ra) * v2
    return v_a, b0 + c0 * wgt, b1 + c1 * wgt, b2 + c2 * wgt


@numba.njit(**_REASSOC)
def _bwd_rows_rgb(s, n, kf, mx, my, ca, cb, cc, op, c0, c1, c2, out):
    """The RGB backward over lanes [0, n) of the state ``s`` (rows ``_S_V0..2`` = d loss / d
    colour, ``_S_B0..2`` = the colour composited behind), its contributions summed into ``out``
    [11] (``per``'s columns: means2d 2, |means2d| 2, conics 3, colours 3, opacity)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = _F(0.0)
    for j in range(n):
        dx, dy, vis, raw, al, ra, t, live = _bwd_pixel(s[_S_X + j], s[_S_Y + j], s[_S_LAST + j], s[_S_T + j],
                                                       kf, mx, my, ca, cb, cc, op)
        s[_S_T + j] = t
        wgt = al * t
        v0 = s[_S_V0 + j]
        v1 = s[_S_V1 + j]
        v2 = s[_S_V2 + j]
        b0 = s[_S_B0 + j]
        b1 = s[_S_B1 + j]
        b2 = s[_S_B2 + j]
        v_a, s[_S_B0 + j], s[_S_B1 + j], s[_S_B2 + j] = _colour_grads_rgb(s[_S_TVA + j], ra, t, wgt, v0, v1, v2,
                                                                            b0, b1, b2, c0, c1, c2)
        g = _geometry_grads(v_a, live, dx, dy, vis, raw, ca, cb, cc)
        a0, a1, a2, a3 = a0 + g[0], a1 + g[1], a2 + g[2], a3 + g[3]
        a4, a5, a6, a7 = a4 + g[4], a5 + g[5], a6 + g[6], a7 + g[7]
        a8 += wgt * v0
        a9 += wgt * v1
        a10 += wgt * v2
    _put_grads(out, a0, a1, a2, a3, a4, a5, a6, a7)
    out[7], out[8], out[9] = a8, a9, a10


@numba.njit(**_REASSOC)
def _bwd_rows_any(s, vc, buf, n, kf, mx, my, ca, cb, cc, op, col, out):
    """``_bwd_rows_rgb`` for any number of channels D: d loss / d colour in ``vc`` [D, n], the
    colour behind in ``buf`` [D, n], state rows ``_S_V0..2``, ``_S_B0..2`` as per-lane scratch;
    ``out`` [8 + D]."""
    D = vc.shape[0]
    for j in range(n):
        dx, dy, vis, raw, al, ra, t, live = _bwd_pixel(s[_S_X + j], s[_S_Y + j], s[_S_LAST + j], s[_S_T + j],
                                                       kf, mx, my, ca, cb, cc, op)
        s[_S_T + j] = t
        s[_S_V0 + j] = al
        s[_S_V1 + j] = ra
        s[_S_V2 + j] = t
        s[_S_B0 + j] = s[_S_TVA + j] * ra            # d loss / d alpha, the colours' shares to come
    for d in range(D):
        cd = _F(col[d])
        acc = _F(0.0)
        for j in range(n):
            t = s[_S_V2 + j]
            wgt = s[_S_V0 + j] * t
            acc += wgt * vc[d, j]
            s[_S_B0 + j] += (cd * t - buf[d, j] * s[_S_V1 + j]) * vc[d, j]
            buf[d, j] += cd * wgt
        out[7 + d] = acc
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _F(0.0)
    for j in range(n):
        # recomputed rather than stored: the same exact values as in the first pass
        dx, dy, vis, raw, al, ra, t, live = _bwd_pixel(s[_S_X + j], s[_S_Y + j], _F(1.0), _F(1.0), _F(0.0),
                                                       mx, my, ca, cb, cc, op)
        g = _geometry_grads(s[_S_B0 + j], live & (s[_S_V0 + j] > _F(0.0)), dx, dy, vis, raw, ca, cb, cc)
        a0, a1, a2, a3 = a0 + g[0], a1 + g[1], a2 + g[2], a3 + g[3]
        a4, a5, a6, a7 = a4 + g[4], a5 + g[5], a6 + g[6], a7 + g[7]
    _put_grads(out, a0, a1, a2, a3, a4, a5, a6, a7)


@numba.njit(**_JIT)
def _backward_tile(tile, means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                     tile_w, background, last_idx, final_t, v_color, v_alpha, per):
    """``_backward_kernel`` for one tile."""
    D = colors.shape[1]
    x0 = (tile % tile_w) * TILE_SIZE
    y0 = (tile // tile_w) * TILE_SIZE
    x1 = min(x0 + TILE_SIZE, width)
    y1 = min(y0 + TILE_SIZE, height)
    start = tile_offsets[tile]
    st = np.zeros(_S_ROWS * _NPIX, _F)       # outside the image: last = 0, no contribution
    vc = np.zeros((D if D != 3 else 0, _NPIX), _F)
    buf = np.zeros((D if D != 3 else 0, _NPIX), _F)
    row_last = np.zeros(TILE_SIZE, np.int64)  # per row of the tile, the largest ``last``
    max_last = 0
    for i in range(_NPIX):
        st[_S_X + i] = _F(x0 + i % TILE_SIZE + 0.5)
        st[_S_Y + i] = _F(y0 + i // TILE_SIZE + 0.5)
        st[_S_T + i] = _F(1.0)
    for py in range(y0, y1):
        for px in range(x0, x1):
            i = (py - y0) * TILE_SIZE + (px - x0)
            # final T * d loss / d pixel alpha (the background's share: colour - alpha background)
            va = v_alpha[py, px]
            if D == 3:
                va -= (v_color[py, px, 0] * background[0] + v_color[py, px, 1] * background[1]
                       + v_color[py, px, 2] * background[2])
                st[_S_V0 + i] = v_color[py, px, 0]
                st[_S_V1 + i] = v_color[py, px, 1]
                st[_S_V2 + i] = v_color[py, px, 2]
            else:
                for d in range(D):
                    va -= v_color[py, px, d] * background[d]
                    vc[d, i] = v_color[py, px, d]
            st[_S_T + i] = final_t[py, px]
            st[_S_TVA + i] = final_t[py, px] * va
            st[_S_LAST + i] = _F(last_idx[py, px])
            row_last[py - y0] = max(row_last[py - y0], last_idx[py, px])
            max_last = max(max_last, last_idx[py, px])
    for k in range(max_last - 1, -1, -1):
        g = gid[start + k]
        mx, my, ca, cb, cc, op, bx0, bx1, by0, by1, sig_max = _gaussian_rows(
            g, means2d, conics, opac, radii, x0, y0, x1, y1)
        # rows whose pixels all stopped before this Gaussian (last <= k) get nothing from it
        while by0 < by1 and row_last[by0 - y0] <= k:
            by0 += 1
        while by1 > by0 and row_last[by1 - 1 - y0] <= k:
            by1 -= 1
        if by0 >= by1:
            continue
        i0 = (by0 - y0) * TILE_SIZE
        n = (by1 - by0) * TILE_SIZE
        if D == 3:
            _bwd_rows_rgb(st[i0:], n, _F(k), mx, my, ca, cb, cc, op,
                          _F(colors[g, 0]), _F(colors[g, 1]), _F(colors[g, 2]), per[start + k])
        else:
            _bwd_rows_any(st[i0:], vc[:, i0:], buf[:, i0:], n, _F(k), mx, my, ca, cb, cc, op, colors[g],
                          per[start + k])


@_kernel
def _backward_kernel(means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                     tile_w, background, last_idx, final_t, v_color, v_alpha, per):
    """Per (tile, Gaussian) intersection gradients into ``per`` [M, 8+D] (columns: means2d 2,
    |means2d| 2, conics 3, colours D, opacity 1), indexed like ``gid``: tiles write disjoint rows,
    so the parallel loop has no races; ``_reduce`` sums them per Gaussian. Back to front over the
    forward's rows, from each pixel's final transmittance (gsplat's backward), each Gaussian's
    rows as one flat loop over the tile's state; ``background`` [D] takes its share of d loss /
    d alpha."""
    n_tiles = tile_offsets.shape[0]
    for tile in numba.prange(n_tiles):
        _backward_tile(tile, means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts, width, height,
                       tile_w, background, last_idx, final_t, v_color, v_alpha, per)


@numba.njit(**_JIT)
def _reduce(gid, per_isect, out):
    """out[gid[i]] += per_isect[i] (rows), serially: O(intersections)."""
    for i in range(gid.shape[0]):
        g = gid[i]
        for j in range(per_isect.shape[1]):
            out[g, j] += per_isect[i, j]


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu").numpy())


def _back(a: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A kernel result as a tensor of ``dtype`` on ``device`` (cast on the CPU: MPS has no float64)."""
    t = torch.from_numpy(a)
    return (t.to(dtype) if dtype is not None else t).to(device)


def _np32(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())


def _np64(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float64).numpy())   # MPS has no float64


class _CompositeTiles(torch.autograd.Function):
    """One camera's compositing as a Numba forward/backward pair (see the module docstring), the
    background blended in by the kernels (colour + (1 - alpha) background, as the driver's
    contract says): no image-sized torch operations in the step."""

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                radii: Tensor, depths: Tensor, width: int, height: int,
                absgrad_target: tuple[int, Tensor] | None, background: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        device, dtype = means2d.device, means2d.dtype
        tile_w = math.ceil(width / TILE_SIZE)
        tile_h = math.ceil(height / TILE_SIZE)
        m2, con, col, op = _np(means2d), _np(conics), _np(colors), _np(opacities)
        rad = _np(radii).astype(np.int64)
        order = np.argsort(_np(depths), kind="stable")
        gid, tile_offsets, tile_counts, tpg_np = _bin_tiles(m2, rad, order, tile_w, tile_h)
        arrays = (m2, con, col, op, rad, gid, tile_offsets, tile_counts)
        D = colors.shape[-1]
        # every pixel is written by the kernel
        color = np.empty((height, width, D), m2.dtype)
        alpha = np.empty((height, width), m2.dtype)
        last = np.empty((height, width), np.int32)
        final_t = np.empty((height, width), np.float32)     # float32 in the kernels
        bg = np.zeros(D, m2.dtype) if background is None else _np(background).astype(m2.dtype)
        _forward_kernel(*arrays, width, height, tile_w, bg, color, alpha, last, final_t)
        ctx.arrays = arrays
        ctx.bg, ctx.alpha = bg, alpha
        ctx.last, ctx.final_t = last, final_t
        ctx.size = (width, height, tile_w)
        ctx.absgrad_target = absgrad_target
        tpg = _back(tpg_np, device)
        ctx.mark_non_differentiable(tpg)
        return (_back(color, device, dtype), _back(alpha[..., None], device, dtype),
                tpg)

    @staticmethod
    def backward(ctx, v_color: Tensor, v_alpha: Tensor, _v_tpg: Any):
        means2d, conics, colors, opac, radii, gid, tile_offsets, tile_counts = ctx.arrays
        width, height, tile_w = ctx.size
        device, dtype = v_color.device, v_color.dtype
        N, D, M = means2d.shape[0], colors.shape[1], gid.shape[0]
        # float32 throughout: the kernel's per-tile sums are float32; _reduce adds them in float64
        per = np.zeros((M, 8 + D), np.float32)
        vc = _np32(v_color)
        _backward_kernel(*ctx.arrays, width, height, tile_w, ctx.bg.astype(np.float32), ctx.last, ctx.final_t,
                         vc, _np32(v_alpha[..., 0]), per)
        v_bg = None
        if ctx.needs_input_grad[9]:        # d loss / d background = sum over pixels of v_colour (1 - alpha)
            v_bg = _back(np.einsum("hwd,hw->d", vc.astype(np.float64), 1.0 - ctx.alpha.astype(np.float64)),
                         device, dtype)
        out = np.zeros((N, 8 + D), np.float64)
        _reduce(gid, per, out)
        t = _back(out, device, dtype)
        if ctx.absgrad_target is not None:
            cam, holder = ctx.absgrad_target
            if getattr(holder, "absgrad", None) is None or holder.absgrad.shape != holder.shape:
                holder.absgrad = torch.zeros(holder.shape, device=holder.device, dtype=holder.dtype)
            holder.absgrad[cam] = t[:, 2:4].to(holder.device)
        return t[:, 0:2], t[:, 4:7], t[:, 7:7 + D], t[:, 7 + D], None, None, None, None, None, v_bg


class _ProjectShade(torch.autograd.Function):
    """``_project_forward`` / ``_project_backward`` as one autograd node (classic mode)."""

    @staticmethod
    def forward(ctx, means: Tensor, quats: Tensor, scales: Tensor, sh: Tensor, opacities: Tensor,
                viewmats: Tensor, Ks: Tensor, width: int, height: int, eps2d: float, near: float,
                far: float, sh_degree: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        device = means.device
        C, N = viewmats.shape[0], means.shape[0]
        np_dtype = _np(means[:0]).dtype
        arrays = [_np64(t) for t in (means, quats, scales, opacities, viewmats, Ks)]
        # read as is (float32 in training) and widened to float64 where the kernels use it
        sh_np = _np(sh) if sh_degree >= 0 else np.zeros((N, 1, 3), np_dtype)
        campos = np.ascontiguousarray(np.linalg.inv(arrays[4])[:, :3, 3])
        means2d = np.zeros((C, N, 2), np_dtype)
        conics = np.zeros((C, N, 3), np_dtype)
        depths = np.zeros((C, N), np_dtype)
        radii = np.zeros((C, N, 2), np.int32)
        colors = np.zeros((C, N, 3), np_dtype)
        _project_forward(*arrays, width, height, eps2d, near, far, sh_np, sh_degree, campos,
                         means2d, conics, depths, radii, colors)
        ctx.arrays = (arrays[0], arrays[1], arrays[2], arrays[4], arrays[5])
        ctx.sh, ctx.campos, ctx.radii, ctx.colors = sh_np, campos, radii, colors
        ctx.params = (width, height, eps2d, sh_degree)
        ctx.sh_shape = tuple(sh.shape)
        m2d_t, conics_t, depths_t, radii_t, colors_t = (_back(a, device) for a in (means2d, conics, depths, radii,
                                                                                  colors))
        ctx.mark_non_differentiable(radii_t)
        return m2d_t, conics_t, depths_t, radii_t, colors_t

    @staticmethod
    def backward(ctx, v_means2d: Tensor, v_conics: Tensor, v_depths: Tensor, _v_radii: Any, v_colors: Tensor):
        means, quats, scales, viewmats, Ks = ctx.arrays
        width, height, eps2d, sh_degree = ctx.params
        device, dtype = v_means2d.device, v_means2d.dtype
        N = means.shape[0]
        g_means = np.zeros((N, 3))
        g_quats = np.zeros((N, 4))
        g_scales = np.zeros((N, 3))
        g_sh = np.zeros(ctx.sh.shape)
        _project_backward(means, quats, scales, viewmats, Ks, width, height, eps2d, ctx.sh, sh_degree,
                          ctx.campos, ctx.radii, ctx.colors, _np64(v_means2d), _np64(v_conics),
                          _np64(v_depths), _np64(v_colors), g_means, g_quats, g_scales, g_sh)
        def t(a: np.ndarray) -> Tensor:
            return _back(a, device, dtype)
        return (t(g_means), t(g_quats), t(g_scales), t(g_sh) if sh_degree >= 0 else None, None,
                None, None, None, None, None, None, None, None)


def project_and_shade_fast(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor,
    Ks: Tensor, width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01,
    far_plane: float = 1e10, antialiased: bool = False, sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``reference.project_and_shade`` by the Numba kernels where they apply (classic mode; SH of
    degree <= 3 shared by all cameras, or plain colours); otherwise the reference's torch code."""
    C, N = viewmats.shape[0], means.shape[0]
    use_sh = sh_degree is not None
    if antialiased or (sh_degree is not None and (sh_degree > 3 or colors.dim() != 3)):
        return project_and_shade(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                                 antialiased=antialiased, sh_degree=sh_degree)
    sh = colors if use_sh else means.new_zeros(N, 1, 3)
    means2d, conics, depths, radii, sh_cols = _ProjectShade.apply(
        means, quats, scales, sh, opacities, viewmats, Ks, width, height, float(eps2d), float(near_plane),
        float(far_plane), sh_degree if use_sh else -1)
    if use_sh:
        cols = sh_cols
    else:
        cols = torch.broadcast_to(colors[None], (C, N, colors.shape[-1])) if colors.dim() == 2 else colors
    opac = torch.broadcast_to(opacities[None, :], depths.shape)
    return radii, means2d, depths, conics, opac, cols


def rasterize_fast(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    packed: bool = False,
    absgrad: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``rasterize_reference``'s arguments and outputs (gsplat's conventions), composited by the
    Numba kernels; ``info["backend"]`` is "fast". ``absgrad=True`` fills ``info["means2d"].absgrad``
    [C,N,2] during backward (gsplat's DefaultStrategy(absgrad=True) reads it)."""

    def composite(means2d, conics, cols, opac, radii, depths, width, height, camera, background):
        cam, full_means2d = camera
        target = (cam, full_means2d) if absgrad else None
        return _CompositeTiles.apply(means2d, conics, cols, opac, radii, depths, width, height, target, background)

    return rasterize_with(project_and_shade_fast, composite, "fast", means, quats, scales, opacities, colors,
                          viewmats, Ks, width, height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
                          sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
                          rasterize_mode=rasterize_mode, packed=packed)
