"""Text-instructed editing of splats (backend/edit.py): Iterative Dataset Update with a 2D editor.

No InstructPix2Pix weights can be downloaded here, so:
- the loop is checked with an *analytic* editor (a fixed colour transform of the original render: R and B
  swapped), for which the right 3D answer is known: the splats' renders from cameras that are not in the
  dataset must become the transform of the input's renders there;
- ``InstructPix2PixEditor`` runs on a tiny random-weight InstructPix2Pix pipeline (tests/tiny_models.py)
  loaded through ``backend.models.load_pipeline``: shapes, range and determinism, not picture quality;
- the "edit" job runs over the real server (CPU) with that tiny pipeline, and the CLI writes its files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.edit import (ImageEditor, InstructPix2PixEditor, bounding_sphere, edit_splats,
                          orbit_views, render)
from backend.losses import psnr
from backend.params import splats_to_tensors
from shared.jobkinds.edit import SPEC as EDIT
from shared.jobspec import Settings
from shared.splats import Splats
from test_server import ServerProcess, drain_until, run_until
from tiny_models import tiny_ip2p

RES = 16     # the tiny VAE's native size


def blob_object(n: int = 120, seed: int = 0, centre=(2.0, -1.0, 0.5)) -> Splats:
    """``n`` opaque coloured blobs in a shell of radius 0.3..0.6 around ``centre`` (off the origin, so that
    the cameras must follow the splats); little blue, so swapping R and B changes every view a lot."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    means = (d * rng.uniform(0.3, 0.6, (n, 1)) + np.asarray(centre)).astype(np.float32)
    cols = rng.uniform(0.05, 0.95, (n, 3)).astype(np.float32)
    cols[:, 2] *= 0.3
    quats = np.tile(np.float32([1, 0, 0, 0]), (n, 1))
    return Splats.from_activated(means, quats, np.full((n, 3), 0.12, np.float32), np.full(n, 0.9, np.float32), cols)


def swap_rb(images: torch.Tensor) -> torch.Tensor:
    return images[:, [2, 1, 0]]


