"""WebP for SOG files inside Blender, through Blender's own image loader (no extra wheel).

``shared.formats.sog`` decodes WebP through a swappable codec (Pillow by default, which Blender
does not ship). This module registers Blender's loader: the bytes go to a temporary file,
``bpy.data.images.load`` reads it (Blender has read WebP since 3.2, through libwebp), and
``Image.pixels`` gives the RGBA back as floats, which are exactly ``byte / 255`` with the
"Non-Color" colour space, so rounding recovers the bytes. Blender's rows are bottom-up.

Why not a bundled Pillow wheel: it would add about 4-7 MB per platform and Python (8 wheels) to
the extension for no gain in exactness (both are libwebp), and the measurement
(``bench/webp_decode.py``) shows Blender's loader within a small factor of Pillow's speed, which
is small next to the rest of a SOG import; and the bytes are identical (transparent pixels too).

Encoding (writing .sog in Blender): Pillow when it is importable, else Blender's own WebP writer
(``Image.save`` at quality 100, which is lossless). That writer (libwebp's
``WebPEncodeLosslessRGBA``) does not keep the colour of fully transparent pixels, so the encoder
is marked ``keeps_transparent_rgb = False`` and ``shared.formats.sog`` then stores opacity bytes of
0 as 1 (alpha 1/255 instead of below 0.5/255) so that those splats keep their colour.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .shared.formats import set_webp_codec

try:
    import bpy
except ImportError:  # pragma: no cover
    bpy = None


def decode_webp(data: bytes) -> np.ndarray:
    """RGBA uint8 [H, W, 4] (top row first) of a WebP image, decoded by Blender."""
    fd, path = tempfile.mkstemp(suffix=".webp", prefix="splatbridge-")
    image = None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        image = bpy.data.images.load(path, check_existing=False)
        image.colorspace_settings.name = "Non-Color"
        image.alpha_mode = "STRAIGHT"
        w, h = image.size
        if w == 0 or h == 0:
            raise ValueError("Blender could not decode the image")
        px = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(px)
    finally:
        if image is not None:
            bpy.data.images.remove(image)
        os.remove(path)
    rgba = np.rint(px * np.float32(255.0)).astype(np.uint8).reshape(h, w, 4)
    return np.ascontiguousarray(rgba[::-1])


def encode_webp(rgba: np.ndarray) -> bytes:
    """Lossless WebP of RGBA uint8 [H, W, 4] (top row first), written by Blender."""
    h, w = rgba.shape[:2]
    image = bpy.data.images.new("splatbridge-webp", w, h, alpha=True, float_buffer=False)
    fd, path = tempfile.mkstemp(suffix=".webp", prefix="splatbridge-")
    os.close(fd)
    try:
        image.colorspace_settings.name = "Non-Color"
        image.alpha_mode = "STRAIGHT"
        image.pixels.foreach_set((rgba[::-1].astype(np.float32) / np.float32(255.0)).reshape(-1))
        image.file_format = "WEBP"
        image.save(filepath=path, quality=100)
        with open(path, "rb") as f:
            return f.read()
    finally:
        bpy.data.images.remove(image)
        os.remove(path)


encode_webp.keeps_transparent_rgb = False  # see the module docstring


def _pillow_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> None:
    """Use Blender's image loader for SOG's WebP images; Blender's writer unless Pillow is there."""
    set_webp_codec(decode=decode_webp, encode=None if _pillow_available() else encode_webp)


def unregister() -> None:
    set_webp_codec()
