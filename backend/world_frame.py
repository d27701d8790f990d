"""A world that fits Blender for a solved capture: Z up, centred, a few metres across.

COLMAP's world is arbitrary (its first camera at the origin, unit baseline, Y down). ``world_frame``
finds the similarity ``new = s * R @ (old - c)`` that

* turns "up" to +Z. Up is first the cameras' mean up vector (an OpenCV camera's up is its -Y axis;
  people hold cameras level), then refined by the dominant plane of the sparse points when there is
  one near that direction (a floor or table, found by RANSAC): its normal becomes +Z and the plane
  z = 0;
* turns the cameras' mean horizontal viewing direction to +Y (Blender's front view looks along +Y);
* centres the points (median in x and y; in z too when no plane was found);
* scales so that the cameras and 95 % of the points lie within ``size / 2`` of the centre.

Everything is numpy (it runs in ``backend.colmap_solve``'s child process).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class WorldFrame:
    """``matrix`` (4x4) maps COLMAP world points to the new world: ``scale * rotation @ (p - centre)``."""

    matrix: np.ndarray
    scale: float
    up_source: str                  # "plane" or "cameras"
    plane_inliers: float = 0.0      # fraction of the points on the plane (0 without one)
    info: dict = field(default_factory=dict)

    def to_meta(self) -> dict:
        """Plain values for the result's meta (``matrix`` as a row-major 4x4 list)."""
        return {"matrix": np.asarray(self.matrix).tolist(), "scale": float(self.scale),
                "up_source": self.up_source, "plane_inliers": float(self.plane_inliers),
                "maps": "COLMAP world (sparse/0_raw) -> Blender world: p_new = matrix @ [p, 1]; "
                        "undo with its inverse"}


def _rotation_to(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-9:       # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def dominant_plane(points: np.ndarray, up: np.ndarray, max_angle_deg: float = 35.0,
                   iterations: int = 400, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """RANSAC plane among ``points`` [N,3] whose normal is within ``max_angle_deg`` of ``up``.

    Returns (unit normal pointing along ``up``, offset d with normal . p = d, inlier fraction);
    the fraction is 0 when no such plane exists. The inlier band is 1 % of the points' spread.
    """
    pts = np.asarray(points, np.float64)
    if len(pts) < 20:
        return up, 0.0, 0.0
    rng = np.random.default_rng(seed)
    spread = np.linalg.norm(np.percentile(pts, 95, axis=0) - np.percentile(pts, 5, axis=0))
    tol = 0.01 * max(float(spread), 1e-12)
    cos_max = np.cos(np.radians(max_angle_deg))
    best = (up, 0.0, 0)
    for _ in range(iterations):
        a, b, c = pts[rng.choice(len(pts), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if np.dot(n, up) < 0:
            n = -n
        if np.dot(n, up) < cos_max:
            continue
        count = int((np.abs(pts @ n - n @ a) < tol).sum())
        if count > best[2]:
            best = (n, float(n @ a), count)
    n, d, count = best
    if count == 0:
        return up, 0.0, 0.0
    # refit on the inliers (least squares: smallest principal axis)
    inl = pts[np.abs(pts @ n - d) < tol]
    centre = inl.mean(axis=0)
    _, _, vt = np.linalg.svd(inl - centre, full_matrices=False)
    n2 = vt[2] if np.dot(vt[2], n) > 0 else -vt[2]
    return n2, float(n2 @ centre), count / len(pts)


def world_frame(cam_to_world: np.ndarray, points: np.ndarray, size: float = 4.0,
                min_plane_fraction: float = 0.15) -> WorldFrame:
    """The Blender-friendly world of a solve (see the module docstring).

    ``cam_to_world``: [C,4,4] OpenCV camera-to-world matrices (COLMAP world); ``points``: [N,3]
    sparse points in the same world; ``size``: metres the capture should span.
    """
    c2w = np.asarray(cam_to_world, np.float64)
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    centres = c2w[:, :3, 3]
    up = -c2w[:, :3, 1].mean(axis=0)             # OpenCV camera up is -Y
    if np.linalg.norm(up) < 1e-9:
        up = np.array([0.0, 0.0, 1.0])
    up /= np.linalg.norm(up)
    normal, offset, frac = dominant_plane(pts, up) if len(pts) else (up, 0.0, 0.0)
    use_plane = frac >= min_plane_fraction
    if use_plane:
        # the plane must lie below the cameras (a floor or table, not a ceiling)
        if np.median(centres @ normal) < offset:
            use_plane = False
    z_axis = normal if use_plane else up
    r_up = _rotation_to(z_axis, np.array([0.0, 0.0, 1.0]))
    # heading: the mean viewing direction (OpenCV +Z) projected on the ground, to +Y
    fwd = r_up @ c2w[:, :3, 2].mean(axis=0)
    heading = np.arctan2(fwd[0], fwd[1]) if np.hypot(fwd[0], fwd[1]) > 1e-6 else 0.0
    ch, sh = np.cos(heading), np.sin(heading)
    r_yaw = np.array([[ch, -sh, 0], [sh, ch, 0], [0, 0, 1.0]])
    rot = r_yaw @ r_up
    rp = pts @ rot.T if len(pts) else centres @ rot.T
    rc = centres @ rot.T
    centre_r = np.median(rp, axis=0)
    if use_plane:
        centre_r[2] = offset           # the plane's height (rotation keeps normal . p as z)
    dist_pts = np.linalg.norm(rp - centre_r, axis=1)
    dist_cams = np.linalg.norm(rc - centre_r, axis=1)
    radius = max(float(np.percentile(dist_pts, 95)) if len(dist_pts) else 0.0,
                 float(dist_cams.max()) if len(dist_cams) else 0.0)
    scale = (0.5 * size / radius) if radius > 1e-12 else 1.0
    m = np.eye(4)
    m[:3, :3] = scale * rot
    m[:3, 3] = -scale * centre_r
    return WorldFrame(m, scale, "plane" if use_plane else "cameras", frac if use_plane else 0.0,
                      {"cameras_up": up.tolist(), "plane_normal": normal.tolist() if use_plane else None})
