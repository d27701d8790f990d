"""Per-splat data for the viewport shaders: numpy packing and GPU texture upload.

Splat ``i`` lives in three 2D float textures, read in the vertex shader with ``texelFetch`` at
texel index ``i * stride + j`` (row-major: ``(idx % width, idx / width)``):

* ``center`` RGBA32F, stride 1:  object-space centre xyz, opacity (sigmoid applied, 0..1);
* ``rot_scale`` RGBA32F, stride 2: unit quaternion w x y z | standard deviations (m) x y z, draw flag
  (0 plain, 1 selected: tinted, 2 locked: greyed; ``splat_state.SplatState.draw_flags``)
  (the vertex shader builds the covariance R S S R^T, as gsplat does: no CPU work per upload);
* ``sh``     RGBA16F, stride ceil(3 (K+1) / 4): SH coefficients, coefficient-major
  (``c0.r c0.g c0.b c1.r ...``), DC first, K = 0/3/8/15 rest coefficients.

The draw order is one more texture, ``order`` R32F, with the splat index (exact as float32 up to
2^24) for each instance, farthest first. Blender's Python GPU API accepts only FLOAT buffers as
texture data, hence float indices. Half precision for SH halves the largest texture; colours stay
within 1e-3 of full precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shared.splats import Splats

MAX_ORDER_INDEX = 1 << 24          # float32 represents every index below this exactly
PREFERRED_WIDTH = 4096


class GPUDataError(ValueError):
    """Splat data that cannot be placed in GPU textures (too many splats for the GPU's limits)."""


@dataclass
class PackedSplats:
    """Flat float32 arrays ready for ``gpu.types.Buffer``; each padded to its texture's size."""

    count: int
    sh_degree: int
    sh_stride: int                   # SH texels per splat
    center: np.ndarray               # f32[Wc*Hc*4]
    center_shape: tuple[int, int]
    rot_scale: np.ndarray
    rot_scale_shape: tuple[int, int]
    sh: np.ndarray
    sh_shape: tuple[int, int]

    @property
    def nbytes_gpu(self) -> int:
        """Bytes the three data textures take on the GPU (SH as half floats)."""
        texels = lambda s: s[0] * s[1]
        return 16 * texels(self.center_shape) + 16 * texels(self.rot_scale_shape) + 8 * texels(self.sh_shape)


def texture_shape(texels: int, max_size: int = 16384) -> tuple[int, int]:
    """(width, height) of a 2D texture holding ``texels`` texels within ``max_size`` per side."""
    texels = max(1, int(texels))
    width = min(texels, PREFERRED_WIDTH)
    while -(-texels // width) > max_size and width < max_size:
        width = min(width * 2, max_size)
    height = -(-texels // width)
    if height > max_size:
        raise GPUDataError(f"{texels} texels do not fit a {max_size}x{max_size} texture; "
                           "show this splat object in point mode or split it")
    return width, height


def _buffer(shape: tuple[int, int], channels: int, n: int, per_splat: int) -> tuple[np.ndarray, np.ndarray]:
    """A zeroed flat f32 buffer of the texture's full size and its [n, per_splat] view."""
    flat = np.zeros(shape[0] * shape[1] * channels, np.float32)
    return flat, flat[: n * per_splat].reshape(n, per_splat)


def pack_splats(splats: Splats, max_size: int = 16384, flags: np.ndarray | None = None,
                hidden: np.ndarray | None = None) -> PackedSplats:
    """Pack object-space ``splats`` into the texture layouts above (numpy only). ``flags`` f32[N]:
    the draw flag per splat (default 0); ``hidden`` bool[N]: splats packed with opacity 0, which the
    shaders cull."""
    n = len(splats)
    degree = splats.sh_degree
    coeffs = (degree + 1) ** 2
    sh_stride = -(-3 * coeffs // 4)

    c_shape = texture_shape(n, max_size)
    center_flat, center = _buffer(c_shape, 4, n, 4)
    center[:, :3] = splats.means
    center[:, 3] = splats.alphas()
    if hidden is not None and hidden.any():
        center[hidden, 3] = 0.0

    r_shape = texture_shape(2 * n, max_size)
    rs_flat, rot_scale = _buffer(r_shape, 4, n, 8)
    rot_scale[:, :4] = splats.unit_quats()
    rot_scale[:, 4:7] = splats.scales_linear()
    if flags is not None:
        rot_scale[:, 7] = flags

    s_shape = texture_shape(n * sh_stride, max_size)
    sh_flat, sh = _buffer(s_shape, 4, n, sh_stride * 4)
    sh[:, :3] = splats.sh0
    if degree:
        sh[:, 3: 3 * coeffs] = splats.shN.reshape(n, -1)
    return PackedSplats(
        count=n, sh_degree=degree, sh_stride=sh_stride,
        center=center_flat, center_shape=c_shape,
        rot_scale=rs_flat, rot_scale_shape=r_shape,
        sh=sh_flat, sh_shape=s_shape,
    )


def pack_order(order: np.ndarray, max_size: int = 16384) -> tuple[np.ndarray, tuple[int, int]]:
    """Order indices as a padded f32 array for an R32F texture, and the texture's shape."""
    n = len(order)
    if n > MAX_ORDER_INDEX:
        raise GPUDataError(f"{n} splats exceed the sorted mode's limit of {MAX_ORDER_INDEX}; use point mode")
    shape = texture_shape(n, max_size)
    flat = np.asarray(order, dtype=np.float32).reshape(-1)
    if flat.size != shape[0] * shape[1]:
        flat = np.concatenate([flat, np.zeros(shape[0] * shape[1] - flat.size, np.float32)])
    return flat, shape


def _texture(flat: np.ndarray, shape: tuple[int, int], fmt: str):
    import gpu
    buf = gpu.types.Buffer("FLOAT", flat.size, flat)
    return gpu.types.GPUTexture(shape, format=fmt, data=buf)


class SplatTextures:
    """The GPU data textures of one packed splat set (needs an initialised GPU context)."""

    def __init__(self, packed: PackedSplats):
        self.count = packed.count
        self.sh_degree = packed.sh_degree
        self.sh_stride = packed.sh_stride
        self.nbytes = packed.nbytes_gpu
        self.center = _texture(packed.center, packed.center_shape, "RGBA32F")
        self.rot_scale = _texture(packed.rot_scale, packed.rot_scale_shape, "RGBA32F")
        self.sh = _texture(packed.sh, packed.sh_shape, "RGBA16F")


class OrderTexture:
    """The draw order of one splat set on the GPU, tagged with the sorter's serial number."""

    def __init__(self, count: int):
        self.count = count
        self.serial = -1
        self.nbytes = 0
        self.texture = None
        self.upload(np.arange(count, dtype=np.float32), serial=0)

    def upload(self, order: np.ndarray, serial: int) -> None:
        """Upload ``order`` (splat indices, farthest first)."""
        if len(order) != self.count:
            raise GPUDataError(f"order has {len(order)} entries for {self.count} splats")
        flat, shape = pack_order(order)
        self.texture = _texture(flat, shape, "R32F")
        self.serial = serial
        self.nbytes = 4 * shape[0] * shape[1]
