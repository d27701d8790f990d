"""Colour grading of splats: exposure, contrast, saturation, hue and temperature, on every SH band.

All five are affine maps of *linear* RGB, composed into one ``c' = A c + b`` (A 3x3, b 3):

* exposure ``e`` stops:            ``c * 2^e``
* temperature ``t`` in -1..1:      white-balance gains ``(1 + 0.3 t, 1, 1 - 0.3 t)``, divided by their
                                   Rec.709 luminance (warmer > 0, cooler < 0; white keeps its luminance)
* hue ``h`` degrees:               rotation of RGB about the grey axis (1, 1, 1) (greys stay grey)
* saturation ``s`` (1 = neutral):  ``Y + s (c - Y)``, Y the Rec.709 luminance of c
* contrast ``k`` (1 = neutral):    ``pivot + k (c - pivot)``, pivot = linear mid-grey 0.18

applied in that order. Neutral settings (0, 0, 0, 1, 1) leave the splats bit for bit unchanged.

**Consistency across SH bands.** A splat's colour seen from direction d is
``c(d) = 0.5 + C0 sh0 + sum_k Y_k(d) shN_k`` (before the renderer's clamp at 0). Because the grade is
affine and the SH expansion is linear in its coefficients, ``A c(d) + b`` is again such an expansion:
``sh0' = A sh0 + (A 0.5 + b - 0.5) / C0`` and ``shN_k' = A shN_k`` for every higher coefficient. So the
graded splat's colour equals the grade of the original colour in *every* view direction, exactly (up to
float32 rounding; only where the renderer clamps a negative colour to 0 can the two differ). Contrast is
deliberately linear-light (affine about 0.18) so that this holds; a nonlinear curve f (a display-space
S-curve, gamma) cannot be applied exactly to view-dependent SH. Were one added, the decision is: apply f
exactly to the DC colour and scale the higher bands by f's derivative (Jacobian) at the DC colour (first
order: exact for view-independent splats, close where the view dependence is small).

``grade_matrix`` gives (A, b) for a viewport preview shader (apply to the evaluated colour before the
clamp); ``grade`` applies it to ``Splats``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .sh import SH_C0
from .splats import SplatError, Splats

LUMA = np.array([0.2126, 0.7152, 0.0722])   # Rec.709 / linear sRGB luminance weights
CONTRAST_PIVOT = 0.18                         # linear mid-grey


@dataclass(frozen=True)
class Grade:
    """Grading settings; the defaults are neutral. Units: exposure in stops, hue in degrees,
    temperature in -1 (cool) .. 1 (warm), saturation and contrast as factors (1 = unchanged)."""

    exposure: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        for name in ("exposure", "contrast", "saturation", "hue", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"grade {name}={v!r} must be a finite number")
        if not -10.0 <= self.exposure <= 10.0:
            raise ValueError(f"grade exposure={self.exposure} stops is outside -10..10")
        if not 0.0 <= self.contrast <= 10.0:
            raise ValueError(f"grade contrast={self.contrast} is outside 0..10")
        if not 0.0 <= self.saturation <= 10.0:
            raise ValueError(f"grade saturation={self.saturation} is outside 0..10")
        if not -1.0 <= self.temperature <= 1.0:
            raise ValueError(f"grade temperature={self.temperature} is outside -1..1")

    @property
    def neutral(self) -> bool:
        return (self.exposure == 0.0 and self.contrast == 1.0 and self.saturation == 1.0
                and self.temperature == 0.0 and self.hue % 360.0 == 0.0)


def _hue_matrix(degrees: float) -> np.ndarray:
    u = np.ones(3) / math.sqrt(3.0)
    a = math.radians(degrees)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return math.cos(a) * np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * np.outer(u, u)


def grade_matrix(grade: Grade) -> tuple[np.ndarray, np.ndarray]:
    """(A f64[3,3], b f64[3]) with graded linear RGB = A @ rgb + b (see the module docstring)."""
    a = np.eye(3) * 2.0 ** grade.exposure
    gains = np.array([1 + 0.3 * grade.temperature, 1.0, 1 - 0.3 * grade.temperature])
    a = np.diag(gains / (LUMA @ gains)) @ a
    a = _hue_matrix(grade.hue) @ a
    s = grade.saturation
    a = (s * np.eye(3) + (1 - s) * np.outer(np.ones(3), LUMA)) @ a
    a = grade.contrast * a
    b = (1 - grade.contrast) * CONTRAST_PIVOT * np.ones(3)
    return a, b


def grade(splats: Splats, settings: Grade, mask: np.ndarray | None = None) -> Splats:
    """The splats colour-graded (only the ``mask`` ed ones when given: bool[N]); SH band 0 gets the
    affine map, every higher coefficient its linear part (exact in every view direction). Neutral
    settings return an exact copy."""
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (len(splats),):
            raise SplatError("mask", f"mask must be bool[{len(splats)}], got {mask.dtype}{list(mask.shape)}")
    if settings.neutral or len(splats) == 0:
        return splats.copy()
    a, b = grade_matrix(settings)
    offset = ((a @ np.full(3, 0.5) + b - 0.5) / SH_C0).astype(np.float32)
    at = a.T.astype(np.float32)
    def rgb_map(x: np.ndarray) -> np.ndarray:        # [..., 3] @ A^T as one [M, 3] x [3, 3] product
        return (x.reshape(-1, 3) @ at).reshape(x.shape)

    if mask is None:            # the graded fields go straight into new arrays (no copy to overwrite)
        fields = {f: getattr(splats, f).copy() for f in ("means", "quats", "scales", "opacities")}
        fields["sh0"] = rgb_map(splats.sh0) + offset
        fields["shN"] = rgb_map(splats.shN) if splats.shN.shape[1] else splats.shN.copy()
        return Splats._derived(fields)
    out = splats.copy()
    idx = np.flatnonzero(mask)
    out.sh0[idx] = rgb_map(np.take(splats.sh0, idx, axis=0)) + offset
    if splats.shN.shape[1]:
        out.shN[idx] = rgb_map(np.take(splats.shN, idx, axis=0))
    return out


__all__ = ["CONTRAST_PIVOT", "Grade", "LUMA", "grade", "grade_matrix"]
