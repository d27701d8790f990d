"""Training over a real socket: ``python -m backend serve`` (CPU) running H3's ``train`` job.

The scene is H3's (tests/test_trainer.py): a known torus-shaped Gaussian cloud rendered with the
reference rasterizer from 24 views at 64x64 (RGBA, straight alpha), with jittered centres as
initial points; every 8th view is held out by the trainer. The client trains over the socket,
watches progress, cancels a second job mid-way and fetches the first result again from a new
client and from a restarted server.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from test_server import ServerProcess, drain_until, run_until

pytestmark = pytest.mark.slow

VIEWS, SIZE = 24, 64
TRAIN_STEPS = 150
PSNR_MIN_DB = 28.0
TRAIN_TIME_MAX_S = 120.0
CANCEL_MAX_S = 1.0


def render_over_white(splats, viewmats: np.ndarray, Ks: np.ndarray, size: int) -> np.ndarray:
    """f32[C,H,W,3] renders of ``splats`` over white (reference rasterizer, CPU)."""
    import torch
    from backend.params import activated, sh_coeffs, splats_to_tensors
    from backend.render import rasterize
    p = splats_to_tensors(splats)
    with torch.no_grad():
        rgb, _, _ = rasterize(*activated(p), sh_coeffs(p), torch.from_numpy(viewmats),
                              torch.from_numpy(Ks), size, size, sh_degree=splats.sh_degree,
                              backgrounds=torch.ones(len(viewmats), 3))
    return rgb.clamp(0, 1).numpy()


def over_white(images_u8: np.ndarray) -> np.ndarray:
    a = images_u8[..., 3:].astype(np.float32) / 255
    return images_u8[..., :3].astype(np.float32) / 255 * a + (1 - a)


@pytest.fixture(scope="module")
def scene():
    """(images u8[C,H,W,4], viewmats, Ks, points, colors) from H3's scene builder."""
    from test_trainer import render_dataset, sphere_rig, torus_cloud
    cloud = torus_cloud(800)
    viewmats, Ks = sphere_rig(VIEWS, SIZE)
    images = render_dataset(cloud, viewmats, Ks, SIZE)
    rng = np.random.default_rng(1)
    points = (cloud[0] + rng.normal(0, 0.03, cloud[0].shape)).astype(np.float32)
    colors = (cloud[4] * 255).astype(np.uint8)
    return images, viewmats, Ks, points, colors


@pytest.fixture(scope="module")
def train_payload(scene):
    images, viewmats, Ks, points, colors = scene
    return {"images": images, "viewmats": viewmats, "Ks": Ks, "points": points, "colors": colors}


def _params(steps: int, preview_every: int = 0) -> dict:
    return {"steps": steps, "strategy": "default", "sh_degree": 1, "holdout_every": 8,
            "seed": 0, "preview_every": preview_every}


def test_train_cancel_fetch_and_restart_over_the_socket(tmp_path, scene, train_payload,
                                                        artifacts):
    store = tmp_path / "store"
    srv = ServerProcess(store, plugins=[]).start()   # OMP_NUM_THREADS=1: see test_trainer
    try:
        with srv.client() as c:
            # 1. A training job: progress in order, a good held-out PSNR, in time.
            t0 = time.monotonic()
            jid = c.submit("train", _params(TRAIN_STEPS, preview_every=50),
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
            images, viewmats, Ks = scene[:3]
            pred = render_over_white(cancelled, viewmats[1:2], Ks[1:2], SIZE)
            mse = float(((pred - over_white(images[1:2])) ** 2).mean())
            assert -10 * np.log10(mse) > 15.0        # it already looks like the torus

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
            assert f"train payload 'Ks' has C=3 but 'images' has C={VIEWS}" in job.error[1], job.error
            typo = c.submit("train", {"stepz": 10}, train_payload)
            job = run_until(c, typo, 30)
            assert job.error[0] == "bad_params"
            assert "unknown train setting 'stepz'; known: [" in job.error[1], job.error
    finally:
        srv.stop()


def _save_comparison(artifacts, scene, result) -> None:
    """Held-out views (every 8th): ground truth on top, the trained splats below."""
    from PIL import Image
    images, viewmats, Ks = scene[:3]
    held = list(range(0, VIEWS, 8))
    pred = render_over_white(result, viewmats[held], Ks[held], SIZE)
    top = np.concatenate([over_white(images[i]) for i in held], 1)
    bottom = np.concatenate(list(pred), 1)
    grid = (np.concatenate([top, bottom], 0) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(
        artifacts / "server_training_heldout.png")


@pytest.mark.gpu
def test_trains_on_cuda_over_the_socket(tmp_path, train_payload):
    srv = ServerProcess(tmp_path / "store", plugins=[], device="cuda").start()
    try:
        with srv.client() as c:
            c.send_hello()
            assert c.wait_for(lambda: c.server_info is not None, 10)
            info = c.server_info
            assert info["device"] == "cuda" and info["cuda"] is True
            assert info["gpu_name"] and info["gpu_memory_bytes"] > 0
            t0 = time.monotonic()
            jid = c.submit("train", _params(TRAIN_STEPS), train_payload)
            job = run_until(c, jid, TRAIN_TIME_MAX_S)
            print(f"\ncuda train over socket: {time.monotonic() - t0:.1f} s, "
                  f"held-out PSNR {job.result_metrics.get('eval_psnr')}")
            assert job.state == "done", job.error
            assert job.result_metrics["eval_psnr"] >= PSNR_MIN_DB
            c.send_hello()             # by now the gsplat probe has finished
            assert c.wait_for(lambda: c.pending == 0, 10)
            assert c.server_info["gsplat_cuda"] is True
    finally:
        srv.stop()
