"""SplatBridge demo, headless: a Blender scene becomes Gaussian splats through the real pipeline.

    python3 build.py demo            (or: .venv/bin/python demo/run_demo.py [--views 32 ...])

1. builds a scene in headless Blender (a coloured, smooth Suzanne on a two-tone pedestal, a sun
   and a grey sky);
2. adds a camera rig around it and captures every view with Cycles (the add-on's own code);
3. starts a backend (``python -m backend serve``) as a subprocess on a free loopback port with a
   temporary job store, connects over ZeroMQ, submits the ``train`` job and prints its progress;
4. the result becomes a splat object in the scene; the demo draws it with the add-on's viewport
   drawing (offscreen) from a camera the training never saw, next to a Cycles render from there;
5. the splat object is moved beside the mesh it was made from and the scene is rendered with the
   add-on's "Render Image with Splats": a Cycles render with the splats composited in by depth.

Outputs in ``demo-output/``: ``views.png`` (contact sheet of the captured views),
``heldout_cycles_vs_splats.png`` (Cycles | splats, same new camera), ``final_render_with_splats.png``
(mesh Suzanne and splat Suzanne in one render), ``splats.ply`` (3DGS PLY, Blender world space),
``summary.json`` (settings, timings, PSNR).
The defaults take a few minutes on 2 CPU cores; a CUDA backend is much faster.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


@contextlib.contextmanager
def quiet_stdout():
    """Silence Blender's per-render chatter (it writes to fd 1 directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(devnull)
        os.close(saved)


def assemble_addon(dest: Path) -> None:
    """The add-on as the extension lays it out (build.py's layout), importable as ``splatbridge``."""
    sys.path.insert(0, str(ROOT))
    from build import assemble_addon as lay_out
    lay_out(dest)
    sys.path.insert(0, str(dest))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(store: Path, device: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_path = store / "backend.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    with open(log_path, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--bind", address,
                                 "--store", str(store / "jobs"), "--device", device,
                                 "--preview-interval", "2"],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return proc, address, log_path


