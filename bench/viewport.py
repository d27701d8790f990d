"""Viewport benchmark: result message -> splat object, re-sort, GPU upload, memory.

    .venv/bin/python bench/viewport.py [--n 1000000] [--degree 3] [--repeat 5] [--draw]

Runs in headless bpy with the add-on assembled as ``splatbridge`` (shared/ vendored), as in the
tests. Reported (median of ``--repeat`` runs unless said otherwise):

1. ``result -> object``: ``shared.protocol.decode`` of an encoded ``result`` message (the frames as
   bytes, as they come off the socket), ``splats_from_fields`` and ``create_splat_object`` with a
   fresh mesh each time (target <= 1 s for 1M degree-3 splats); ``update in place`` likewise with
   ``update_splat_object`` on the existing object (live preview);
2. ``re-sort``: one ``SplatSorter`` sort for a new view direction (16-bit keys + numpy's radix
   argsort + float32 conversion), the split between key computation and sort, and its CPU time
   (the machine is shared: wall time includes waiting for a core);
3. ``upload``: GPU module initialised by a tiny Workbench render, then object -> textures:
   attribute read, packing (covariances, layouts), texture creation; and one order upload;
4. memory: GPU bytes of the data and order textures, mesh attribute bytes in the .blend;
5. with ``--draw``: one 640x480 offscreen frame of all splats (on llvmpipe this is CPU-bound and
   says nothing about a real GPU; reported for completeness).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """(median wall s, median CPU s, last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--degree", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--draw", action="store_true", help="also time one offscreen frame")
    args = ap.parse_args()

    from build import assemble_addon          # the extension's layout (build.py at the repo root)
    base = Path(tempfile.mkdtemp(prefix="sb_bench_"))
    assemble_addon(base)
    sys.path.insert(0, str(base))

    import bpy
    import gpu

    from splatbridge import splat_object as so
    from splatbridge.shared import protocol
    from splatbridge.shared.splats import Splats
    from splatbridge.viewport import draw, sort
    from splatbridge.viewport.gpu_data import OrderTexture, SplatTextures, pack_splats
    from splatbridge.viewport.offscreen import ensure_gpu_module

    bpy.ops.wm.read_factory_settings(use_empty=True)
    n, degree, repeat = args.n, args.degree, args.repeat
    print(f"{n:,} splats, SH degree {degree}, median of {repeat} runs (wall / CPU)\n")

    splats = Splats.random(n, sh_degree=degree, seed=0)
    frames = [bytes(f) for f in protocol.encode(protocol.Message("result", "job1", {"splats": splats.to_arrays()}))]
    print(f"result message: {sum(len(f) for f in frames) / 2**20:.1f} MiB in {len(frames)} frames")

    # 1. result -> object ------------------------------------------------------------------------
    def receive():
        msg = protocol.decode(frames)
        return protocol.splats_from_fields(msg.fields["splats"])

    t_dec, c_dec, received = timed(receive, repeat)

    def remove(obj) -> None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)

    def fresh(fn: Callable[[], object]) -> tuple[float, float, object]:
        """Median over ``repeat`` runs, each on a fresh object (removed untimed afterwards)."""
        walls, cpus, out = [], [], None
        for i in range(repeat):
            w, c = time.perf_counter(), time.process_time()
            out = fn()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
            if i < repeat - 1:
                remove(out)
        return statistics.median(walls), statistics.median(cpus), out

    t_create, c_create, obj = fresh(lambda: so.create_splat_object(bpy.context, "Bench", received))
    remove(obj)
    t_obj, c_obj, obj = fresh(lambda: so.create_splat_object(bpy.context, "Bench", receive()))
    t_upd, c_upd, _ = timed(lambda: so.update_splat_object(obj, receive()), repeat)
    t_read, c_read, local = timed(lambda: so.read_splats_from_object(obj, apply_transform=False), repeat)
    print(f"decode + validate (protocol)        {1e3 * t_dec:8.1f} ms  / {1e3 * c_dec:7.1f} ms CPU")
    print(f"create_splat_object only            {1e3 * t_create:8.1f} ms  / {1e3 * c_create:7.1f} ms CPU")
    print(f"result message -> ready object      {1e3 * t_obj:8.1f} ms  / {1e3 * c_obj:7.1f} ms CPU"
          f"   (target <= 1000 ms)")
    print(f"update in place (live preview)      {1e3 * t_upd:8.1f} ms  / {1e3 * c_upd:7.1f} ms CPU")
    print(f"read_splats_from_object (local)     {1e3 * t_read:8.1f} ms  / {1e3 * c_read:7.1f} ms CPU")

    # 2. re-sort ---------------------------------------------------------------------------------
    sorter = sort.SplatSorter(local.means, threaded=False)
    rng = np.random.default_rng(1)
    views = []
    for _ in range(repeat):
        mv = np.eye(4)
        d = rng.normal(size=3)
        mv[2, :3] = d / np.linalg.norm(d)
        views.append(mv)
    it = iter(views * 2)
    t_sort, c_sort, _ = timed(lambda: sorter.sort_now(next(it)), repeat)
    axis = sort.sort_axis(views[0])
    t_keys, _, keys = timed(lambda: sort.depth_keys(sorter.means, axis, *sorter.sphere), repeat)
    t_arg, c_arg, _ = timed(lambda: np.argsort(keys, kind="stable"), repeat)
    print(f"\nre-sort (keys + radix argsort + f32) {1e3 * t_sort:7.1f} ms  / {1e3 * c_sort:7.1f} ms CPU"
          f"   (target <= 15 ms)")
    print(f"  of which 16-bit keys              {1e3 * t_keys:8.1f} ms")
    print(f"  of which argsort (u16, stable)    {1e3 * t_arg:8.1f} ms  / {1e3 * c_arg:7.1f} ms CPU")

    # 3. GPU upload ------------------------------------------------------------------------------
    ensure_gpu_module()
    print(f"\nGPU: {gpu.platform.renderer_get()} ({gpu.platform.backend_type_get()})")
    t_pack, c_pack, packed = timed(lambda: pack_splats(local), repeat)
    textures = None

    def upload():
        nonlocal textures
        textures = None                     # free the previous set first (as a re-upload does)
        textures = SplatTextures(packed)
    t_tex, c_tex, _ = timed(upload, repeat)
    order = sorter.latest()[0]
    order_tex = OrderTexture(len(order))
    t_ord, c_ord, _ = timed(lambda: order_tex.upload(order, 1), repeat)
    drawer = draw.SplatDrawer(threaded_sort=False)

    def object_to_gpu():
        drawer.meshes.clear()
        drawer.mesh_data(obj)
    t_all, c_all, _ = timed(object_to_gpu, repeat)
    print(f"pack (texture layouts)                  {1e3 * t_pack:8.1f} ms  / {1e3 * c_pack:7.1f} ms CPU")
    print(f"texture creation (upload)           {1e3 * t_tex:8.1f} ms  / {1e3 * c_tex:7.1f} ms CPU")
    print(f"object -> GPU (read+pack+upload)    {1e3 * t_all:8.1f} ms  / {1e3 * c_all:7.1f} ms CPU")
    print(f"order upload (per re-sort)          {1e3 * t_ord:8.1f} ms  / {1e3 * c_ord:7.1f} ms CPU")

    # 4. memory ------------------------------------------------------------------------------------
    floats_per_splat = 3 + 4 + 3 + 1 + 3 + 3 * ((degree + 1) ** 2 - 1)
    print(f"\nGPU data textures                   {textures.nbytes / 2**20:8.1f} MiB"
          f"  ({textures.nbytes / n:.0f} B/splat: centre+opacity f32, quaternion+scales f32, SH f16)")
    print(f"GPU order texture                   {order_tex.nbytes / 2**20:8.1f} MiB")
    print(f"mesh attributes (.blend data)       {floats_per_splat * 4 * n / 2**20:8.1f} MiB"
          f"  ({floats_per_splat} floats/splat)")

    # 5. one frame -------------------------------------------------------------------------------
    if args.draw:
        from splatbridge.shared.cameras import Camera, look_at
        from splatbridge.viewport import matrices
        camera = Camera(look_at([3.0, -2.0, 1.5], [0, 0, 0]), 500.0, 500.0, 320.0, 240.0, 640, 480)
        off = gpu.types.GPUOffScreen(640, 480, format="RGBA16F")

        def frame():
            with off.bind():
                fb = gpu.state.active_framebuffer_get()
                fb.clear(color=(0.0, 0.0, 0.0, 0.0), depth=1.0)
                drawer.draw_object(obj, matrices.gl_view_matrix(camera), matrices.gl_projection_matrix(camera),
                                   (640, 480), sync_sort=True)
                fb.read_color(0, 0, 1, 1, 4, 0, "FLOAT")      # forces the frame to finish
        t_draw, _, _ = timed(frame, 1)
        print(f"\none 640x480 frame ({gpu.platform.renderer_get()})  {1e3 * t_draw:8.1f} ms")


if __name__ == "__main__":
    main()
