"""The README's CLI example as a user runs it, timed: ``python -m backend train DATASET --out
scene.ply`` with every setting at its default, on a 64 px transforms.json dataset without initial
points (the ``alpha`` scene of ``bench/quality_scenes.py``: 40 views, rendered once with bpy).

    python bench/cli_time.py               # prints the estimate, the real time and their ratio

Targets (issue 13): the run finishes in under 5 minutes on the CPU, and the estimate that the CLI
prints before the first step is within 30 % of the real time from that line to the end of the run
(training, evaluation, writing the file). The first run after a checkout also compiles the fast
rasterizer's kernels (before the estimate; Numba caches them), so run it twice to see both.
Exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
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
        for line in proc.stderr:
            m = ESTIMATE.search(line)
            if m and estimate is None:
                estimate, t_est = float(m.group(1)), time.perf_counter()
                print(line.rstrip(), flush=True)
            if not line.startswith("step "):
                last = line.rstrip()
        rc = proc.wait()
        t_end = time.perf_counter()
    print(last)
    if rc != 0 or estimate is None:
        print(f"FAILED: exit status {rc}, estimate line {'found' if estimate else 'missing'}")
        return 1
    real = t_end - t_est
    total = t_end - t0
    ratio = estimate / real
    ok_time, ok_est = total < args.limit_s, abs(ratio - 1.0) <= 0.3
    print(f"whole command {total:.1f} s (target < {args.limit_s:.0f} s: {'ok' if ok_time else 'MISSED'}); "
          f"from the estimate to the end {real:.1f} s, estimate {estimate:.0f} s, ratio {ratio:.2f} "
          f"(target 0.7..1.3: {'ok' if ok_est else 'MISSED'})")
    return 0 if ok_time and ok_est else 1


if __name__ == "__main__":
    raise SystemExit(main())
