"""Generation jobs over a real socket: ``python -m backend serve`` (CPU) running ``generate``.

The diffusion models are tiny random-weight pipelines (tests/tiny_models.py: the real diffusers classes
from tiny configs, since no weights can be downloaded here), passed to the job as local folders with
``HF_HUB_OFFLINE=1``; the pictures they guide toward are meaningless, so these tests check the job's
plumbing and contracts (progress, previews, cancel, each init mode, errors, reproducibility metadata).
That SDS itself pulls renders toward what the diffusion model wants is shown in test_sds_analytic.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from shared.splats import Splats
from test_server import ServerProcess, drain_until, run_until
from tiny_models import tiny_models

RES = 16     # the tiny VAE's native size: latents 4x8x8


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("gen") / "store", plugins=[],
                        extra=["--preview-interval", "0.1"], env={"HF_HUB_OFFLINE": "1"}).start()
    yield srv
    assert srv.stop() == 0, srv.log()


def params(models, **kw) -> dict:
    p = {"prompt": "a ceramic teapot", "seed": 7, "steps": 4, "resolution": RES, "batch_size": 1,
         "num_points": 96, "init": "sphere", "guidance_model": str(models["sd"]),
         "prior_model": str(models["shap-e"]), "preview_every": 1, "prior_steps": 2, "prior_grid_size": 16}
    p.update(kw)
    return p


def test_sphere_job_progress_preview_and_result(server, models):
    with server.client() as c:
        job_id = c.submit("generate", params(models))
        msgs = drain_until(c, lambda: c.jobs[job_id].finished, 180)
        job = c.jobs[job_id]
        assert job.state == "done", (job.error, server.log()[-3000:])
        stages = [m.fields for m in msgs if m.type == "progress" and "stage" in m.fields["metrics"]]
        assert [(f["step"], f["total"], f["metrics"]["stage"]) for f in stages] == \
            [(0, 0, f"loading the guidance model ({models['sd']})")]       # sphere: no prior to load
        msgs = [m for m in msgs if m.type != "progress" or "stage" not in m.fields["metrics"]]
        steps = [m.fields["step"] for m in msgs if m.type == "progress"]
        assert steps == sorted(steps) and steps[-1] == 4 and all(1 <= s <= 4 for s in steps)
        previews = [m for m in msgs if m.type == "progress" and "preview" in m.fields]
        assert previews, "no preview arrived"
        preview = job.preview_splats() if job.preview is not None else None
        assert preview is not None and len(preview) == 96
        metrics = [m.fields["metrics"] for m in msgs if m.type == "progress"]
        assert all(np.isfinite(m["loss"]) and m["num_gaussians"] == 96 for m in metrics)
        out = job.result_splats()
        assert isinstance(out, Splats) and len(out) == 96 and out.sh_degree == 0
        # Sphere init: canonical ball of radius 0.6 in a radius-1 frame, centred at the origin.
        # (4 steps move the means by ~0.005: the farthest measured is 0.602 from the centre)
        assert np.linalg.norm(out.means, axis=1).max() < 0.62
        assert np.abs(out.means.mean(axis=0)).max() < 0.2
        meta = job.meta
        assert meta["seed"] == 7 and meta["settings"]["guidance_scale"] == 100.0
        assert meta["settings"]["steps"] == 4 and meta["settings"]["init"] == "sphere"
        assert meta["steps_done"] == 4 and meta["cancelled"] is False


def test_mesh_init_keeps_size_and_colours(server, models):
    rng = np.random.default_rng(0)
    # Points on a 2 m cube centred at (5, 0, 1), all red.
    pts = rng.uniform(-1.0, 1.0, (400, 3))
    axis = rng.integers(0, 3, 400)
    pts[np.arange(400), axis] = np.sign(pts[np.arange(400), axis])
    pts = (pts + [5.0, 0.0, 1.0]).astype(np.float32)
    colors = np.tile(np.uint8([200, 30, 30]), (400, 1))
    with server.client() as c:
        job_id = c.submit("generate", params(models, init="mesh", steps=3),
                          {"points": pts, "colors": colors})
        job = run_until(c, job_id, 180)
        assert job.state == "done", job.error
        out = job.result_splats()
        assert len(out) == 96
        lo, hi = out.bounds()
        # 3 steps move the means by ~0.005 and the colours by ~0.001 (measured): the margins
        # below are a few times that, not a fraction of the cube.
        assert np.allclose(hi - lo, 2.0, atol=0.03), (lo, hi)     # the mesh's size is kept ...
        assert np.allclose((lo + hi) / 2, 0.0, atol=0.02), (lo, hi)  # ... centred at the origin
        assert np.allclose(job.meta["init_centre"], [5.0, 0.0, 1.0], atol=1e-5)
        rgb = out.base_colors().mean(axis=0)
        assert np.allclose(rgb, np.array([200, 30, 30]) / 255, atol=0.01), rgb


def test_shap_e_init(server, models):
    with server.client() as c:
        job_id = c.submit("generate", params(models, init="shap-e", steps=2, sh_degree=1))
        job = run_until(c, job_id, 240)
        assert job.state == "done", job.error
        assert [m["stage"] for _, _, m in job.progress if "stage" in m] == [
            f"loading the Shap-E prior ({models['shap-e']})", "sampling the Shap-E prior (2 steps)",
            f"loading the guidance model ({models['sd']})"]
        out = job.result_splats()
        assert len(out) == 96 and out.sh_degree == 1
        # Shap-E's object, normalised to a bounding radius of 1 m.
        radius = np.linalg.norm(out.means - (out.means.min(0) + out.means.max(0)) / 2, axis=1).max()
        assert radius == pytest.approx(1.0, abs=0.05), radius    # 2 steps: measured 1.014


def test_cancel_returns_partial_result(server, models):
    with server.client() as c:
        job_id = c.submit("generate", params(models, steps=1000, preview_every=0))
        drain_until(c, lambda: c.jobs[job_id].step >= 1, 120)
        c.cancel(job_id)
        job = run_until(c, job_id, 60)
        assert job.state == "cancelled", job.error
        assert job.meta["cancelled"] is True and 1 <= job.meta["steps_done"] < 1000
        assert len(job.result_splats()) == 96


@pytest.mark.parametrize("bad, code, words", [
    ({"init": "cube"}, "bad_params", "generate setting init='cube': expected one of 'shap-e', 'mesh', 'sphere'"),
    ({"steps": 0}, "bad_params", "steps=0: out of range: allowed [1, 100000]"),
    ({"steps": float("inf")}, "bad_params", "steps=inf"),
    ({"lr_means": -0.1}, "bad_params", "lr_means=-0.1: out of range: allowed [0, 1]"),
    ({"prompt": "  "}, "bad_params", "prompt is empty"),
    ({"colour": 1}, "bad_params", "unknown generate setting 'colour'"),
    ({"init": "mesh"}, "bad_input", "init 'mesh' needs payload 'points'"),
    ({"guidance_model": "/nonexistent/sd"}, "model_missing", "/nonexistent/sd"),
    ({"guidance_model": "stabilityai/stable-diffusion-2-1-base"}, "model_missing",
     "python -m backend prefetch stabilityai/stable-diffusion-2-1-base"),
])
def test_bad_requests_fail_with_clear_errors(server, models, bad, code, words):
    with server.client() as c:
        job_id = c.submit("generate", params(models, **bad))
        job = run_until(c, job_id, 120)
        assert job.state == "failed"
        assert job.error[0] == code and words in job.error[1], job.error


def test_cli_writes_splats_and_settings(tmp_path, models):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from shared.formats import read_splats
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "teapot.ply"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "backend", "generate", "a ceramic teapot", "--out", str(out), "--steps", "2",
         "--seed", "3", "--init", "sphere", "--resolution", str(RES), "--batch-size", "1", "--num-points", "64",
         "--guidance-model", str(models["sd"]), "--device", "cpu"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    splats = read_splats(out)
    assert len(splats) == 64
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["meta"]["seed"] == 3 and meta["meta"]["settings"]["prompt"] == "a ceramic teapot"
    assert "step 2/2" in proc.stderr


@pytest.mark.gpu
def test_generate_job_on_cuda_fp16(models):
    """The job's CUDA path: fp16 tiny pipelines, gsplat rendering, densification with gsplat's info."""
    from pathlib import Path

    import torch

    from backend.generate import run_generate_job

    class Ctx:
        device, job_dir = "cuda", Path(".")
        reports: list = []
        stages: list = []

        def report(self, step, total, metrics, preview=None):
            if "stage" in metrics:          # step 0 of 0: loading and sampling the models
                self.stages.append(metrics["stage"])
                return
            self.reports.append((step, metrics["num_gaussians"]))

        def should_stop(self):
            return False

    ctx = Ctx()
    result = run_generate_job(params(models, init="shap-e", steps=80, resolution=64, batch_size=2,
                                     num_points=2000, preview_every=20), {}, ctx)
    assert [s for s, _ in ctx.reports] == list(range(1, 81))
    assert ctx.stages[0].startswith("loading the Shap-E prior")
    assert result.meta["device"] == "cuda" and result.meta["grow_grad2d"] is not None
    assert len(result.splats) != 2000                         # densified / pruned
    assert torch.cuda.max_memory_allocated() > 0
