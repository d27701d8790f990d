"""Training over a real socket: ``python -m backend serve`` (CPU) running H3's ``train`` job.

The scene: a known cloud of Gaussians rendered with ``backend.render.rasterize`` from 24 orbit
views at 64x64 (RGBA, straight alpha); every 8th view is held out by the trainer. The client sends
the views plus a jittered copy of the cloud's centres as initial points (as the add-on sends
surface samples), watches progress, cancels a second job mid-way and fetches the first result
again from a new client and from a restarted server.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from test_server import ServerProcess, drain_until, run_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("backend.trainer") is None,
                       reason="backend/trainer.py (H3) is not there yet"),
]

VIEWS, SIZE = 24, 64
TRAIN_STEPS = 300
PSNR_MIN_DB = 28.0
TRAIN_TIME_MAX_S = 120.0
CANCEL_MAX_S = 1.0


def render_views(splats, viewmats: np.ndarray, Ks: np.ndarray, size: int) -> np.ndarray:
    """u8[C,H,W,4] straight-alpha RGBA renders of ``splats`` (reference rasterizer, CPU)."""
    import torch
    from backend.params import activated, sh_coeffs, splats_to_tensors
    from backend.render import rasterize
    p = splats_to_tensors(splats)
    means, quats, scales, opacities = activated(p)
    with torch.no_grad():
        rgb, alpha, _ = rasterize(means, quats, scales, opacities, sh_coeffs(p),
                                  torch.from_numpy(viewmats), torch.from_numpy(Ks), size, size,
                                  sh_degree=splats.sh_degree)
    a = alpha.numpy()
    straight = np.clip(rgb.numpy() / np.maximum(a, 1e-6), 0.0, 1.0)   # renders are premultiplied
    return (np.concatenate([straight, a], -1) * 255 + 0.5).astype(np.uint8)


def gaussian_cloud_scene(views: int = VIEWS, size: int = SIZE, n: int = 60, seed: int = 0):
    """(ground-truth Splats, images u8[C,H,W,4], viewmats f32[C,4,4], Ks f32[C,3,3])."""
    import torch
    torch.set_num_threads(2)
    from backend.camera_sampling import intrinsics, orbit_camera
    from shared.splats import Splats
    gt = Splats.random(n, sh_degree=0, seed=seed, extent=0.4, scale=0.1)
    gt.opacities[:] = np.abs(gt.opacities) + 1.0          # mostly opaque blobs
    azimuths = np.linspace(0.0, 360.0, views, endpoint=False)
    elevations = np.resize([20.0, -10.0, 40.0], views)
    viewmats = np.stack([orbit_camera(e, a, 2.5) for e, a in zip(elevations, azimuths)])
    Ks = np.stack([intrinsics(45.0, size, size)] * views)
    viewmats, Ks = viewmats.astype(np.float32), Ks.astype(np.float32)
    return gt, render_views(gt, viewmats, Ks, size), viewmats, Ks


@pytest.fixture(scope="module")
def scene():
    return gaussian_cloud_scene()


@pytest.fixture(scope="module")
def train_payload(scene):
    gt, images, viewmats, Ks = scene
    rng = np.random.default_rng(1)
    points = (gt.means + rng.normal(0.0, 0.02, gt.means.shape)).astype(np.float32)
    colors = (gt.base_colors() * 255 + 0.5).astype(np.uint8)
    return {"images": images, "viewmats": viewmats, "Ks": Ks, "points": points, "colors": colors}


def _params(steps: int, preview_every: int = 0) -> dict:
    # As many Gaussians as the scene has: the initial points are (jittered) ground truth.
    return {"steps": steps, "strategy": "default", "sh_degree": 0, "max_gaussians": 60,
            "holdout_every": 8, "seed": 0, "preview_every": preview_every}


def test_train_cancel_fetch_and_restart_over_the_socket(tmp_path, scene, train_payload,
                                                        artifacts):
    store = tmp_path / "store"
    srv = ServerProcess(store, plugins=[], env={"OMP_NUM_THREADS": "2"}).start()
    try:
        with srv.client() as c:
            # 1. A training job: progress in order, a good held-out PSNR, in time.
            t0 = time.monotonic()
            jid = c.submit("train", _params(TRAIN_STEPS, preview_every=TRAIN_STEPS // 3),
                           train_payload)
            heartbeat_s = []
            msgs = []
            give_up = 3 * TRAIN_TIME_MAX_S
            while not c.jobs[jid].finished:
                msgs += drain_until(c, lambda: c.jobs[jid].finished or c.jobs[jid].step > 0,
                                    give_up)
                if c.jobs[jid].finished or time.monotonic() - t0 > give_up:
                    break
                t1 = time.monotonic()              # the server answers while it trains
                c.status()
                msgs += drain_until(c, lambda: c.pending == 0, 10)
                heartbeat_s.append(time.monotonic() - t1)
                time.sleep(0.5)
            train_s = time.monotonic() - t0
            job = c.jobs[jid]
            assert job.state == "done", (job.state, job.error, job.step, job.metrics)
            steps = [s for s, _, _ in job.progress]
            assert steps == sorted(steps) and len(set(steps)) == len(steps) and \
                steps[-1] == TRAIN_STEPS, steps
            assert any(m.type == "progress" and "preview" in m.fields for m in msgs)
            eval_psnr = job.result_metrics["eval_psnr"]
            print(f"\ntrain over socket: {TRAIN_STEPS} steps in {train_s:.1f} s, held-out PSNR "
                  f"{eval_psnr:.2f} dB, {len(job.result_splats())} Gaussians, heartbeat "
                  f"round trips max {max(heartbeat_s, default=0) * 1000:.0f} ms")
            _save_comparison(artifacts, scene, job.result_splats())
            assert eval_psnr >= PSNR_MIN_DB
            assert train_s < TRAIN_TIME_MAX_S
            assert max(heartbeat_s, default=0.0) < 0.5, heartbeat_s
            first = job.result_splats()

            # 2. A second job cancelled mid-way stops within a second with usable splats.
            jid2 = c.submit("train", _params(100_000), train_payload)
            assert c.wait_for(lambda: c.jobs[jid2].step >= 10, 120), c.jobs[jid2]
            t1 = time.monotonic()
            c.cancel(jid2)
            job2 = run_until(c, jid2, 30)
            cancel_s = time.monotonic() - t1
            print(f"cancel latency {cancel_s * 1000:.0f} ms (at step {job2.meta.get('steps_done')})")
            assert job2.state == "cancelled" and job2.meta["cancelled"] is True
            assert cancel_s < CANCEL_MAX_S
            cancelled = job2.result_splats()               # validated: finite, right shapes
            assert len(cancelled) > 0 and 10 <= job2.meta["steps_done"] < 100_000
            _, images, viewmats, Ks = scene
            assert render_views(cancelled, viewmats[:1], Ks[:1], SIZE)[..., 3].max() > 0

        # 3. The submitter is gone; a new client fetches the result from the store.
        with srv.client() as c2:
            c2.fetch(jid)
            assert c2.wait_for(lambda: c2.jobs[jid].result is not None, 20)
            assert c2.jobs[jid].result_splats().allclose(first, atol=0)
            assert c2.jobs[jid].result_metrics["eval_psnr"] == pytest.approx(eval_psnr)
        assert srv.stop() == 0

        # 4. And so does a client of a restarted server on the same store.
        srv = ServerProcess(store, port=srv.port, plugins=[]).start()
        with srv.client() as c3:
            c3.fetch(jid)
            c3.fetch(jid2)
            assert c3.wait_for(lambda: c3.jobs[jid].result is not None
                               and c3.jobs[jid2].result is not None, 20)
            assert c3.jobs[jid].result_splats().allclose(first, atol=0)
            assert c3.jobs[jid2].state == "cancelled"
            assert c3.jobs[jid2].result_splats().allclose(cancelled, atol=0)
    finally:
        srv.stop()


def test_bad_train_input_is_a_job_error(tmp_path, train_payload):
    srv = ServerProcess(tmp_path / "store", plugins=[]).start()
    try:
        with srv.client() as c:
            bad = dict(train_payload, Ks=train_payload["Ks"][:3])
            jid = c.submit("train", _params(10), bad)
            job = run_until(c, jid, 60)
            assert job.state == "failed" and job.error[0] == "bad_input"
            assert "Ks" in job.error[1]
            typo = c.submit("train", {"stepz": 10}, train_payload)
            job = run_until(c, typo, 30)
            assert job.error[0] == "bad_params" and "stepz" in job.error[1]
    finally:
        srv.stop()


def _save_comparison(artifacts, scene, result) -> None:
    """Held-out views (every 8th): ground truth on top, the trained splats below."""
    from PIL import Image
    _, images, viewmats, Ks = scene
    held = list(range(0, VIEWS, 8))
    pred = render_views(result, viewmats[held], Ks[held], SIZE)

    def over_white(x):
        a = x[..., 3:4].astype(np.float32) / 255
        return (x[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    top = np.concatenate([over_white(images[i]) for i in held], 1)
    bottom = np.concatenate([over_white(p) for p in pred], 1)
    Image.fromarray(np.concatenate([top, bottom], 0)).resize(
        (top.shape[1] * 3, top.shape[0] * 6), Image.NEAREST).save(
        artifacts / "server_training_heldout.png")
