"""The README's CLI example as a user runs it, timed: ``python -m backend train DATASET --out
scene.ply`` with every setting at its default, on a 64 px transforms.json dataset without initial
points (the ``alpha`` scene of ``bench/quality_scenes.py``: 40 views, rendered once with bpy).

    python bench/cli_time.py               # prints the estimate, the real time and their ratio

Targets (issue 13): the run finishes in under 5 minutes on the CPU, and the estimate that the CLI
prints before the first step is within 30 % of the real time from that line to the end of the run
(training, evaluation, writing the file); it also prints the ETA shown during training (elapsed + ETA
against the real time) at each quarter of the run. The first run after a checkout also compiles the fast
rasterizer's kernels (before the estimate; Numba caches them), so run it twice to see both.
Exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import load_scene  # noqa: E402
from bench.quality_scenes import write_transforms  # noqa: E402

ESTIMATE = re.compile(r"\(estimate (\d+) s\)")
PROGRESS = re.compile(r"^step (\d+)/(\d+) .*eta (\d+) s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit-s", type=float, default=300.0)
    p.add_argument("extra", nargs="*", help="extra CLI arguments (after --)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_transforms(load_scene("alpha", args.size, 40), Path(tmp) / "dataset").parent
        cmd = [sys.executable, "-m", "backend", "train", str(data), "--out", str(Path(tmp) / "scene.ply"),
               *args.extra]
        print("$ " + " ".join(cmd[1:]), flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True)
        estimate = t_est = None
        last = ""
        etas: list[tuple[float, float, float]] = []      # (fraction done, seconds since the estimate, ETA)
        for line in proc.stderr:
            m = ESTIMATE.search(line)
            if m and estimate is None:
                estimate, t_est = float(m.group(1)), time.perf_counter()
                print(line.rstrip(), flush=True)
            p = PROGRESS.match(line)
            if p and t_est is not None:
                etas.append((int(p.group(1)) / int(p.group(2)), time.perf_counter() - t_est, float(p.group(3))))
            if not line.startswith("step "):
                last = line.rstrip()
        rc = proc.wait()
        t_end = time.perf_counter()
        meta_path = Path(tmp) / "scene.ply.json"
        meta = json.loads(meta_path.read_text())["meta"] if meta_path.exists() else {}
    print(last)
    if rc != 0 or estimate is None:
        print(f"FAILED: exit status {rc}, estimate line {'found' if estimate else 'missing'}")
        return 1
    real = t_end - t_est
    total = t_end - t0
    # the ETA shown during training: elapsed + ETA against the real time, at each quarter of the run
    for q in (0.25, 0.5, 0.75):
        at = next((e for e in etas if e[0] >= q), None)
        if at:
            print(f"  at {at[0]:4.0%} of the steps: elapsed {at[1]:.0f} s + ETA {at[2]:.0f} s = {at[1] + at[2]:.0f} s "
                  f"(ratio to the real time {(at[1] + at[2]) / real:.2f})")
    if meta:
        print(f"  the trainer's own figures: loop + evaluation {meta['loop_s']:.1f} s, estimate {meta['estimate_s']:.1f} s "
              f"(ratio {meta['estimate_s'] / meta['loop_s']:.2f}); in CPU time {meta['loop_cpu_s']:.1f} s, estimate "
              f"{meta['estimate_cpu_s']:.1f} s (ratio {meta['estimate_cpu_s'] / meta['loop_cpu_s']:.2f}); "
              f"{meta['threads']} thread(s); calibration {meta.get('estimate_model')}")
    ratio = estimate / real
    ok_time, ok_est = total < args.limit_s, abs(ratio - 1.0) <= 0.3
    print(f"whole command {total:.1f} s (target < {args.limit_s:.0f} s: {'ok' if ok_time else 'MISSED'}); "
          f"from the estimate to the end {real:.1f} s, estimate {estimate:.0f} s, ratio {ratio:.2f} "
          f"(target 0.7..1.3: {'ok' if ok_est else 'MISSED'})")
    return 0 if ok_time and ok_est else 1


if __name__ == "__main__":
    raise SystemExit(main())