def build_scene(bpy):
    """Suzanne (orange, smooth) on a pedestal (white top, teal sides), sun + grey world."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    def material(name, rgb):
        m = bpy.data.materials.new(name)
        if m.node_tree is None:              # Blender 4.x makes the node tree on request
            m.use_nodes = True
        m.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*rgb, 1.0)
        m.node_tree.nodes["Principled BSDF"].inputs["Roughness"].default_value = 0.6
        return m

    bpy.ops.mesh.primitive_monkey_add(size=1.0, location=(0, 0, 0.25), rotation=(0.35, 0, 0.5))
    monkey = bpy.context.active_object
    monkey.modifiers.new("smooth", "SUBSURF").levels = 1
    bpy.ops.object.shade_smooth()
    monkey.data.materials.append(material("orange", (0.8, 0.28, 0.04)))
    bpy.ops.mesh.primitive_cylinder_add(radius=0.55, depth=0.3, location=(0, 0, -0.45), vertices=32)
    base = bpy.context.active_object
    base.data.materials.append(material("white", (0.75, 0.75, 0.72)))
    base.data.materials.append(material("teal", (0.05, 0.45, 0.5)))
    for poly in base.data.polygons:
        poly.material_index = 0 if poly.normal.z > 0.5 else 1
    sys.path.insert(0, str(ROOT))
    from demo.scene_kit import sky_sun_cycles
    sky_sun_cycles(bpy, scene, (0.35, 0.35, 0.38), 2.5, (0.7, 0.15, 0.9))
    for o in scene.objects:
        o.select_set(o in (monkey, base))
    bpy.context.view_layer.objects.active = monkey
    return [monkey, base]


def contact_sheet(images: np.ndarray, cols: int = 8, scale: int = 2) -> np.ndarray:
    """RGBA views over a checkerboard (so transparency shows), in a grid; u8 RGB."""
    c, h, w = images.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where(((yy // 8) + (xx // 8)) % 2, 0.55, 0.75)[..., None]
    rows = math.ceil(c / cols)
    sheet = np.ones((rows * (h + 2), cols * (w + 2), 3))
    for i, im in enumerate(images.astype(np.float64) / 255.0):
        over = im[..., :3] * im[..., 3:] + checker * (1 - im[..., 3:])
        r, k = divmod(i, cols)
        sheet[r * (h + 2):r * (h + 2) + h, k * (w + 2):k * (w + 2) + w] = over
    sheet = np.repeat(np.repeat(sheet, scale, 0), scale, 1)
    return (sheet * 255 + 0.5).astype(np.uint8)


def draw_splats(bpy, obj, cam) -> np.ndarray:
    """The add-on's viewport drawing of ``obj`` for shared camera ``cam`` (offscreen); RGBA float,
    premultiplied over transparent black."""
    from splatbridge.viewport.offscreen import draw_camera_view, ensure_gpu_module
    with quiet_stdout():
        ensure_gpu_module()
    return draw_camera_view(obj, cam)


def final_render_beside(bpy, scene, obj, centre: np.ndarray, radius: float, path: Path, samples: int) -> float:
    """Move the splat object 1.3 m to the side of the mesh it was made from, frame both with a new
    scene camera, and render with splats (``final_render.render_still``: the scene's Cycles render with
    the splats composited in by depth) to ``path`` (PNG, 240x160). Returns the seconds it took."""
    from mathutils import Matrix
    from splatbridge import final_render, rig
    t = time.monotonic()
    obj.location = (obj.location[0] + 1.3, obj.location[1], obj.location[2])
    target = centre + np.array([0.65, 0.0, -0.1])
    pos = target + 1.25 * radius * np.array([0.25, -0.95, 0.35])
    cam = bpy.data.objects.new("final", bpy.data.cameras.new("final"))
    cam.data.lens = 40.0
    cam.matrix_world = Matrix(rig.look_at_matrix(pos, target).tolist())
    scene.collection.objects.link(cam)
    scene.camera = cam
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 240, 160, 100
    r.image_settings.file_format = "PNG"
    scene.cycles.samples = samples
    with quiet_stdout():
        final_render.render_still(scene, bpy.context.view_layer, write_path=str(path))
    return time.monotonic() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, default=32, help="rig cameras (Fibonacci sphere)")
    p.add_argument("--res", type=int, default=64, help="capture resolution (square, pixels)")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per view")
    p.add_argument("--steps", type=int, default=800, help="training steps")
    p.add_argument("--points", type=int, default=2500, help="initial surface points")
    p.add_argument("--max-gaussians", type=int, default=4000)
    p.add_argument("--sh-degree", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="backend device")
    p.add_argument("--out", default=str(ROOT / "demo-output"))
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on training after this")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="splatbridge_demo_"))
    backend = None
    try:
        proc, address, backend_log = start_backend(tmp, args.device)   # starts while bpy loads
        backend = proc
        log(f"backend starting on {address} (log: {backend_log})")
        assemble_addon(tmp / "addon")
        import bpy
        from mathutils import Matrix
        from splatbridge import capture, connection, ops_train, rig, splat_object
        from splatbridge.shared.formats import write_splats
        modules = [rig, splat_object, connection, ops_train]
        for m in modules:
            m.register()

        build_scene(bpy)
        scene = bpy.context.scene
        bpy.ops.splatbridge.add_camera_rig(layout_kind="FIBONACCI", count=args.views,
                                           resolution=(args.res, args.res), margin=1.08)
        rg = rig.find_rig(bpy.context)
        s = scene.splatbridge_train
        s.steps, s.sh_degree, s.num_points = args.steps, args.sh_degree, args.points
        s.max_gaussians, s.samples, s.engine = args.max_gaussians, args.samples, "CYCLES"
        s.holdout_every, s.preview_every = 0, max(args.steps // 5, 1)
        log(f"scene: Suzanne on a pedestal; rig of {len(rig.rig_cameras(rg))} cameras at "
            f"{args.res}x{args.res}")

        connection.connect(bpy.context, address)
        if not connection.wait_for(lambda: connection.STATE.server_info is not None, 120.0):
            raise RuntimeError(f"the backend did not answer: {connection.STATE.last_error}; "
                               f"see {backend_log}")
        log(connection.status_summary()[0])

        t0 = time.monotonic()
        job = ops_train.start_capture(bpy.context, rg)
        while True:
            with quiet_stdout():
                done = job.step()
            if job.done % 8 == 0 or done:
                log(f"captured {job.done}/{job.total} views ({time.monotonic() - t0:.1f} s)")
            if done:
                break
        result = job.result()
        capture_s = time.monotonic() - t0
        from PIL import Image
        Image.fromarray(contact_sheet(result.images)).save(out / "views.png")

        t1 = time.monotonic()
        rec = ops_train.submit_capture(bpy.context, result, name="DemoSplats")
        job_id = rec.job_id
        log(f"submitted train job {job_id}: {args.steps} steps, {len(result.points)} initial points")
        last = [0.0]

        def finished() -> bool:
            r = connection.find_record(scene, job_id)
            if time.monotonic() - last[0] > 5.0 and not r.handled:
                last[0] = time.monotonic()
                log(ops_train.status_text(r))
            return r.handled

        if not connection.wait_for(finished, args.timeout):
            raise RuntimeError(f"training did not finish within {args.timeout:.0f} s")
        train_s = time.monotonic() - t1
        rec = connection.find_record(scene, job_id)
        if rec.state != "done":
            raise RuntimeError(f"training ended as {rec.state}: {rec.message}")
        obj = bpy.data.objects[rec.target]
        splats = splat_object.read_splats_from_object(obj)
        log(f"training done in {train_s:.1f} s: {len(splats)} Gaussians in object {obj.name!r}")
        write_splats(out / "splats.ply", splats)

        # A new view: between the rig's directions, a little lower than most.
        centre = np.array(rg.matrix_world.translation)
        radius = float(np.linalg.norm(np.array(rig.rig_cameras(rg)[0].matrix_world.translation) - centre))
        az, el = math.radians(-63.0), math.radians(18.0)
        pos = centre + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                                          math.sin(el)])
        cam = bpy.data.objects.new("heldout", bpy.data.cameras.new("heldout"))
        cam.data.lens = rig.rig_cameras(rg)[0].data.lens
        cam.matrix_world = Matrix(rig.look_at_matrix(pos, centre).tolist())
        scene.collection.objects.link(cam)
        bpy.context.view_layer.update()
        size = args.res * 2
        with quiet_stdout():
            ref = capture.render_view(scene, cam, size, size, str(tmp / "heldout.png"),
                                      samples=args.samples * 2).astype(np.float32) / 255.0
        shared_cam = capture.blender_camera(scene, cam, size, size)
        img = draw_splats(bpy, obj, shared_cam)
        grey = 0.5
        ref_rgb = ref[..., :3] * ref[..., 3:] + grey * (1 - ref[..., 3:])
        img_rgb = img[..., :3] + grey * (1 - img[..., 3:])           # premultiplied
        mse = float(np.mean((np.clip(img_rgb, 0, 1) - ref_rgb) ** 2))
        psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
        pair = np.concatenate([ref_rgb, np.full((size, 4, 3), 1.0), np.clip(img_rgb, 0, 1)], axis=1)
        pair = np.repeat(np.repeat(pair, 3, 0), 3, 1)
        Image.fromarray((pair * 255 + 0.5).astype(np.uint8)).save(out / "heldout_cycles_vs_splats.png")
        final_s = final_render_beside(bpy, scene, obj, centre, radius, out / "final_render_with_splats.png",
                                      args.samples * 2)
        log(f"final render with splats (Cycles + splats by depth): {final_s:.1f} s")
        summary = {
            "views": args.views, "resolution": args.res, "steps": args.steps,
            "gaussians": len(splats), "capture_s": round(capture_s, 1), "train_s": round(train_s, 1),
            "final_render_s": round(final_s, 1), "total_s": round(time.monotonic() - t_start, 1),
            "heldout_view": {"size": size, "psnr_db_over_grey": round(psnr, 2)},
            "backend": connection.STATE.server_info.get("device"),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        log(f"new-view PSNR (splats vs Cycles, {size}x{size}, over grey): {psnr:.2f} dB")
        log(f"wrote {out}/views.png, heldout_cycles_vs_splats.png, final_render_with_splats.png, splats.ply, "
            f"summary.json "
            f"({summary['total_s']} s in all)")
        connection.disconnect()
        for m in reversed(modules):
            m.unregister()
        return 0
    except Exception as exc:
        log(f"FAILED: {exc}")
        if backend is not None and (tmp / "backend.log").exists():
            print((tmp / "backend.log").read_text()[-2000:], file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.terminate()
            try:
                backend.wait(15)
            except subprocess.TimeoutExpired:
                backend.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
