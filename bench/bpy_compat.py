"""Blender-version probe: the whole add-on on whichever ``bpy`` runs this, outputs saved to compare.

    <python with bpy X> bench/bpy_compat.py render OUT.npz [--samples 16]   # one Blender version
    <python> bench/bpy_compat.py compare A.npz B.npz [--reference]   # two versions side by side

``render`` (headless bpy, the add-on assembled as ``splatbridge`` exactly as the tests do):

1. registers the whole add-on (``splatbridge.register()``; every module in ``MODULES``) and fails
   on any import/register error the add-on collected in ``splatbridge.ERRORS``;
2. creates a splat object from ``Splats.random`` (400 splats, SH degree 3, varied scales);
3. initialises the GPU module (``ensure_gpu_module``) and draws the object offscreen
   (``draw_camera_view``, 160x120) from a fixed camera; fails if the image is empty;
4. turns on Native Render (``ensure_native_render``) and renders one 64x48 Cycles frame (CPU,
   16 samples unless ``--samples``, Tabulated Sobol: 5.0's default) with and without the modifier;
5. runs ``final_render.render_still`` on a 64x48 Workbench scene (a cube partly behind the splats);
6. unregisters and registers the add-on again (nothing may fail).

It writes the images (f32, row 0 at the top), the splats and the camera to ``OUT.npz``, plus PNGs
beside it. ``compare`` prints, per image, max / mean absolute difference and PSNR between the two
files; with ``--reference`` (needs torch: the repo's .venv) also each offscreen image against the
reference rasterizer (``backend.render.rasterize``), as tests/test_viewport.py does.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from native_scene import render_f12  # noqa: E402  (tests/: the one F12-to-array helper)

W, H = 160, 120          # offscreen draw
RW, RH = 64, 48          # Cycles and Workbench renders
BG_DISPLAY = np.array([0.05, 0.1, 0.2])   # Cycles world colour as displayed (Standard view)


def _splats():
    from shared.splats import Splats
    rng = np.random.default_rng(0)
    base = Splats.random(400, sh_degree=3, seed=0, extent=0.6)
    scales = np.log(rng.uniform(0.01, 0.12, (400, 3)) * rng.uniform(0.2, 1.0, (400, 1)) ** [0, 1, 2])
    return Splats(base.means, base.quats, scales.astype(np.float32), base.opacities, base.sh0, base.shN * 3.0)


def _camera():
    from shared.cameras import Camera, look_at
    return Camera(look_at((2.0, -1.5, 1.2), (0.0, 0.0, 0.0)), 140.0, 147.0, W / 2 + 3.0, H / 2 - 2.0, W, H)


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


def render(out: Path, samples: int = 16) -> None:
    import bpy
    from build import assemble_addon
    base = Path(tempfile.mkdtemp(prefix="sb_compat_"))
    assemble_addon(base)
    sys.path.insert(0, str(base))
    import splatbridge

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    splatbridge.register()
    assert not splatbridge.ERRORS, f"add-on modules failed: {splatbridge.ERRORS}"
    from splatbridge import final_render, native_render, splat_object
    from splatbridge.viewport.offscreen import draw_camera_view, ensure_gpu_module
    times["register"] = time.perf_counter() - t0

    splats = _splats()
    obj = splat_object.create_splat_object(bpy.context, "Splats", splats, native=False)   # GN path: meshes
    t0 = time.perf_counter()
    ensure_gpu_module()
    cam = _camera()
    offscreen = draw_camera_view(obj, cam)
    times["offscreen"] = time.perf_counter() - t0
    cover = float((offscreen[..., 3] > 0.5).mean())
    assert cover > 0.1, f"offscreen draw nearly empty: {cover:.3f} of pixels have alpha > 0.5"

    # Native Render: one tiny Cycles frame with and without the modifier.
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("World")
    bg_linear = np.where(BG_DISPLAY > 0.04045, ((BG_DISPLAY + 0.055) / 1.055) ** 2.4, BG_DISPLAY / 12.92)
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (*bg_linear, 1.0)
    cam_obj = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam_obj)
    cam_obj.location, cam_obj.rotation_euler, cam_obj.data.lens = (0.0, -3.5, 0.0), (math.pi / 2, 0.0, 0.0), 35.0
    scene.camera = cam_obj
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = RW, RH, 100
    scene.view_settings.view_transform = "Standard"
    r.engine = "CYCLES"
    c = scene.cycles
    c.device, c.samples, c.use_denoising = "CPU", samples, False
    c.sampling_pattern = "TABULATED_SOBOL"
    c.transparent_max_bounces = native_render.MIN_TRANSPARENT_BOUNCES
    mod = native_render.ensure_native_render(obj, True)
    bpy.context.view_layer.update()
    cycles_cam = final_render.scene_camera(scene)[1]
    assert native_render.native_render_enabled(obj)
    tmp = Path(tempfile.mkdtemp(prefix="sb_compat_r_"))

    def f12(name: str) -> np.ndarray:
        return render_f12(bpy, str(tmp / f"{name}.png"))

    t0 = time.perf_counter()
    cycles_with = f12("with")
    mod.show_render = False
    cycles_without = f12("without")
    mod.show_render = True
    times["cycles_2_frames"] = time.perf_counter() - t0
    changed = float((np.abs(cycles_with - cycles_without).max(axis=2) > 0.05).mean())
    assert changed > 0.05, f"native render: the splats change only {changed:.3f} of the pixels"

    # render_still on a Workbench scene: a cube partly behind the splats (as seen from Cam).
    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(0.9, 1.0, 0.2))
    r.engine = "BLENDER_WORKBENCH"
    t0 = time.perf_counter()
    still = final_render.render_still(scene, bpy.context.view_layer)
    times["render_still"] = time.perf_counter() - t0
    assert still.objects == [obj.name], still.objects
    assert (still.splats[..., 3] > 0.5).mean() > 0.05, "render_still: splat layer nearly empty"

    splatbridge.unregister()
    splatbridge.register()
    assert not splatbridge.ERRORS, f"add-on modules failed on re-register: {splatbridge.ERRORS}"
    splatbridge.unregister()

    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = splats.to_arrays()
    np.savez_compressed(out, version=np.array(bpy.app.version_string), offscreen=offscreen,
                        cycles_with=cycles_with, cycles_without=cycles_without,
                        still_rgba=still.rgba, still_splats=still.splats, still_depth=still.scene.depth,
                        w2c=cam.world_to_camera, K=cam.K,
                        cycles_w2c=cycles_cam.world_to_camera, cycles_K=cycles_cam.K,
                        **{f"splats_{k}": v for k, v in arrays.items()})
    stem = out.with_suffix("")
    _save_png(Path(f"{stem}_offscreen.png"), offscreen[..., :3])
    _save_png(Path(f"{stem}_cycles.png"), np.concatenate([cycles_with, cycles_without], axis=1))
    _save_png(Path(f"{stem}_still.png"), still.rgba[..., :3])
    print(f"bpy {bpy.app.version_string} (Python {sys.version.split()[0]}, numpy {np.__version__}): "
          f"offscreen coverage {cover:.3f}, native render changes {changed:.3f} of pixels, "
          f"render_still splat coverage {(still.splats[..., 3] > 0.5).mean():.3f}; "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _reference(d, cycles: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reference rasterizer image of the saved splats: the offscreen view (SH degree 3, W x H)
    or, with ``cycles``, the Cycles camera (SH degree 0, as Native Render colours splats; RW x RH)."""
    import torch
    from backend.render import rasterize
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    from shared.splats import Splats
    s = Splats(d["splats_means"], d["splats_quats"], d["splats_scales"], d["splats_opacities"],
               d["splats_sh0"], d["splats_shN"])
    if cycles:
        coeffs, w2c, K, size, degree = s.sh0[:, None, :], d["cycles_w2c"], d["cycles_K"], (RW, RH), 0
    else:
        coeffs = np.concatenate([s.sh0[:, None, :], s.shN], axis=1)
        w2c, K, size, degree = d["w2c"], d["K"], (W, H), 3
    rgb, alpha, _ = rasterize(t(s.means), t(s.quats), t(s.scales_linear()), t(s.alphas()), t(coeffs),
                              t(w2c[None]), t(K[None]), *size, sh_degree=degree)
    return rgb[0].numpy(), alpha[0, ..., 0].numpy()


