"""Costs that issue 10 found growing: the store's retention pass and the trainer's nearest-neighbour init.

    python bench/reliability.py [--records 1000 5000 20000] [--points 25000 50000 100000]

Part 1: a job store with N finished records (written as a long history leaves them, a few with
data), then one more finished job and the retention pass the runner makes after each job
(``JobStore.prune``), timed; the reference in the same run is the full scan the pass used to make
(every record read, the whole store walked: ``list_records`` + ``folder_bytes``). Opening the store
(the one scan that builds the index) is timed too.

Part 2: the RMS distance to the 3 nearest neighbours for P random points, the KD-tree
(``knn_mean_distance``) against the brute-force ``torch.cdist`` + ``topk`` it replaced (run only
up to 25,000 points: it is O(P^2)). One torch thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.store import JobStore, Retention, folder_bytes  # noqa: E402
from shared.splats import Splats  # noqa: E402

DAY = 86400.0


def store_with_history(root: Path, n: int, now: float) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        d = root / f"old{i:06d}"
        d.mkdir()
        (d / "job.json").write_text(json.dumps({
            "job_id": d.name, "kind": "train", "params": {"steps": 100}, "state": "done", "step": 100,
            "total": 100, "created": now - 10 * DAY + i, "started": now - 10 * DAY + i,
            "finished": now - 5 * DAY + i * 1e-3, "metrics": {"loss": 0.1}, "error": None,
            "pruned": {"time": now - DAY, "reason": "bench"}}))


def bench_store(n: int) -> None:
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jobs"
        store_with_history(root, n, now)
        t0 = time.perf_counter()
        store = JobStore(root)
        store.recover()
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.list_records()
        folder_bytes(root)
        t_ref = time.perf_counter() - t0
        store.create("new", "train", {})
        store.save_result("new", Splats.random(1000, seed=1), {}, {"cancelled": False})
        store.update("new", state="done", finished=now)
        retention = Retention(max_age_days=30, max_bytes=20 * 2 ** 30, compact_after_days=0)
        t0 = time.perf_counter()
        store.prune(retention, now=now)
        t_prune = time.perf_counter() - t0
        print(f"{n:7d} records: retention pass after a job {t_prune * 1e3:8.2f} ms; old full scan "
              f"{t_ref * 1e3:8.1f} ms (ratio {t_ref / max(t_prune, 1e-9):7.0f}x); opening the store "
              f"(index scan + recovery, once at start) {t_open * 1e3:7.1f} ms")


def bench_knn(p: int, reference: bool) -> None:
    import torch
    from backend.params import knn_mean_distance
    torch.set_num_threads(1)
    pts = torch.from_numpy(np.random.default_rng(0).normal(size=(p, 3)).astype(np.float32))
    t0 = time.perf_counter()
    got = knn_mean_distance(pts)
    t_tree = time.perf_counter() - t0
    line = f"{p:7d} points: KD-tree {t_tree:6.2f} s"
    if reference:
        t0 = time.perf_counter()
        rows = max(1, (1 << 24) // p)
        out = []
        for s in range(0, p, rows):
            d2 = torch.cdist(pts[s:s + rows], pts).square()
            out.append(torch.topk(d2, 4, largest=False).values[:, 1:].mean(-1))
        want = torch.cat(out).sqrt()
        t_ref = time.perf_counter() - t0
        err = float((got - want).abs().max() / want.abs().max())
        line += f"; brute force {t_ref:6.2f} s (ratio {t_ref / t_tree:5.1f}x, max rel. diff {err:.1e})"
    print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, nargs="*", default=[1000, 5000, 20000])
    p.add_argument("--points", type=int, nargs="*", default=[25000, 50000, 100000])
    args = p.parse_args()
    for n in args.records:
        bench_store(n)
    for n in args.points:
        bench_knn(n, reference=n <= 25000)


if __name__ == "__main__":
    main()
