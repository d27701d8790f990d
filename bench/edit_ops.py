"""Editing benchmark: every selection and operation of shared.selection / shared.edit_ops /
shared.color_grade at 1M splats, and the segment job.

    python bench/edit_ops.py [--n 1000000] [--degree 3] [--repeat 3]
                             [--segment-n 1000000] [--segment-views 24] [--segment-res 64]
                             [--segment-budget 120] [--device cpu]

The scene: ``--n`` splats on the surfaces of 12 spheres (radius 0.1-0.4 m, 1-4 mm splats) plus 0.5 %
scattered floaters, SH degree ``--degree``. Each line is the median of ``--repeat`` runs and its ratio to
``Splats.copy()`` of the same splats in the same run (one pass over the memory: the cheapest thing an
operation could do; target under 100 ms each on a 2-core CPU).

Segment: the job (``backend.segment.run_segment_job``) on ``--segment-n`` such splats with 3 labels in
``--segment-views`` views of ``--segment-res`` px, on ``--segment-backend`` (auto: gsplat on CUDA, the
fast CPU rasterizer elsewhere; "reference" for the ratio). It stops after ``--segment-budget`` seconds (a
cancel, as a user would) and prints the time per view and the time for all views (measured when it
finished, else extrapolated from the views done, and marked so).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

# One BLAS/OpenMP thread unless told otherwise (set before numpy loads OpenBLAS): on a machine shared
# with other work, multithreaded OpenBLAS spins and a [N,3] x [3,3] product takes seconds, not ms.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.io import median_time  # noqa: E402  (one warm-up run, then the median)
from shared.color_grade import Grade, grade  # noqa: E402
from shared.edit_ops import apply_transform, delete, duplicate, merge, separate, split_by_labels  # noqa: E402
from shared.rotations import quat_to_matrix  # noqa: E402
from shared.selection import (by_color_of, by_opacity, by_size, floaters, grow, inside_box, inside_mesh,  # noqa: E402
                              inside_sphere, invert, shrink)
from shared.sh import REST_COUNT  # noqa: E402
from shared.splats import Splats  # noqa: E402


def scene(n: int, degree: int, seed: int = 0) -> Splats:
    rng = np.random.default_rng(seed)
    k = 12
    centres = rng.uniform(-1, 1, (k, 3))
    radii = rng.uniform(0.1, 0.4, k)
    nf = n // 200
    which = rng.integers(0, k, n - nf)
    d = rng.normal(size=(n - nf, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = np.concatenate([centres[which] + d * radii[which, None], rng.uniform(-1.5, 1.5, (nf, 3))])
    return Splats(means.astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),
                  np.log(rng.uniform(0.001, 0.004, (n, 3))).astype(np.float32),
                  rng.normal(2.0, 1.5, n).astype(np.float32), rng.normal(0, 0.8, (n, 3)).astype(np.float32),
                  rng.normal(0, 0.1, (n, REST_COUNT[degree], 3)).astype(np.float32))


def uv_sphere(nu: int = 32, nv: int = 16) -> tuple[np.ndarray, np.ndarray]:
    from edit_scenes import uv_sphere_mesh
    return uv_sphere_mesh(nu, nv)


def cube() -> tuple[np.ndarray, np.ndarray]:
    from edit_scenes import cube_mesh
    return cube_mesh()


def similarity(scale: float = 1.0, translate=(0.0, 0.0, 0.0), angle: float = 0.6) -> np.ndarray:
    axis = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])) * scale
    m[:3, 3] = translate
    return m


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) of ``fn()``: on a machine shared with
    other work the CPU time is the steadier figure."""
    cpu: list[float] = []

    def run() -> None:
        t = time.process_time()
        fn()
        cpu.append(time.process_time() - t)

    wall = median_time(run, repeat)
    return wall, sorted(cpu[1:])[len(cpu[1:]) // 2]


def bench_ops(n: int, degree: int, repeat: int) -> None:
    s = scene(n, degree)
    print(f"{n} splats, SH degree {degree}; median of {repeat} runs (numpy {np.__version__}, "
          f"BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}); x = ratio to Splats.copy() in CPU time")
    base_wall, base = timed(s.copy, repeat)
    sel = inside_sphere(s, similarity(0.8))
    half = np.zeros(n, bool)
    half[: n // 2] = True
    a, b = s.subset(half), s.subset(~half)
    mb = similarity(1.2, (0.5, 0.0, 0.2), angle=1.1)
    sphere_v, sphere_t = uv_sphere()
    cube_v, cube_t = cube()
    cases: list[tuple[str, Callable[[], object]]] = [
        ("Splats.copy (reference)", s.copy),
        ("select inside mesh: cube (12 tris)", lambda: inside_mesh(s, cube_v, cube_t, similarity(0.9))),
        ("select inside mesh: UV sphere (960 tris)", lambda: inside_mesh(s, sphere_v, sphere_t, similarity(0.9))),
        ("select inside sphere volume", lambda: inside_sphere(s, similarity(0.8))),
        ("select inside box volume", lambda: inside_box(s, similarity(0.8))),
        ("select by opacity", lambda: by_opacity(s, 0.5)),
        ("select by size", lambda: by_size(s, 0.003)),
        ("select by colour of a picked splat", lambda: by_color_of(s, 12345 % n, 0.1)),
        ("select floaters (strength 0.5)", lambda: floaters(s, 0.5)),
        ("invert", lambda: invert(sel)),
        ("grow", lambda: grow(s, sel, 0.01)),
        ("shrink", lambda: shrink(s, sel, 0.01)),
        ("delete", lambda: delete(s, sel)),
        ("separate", lambda: separate(s, sel)),
        ("duplicate", lambda: duplicate(s, sel)),
        ("merge 2 x N/2 (one moved: SH rotated)", lambda: merge([(a, np.eye(4)), (b, mb)])),
        ("apply transform (SH rotated)", lambda: apply_transform(s, mb)),
        ("colour grade (all five)", lambda: grade(s, Grade(0.5, 1.2, 0.8, 30.0, 0.3))),
        ("split by labels (4 labels)", lambda: split_by_labels(s, (np.arange(n) % 4).astype(np.int32))),
    ]
    print(f"  {'':44s} {'wall':>8s}      {'CPU':>8s}")
    for name, fn in cases:
        wall, t = (base_wall, base) if name.startswith("Splats.copy") else timed(fn, repeat)
        flag = "" if t < 0.1 else "   > 100 ms"
        print(f"  {name:44s} {wall * 1000:8.1f} ms   {t * 1000:8.1f} ms   x{t / base:6.1f}{flag}")


def bench_segment(n: int, views: int, res: int, budget: float, device: str, backend: str = "auto") -> None:
    import torch
    from backend.render import resolve_backend
    from backend.segment import run_segment_job
    from edit_scenes import orbit_rig

    s = scene(n, 0, seed=1)
    viewmats, Ks = orbit_rig(views, res, dist=4.0)
    labels = np.zeros((views, res, res), np.uint8)
    labels[:, : res // 2, : res // 2] = 1
    labels[:, res // 2:, : res // 2] = 2
    labels[:, res // 4: 3 * res // 4, res // 2:] = 3

    class Ctx:
        def __init__(self) -> None:
            self.device, self.job_dir, self.t0, self.views = device, Path("."), time.perf_counter(), 0

        def report(self, step, total, metrics, preview=None):
            self.views = step if total else self.views

        def should_stop(self):
            return time.perf_counter() - self.t0 > budget

    ctx = Ctx()
    t = time.perf_counter()
    res_ = run_segment_job({"backend": backend}, {"splats": s.to_arrays(), "labels": labels, "viewmats": viewmats, "Ks": Ks}, ctx)
    total = time.perf_counter() - t
    done = res_.meta["views_done"]
    per_view = total / max(done, 1)
    how = "measured" if done == views else f"EXTRAPOLATED from {done} views (budget {budget:.0f} s)"
    print(f"segment job: {n} splats, {views} views of {res}x{res} px, 3 labels, device {device} "
          f"(torch threads {torch.get_num_threads()}, rasterizer {resolve_backend(device, backend)})")
    print(f"  per view {per_view:8.2f} s; all {views} views {per_view * views:8.1f} s ({how})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--degree", type=int, default=3, choices=(0, 1, 2, 3))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--segment-n", type=int, default=1_000_000)
    ap.add_argument("--segment-views", type=int, default=24)
    ap.add_argument("--segment-res", type=int, default=64)
    ap.add_argument("--segment-budget", type=float, default=120.0)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--segment-backend", default="auto", choices=("auto", "gsplat", "fast", "reference"))
    ap.add_argument("--skip-segment", action="store_true")
    ap.add_argument("--skip-ops", action="store_true")
    a = ap.parse_args(argv)
    if not a.skip_ops:
        bench_ops(a.n, a.degree, a.repeat)
    if not a.skip_segment:
        bench_segment(a.segment_n, a.segment_views, a.segment_res, a.segment_budget, a.device, a.segment_backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
