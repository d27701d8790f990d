"""The bpy-free maths of final renders (``final_render``): the OpenEXR reader for the Z pass, the
Z-pass convention, depth-buffer values and the premultiplied composite. numpy only, so it is tested
without Blender (tests/test_render_math.py).

Images are ``f32[H, W, C]`` with row 0 at the top; depths are in scene units (metres) along the
camera's optical axis.
"""
from __future__ import annotations

import struct

import numpy as np

#: Z-pass values at or above this (metres) mean "nothing hit" (Cycles and Workbench write 1e10).
NO_HIT_DEPTH = 1e9


class FinalRenderError(RuntimeError):
    """A final render that cannot be made (no camera, an unsupported camera or output format...)."""


# --------------------------------------------------------------------------- OpenEXR (read only)

_EXR_MAGIC = b"\x76\x2f\x31\x01"
_EXR_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_EXR_TILED, _EXR_DEEP, _EXR_MULTIPART = 0x200, 0x800, 0x1000


def _exr_string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode("latin-1"), end + 1


def _exr_headers(data: bytes, pos: int, multipart: bool) -> tuple[list[dict], int]:
    """The part headers (attribute name -> (type, raw value)) and the offset after them."""
    headers = []
    while True:
        header = {}
        while data[pos] != 0:
            name, pos = _exr_string(data, pos)
            kind, pos = _exr_string(data, pos)
            (size,) = struct.unpack_from("<i", data, pos)
            header[name] = (kind, data[pos + 4:pos + 4 + size])
            pos += 4 + size
        headers.append(header)
        pos += 1
        if not multipart:
            return headers, pos
        if data[pos] == 0:                    # an empty header ends the list of parts
            return headers, pos + 1


def _exr_channel_list(raw: bytes) -> list[tuple[str, int]]:
    channels, pos = [], 0
    while raw[pos] != 0:
        name, pos = _exr_string(raw, pos)
        (pixel_type,) = struct.unpack_from("<i", raw, pos)
        pos += 16                             # pixel type, pLinear + reserved, x/y sampling
        channels.append((name, pixel_type))
    return channels


def read_exr_channels(path: str) -> dict[str, np.ndarray]:
    """Every channel of an uncompressed scanline OpenEXR file (single- or multi-part, as Blender
    writes with codec NONE) as ``{name: f32[H, W]}``, row 0 at the top of the image.

    Only what :func:`render_scene` writes is supported: compression NONE, scanline (not tiled or
    deep) parts; anything else raises ``FinalRenderError``."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != _EXR_MAGIC:
        raise FinalRenderError(f"{path}: not an OpenEXR file")
    (flags,) = struct.unpack_from("<I", data, 4)
    if flags & (_EXR_TILED | _EXR_DEEP):
        raise FinalRenderError(f"{path}: tiled or deep OpenEXR is not supported")
    multipart = bool(flags & _EXR_MULTIPART)
    headers, pos = _exr_headers(data, 8, multipart)
    tables = []
    for header in headers:
        if header.get("compression", ("", b"\x00"))[1] != b"\x00":
            raise FinalRenderError(f"{path}: compressed OpenEXR is not supported (codec NONE only)")
        x0, y0, x1, y1 = struct.unpack("<4i", header["dataWindow"][1])
        lines = y1 - y0 + 1
        tables.append(np.frombuffer(data, "<u8", lines, pos))      # one chunk per scanline
        pos += 8 * lines
    channels: dict[str, np.ndarray] = {}
    for part, (header, table) in enumerate(zip(headers, tables)):
        x0, y0, x1, y1 = struct.unpack("<4i", header["dataWindow"][1])
        width, height = x1 - x0 + 1, y1 - y0 + 1
        chans = _exr_channel_list(header["channels"][1])
        arrays = {name: np.empty((height, width), np.float32) for name, _ in chans}
        for offset in table:
            p = int(offset)
            if multipart:
                p += 4                                               # part number
            y, _size = struct.unpack_from("<2i", data, p)
            p += 8
            for name, pixel_type in chans:                           # channels in name order
                dtype = _EXR_PIXEL_TYPES[pixel_type]
                arrays[name][y - y0] = np.frombuffer(data, dtype, width, p)
                p += dtype.itemsize * width
        channels.update(arrays)
    return channels


# --------------------------------------------------------------------------- depth and compositing

def planar_depth(z_pass: np.ndarray) -> np.ndarray:
    """Scene depth (f32[H,W], scene units, ``inf`` where nothing was hit) from a render's Z pass.

    The one place that knows the Z-pass convention. Measured in bpy 5.0.1 with a plane at a
    known distance and tilt (tests/test_final_render.py): Cycles, EEVEE and Workbench all write
    the **planar** depth, the distance from the camera plane along the optical axis (the same
    quantity as the splat draw's view-space depth), not the distance along each pixel's ray.
    Nothing hit: Cycles and Workbench write 1e10 (mapped to ``inf`` here); EEVEE writes about the
    camera's clip end, which :func:`window_depth` puts on the far plane anyway."""
    z = np.asarray(z_pass, dtype=np.float32)
    return np.where(np.isfinite(z) & (z < NO_HIT_DEPTH), z, np.float32(np.inf)).astype(np.float32)


def window_depth(depth: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Depth-buffer values (f32, [0, 1]) of planar depths ``depth`` (scene units along the view
    axis) under the OpenGL projection ``proj`` (``matrices.gl_projection_matrix``): NDC
    ``z = (-P[2,2] d + P[2,3]) / d`` mapped to ``0.5 z + 0.5``; the far plane (1.0) for
    ``inf`` / beyond the far clip, 0.0 in front of the near clip."""
    d = np.asarray(depth, dtype=np.float64)
    p = np.asarray(proj, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndc = (-p[2, 2] * d + p[2, 3]) / d
    ndc = np.where(np.isinf(d), 1.0, ndc)
    return np.clip(0.5 * ndc + 0.5, 0.0, 1.0).astype(np.float32)


def composite_over(splats: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """Premultiplied splats (f32[H,W,4]) over the straight-alpha scene image (f32[H,W,4], display
    values): premultiplied RGBA ``splat + (1 - splat_a) * scene * scene_a``; alpha
    ``splat_a + (1 - splat_a) * scene_a`` (1 wherever the scene's film is opaque)."""
    splats = np.asarray(splats, dtype=np.float32)
    scene = np.asarray(scene, dtype=np.float32)
    if splats.shape != scene.shape or splats.shape[-1] != 4:
        raise ValueError(f"shape mismatch: splats {splats.shape}, scene {scene.shape} (need [H,W,4])")
    scene_pm = np.concatenate([scene[..., :3] * scene[..., 3:], scene[..., 3:]], axis=-1)
    return splats + (1.0 - splats[..., 3:]) * scene_pm


def unpremultiply(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha copy of a premultiplied RGBA image (colour 0 where alpha is 0)."""
    rgba = np.asarray(rgba, dtype=np.float32)
    a = rgba[..., 3:]
    with np.errstate(divide="ignore", invalid="ignore"):
        rgb = np.where(a > 0, rgba[..., :3] / np.maximum(a, 1e-12), 0.0)
    return np.concatenate([rgb, a], axis=-1).astype(np.float32)
