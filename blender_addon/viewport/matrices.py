"""OpenGL view and projection matrices for a shared (OpenCV) ``Camera``: draw exactly what the
reference rasterizer renders for that camera (offscreen tests, render compositing)."""
from __future__ import annotations

import numpy as np

from ..shared.cameras import BLENDER_TO_OPENCV, Camera


def gl_view_matrix(camera: Camera) -> np.ndarray:
    """4x4 world-to-view in OpenGL camera axes (x right, y up, looking down -z)."""
    return BLENDER_TO_OPENCV @ camera.world_to_camera


def gl_projection_matrix(camera: Camera, near: float = 0.01, far: float = 1000.0) -> np.ndarray:
    """4x4 OpenGL projection of the pinhole ``camera``: pixel (u, v) (OpenCV, v down, centres at
    +0.5) maps to NDC x = 2u/W - 1, y = 1 - 2v/H; depth in [near, far] maps to NDC z in [-1, 1]."""
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    w, h = camera.width, camera.height
    return np.array([
        [2 * camera.fx / w, 0.0, 1.0 - 2 * camera.cx / w, 0.0],
        [0.0, 2 * camera.fy / h, 2 * camera.cy / h - 1.0, 0.0],
        [0.0, 0.0, -(far + near) / (far - near), -2 * far * near / (far - near)],
        [0.0, 0.0, -1.0, 0.0],
    ])
