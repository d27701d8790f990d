"""Random cameras around an object for score distillation.

The object sits at the origin of a canonical frame with a bounding radius of about 1 (Blender axes: Z up,
the front of an object faces -Y, as Blender's Front view looks along +Y). A view is drawn as

    elevation ~ U[elevation_deg], azimuth ~ U[azimuth_deg], distance ~ U[distance], fovy ~ U[fovy_deg]

(defaults as GaussianDreamer: elevation -10..45 deg, full turn of azimuth, vertical field of view jittered in
40..70 deg), and looks at the origin. Azimuth 0 is the front (camera on -Y), +90 deg the right side (camera
on +X). Cameras are OpenCV world-to-camera matrices with pinhole intrinsics in pixels (shared/cameras.py
conventions), built with ``shared.cameras.look_at``.

Each view also gets a background colour (uniform random RGB) and a view-direction label used for
view-dependent prompts ("front", "side", "back", "overhead").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from shared.cameras import look_at

VIEW_LABELS = ("front", "side", "back", "overhead")


@dataclass(frozen=True)
class CameraRanges:
    """Sampling ranges: angles in degrees, distances in units of the object's bounding radius."""

    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (2.5, 3.5)
    fovy_deg: tuple[float, float] = (40.0, 70.0)
    front_threshold_deg: float = 45.0      # |azimuth| below this -> "front"; above 180 - this -> "back"
    overhead_threshold_deg: float = 60.0   # elevation above this -> "overhead"

    def validate(self) -> None:
        """Raise ValueError naming the first impossible range."""
        checks = {
            "elevation_deg": (-90.0, 90.0), "azimuth_deg": (-360.0, 360.0),
            "distance": (1e-6, math.inf), "fovy_deg": (1.0, 170.0),
        }
        for name, (lo, hi) in checks.items():
            a, b = getattr(self, name)
            if not (lo <= a <= b <= hi):
                raise ValueError(f"camera range {name}={[a, b]} must be increasing and within [{lo}, {hi}]")


@dataclass
class ViewBatch:
    """B sampled views. Tensors live on one device; angles in degrees."""

    viewmats: Tensor          # f32[B,4,4] world-to-camera (OpenCV)
    Ks: Tensor                # f32[B,3,3] pinhole, pixels
    width: int
    height: int
    elevation_deg: Tensor     # f32[B]
    azimuth_deg: Tensor       # f32[B] in [-180, 180)
    distance: Tensor          # f32[B]
    fovy_deg: Tensor          # f32[B]
    backgrounds: Tensor       # f32[B,3] RGB 0..1
    labels: list[str] = field(default_factory=list)   # one of VIEW_LABELS per view

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])


def view_label(elevation_deg: float, azimuth_deg: float, ranges: CameraRanges = CameraRanges()) -> str:
    """The view-direction word for a view (threestudio's rule: overhead, else front/side/back by azimuth)."""
    if elevation_deg > ranges.overhead_threshold_deg:
        return "overhead"
    az = abs((azimuth_deg + 180.0) % 360.0 - 180.0)
    if az < ranges.front_threshold_deg:
        return "front"
    if az > 180.0 - ranges.front_threshold_deg:
        return "back"
    return "side"


def intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K (pixels) with square pixels, principal point at the image centre."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def orbit_camera(elevation_deg: float, azimuth_deg: float, distance: float,
                 target: np.ndarray | None = None) -> np.ndarray:
    """World-to-camera (OpenCV) for a camera on a sphere around ``target`` (default the origin) looking at
    it (Z up)."""
    if target is None:
        target = np.zeros(3)
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    offset = distance * np.array([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)])
    return look_at(np.asarray(target, dtype=np.float64) + offset, target)


def sample_views(n: int, width: int, height: int, generator: torch.Generator,
                 ranges: CameraRanges = CameraRanges(), device: torch.device | str = "cpu",
                 random_background: bool = True) -> ViewBatch:
    """Draw ``n`` views with ``generator`` (a CPU torch.Generator: the same seed gives the same views)."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64).numpy()

    def lerp(lohi: tuple[float, float], x: np.ndarray) -> np.ndarray:
        return lohi[0] + (lohi[1] - lohi[0]) * x

    el = lerp(ranges.elevation_deg, u[:, 0])
    az = (lerp(ranges.azimuth_deg, u[:, 1]) + 180.0) % 360.0 - 180.0
    dist = lerp(ranges.distance, u[:, 2])
    fovy = lerp(ranges.fovy_deg, u[:, 3])
    viewmats = np.stack([orbit_camera(e, a, d) for e, a, d in zip(el, az, dist, strict=True)])
    Ks = np.stack([intrinsics(f, width, height) for f in fovy])
    if random_background:
        bg = torch.rand(n, 3, generator=generator)
    else:
        bg = torch.ones(n, 3)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return ViewBatch(viewmats=as_t(viewmats), Ks=as_t(Ks), width=int(width), height=int(height),
                     elevation_deg=as_t(el), azimuth_deg=as_t(az), distance=as_t(dist), fovy_deg=as_t(fovy),
                     backgrounds=bg.to(device), labels=[view_label(e, a, ranges) for e, a in zip(el, az, strict=True)])


def fixed_views(elevations_deg: list[float], azimuths_deg: list[float], distance: float, fovy_deg: float,
                width: int, height: int, device: torch.device | str = "cpu",
                background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> ViewBatch:
    """Deterministic views (evaluation, previews): one per (elevation, azimuth) pair."""
    if len(elevations_deg) != len(azimuths_deg):
        raise ValueError("elevations and azimuths must have the same length")
    n = len(azimuths_deg)
    viewmats = np.stack([orbit_camera(e, a, distance) for e, a in zip(elevations_deg, azimuths_deg, strict=True)])
    Ks = np.stack([intrinsics(fovy_deg, width, height)] * n)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return ViewBatch(viewmats=as_t(viewmats), Ks=as_t(Ks), width=int(width), height=int(height),
                     elevation_deg=as_t(elevations_deg), azimuth_deg=as_t(azimuths_deg),
                     distance=as_t([distance] * n), fovy_deg=as_t([fovy_deg] * n),
                     backgrounds=as_t([background] * n),
                     labels=[view_label(e, a) for e, a in zip(elevations_deg, azimuths_deg, strict=True)])
