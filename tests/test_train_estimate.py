"""The training-time estimate, the thread count by measurement and the per-device defaults:
the estimate announced before the first step against the real run, the model's arithmetic, the
thread choice, and that the CLI and the job show the estimate first."""
from __future__ import annotations

import os
import time

import pytest
import torch
from test_trainer import Recorder, render_dataset, sphere_rig, torus_cloud

from backend import train_estimate as te
from backend.trainer import train
from shared.jobkinds.train import DEVICE_DEFAULTS, for_device, schedule
from shared.jobkinds.train import SPEC as TRAIN


def test_device_defaults_fill_only_the_nulls():
    cpu = for_device(TRAIN.make(), "cpu")
    assert (cpu.steps, cpu.init_points) == (DEVICE_DEFAULTS["cpu"]["steps"], DEVICE_DEFAULTS["cpu"]["init_points"])
    gpu = for_device(TRAIN.make(), "cuda")
    assert (gpu.steps, gpu.init_points) == (7000, 50_000)
    assert for_device(TRAIN.make(), "mps").steps == DEVICE_DEFAULTS["cpu"]["steps"]   # rasterizes on the CPU
    mine = for_device(TRAIN.make(steps=123, init_points=45), "cuda")
    assert (mine.steps, mine.init_points) == (123, 45)
    assert DEVICE_DEFAULTS["cpu"]["steps"] < DEVICE_DEFAULTS["cuda"]["steps"]


def test_estimate_model_arithmetic():
    s = TRAIN.make(steps=1000, strategy="default")
    sch = schedule(s)
    est = te.estimate_seconds(s, sch, 64, 64, 40, 5, "cpu", step_seconds=0.01, n0=2000)
    scored = 5 + te.EVAL_TRAIN_VIEWS
    assert est == pytest.approx(1000 * 0.01 + scored * te.FORWARD_SHARE * 0.01)
    # MCMC grows 5 % per refinement inside the window: later steps cost more, exactly as scheduled
    m = TRAIN.make(steps=1000, strategy="mcmc", refine_start=100, refine_stop=500, refine_every=100)
    pieces = te.gaussian_counts(m, schedule(m), 1000)
    assert pieces == [(0, 1000), (200, 1050), (300, 1102), (400, 1157)]
    est_m = te.estimate_seconds(m, schedule(m), 64, 64, 40, 5, "cpu", 0.01, 1000)
    assert est_m > 1000 * 0.01
    capped = TRAIN.make(steps=1000, strategy="mcmc", refine_start=100, refine_stop=500, refine_every=100,
                        max_gaussians=1060)
    assert te.gaussian_counts(capped, schedule(capped), 1000) == [(0, 1000), (200, 1050), (300, 1060)]
    assert te.format_duration(42) == "about 42 s"
    assert te.format_duration(40 * 60) == "about 40 min"
    assert te.format_duration(3 * 3600) == "about 3.0 h"


def test_calibrate_keeps_the_faster_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        for slow_with in (1, 2):
            torch.set_num_threads(2)

            def probe(slow_with: int = slow_with) -> None:
                time.sleep(0.25 if torch.get_num_threads() == slow_with else 0.01)

            seconds, threads, measured = te.calibrate(probe, "cpu", repeats=3)
            assert set(measured) == {1, 2}
            assert threads == 3 - slow_with and torch.get_num_threads() == threads
            assert 0.01 <= seconds < 0.2          # the faster one's time (sleep overshoots under load)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")           # the user's choice is kept, not measured
        torch.set_num_threads(2)
        _, threads, measured = te.calibrate(lambda: None, "cpu")
        assert threads == 2 and set(measured) == {2}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene():
    cloud = torus_cloud(400, seed=2)
    viewmats, Ks = sphere_rig(16, 48)
    return render_dataset(cloud, viewmats, Ks, 48), viewmats, Ks


def test_estimate_before_the_first_step_is_close_to_the_real_run(scene):
    """Announced in the first progress message (a stage, before any step) and within a factor of
    1.6 of the loop's real time (the bench holds the README example to 30 %)."""
    images, viewmats, Ks = scene
    ctx = Recorder()
    for strategy in ("default", "mcmc"):
        ctx.reports.clear()
        res = train(images, viewmats, Ks, settings=TRAIN.make(steps=240, init_points=1500, strategy=strategy,
                                                                  sh_degree=1, report_interval_s=0.0), ctx=ctx)
        first = ctx.reports[0]
        assert first[0] == 0 and first[1] == 0 and "stage" in first[2]
        assert first[2]["estimate_s"] == res.meta["estimate_s"]
        assert first[2]["stage"].startswith("about ") and "on this CPU" in first[2]["stage"]
        assert all(r[1] == 240 for r in ctx.reports[1:])
        ratio = res.meta["loop_s"] / res.meta["estimate_s"]
        assert 1 / 1.6 < ratio < 1.6, (strategy, res.meta["loop_s"], res.meta["estimate_s"])
        assert res.meta["threads"] == 1                           # OMP_NUM_THREADS=1 in the tests
        assert torch.get_num_threads() == int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))


def test_cli_prints_the_estimate_before_training(tmp_path, scene, capsys):
    import json

    import numpy as np
    from PIL import Image

    from backend.job_cli import main as job_cli
    from shared.cameras import BLENDER_TO_OPENCV
    images, viewmats, Ks = scene
    frames = []
    (tmp_path / "images").mkdir()
    for i, (img, vm, K) in enumerate(zip(images, viewmats, Ks, strict=True)):
        Image.fromarray(img).save(tmp_path / "images" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png", "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
                       "transform_matrix": (np.linalg.inv(vm.astype(np.float64)) @ BLENDER_TO_OPENCV).tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))
    assert job_cli("train", [str(tmp_path), "--out", str(tmp_path / "s.ply"), "--steps", "30",
                             "--init-points", "300", "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    at = next(i for i, line in enumerate(err) if line.startswith("about "))
    assert "30 steps, 300 initial Gaussians, 48x48 px" in err[at]
    assert all(not line.startswith("step ") for line in err[:at])
    assert any(line.startswith("step ") for line in err[at:])


def test_training_leaves_the_callers_points_alone(scene):
    """The initial points are copied: training (which optimises positions in place) once wrote
    into the caller's array, so a second run from "the same" points started from the first's result."""
    import numpy as np
    images, viewmats, Ks = scene
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (300, 3)).astype(np.float32)
    before = pts.copy()
    train(images, viewmats, Ks, pts, settings=TRAIN.make(steps=20, sh_degree=0))
    assert np.array_equal(pts, before)
