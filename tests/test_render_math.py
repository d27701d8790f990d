"""render_math: the final render's bpy-free maths (OpenEXR reader, Z-pass convention, depth-buffer values,
premultiplied composite), tested with numpy alone. test_final_render.py checks the same functions
against Blender's own renders (a real Z pass written by Blender, read back by this reader)."""
from __future__ import annotations

import importlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from shared.cameras import Camera

pytestmark = pytest.mark.bpy_only

FLOAT, HALF = 2, 1


@pytest.fixture
def rm(addon_dir):
    return importlib.import_module("splatbridge.render_math")


def test_render_math_imports_without_bpy(addon_dir):
    """The module must not need Blender: import it in a Python where ``import bpy`` fails."""
    code = ("import sys; sys.modules['bpy'] = None; sys.path.insert(0, sys.argv[1]); "
            "import splatbridge.render_math as rm; import splatbridge.viewport.matrices; "
            "print('bpy' in sys.modules and sys.modules['bpy'] is not None)")
    out = subprocess.run([sys.executable, "-c", code, str(addon_dir.parent)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------
# OpenEXR: a minimal writer of the layout Blender writes with codec NONE (scanline, single or multi part)
# ------------------------------------------------------------------------------------------------

def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _header(channels: dict[str, np.ndarray], compression: int) -> bytes:
    h, w = next(iter(channels.values())).shape
    chlist = b"".join(name.encode() + b"\0" + struct.pack("<iB3xii", HALF if a.dtype == np.float16 else FLOAT,
                                                          0, 1, 1) for name, a in sorted(channels.items()))
    return (_attr("channels", "chlist", chlist + b"\0") + _attr("compression", "compression", bytes([compression]))
            + _attr("dataWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1))
            + _attr("displayWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1)) + b"\0")


def write_exr(path, parts: list[dict[str, np.ndarray]], compression: int = 0, flags: int = 0) -> None:
    multipart = len(parts) > 1
    head = b"\x76\x2f\x31\x01" + struct.pack("<I", 2 | (0x1000 if multipart else 0) | flags)
    head += b"".join(_header(p, compression) for p in parts) + (b"\0" if multipart else b"")
    lines = sum(next(iter(p.values())).shape[0] for p in parts)
    pos = len(head) + 8 * lines
    tables, chunks = [], b""
    for index, part in enumerate(parts):
        h, _w = next(iter(part.values())).shape
        table = []
        for y in range(h):
            data = b"".join(part[name][y].tobytes() for name in sorted(part))
            chunk = (struct.pack("<i", index) if multipart else b"") + struct.pack("<2i", y, len(data)) + data
            table.append(pos + len(chunks))
            chunks += chunk
        tables.append(np.array(table, "<u8").tobytes())
    with open(path, "wb") as f:
        f.write(head + b"".join(tables) + chunks)


def test_exr_reader_round_trips_single_and_multipart(rm, tmp_path):
    rng = np.random.default_rng(0)
    z = rng.uniform(0.1, 50.0, (3, 5)).astype(np.float32)
    z[0, 0] = 1e10                                                   # "nothing hit", as Cycles writes it
    r = rng.uniform(0, 1, (3, 5)).astype(np.float16)
    write_exr(tmp_path / "one.exr", [{"Z": z, "R": r}])
    got = rm.read_exr_channels(str(tmp_path / "one.exr"))
    assert sorted(got) == ["R", "Z"] and got["Z"].dtype == np.float32
    np.testing.assert_array_equal(got["Z"], z)
    np.testing.assert_array_equal(got["R"], r.astype(np.float32))

    combined = {f"ViewLayer.Combined.{c}": rng.uniform(0, 1, (4, 2)).astype(np.float32) for c in "RGBA"}
    depth = {"ViewLayer.Depth.Z": rng.uniform(1, 9, (4, 2)).astype(np.float32)}
    write_exr(tmp_path / "multi.exr", [combined, depth])
    got = rm.read_exr_channels(str(tmp_path / "multi.exr"))
    assert sorted(got) == sorted([*combined, *depth])
    for name, a in {**combined, **depth}.items():
        np.testing.assert_array_equal(got[name], a)


@pytest.mark.parametrize("kwargs, data, message", [
    ({"compression": 3}, None, "compressed OpenEXR is not supported"),
    ({"flags": 0x200}, None, "tiled or deep OpenEXR is not supported"),
    ({}, b"\x89PNG\r\n\x1a\n", "not an OpenEXR file"),
])
def test_exr_reader_refuses_what_it_cannot_read(rm, tmp_path, kwargs, data, message):
    path = tmp_path / "x.exr"
    if data is None:
        write_exr(path, [{"Z": np.zeros((2, 2), np.float32)}], **kwargs)
    else:
        path.write_bytes(data)
    with pytest.raises(rm.FinalRenderError, match=message):
        rm.read_exr_channels(str(path))


# ------------------------------------------------------------------------------------------------
# depth and compositing
# ------------------------------------------------------------------------------------------------

def test_window_depth_matches_the_projection(rm, addon_dir):
    matrices = importlib.import_module("splatbridge.viewport.matrices")
    cam = Camera(np.eye(4), 50.0, 50.0, 32.0, 24.0, 64, 48)
    proj = matrices.gl_projection_matrix(cam, 0.1, 100.0)
    d = np.array([0.05, 0.1, 1.0, 7.5, 100.0, 500.0, np.inf])
    clip = proj @ np.stack([np.zeros_like(d), np.zeros_like(d), -np.where(np.isinf(d), 1e30, d), np.ones_like(d)])
    expected = np.clip(0.5 * clip[2] / clip[3] + 0.5, 0, 1)
    np.testing.assert_allclose(rm.window_depth(d, proj), expected, atol=1e-6)
    assert rm.window_depth(d, proj)[0] == 0.0 and rm.window_depth(d, proj)[-1] == 1.0
    np.testing.assert_array_equal(rm.planar_depth(np.array([3.5, 1e10, np.nan], np.float32)), [3.5, np.inf, np.inf])


def test_composite_over_is_premultiplied_over(rm):
    splat = np.array([[[0.2, 0.1, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    scene = np.array([[[0.4, 0.8, 1.0, 1.0], [0.5, 0.5, 0.5, 0.25]]], np.float32)
    out = rm.composite_over(splat, scene)
    np.testing.assert_allclose(out[0, 0], [0.2 + 0.5 * 0.4, 0.1 + 0.5 * 0.8, 0.5, 1.0])
    np.testing.assert_allclose(out[0, 1], [0.125, 0.125, 0.125, 0.25])      # scene alone, premultiplied
    np.testing.assert_allclose(rm.unpremultiply(out)[0, 1], scene[0, 1])
    with pytest.raises(ValueError, match=r"shape mismatch: splats \(1, 2, 4\), scene \(1, 1, 4\)"):
        rm.composite_over(splat, scene[:, :1])