class SwapRedBlue(ImageEditor):
    """The analytic edit: the original render with R and B swapped (ignores the current render)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def edit(self, current, original, generator):
        self.calls.append((tuple(current.shape), tuple(original.shape)))
        return swap_rb(original)


def settings(**kw) -> Settings:
    p = {"prompt": "swap red and blue", "steps": 150, "num_views": 8, "resolution": 32, "edit_every": 2,
         "initial_edits": 0, "lr_sh0": 0.05, "seed": 3}
    p.update(kw)
    return EDIT.validate_params(p)


def test_loop_transfers_a_2d_edit_into_3d(artifacts):
    splats = blob_object()
    s = settings()
    editor = SwapRedBlue()
    out, info = edit_splats(splats, editor, s)
    assert info["steps_done"] == 150 and info["edits"] == 75 and not info["cancelled"]
    assert editor.calls == [((1, 3, 32, 32), (1, 3, 32, 32))] * 75
    # held-out cameras: azimuths between the dataset's (every 45 deg from 0), other elevations
    centre, radius = bounding_sphere(splats)
    held = orbit_views(centre, radius, [20.0, 5.0, 35.0, 0.0], [22.5, 112.5, -67.5, -157.5], s.fovy, 32,
                       s.frame_margin, s.background)
    with torch.no_grad():
        before = render(splats_to_tensors(splats), held, slice(None), 0)
        after = render(splats_to_tensors(out), held, slice(None), 0)
    target = swap_rb(before)
    p0, p1 = psnr(before, target), psnr(after, target)
    # measured: 10.7 dB unedited, 36.6 dB after 150 steps
    assert p0 < 13.0 and p1 > p0 + 20.0, (p0, p1)
    # the edit reached the colour parameters (base colours move toward R<->B swapped) ...
    rgb0, rgb1 = splats.base_colors(), out.base_colors()
    assert np.abs(rgb1 - rgb0[:, [2, 1, 0]]).mean() < 0.5 * np.abs(rgb0 - rgb0[:, [2, 1, 0]]).mean()
    # ... and the geometry stays put (colour edit: means move by far less than the blob size 0.12)
    assert np.abs(out.means - splats.means).max() < 0.05
    again, _ = edit_splats(splats, SwapRedBlue(), s)
    assert out.allclose(again, atol=0.0)                      # same seed: the same splats, bit for bit
    from PIL import Image
    rows = [torch.cat(list(x), 2) for x in (before, target, after)]
    img = (torch.cat(rows, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(
        artifacts / "edit_swap_rb_heldout.png")


def test_mask_edits_only_the_selected_splats():
    """GaussianEditor's edit region / Blender's Edit Mode selection: unselected splats keep every value
    bit for bit, selected ones take the edit."""
    splats = blob_object(60)
    mask = splats.means[:, 0] > 2.0                  # one half of the blob (x of the centre is 2.0)
    assert 10 < mask.sum() < 50
    out, info = edit_splats(splats, SwapRedBlue(), settings(steps=60), mask=mask)
    assert info["steps_done"] == 60
    for field in ("means", "quats", "scales", "opacities", "sh0"):
        a, b = getattr(out, field), getattr(splats, field)
        assert np.array_equal(a[~mask], b[~mask]), field              # untouched, exactly
        assert not np.allclose(a[mask], b[mask]), field               # edited
    rgb0, rgb1 = splats.base_colors()[mask], out.base_colors()[mask]
    assert np.abs(rgb1 - rgb0[:, [2, 1, 0]]).mean() < np.abs(rgb0 - rgb0[:, [2, 1, 0]]).mean()


class RecordingContext:
    """A JobContext that records reports and says stop after ``stop_after`` polls."""
    device, job_dir = "cpu", Path(".")

    def __init__(self, stop_after: int | None = None):
        self.steps: list[tuple] = []
        self.polls, self.stop_after = 0, stop_after

    def report(self, step, total, metrics, preview=None):
        self.steps.append((step, total, metrics))

    def should_stop(self):
        self.polls += 1
        return self.stop_after is not None and self.polls > self.stop_after


def test_initial_edits_then_round_robin():
    ctx, editor, stages = RecordingContext(), SwapRedBlue(), []
    _, info = edit_splats(blob_object(40), editor, settings(steps=6, num_views=4, resolution=RES, initial_edits=-1,
                                                            edit_every=3), ctx, stage=stages.append)
    assert stages == ["making the first edits (4 of 4 views)"]
    assert len(editor.calls) == 4 + 1 and info["edits"] == 5          # 4 first, then at step 3
    assert [s for s, _, _ in ctx.steps] == list(range(1, 7))
    assert all(m["num_gaussians"] == 40 and np.isfinite(m["loss"]) and "eta_s" in m and m["steps_per_s"] >= 0
               for _, _, m in ctx.steps)


def test_cancel_during_first_edits_returns_the_input():
    splats = blob_object(40)
    ctx, editor = RecordingContext(stop_after=2), SwapRedBlue()
    out, info = edit_splats(splats, editor, settings(steps=50, num_views=4, resolution=RES, initial_edits=-1), ctx)
    assert info["cancelled"] and info["steps_done"] == 0 and info["edits"] == 2 and ctx.steps == []
    assert out.allclose(splats, atol=0.0)


@pytest.fixture(scope="module")
def ip2p() -> Path:
    return tiny_ip2p()


def test_instruct_pix2pix_editor_on_tiny_pipeline(ip2p):
    from backend.models import load_pipeline
    pipe = load_pipeline(str(ip2p), "instruct-pix2pix", "cpu")
    editor = InstructPix2PixEditor(pipe, "make it look like bronze", diffusion_steps=5)
    g = torch.Generator().manual_seed(0)
    current, original = torch.rand(2, 3, RES, RES, generator=g), torch.rand(2, 3, RES, RES, generator=g)
    a = editor.edit(current, original, torch.Generator().manual_seed(1))
    b = editor.edit(current, original, torch.Generator().manual_seed(1))
    c = editor.edit(current, original, torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, RES, RES) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and float(a.std()) > 0.01
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 0.05
    # a size that is not a multiple of the VAE's factor is resized there and back
    assert editor.edit(torch.rand(1, 3, 15, 15), torch.rand(1, 3, 15, 15), torch.Generator()).shape == (1, 3, 15, 15)
    # the wrong UNet (4 input channels: plain Stable Diffusion) is refused
    with pytest.raises(ValueError, match="8 of InstructPix2Pix"):
        InstructPix2PixEditor(type("P", (), {"unet": type("U", (), {"config": type("C", (), {"in_channels": 4})})})(),
                              "x")


# ----------------------------------------------------------------------------------------------
# the job over the real server, and the CLI
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("edit") / "store", plugins=[],
                        extra=["--preview-interval", "0.1"], env={"HF_HUB_OFFLINE": "1"}).start()
    yield srv
    assert srv.stop() == 0, srv.log()


def job_params(model: Path, **kw) -> dict:
    p = {"prompt": "make it look like bronze", "seed": 5, "steps": 4, "num_views": 3, "resolution": RES,
         "edit_every": 2, "diffusion_steps": 3, "edit_model": str(model), "preview_every": 1}
    p.update(kw)
    return p


def test_edit_job_progress_stages_and_result(server, ip2p):
    splats = blob_object(50)
    with server.client() as c:
        job_id = c.submit("edit", job_params(ip2p), {"splats": splats.to_arrays()})
        msgs = drain_until(c, lambda: c.jobs[job_id].finished, 120)
        job = c.jobs[job_id]
        assert job.state == "done", (job.error, server.log()[-3000:])
        progress = [m.fields for m in msgs if m.type == "progress"]
        assert [(f["step"], f["total"], f["metrics"]["stage"]) for f in progress if "stage" in f["metrics"]] == [
            (0, 0, f"loading the edit model ({ip2p})"), (0, 0, "making the first edits (3 of 3 views)")]
        steps = [f["step"] for f in progress if "stage" not in f["metrics"]]
        assert steps == sorted(steps) and steps[-1] == 4 and all(1 <= s <= 4 for s in steps)
        assert any("preview" in f for f in progress), "no preview arrived"
        out = job.result_splats()
        assert len(out) == 50 and out.sh_degree == 0
        assert np.abs(out.means - splats.means).max() < 0.05         # world space in, world space out
        assert not out.allclose(splats, atol=1e-6)                  # ... and fine-tuned
        meta = job.meta
        assert meta["seed"] == 5 and meta["settings"]["prompt"] == "make it look like bronze"
        assert meta["settings"]["edit_every"] == 2 and meta["steps_done"] == 4 and meta["edits"] == 3 + 1
        assert meta["cancelled"] is False


def test_edit_job_cancel_returns_partial_splats(server, ip2p):
    splats = blob_object(50)
    with server.client() as c:
        job_id = c.submit("edit", job_params(ip2p, steps=100_000, preview_every=0), {"splats": splats.to_arrays()})
        drain_until(c, lambda: c.jobs[job_id].step >= 1, 120)
        c.cancel(job_id)
        job = run_until(c, job_id, 60)
        assert job.state == "cancelled", job.error
        assert job.meta["cancelled"] is True and 1 <= job.meta["steps_done"] < 100_000
        assert len(job.result_splats()) == 50


@pytest.mark.parametrize("params, payload, code, words", [
    ({}, {}, "bad_input", "edit payload needs 'splats'"),
    ({"prompt": "  "}, None, "bad_params", "prompt is empty"),
    ({}, {"splats": {**blob_object(10).to_arrays(), "means": np.zeros((10, 2), np.float32)}}, "bad_input",
     "payload splats.means: shape (10, 2) is not [N, 3]"),
    ({}, {"splats": {k: v for k, v in blob_object(10).to_arrays().items() if k != "sh0"}}, "bad_input",
     "payload splats.sh0: missing"),
    ({"edit_every": 0}, None, "bad_params", "edit setting edit_every=0: out of range: allowed [1, 100000]"),
    ({"t_min": 0.9, "t_max": 0.5}, None, "bad_params", "t_min=0.9, t_max=0.5: need t_min <= t_max"),
    ({"colour": 1}, None, "bad_params", "unknown edit setting 'colour'"),
    ({}, {"splats": blob_object(10).to_arrays(), "mask": np.ones(9, bool)}, "bad_input",
     "payload 'mask' must be [N] = [10] (one flag per splat), got shape (9,)"),
    ({}, {"splats": blob_object(10).to_arrays(), "mask": np.zeros(10, bool)}, "bad_input",
     "payload 'mask' selects no splats"),
    ({}, {"splats": blob_object(10).to_arrays(), "mask": np.ones(10, np.float32)}, "bad_input",
     "edit payload 'mask' must be bool/uint8[N], got float32"),
    ({"edit_model": "timbrooks/instruct-pix2pix"}, None, "model_missing",
     "python -m backend prefetch timbrooks/instruct-pix2pix"),
])
def test_bad_requests_fail_with_clear_errors(server, ip2p, params, payload, code, words):
    payload = {"splats": blob_object(10).to_arrays()} if payload is None else payload
    with server.client() as c:
        job_id = c.submit("edit", job_params(ip2p, **params), payload)
        job = run_until(c, job_id, 60)
        assert job.state == "failed"
        assert job.error[0] == code and words in job.error[1], job.error


def test_cli_writes_splats_and_settings(tmp_path, ip2p):
    from shared.formats import read_splats, write_splats
    root = Path(__file__).resolve().parents[1]
    src, out = tmp_path / "in.ply", tmp_path / "bronze.ply"
    write_splats(src, blob_object(30))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "backend", "edit", str(src), "make it look like bronze", "--out", str(out),
         "--steps", "2", "--seed", "4", "--num-views", "2", "--resolution", str(RES), "--diffusion-steps", "2",
         "--edit-model", str(ip2p), "--device", "cpu"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_splats(out)) == 30
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["meta"]["seed"] == 4 and meta["meta"]["settings"]["prompt"] == "make it look like bronze"
    assert "making the first edits (2 of 2 views)" in proc.stderr and "step 2/2" in proc.stderr


def test_cli_model_missing_offline(tmp_path):
    from shared.formats import write_splats
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "in.ply"
    write_splats(src, blob_object(10))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root), OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf"))                  # an empty cache
    proc = subprocess.run([sys.executable, "-m", "backend", "edit", str(src), "make it bronze", "--out",
                           str(tmp_path / "out.ply"), "--device", "cpu"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error (model_missing): Model 'timbrooks/instruct-pix2pix' is not in the local model cache" in proc.stderr
    assert "python -m backend prefetch timbrooks/instruct-pix2pix" in proc.stderr
    assert not (tmp_path / "out.ply").exists()
