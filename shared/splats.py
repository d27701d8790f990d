"""The splat data model: one class that holds 3D Gaussians in their raw (trainable) form.

Fields (the meaning of the reference 3DGS PLY; Blender world space, metres):

* ``means``      f32[N, 3]    centres
* ``quats``      f32[N, 4]    rotations as w, x, y, z (need not be normalised)
* ``scales``     f32[N, 3]    log of the standard deviations along the local axes
* ``opacities``  f32[N]       logit of the opacity
* ``sh0``        f32[N, 3]    DC spherical-harmonic coefficient per RGB channel
* ``shN``        f32[N, K, 3] higher SH coefficients, K in {0, 3, 8, 15} (degree 0..3)

Activation (exp, sigmoid, normalise) happens here and only here on the numpy side.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .rotations import decompose_similarity, matrix_to_quat, quat_left_matrix
from .sh import REST_COUNT, apply_sh_rotation, degree_from_rest_count, rgb_to_sh0, sh0_to_rgb, sh_rotation_operator

FIELDS = ("means", "quats", "scales", "opacities", "sh0", "shN")

#: rows per block in row-blocked loops (transforms): a block's float64 temporaries stay in the L2 cache,
#: several times faster at 1M splats than whole-array temporaries
BLOCK = 16384


class SplatError(ValueError):
    """Splat data that breaks the model's rules. ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def sigmoid(x: npt.ArrayLike) -> np.ndarray:
    """Logistic function, float32, overflow-safe."""
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def logit(p: npt.ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """Inverse of :func:`sigmoid`; ``p`` is clipped to [eps, 1 - eps] first."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def _as_f32(field: str, value: object, shape_text: str) -> np.ndarray:
    if value is None:
        raise SplatError(field, f"missing (expected a float array of shape {shape_text})")
    if not isinstance(value, np.ndarray):           # Python lists of numbers are welcome
        try:
            value = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise SplatError(field, f"is not numeric (expected a float array of shape {shape_text})") from None
    arr = value
    if arr.dtype.kind != "f":
        raise SplatError(field, f"dtype {arr.dtype} is not floating point (expected float32 {shape_text})")
    return np.ascontiguousarray(arr, dtype=np.float32)


_ONES = np.ones(0, np.float32)


def _ones(n: int) -> np.ndarray:
    """float32 ones [n] (a view of one cached array)."""
    global _ONES
    if len(_ONES) < n:
        _ONES = np.ones(n, np.float32)
    return _ONES[:n]


def _nonzero_rows(quats: np.ndarray) -> bool:
    """Whether every row of float32 [M, 4] has a positive float32 squared length, the constructor's test
    (``einsum("ij,ij->i", q, q) > 0``): a sum of non-negative squares is positive iff one square is, so
    the squares' bits are OR-ed pairwise (two float32 per uint64) instead of summed: ~2x faster."""
    sq = np.multiply(quats, quats)
    pairs = sq.view(np.uint64)
    return bool(np.all((pairs[:, 0] | pairs[:, 1]) != 0))


@dataclass(eq=False)
class Splats:
    """A set of 3D Gaussians. Construction validates shapes, dtypes and finiteness.

    Float arrays of any precision are accepted and stored as contiguous float32 (no copy when
    they already are, so arrays decoded from the wire stay zero-copy and may be read-only).
    """

    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    sh0: np.ndarray
    shN: np.ndarray         # always an array once built: None at construction means degree 0 (zeros [N, 0, 3])

    # Written out rather than generated: ``shN`` accepts None, but the attribute is never None.
    def __init__(self, means: np.ndarray, quats: np.ndarray, scales: np.ndarray, opacities: np.ndarray,
                 sh0: np.ndarray, shN: np.ndarray | None = None) -> None:
        self.means, self.quats, self.scales, self.opacities, self.sh0 = means, quats, scales, opacities, sh0
        self.means = _as_f32("means", self.means, "[N, 3]")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise SplatError("means", f"shape {self.means.shape} is not [N, 3]")
        self.shN = np.zeros((n, 0, 3), np.float32) if shN is None else shN
        expected = {"quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 3)}
        for field, shape in expected.items():
            arr = _as_f32(field, getattr(self, field), str(list(shape)).replace(str(n), "N", 1))
            if arr.shape != shape:
                raise SplatError(field, f"shape {arr.shape} does not match {shape} (N={n} from means)")
            setattr(self, field, arr)
        self.shN = _as_f32("shN", self.shN, "[N, K, 3]")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise SplatError("shN", f"shape {self.shN.shape} is not [N={n}, K, 3]")
        if self.shN.shape[1] not in REST_COUNT.values():
            raise SplatError("shN", f"K={self.shN.shape[1]} coefficients is not an SH degree 0-3 layout "
                                    "(K must be 0, 3, 8 or 15)")
        for field in FIELDS:
            arr = getattr(self, field)
            if not np.isfinite(arr).all():
                bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1) if n > 0 else arr))[0][0])
                raise SplatError(field, f"contains NaN or Inf (first at splat {bad})")
        if n and not (np.einsum("ij,ij->i", self.quats, self.quats) > 0).all():
            bad = int(np.argmin(np.einsum("ij,ij->i", self.quats, self.quats)))
            raise SplatError("quats", f"zero-length quaternion at splat {bad}")

    # -- basic facts --------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def count(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        return degree_from_rest_count(self.shN.shape[1])

    # -- activation (the one place) ----------------------------------------------------
    def scales_linear(self) -> np.ndarray:
        """Standard deviations in metres, f32[N, 3]."""
        return np.exp(self.scales)

    def alphas(self) -> np.ndarray:
        """Opacities in 0..1, f32[N]."""
        return sigmoid(self.opacities)

    def unit_quats(self) -> np.ndarray:
        """Normalised quaternions (w, x, y, z), f32[N, 4]."""
        return (self.quats / np.linalg.norm(self.quats, axis=1, keepdims=True)).astype(np.float32)

    def base_colors(self) -> np.ndarray:
        """RGB of the DC term, clipped to 0..1, f32[N, 3]."""
        return np.clip(sh0_to_rgb(self.sh0), 0.0, 1.0)

    @classmethod
    def from_activated(cls, means: np.ndarray, quats: np.ndarray, scales: np.ndarray,
                       alphas: np.ndarray, colors: np.ndarray, shN: np.ndarray | None = None) -> Splats:
        """Build from linear scales (m), opacities in 0..1 and base RGB in 0..1."""
        scales = np.asarray(scales, dtype=np.float64)
        if (scales <= 0).any():
            raise SplatError("scales", "linear scales must be > 0")
        return cls(means, quats, np.log(scales), logit(alphas), rgb_to_sh0(colors), shN)

    # -- conversion -----------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The six fields by name (no copies)."""
        return {f: getattr(self, f) for f in FIELDS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Splats:
        """Inverse of :meth:`to_arrays`; ``shN`` may be absent (degree 0)."""
        missing = [f for f in FIELDS[:-1] if f not in arrays]
        if missing:
            raise SplatError(missing[0], "missing from the splat data")
        return cls(arrays["means"], arrays["quats"], arrays["scales"], arrays["opacities"], arrays["sh0"],
                   arrays.get("shN"))

    @classmethod
    def _derived(cls, arrays: Mapping[str, np.ndarray]) -> Splats:
        """Splats from arrays derived from valid splats by selecting, copying or joining rows (finite,
        float32, consistent shapes by construction): skips the validation pass, which at 1M splats
        costs more than the copy itself."""
        out = object.__new__(cls)
        for f in FIELDS:
            setattr(out, f, np.ascontiguousarray(arrays[f], dtype=np.float32))
        return out

    def copy(self) -> Splats:
        return Splats._derived({f: getattr(self, f).copy() for f in FIELDS})

    # -- set operations -----------------------------------------------------------------
    def subset(self, index: np.ndarray | slice) -> Splats:
        """Splats selected by a boolean mask [N], integer indices or a slice (a slice gives views)."""
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool and index.shape != (len(self),):
                raise SplatError("index", f"mask shape {index.shape} does not match N={len(self)}")
            if index.ndim != 1:
                raise SplatError("index", f"select with a 1-D mask or index array, got shape {index.shape}")
            if index.dtype == bool:
                index = np.flatnonzero(index)
            if index.dtype.kind == "i":
                # one gather per field: 3-5x faster than boolean indexing of [N, K, 3] rows, same values
                return Splats._derived({f: np.take(getattr(self, f), index, axis=0) for f in FIELDS})
        return Splats._derived({f: getattr(self, f)[index] for f in FIELDS})

    def with_sh_degree(self, degree: int) -> Splats:
        """Same splats with SH truncated or zero-padded to ``degree``."""
        if degree not in REST_COUNT:
            raise SplatError("shN", f"SH degree {degree} is not in 0..3")
        k = REST_COUNT[degree]
        shN = np.zeros((len(self), k, 3), np.float32)
        keep = min(k, self.shN.shape[1])
        shN[:, :keep] = self.shN[:, :keep]
        return Splats._derived({**self.to_arrays(), "shN": shN})      # valid rows, zero padding

    @staticmethod
    def concatenate(parts: Iterable[Splats]) -> Splats:
        """One set holding all ``parts``; SH is padded to the highest degree among them."""
        parts = list(parts)
        if not parts:
            raise SplatError("parts", "nothing to concatenate")
        degree = max(p.sh_degree for p in parts)
        parts = [p.with_sh_degree(degree) if p.sh_degree != degree else p for p in parts]
        return Splats._derived({f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS})

    # -- geometry -------------------------------------------------------------------------
    def transform(self, matrix: np.ndarray) -> Splats:
        """Apply a 4x4 similarity (rotation, uniform scale, translation) in world space.

        Means move, quaternions and SH coefficients rotate, log scales shift by log(scale).
        Shear, non-uniform scale and mirroring raise :class:`SplatError`.
        """
        out = {f: np.empty_like(getattr(self, f)) for f in FIELDS}
        self.transform_into(matrix, out)
        return Splats._derived(out)

    def transform_into(self, matrix: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """:meth:`transform` written into preallocated float32 arrays ``out`` (by field name: row slices
        of larger arrays, e.g. a merge's output; ``out["shN"]`` may hold more coefficients than this set:
        only the first K are written). The results are checked as the constructor checks them
        (``SplatError`` for values that overflow to Inf), per block while they are in cache.
        ``out`` may be this set's own arrays (in place)."""
        try:
            rotation, scale, translation = decompose_similarity(matrix)
        except ValueError as exc:
            raise SplatError("transform", str(exc)) from None
        lin = rotation.T * scale
        qlt = quat_left_matrix(matrix_to_quat(rotation)).T
        log_scale = np.float32(np.log(scale))
        k = self.shN.shape[1]
        operator = sh_rotation_operator(rotation, self.sh_degree) if k else []
        n, ok = len(self), True
        for c0 in range(0, n, BLOCK):
            sl = slice(c0, min(n, c0 + BLOCK))
            means = out["means"][sl]
            means[...] = self.means[sl].astype(np.float64) @ lin + translation
            out["quats"][sl] = self.quats[sl].astype(np.float64) @ qlt
            np.add(self.scales[sl], log_scale, out=out["scales"][sl])
            out["opacities"][sl] = self.opacities[sl]
            out["sh0"][sl] = self.sh0[sl]
            if k:
                apply_sh_rotation(operator, self.shN[sl], out["shN"][sl])
            # the inputs are valid: only overflow can make the outputs invalid. A finite sum of a block
            # (a BLAS dot with ones, while the block is in cache) proves every entry finite (NaN and Inf
            # propagate); a non-finite one (also a mere overflow of the sum) sends it to the full check
            if ok:
                for f in ("means", "quats", "scales", "shN")[: 4 if k else 3]:
                    flat = out[f][sl].reshape(-1)
                    if not np.isfinite(np.dot(flat, _ones(len(flat)))):
                        ok = False
                ok = ok and _nonzero_rows(out["quats"][sl])
        if not ok:                                  # the constructor's checks and its exact error
            Splats(**{f: out[f] if f != "shN" else out[f][:, :k] for f in FIELDS})

    def bounds(self, sigmas: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (min, max) corners, f64[3] each; ``sigmas`` > 0 pads each splat by that
        many of its largest standard deviation. Raises for an empty set."""
        if len(self) == 0:
            raise SplatError("means", "an empty splat set has no bounds")
        pad = sigmas * np.exp(self.scales.max(axis=1, keepdims=True)) if sigmas else 0.0
        return (np.min(self.means - pad, axis=0).astype(np.float64),
                np.max(self.means + pad, axis=0).astype(np.float64))

    def allclose(self, other: Splats, atol: float = 1e-6) -> bool:
        """Field-by-field comparison with an absolute tolerance (same N and SH degree)."""
        return all(getattr(self, f).shape == getattr(other, f).shape
                   and np.allclose(getattr(self, f), getattr(other, f), atol=atol, rtol=0)
                   for f in FIELDS)

    # -- test and benchmark data ------------------------------------------------------------
    @classmethod
    def random(cls, n: int, sh_degree: int = 0, seed: int = 0, extent: float = 1.0,
               scale: float = 0.02) -> Splats:
        """Deterministic random splats in a cube of half-size ``extent`` (tests, benchmarks)."""
        rng = np.random.default_rng(seed)
        k = REST_COUNT[sh_degree]
        return cls(
            means=rng.uniform(-extent, extent, (n, 3)).astype(np.float32),
            quats=rng.normal(size=(n, 4)).astype(np.float32),
            scales=np.log(scale * rng.uniform(0.3, 1.5, (n, 3))).astype(np.float32),
            opacities=rng.normal(1.0, 1.5, n).astype(np.float32),
            sh0=rng.normal(0.0, 0.8, (n, 3)).astype(np.float32),
            shN=rng.normal(0.0, 0.1, (n, k, 3)).astype(np.float32),
        )

    def __repr__(self) -> str:
        return f"Splats(n={len(self)}, sh_degree={self.sh_degree})"
