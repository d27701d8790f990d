"""Blender's own Gaussian splats (Blender 5.3+): the point attributes of a ``GAUSSIAN_SPLAT`` point
cloud, and the lossless conversion between them and :class:`~shared.splats.Splats`.

The meaning of each attribute was derived from Blender's own importers (File > Import PLY and
``wm.spz_import`` on bpy 5.3.0, tests/test_native_splats.py) and from its draw code
(``draw_gsplat.cc``):

====================  ============  =========================================================
attribute             type          value, in terms of ``Splats``
====================  ============  =========================================================
``position``          FLOAT_VECTOR  ``means``, unchanged (no axis change: a PLY's own axes;
                                    SPZ gets the same RUB -> Blender turn as our reader)
``scale``             FLOAT_VECTOR  ``exp(scales)``: *linear* standard deviations (metres)
``rotation``          QUATERNION    ``quats`` normalised, w x y z (the importer normalises;
                                    the renderer normalises again)
``radiance:base``     FLOAT4        ``sh0`` raw (the DC SH coefficient, not a colour) in xyz,
                                    ``sigmoid(opacities)`` in w
``radiance:sh_k``     FLOAT_VECTOR  ``shN[:, k, :]`` raw (RGB of coefficient k, the 3DGS
                                    basis order: the PLY's channel-major ``f_rest`` regrouped)
====================  ============  =========================================================

Colour: the renderers evaluate ``0.5 + SH`` exactly like gsplat and treat the result as an
*sRGB-encoded* colour (decoded to scene-linear before blending), so the raw SH values are written
as they are: linearising them first makes the render darker (measured: 18 dB instead of 22 dB
against the reference rasterizer). What Blender does differently, and what no attribute can
change, is where it blends: in scene-linear light, while gsplat (and so our training) blends the
sRGB-encoded colours. See tests/test_native_splats.py for the measured figures.

Lossless: activation (exp, sigmoid, normalise) loses bits (a logit above ~17 is exactly 1.0 in
float32, and a quaternion's length is gone), so SplatBridge also stores the raw values in three
*exact* attributes, :data:`EXACT_QUAT`, :data:`EXACT_LOG_SCALE` and :data:`EXACT_OPACITY`. A
reader takes the exact value of a splat only while it still activates to the native one (within
1e-6): if a user or a Geometry Nodes tree changes ``scale``, ``rotation`` or the opacity, the
native value wins for that splat. Point clouds from Blender's importers have no exact attributes
and are read from the native ones (log of the scale, logit of the opacity clipped to
[1e-7, 1 - 1e-7], the quaternion as stored).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .sh import REST_COUNT
from .splats import Splats, logit, sigmoid

ATTR_POSITION = "position"
ATTR_SCALE = "scale"
ATTR_ROTATION = "rotation"
ATTR_BASE = "radiance:base"
ATTR_SH = "radiance:sh_{}"
EXACT_QUAT = "splatbridge:quat"
EXACT_LOG_SCALE = "splatbridge:log_scale"
EXACT_OPACITY = "splatbridge:opacity_logit"

#: attributes a point cloud needs to be a splat set (position is built in)
REQUIRED = (ATTR_SCALE, ATTR_ROTATION, ATTR_BASE)
#: name -> (Blender attribute type, floats per splat) of every fixed attribute
TYPES = {ATTR_POSITION: ("FLOAT_VECTOR", 3), ATTR_SCALE: ("FLOAT_VECTOR", 3),
         ATTR_ROTATION: ("QUATERNION", 4), ATTR_BASE: ("FLOAT4", 4),
         EXACT_QUAT: ("QUATERNION", 4), EXACT_LOG_SCALE: ("FLOAT_VECTOR", 3), EXACT_OPACITY: ("FLOAT", 1)}
SH_TYPE = ("FLOAT_VECTOR", 3)
#: Blender reads up to degree 4 (24 coefficients); our model stops at degree 3
MAX_NATIVE_SH = 24
EXACT_TOLERANCE = 1e-6
#: opacity 0 and 1 read as logit(1e-7) and logit(1 - 1e-7) (+-16.1): sigmoid gives them back within 1e-7
ALPHA_EPS = 1e-7


def transpose01(a: np.ndarray, block: int = 4096) -> np.ndarray:
    """Contiguous ``a.transpose(1, 0, 2)`` of a 3D array, copied in cache-sized blocks with the
    last axis moved as one opaque item (3x faster than numpy's plain copy for [1M, 15, 3]): the
    SH planes ``[K, N, 3]`` of per-coefficient attributes <-> ``shN [N, K, 3]``."""
    a = np.ascontiguousarray(a)
    rows, cols, inner = a.shape
    item = np.dtype((np.void, inner * a.itemsize))
    src = a.view(item).reshape(rows, cols)
    out = np.empty((cols, rows), item)
    if rows >= cols:                                   # block along the long side
        for i in range(0, rows, block):
            np.copyto(out[:, i:i + block], src[i:i + block].T)
    else:
        for i in range(0, cols, block):
            np.copyto(out[i:i + block], src[:, i:i + block].T)
    return out.view(a.dtype).reshape(cols, rows, inner)


def native_rest_count(present: int) -> int:
    """How many ``radiance:sh_k`` (k = 0, 1, ...) of ``present`` consecutive ones map to ``shN``: 0, 3,
    8 or 15; degree 4 (24) is truncated to degree 3. Raises ValueError for other counts."""
    if present in REST_COUNT.values():
        return present
    if present == MAX_NATIVE_SH:
        return REST_COUNT[3]
    raise ValueError(f"{present} radiance:sh attributes is not an SH degree 1-4 layout "
                     f"(expected 0, 3, 8, 15 or 24)")


def to_native(splats: Splats) -> dict[str, np.ndarray]:
    """The point attributes (name -> f32[N, width]; FLOAT ones f32[N]) that hold ``splats``: Blender's
    native ones plus the exact ones, including one ``radiance:sh_k`` per SH coefficient."""
    out = {ATTR_POSITION: splats.means,
           ATTR_SCALE: splats.scales_linear(),
           ATTR_ROTATION: splats.unit_quats(),
           ATTR_BASE: np.concatenate([splats.sh0, splats.alphas()[:, None]], axis=1),
           EXACT_QUAT: splats.quats, EXACT_LOG_SCALE: splats.scales, EXACT_OPACITY: splats.opacities}
    if len(splats) and splats.shN.shape[1]:
        for k, plane in enumerate(transpose01(splats.shN)):             # contiguous [N, 3] planes
            out[ATTR_SH.format(k)] = plane
    else:
        for k in range(splats.shN.shape[1]):
            out[ATTR_SH.format(k)] = splats.shN[:, k]
    return out


def _choose(ok: np.ndarray | None, exact: np.ndarray | None, derive: Callable[[], np.ndarray]) -> np.ndarray:
    """``exact`` where ``ok`` (per splat), else ``derive()``; ``derive`` runs only when needed.
    ``ok`` is None exactly when ``exact`` is (no exact attribute: every splat is derived)."""
    if exact is None or ok is None:
        return np.asarray(derive(), dtype=np.float32)
    if ok.all():
        return np.ascontiguousarray(exact, dtype=np.float32)
    derived = np.asarray(derive(), dtype=np.float32)
    if ok.any():
        derived[ok] = exact[ok]
    return derived


def _derived_quats(rot: np.ndarray) -> np.ndarray:
    zero = np.einsum("ij,ij->i", rot, rot) == 0
    return np.where(zero[:, None], np.array([1, 0, 0, 0], np.float32), rot)


def from_native(attrs: Mapping[str, np.ndarray], sh_planes: np.ndarray | None = None) -> Splats:
    """:class:`Splats` from point attributes (the inverse of :func:`to_native`; exact attributes are
    optional and used per splat only where they still match the native values).

    ``attrs`` holds ``position``, ``scale``, ``rotation``, ``radiance:base`` and the
    ``radiance:sh_k`` present (consecutive from 0; see :func:`native_rest_count`). A zero scale
    (Blender: an invisible splat) reads as ``log(1e-30)``; a zero quaternion as the identity;
    opacity outside [0, 1] is clamped, as Blender's renderer does. ``sh_planes`` (f32[K, N, 3]), when
    given, holds those K attributes already stacked (saves a copy of the largest data).
    """
    means = np.asarray(attrs[ATTR_POSITION], np.float32).reshape(-1, 3)
    n = len(means)
    scale = np.abs(np.asarray(attrs[ATTR_SCALE], np.float32).reshape(n, 3))
    rot = np.asarray(attrs[ATTR_ROTATION], np.float32).reshape(n, 4)
    base = np.asarray(attrs[ATTR_BASE], np.float32).reshape(n, 4)
    alpha = np.clip(base[:, 3], 0.0, 1.0)

    exact, ok = attrs.get(EXACT_QUAT), None
    if exact is not None:
        exact = np.asarray(exact, np.float32).reshape(n, 4)
        length = np.sqrt(np.einsum("ij,ij->i", exact, exact))
        off = exact - rot * length[:, None]                 # |exact| (unit(exact) - rot), no division
        ok = (length > 0) & (np.einsum("ij,ij->i", off, off) <= (EXACT_TOLERANCE * length) ** 2)
    quats = _choose(ok, exact, lambda: _derived_quats(rot))

    exact, ok = attrs.get(EXACT_LOG_SCALE), None
    if exact is not None:
        exact = np.asarray(exact, np.float32).reshape(n, 3)
        with np.errstate(over="ignore", invalid="ignore"):
            ok = (np.abs(np.exp(exact) - scale) <= EXACT_TOLERANCE * scale).all(axis=1)
    scales = _choose(ok, exact, lambda: np.log(np.maximum(scale, np.float32(1e-30))))

    exact, ok = attrs.get(EXACT_OPACITY), None
    if exact is not None:
        exact = np.asarray(exact, np.float32).reshape(n)
        ok = np.abs(sigmoid(exact) - alpha) <= EXACT_TOLERANCE
    opacities = _choose(ok, exact, lambda: logit(alpha, eps=ALPHA_EPS))

    present = 0
    while ATTR_SH.format(present) in attrs:
        present += 1
    k_count = native_rest_count(present)
    if sh_planes is not None and sh_planes.shape != (k_count, n, 3):
        raise ValueError(f"sh_planes has shape {sh_planes.shape}, expected {(k_count, n, 3)}")
    if n and k_count:
        if sh_planes is None:
            sh_planes = np.stack([np.asarray(attrs[ATTR_SH.format(k)], np.float32).reshape(n, 3)
                                  for k in range(k_count)])
        shN = transpose01(sh_planes)
    else:
        shN = np.zeros((n, k_count, 3), np.float32)
    return Splats(means, quats, scales, opacities, base[:, :3], shN)
