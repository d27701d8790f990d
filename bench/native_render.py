"""F12 paths for splat objects, measured against the reference rasterizer (tests/native_scene.py).

Run with the newest Blender's bpy (no torch needed: the reference images are the committed fixture):

    PYTHONPATH=.:tests .venv-blender-latest/bin/python bench/native_render.py [--samples 128]

Rows (each a plain ``render.render`` of the same scene and camera, Standard view transform unless said):

* ``native``: a SplatBridge-made native splat point cloud (Blender 5.3+'s own splat renderer), the
  attributes as ``shared.native_splats`` writes them;
* ``native, linearised colour``: the same with the DC colour decoded to linear before writing (the
  convention we ruled out: Blender already decodes the SH colour as sRGB);
* ``native, AgX``: Blender's default view transform instead of Standard;
* ``GN spheres (mesh)``: the mesh splat object with the Geometry Nodes "Native Render" modifier
  (native_render.py, the F12 path for Blender 4.2-5.2), DC colour only.

PSNR against the display-space and the linear-light reference (tests/native_scene.py), and seconds per
render (this machine; one run, compare rows of the same run only).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import native_scene  # noqa: E402
from helpers import psnr  # noqa: E402
from shared.sh import rgb_to_sh0, sh0_to_rgb  # noqa: E402


def _render(bpy, path: str) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = native_scene.render_f12(bpy, path)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=128, help="Cycles samples")
    ap.add_argument("--eevee-samples", type=int, default=64, help="EEVEE render samples")
    ap.add_argument("--gn-eevee", action="store_true",
                    help="also EEVEE with the GN spheres (slow on a CPU: 497 s measured here)")
    ap.add_argument("--png", default="", help="write all renders side by side to this PNG")
    args = ap.parse_args()

    import bpy

    from build import assemble_addon
    tmp = Path(tempfile.mkdtemp(prefix="native_bench_"))
    assemble_addon(tmp)
    sys.path.insert(0, str(tmp))
    so = importlib.import_module("splatbridge.splat_object")
    nr = importlib.import_module("splatbridge.native_render")
    if not so.NATIVE_SUPPORTED:
        sys.exit(f"bpy {bpy.app.version_string} has no native splats: run this with Blender 5.3+")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    splats = native_scene.splats()
    native = so.create_splat_object(bpy.context, "Native", splats)
    mesh = so.create_splat_object(bpy.context, "Mesh", splats, native=False)
    nr.ensure_native_render(mesh, True)
    native_scene.setup_blender_scene(bpy, cycles_samples=args.samples, eevee_samples=args.eevee_samples)
    scene.cycles.transparent_max_bounces = nr.MIN_TRANSPARENT_BOUNCES
    r = scene.render
    ref = native_scene.load_fixture()
    base = native.data.attributes["radiance:base"]
    raw = np.empty(len(splats) * 4, np.float32)
    base.data.foreach_get("vector", raw)
    linearised = raw.reshape(-1, 4).copy()
    linearised[:, :3] = rgb_to_sh0(native_scene.srgb_to_linear(sh0_to_rgb(splats.sh0)))

    def variant(name: str) -> None:
        native.hide_render = name.startswith("GN")
        mesh.hide_render = not native.hide_render
        base.data.foreach_set("vector", (linearised if "linearised" in name else raw.reshape(-1, 4)).reshape(-1))
        native.data.update_tag()
        scene.view_settings.view_transform = "AgX" if "AgX" in name else "Standard"

    print(f"bpy {bpy.app.version_string}; {len(splats)} splats, SH degree {splats.sh_degree}, "
          f"{native_scene.WIDTH}x{native_scene.HEIGHT}, Cycles {args.samples} samples CPU, "
          f"EEVEE {args.eevee_samples} samples")
    print(f"{'engine':14s} {'object':30s} {'display-space':>14s} {'linear-light':>13s} {'s/render':>9s}")
    images = []
    for engine in ("CYCLES", "BLENDER_EEVEE"):
        r.engine = engine
        for name in ("native", "native, linearised colour", "native, AgX", "GN spheres (mesh)"):
            if engine == "BLENDER_EEVEE" and name.startswith("GN") and not args.gn_eevee:
                continue
            variant(name)
            out, dt = _render(bpy, str(tmp / "r.png"))
            images.append(out)
            print(f"{engine:14s} {name:30s} {psnr(out, ref['display']):11.1f} dB {psnr(out, ref['linear']):10.1f} dB "
                  f"{dt:9.2f}", flush=True)
    if args.png:
        native_scene.save_row(images + [ref["display"], ref["linear"]], args.png)


if __name__ == "__main__":
    main()
