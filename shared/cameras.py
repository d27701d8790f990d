"""Camera conventions: the one place where Blender cameras become OpenCV cameras and back.

On the wire a camera is OpenCV/gsplat style:

* ``world_to_camera``: 4x4, camera axes x right, y down, z forward (into the scene);
* pinhole intrinsics ``fx, fy, cx, cy`` in pixels for an image of ``width`` x ``height``;
  pixel (i, j) covers [i, i+1) x [j, j+1), so its centre is at (i + 0.5, j + 0.5).

A Blender camera looks down its local -Z with +Y up: its world-to-camera matrix in OpenCV axes
is ``diag(1, -1, -1, 1) @ inverse(matrix_world)``. Intrinsics follow Blender's own view-plane
computation (``BKE_camera_params_compute_viewplane``): sensor fit, shift, pixel aspect and
resolution percentage are all honoured, so a point projects to the same pixel as
``bpy_extras.object_utils.world_to_camera_view`` times the render size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Flip of the camera's local Y and Z: Blender/OpenGL camera axes <-> OpenCV camera axes.
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


class CameraError(ValueError):
    """A camera that cannot be used (zero focal length, bad size, non-rigid pose...)."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the shared (OpenCV) convention. Units: metres and pixels."""

    world_to_camera: np.ndarray   # f64[4, 4]
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        w2c = np.asarray(self.world_to_camera, dtype=np.float64)
        if w2c.shape != (4, 4):
            raise CameraError(f"world_to_camera must be 4x4, got shape {w2c.shape}")
        if not np.all(np.isfinite(w2c)):
            raise CameraError("world_to_camera has NaN or Inf entries")
        rot = w2c[:3, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) <= 0:
            raise CameraError("world_to_camera's rotation is not a proper rotation "
                              "(a camera pose may not scale, shear or mirror)")
        if not np.allclose(w2c[3], [0, 0, 0, 1]):
            raise CameraError("world_to_camera's last row must be 0 0 0 1")
        for name in ("fx", "fy"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise CameraError(f"focal length {name}={value} must be a positive number of pixels")
        for name in ("cx", "cy"):
            if not np.isfinite(float(getattr(self, name))):
                raise CameraError(f"principal point {name} is not finite")
        for name in ("width", "height"):
            value = getattr(self, name)
            if int(value) != value or int(value) <= 0:
                raise CameraError(f"{name}={value} must be a positive whole number of pixels")
        object.__setattr__(self, "world_to_camera", w2c)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix (pixels)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in world space."""
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -r.T @ t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates [N, 2] and depths along the optical axis [N] of world points [N, 3]."""
        pts = np.asarray(points, dtype=np.float64)
        cam = pts @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * cam[:, 0] / z + self.cx, self.fy * cam[:, 1] / z + self.cy], axis=1)
        return uv, z


@dataclass(frozen=True)
class BlenderCameraParams:
    """The Blender camera and render settings that determine a projection.

    ``matrix_world`` must be rigid (no scale); lens and sensor sizes in millimetres; shift in
    units of the larger (fitted) sensor dimension, as in Blender's UI.
    """

    matrix_world: np.ndarray
    lens: float
    sensor_width: float = 36.0
    sensor_height: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution_x: int = 1920
    resolution_y: int = 1080
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0


def _viewplane(p: BlenderCameraParams) -> tuple[int, int, str, float, float]:
    """(width, height, fitted axis, sensor size, viewfac) as Blender computes them."""
    width = int(p.resolution_x * p.resolution_percentage / 100)
    height = int(p.resolution_y * p.resolution_percentage / 100)
    if p.sensor_fit not in SENSOR_FITS:
        raise CameraError(f"sensor_fit {p.sensor_fit!r} is not one of {SENSOR_FITS}")
    sensor = p.sensor_height if p.sensor_fit == "VERTICAL" else p.sensor_width
    if p.sensor_fit == "AUTO":
        fit = "HORIZONTAL" if p.pixel_aspect_x * width >= p.pixel_aspect_y * height else "VERTICAL"
    else:
        fit = p.sensor_fit
    ycor = p.pixel_aspect_y / p.pixel_aspect_x
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    return width, height, fit, sensor, viewfac


