"""Seconds per stage of the reconstruct job: 50 frames at 640x360 of the bpy test scene.

    .venv/bin/python bench/reconstruct.py [--frames 50] [--width 640] [--height 360] [--source video|photos]
                                          [--steps 0] [--quality balanced] [--cache DIR]

Renders the scene of ``tests/reconstruct_scene.py`` (Cycles, CPU; cached in ``--cache`` between
runs), writes it as an MP4 (PyAV) or JPEG photos, runs the job (``steps`` 0: the solve only) and
prints the seconds of each stage (inputs, features, matching, mapping, world + undistortion,
training) with the pose errors against the known cameras, each also as a ratio to a fixed CPU
workload timed in the same run (the machine is shared: compare ratios). On a GPU machine the
COLMAP stages still run on the CPU unless the CUDA build of pycolmap is installed; training uses
CUDA when torch sees it. ``--mapper global|incremental`` compares the mappers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from backend.job_api import NullContext  # noqa: E402
from backend.reconstruct import run_reconstruct_job  # noqa: E402


def cpu_reference_s() -> float:
    """Seconds of a fixed CPU workload (float32 matmuls, 2 threads at most via numpy's BLAS), run
    before and after the job: stage times divided by it compare across loads and machines."""
    a = np.random.default_rng(0).random((384, 384), np.float32)
    t = time.perf_counter()
    for _ in range(60):
        a = np.tanh(a @ a.T * 1e-3)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--source", choices=("video", "photos"), default="video")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--quality", default="balanced")
    p.add_argument("--mapper", default="auto")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "splatbridge-bench-reconstruct"))
    args = p.parse_args()

    import pickle
    from reconstruct_scene import render_scene, write_photos, write_video
    from test_reconstruct import pose_errors

    cache = Path(args.cache) / f"{args.frames}_{args.width}x{args.height}"
    cache.mkdir(parents=True, exist_ok=True)
    pkl = cache / "scene.pkl"
    t0 = time.perf_counter()
    if pkl.is_file():
        scene = pickle.loads(pkl.read_bytes())
        render_s = None
    else:
        scene = render_scene(args.frames, args.width, args.height)
        pkl.write_bytes(pickle.dumps(scene))
        render_s = time.perf_counter() - t0
    if args.source == "video":
        src = write_video(scene.images, cache / "orbit.mp4")
    else:
        write_photos(scene, cache / "photos")
        src = cache / "photos"

    class Ctx(NullContext):
        def report(self, step, total, metrics, preview=None):
            pass

    ref_before = cpu_reference_s()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(job_dir=Path(tmp))
        t = time.perf_counter()
        res = run_reconstruct_job({"source": str(src), "frames": args.frames, "steps": args.steps,
                                   "max_image_size": max(args.width, args.height), "quality": args.quality,
                                   "mapper": args.mapper}, {}, ctx)
        total = time.perf_counter() - t
    ref = 0.5 * (ref_before + cpu_reference_s())
    info = res.meta["reconstruct"]
    if args.source == "video":
        key = lambda f: f["frame_index"]  # noqa: E731
    else:
        key = lambda f: int(Path(f["file_path"]).stem.split("_")[1])  # noqa: E731
    rot, centre, frac, _ = pose_errors(info["cameras"], scene.cameras, key)
    print(f"reconstruct bench: {args.frames} {args.source} frames at {args.width}x{args.height}, quality "
          f"{args.quality}, mapper used {info['mapper']}, matcher {info['matcher']} "
          f"({info['loop_pairs']} loop pairs)" + (f"; rendering took {render_s:.1f} s" if render_s else ""))
    print(f"  (CPU reference workload: {ref:.3f} s; the ratio column is seconds / reference)")
    for stage, sec in info["stage_seconds"].items():
        print(f"  {stage:<20s} {sec:7.2f} s  {sec / ref:7.1f} x ref")
    print(f"  {'total':<20s} {total:7.2f} s  {total / ref:7.1f} x ref")
    print(f"registered {info['registered']}/{info['num_images']}, median rotation error {rot:.3f} deg, "
          f"median centre error {100 * centre / scene.scene_size:.3f} % of the scene"
          + (f", eval_psnr {res.metrics['eval_psnr']:.2f} dB" if "eval_psnr" in res.metrics else ""))
    print(json.dumps({"stage_seconds": info["stage_seconds"], "total_s": total, "cpu_reference_s": ref}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
