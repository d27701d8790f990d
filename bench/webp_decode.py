"""WebP decoding for SOG inside Blender: Blender's image loader vs Pillow (a bundled wheel's choice).

    python bench/webp_decode.py [--n 1000000] [--repeat 3]

Writes a SOG of N random splats (SH degree 3) with Pillow (lossless), then decodes each of its
images with both and prints the median times, the ratio, and whether both give the same bytes
(fully transparent pixels included). Run in the repository's venv (bpy + pillow).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import timeit
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402,F401

from shared.formats.sog import _pil_decode, encode_sog  # noqa: E402
from shared.splats import Splats  # noqa: E402

# blender_addon.webp_codec imports ".shared": give it the repository's shared package
pkg = types.ModuleType("splatbridge_bench")
pkg.__path__ = [str(ROOT / "blender_addon")]
sys.modules["splatbridge_bench"] = pkg
sys.modules["splatbridge_bench.shared"] = sys.modules["shared"]
from splatbridge_bench.webp_codec import decode_webp  # noqa: E402


def median(fn, repeat: int) -> float:
    """Median seconds of one call, after a warm-up call."""
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeat))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    s = Splats(rng.uniform(-5, 5, (n, 3)), rng.standard_normal((n, 4)), rng.uniform(-7, 0, (n, 3)),
               rng.uniform(-8, 8, n), rng.uniform(-1.5, 1.5, (n, 3)), np.zeros((n, 0, 3)))
    files = encode_sog(s)
    total_b = total_p = 0.0
    print(f"{'image':22s} {'bytes':>9s} {'pixels':>9s} {'Blender s':>10s} {'Pillow s':>9s} {'ratio':>6s} same")
    for name, data in files.items():
        if not name.endswith(".webp"):
            continue
        a, b = decode_webp(data), _pil_decode(data)
        tb, tp = median(lambda: decode_webp(data), args.repeat), median(lambda: _pil_decode(data), args.repeat)
        total_b, total_p = total_b + tb, total_p + tp
        print(f"{name:22s} {len(data):9d} {a.shape[0] * a.shape[1]:9d} {tb:10.3f} {tp:9.3f} {tb / tp:6.2f} "
              f"{np.array_equal(a, b)}")
    print(f"{'all images':22s} {'':9s} {'':9s} {total_b:10.3f} {total_p:9.3f} {total_b / total_p:6.2f}")


if __name__ == "__main__":
    main()