def camera_from_blender(params: BlenderCameraParams) -> Camera:
    """OpenCV camera of a Blender perspective camera (see the module docstring)."""
    if not (np.isfinite(params.lens) and params.lens > 0):
        raise CameraError(f"lens={params.lens} mm: the focal length must be > 0")
    if params.sensor_width <= 0 or params.sensor_height <= 0:
        raise CameraError("sensor size must be > 0 mm")
    if params.pixel_aspect_x <= 0 or params.pixel_aspect_y <= 0:
        raise CameraError("pixel aspect must be > 0")
    width, height, _, sensor, viewfac = _viewplane(params)
    if width <= 0 or height <= 0:
        raise CameraError(f"render size {width}x{height} px is empty")
    ycor = params.pixel_aspect_y / params.pixel_aspect_x
    fx = params.lens * viewfac / sensor
    fy = fx / ycor
    cx = 0.5 * width - params.shift_x * viewfac
    cy = 0.5 * height + params.shift_y * viewfac / ycor
    matrix_world = np.asarray(params.matrix_world, dtype=np.float64)
    if matrix_world.shape != (4, 4):
        raise CameraError(f"matrix_world must be 4x4, got shape {matrix_world.shape}")
    w2c = BLENDER_TO_OPENCV @ np.linalg.inv(matrix_world)
    return Camera(w2c, fx, fy, cx, cy, width, height)


def camera_to_blender(camera: Camera, sensor_width: float = 36.0) -> BlenderCameraParams:
    """Blender settings reproducing ``camera`` exactly: horizontal sensor fit, pixel aspect for
    fx != fy, shift for an off-centre principal point, 100 % resolution."""
    aspect_x = max(1.0, camera.fy / camera.fx)
    aspect_y = max(1.0, camera.fx / camera.fy)
    viewfac = camera.width
    ycor = aspect_y / aspect_x
    return BlenderCameraParams(
        matrix_world=np.linalg.inv(BLENDER_TO_OPENCV @ camera.world_to_camera),
        lens=camera.fx * sensor_width / viewfac,
        sensor_width=sensor_width,
        sensor_height=sensor_width * camera.height / camera.width,
        sensor_fit="HORIZONTAL",
        shift_x=(0.5 * camera.width - camera.cx) / viewfac,
        shift_y=(camera.cy - 0.5 * camera.height) * ycor / viewfac,
        resolution_x=camera.width,
        resolution_y=camera.height,
        resolution_percentage=100,
        pixel_aspect_x=aspect_x,
        pixel_aspect_y=aspect_y,
    )


def look_at(position: np.ndarray, target: np.ndarray,
            up: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world-to-camera 4x4 for a camera at ``position`` looking at ``target``; image
    "up" is as close to world ``up`` as possible (Z up by default)."""
    position = np.asarray(position, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - position
    norm = np.linalg.norm(forward)
    if norm == 0:
        raise CameraError("camera position equals its look-at target")
    forward /= norm
    up = np.asarray(up, dtype=np.float64)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:           # looking straight along up: pick any right
        right = np.cross(forward, [0.0, 1.0, 0.0] if abs(forward[1]) < 0.9 else [1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ position
    return w2c


def stack_cameras(cameras: list[Camera]) -> dict[str, np.ndarray]:
    """``viewmats`` f32[C,4,4] and ``Ks`` f32[C,3,3] for the wire; all cameras must share a size."""
    if not cameras:
        raise CameraError("no cameras")
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise CameraError(f"cameras have different image sizes: {sorted(sizes)}")
    return {
        "viewmats": np.stack([c.world_to_camera for c in cameras]).astype(np.float32),
        "Ks": np.stack([c.K for c in cameras]).astype(np.float32),
    }


def cameras_from_arrays(viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int) -> list[Camera]:
    """Inverse of :func:`stack_cameras` (validates every camera; errors name the index)."""
    viewmats = np.asarray(viewmats)
    Ks = np.asarray(Ks)
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise CameraError(f"viewmats shape {viewmats.shape} is not [C, 4, 4]")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise CameraError(f"Ks shape {Ks.shape} is not [C={viewmats.shape[0]}, 3, 3]")
    out = []
    for i, (w2c, k) in enumerate(zip(viewmats, Ks, strict=True)):
        try:
            out.append(Camera(w2c, k[0, 0], k[1, 1], k[0, 2], k[1, 2], width, height))
        except CameraError as exc:
            raise CameraError(f"camera {i}: {exc}") from None
    return out