def compare(a_path: Path, b_path: Path, reference: bool) -> None:
    a, b = np.load(a_path), np.load(b_path)
    print(f"A = bpy {a['version']}, B = bpy {b['version']}")
    for key in ("offscreen", "cycles_with", "cycles_without", "still_rgba", "still_splats"):
        x, y = a[key], b[key]
        diff = np.abs(x.astype(np.float64) - y)
        print(f"  {key:15s} {x.shape}: max |A-B| {diff.max():.2e}, mean {diff.mean():.2e}, "
              f"PSNR {_psnr(x, y):.1f} dB")
    finite = np.isfinite(a["still_depth"]) & np.isfinite(b["still_depth"])
    same_inf = (np.isfinite(a["still_depth"]) == np.isfinite(b["still_depth"])).all()
    print(f"  still_depth: same background pixels {same_inf}, max |A-B| on hits "
          f"{np.abs(a['still_depth'][finite] - b['still_depth'][finite]).max():.2e} m")
    if reference:
        ref_rgb, ref_alpha = _reference(a)
        for name, d in (("A", a), ("B", b)):
            img = d["offscreen"]
            print(f"  offscreen {name} vs reference rasterizer: PSNR {_psnr(img[..., :3], ref_rgb):.1f} dB, "
                  f"mean |alpha - ref| {np.abs(img[..., 3] - ref_alpha).mean():.2e}")
        # Native Render vs the display-space reference (tests/test_native_render.py: > 20 dB there)
        ref_rgb, ref_alpha = _reference(a, cycles=True)
        display_ref = ref_rgb + (1.0 - ref_alpha[..., None]) * BG_DISPLAY
        for name, d in (("A", a), ("B", b)):
            print(f"  cycles_with {name} vs display-space reference: PSNR "
                  f"{_psnr(d['cycles_with'], display_ref):.1f} dB (without the modifier: "
                  f"{_psnr(d['cycles_without'], display_ref):.1f} dB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("render")
    p.add_argument("out", type=Path)
    p.add_argument("--samples", type=int, default=16, help="Cycles samples of the Native Render frames")
    p = sub.add_parser("compare")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--reference", action="store_true")
    args = ap.parse_args()
    if args.cmd == "render":
        render(args.out, args.samples)
    else:
        compare(args.a, args.b, args.reference)


if __name__ == "__main__":
    main()
