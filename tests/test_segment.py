"""The segment job (FlashSplat's assignment from label masks) on known and trained three-object scenes:
split-by-object masks (IoU >= 0.95 on held-out views, nothing lost or duplicated), selection from
masks in 3 views (precision and recall >= 0.95), floater removal on a trained scene, progress, cancel,
errors, the job over a real server, and gsplat against the reference on CUDA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edit_scenes import (CENTRES, RADII, label_images, orbit_rig, silhouettes, three_objects,
                         trained_three_objects)
from backend.job_api import JobError, NullContext
from backend.segment import assign_labels, label_contributions, run_segment_job
from shared.edit_ops import split_by_labels
from shared.selection import floaters
from shared.splats import FIELDS, Splats

RES = 64


class Recorder:
    def __init__(self, stop_after: int | None = None, device: str = "cpu"):
        self.device = device
        self.job_dir = Path(".")
        self.reports: list[tuple[int, int, dict]] = []
        self.stop_after = stop_after

    def report(self, step, total, metrics, preview=None):
        self.reports.append((step, total, dict(metrics)))

    def should_stop(self):
        views = [r for r in self.reports if r[1] > 0]
        return self.stop_after is not None and len(views) >= self.stop_after


def payload(splats: Splats, labels: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray) -> dict:
    return {"splats": splats.to_arrays(), "labels": labels, "viewmats": viewmats, "Ks": Ks}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def check_split(splats: Splats, labels: np.ndarray, truth: Splats, objects: np.ndarray) -> list[float]:
    """Split ``splats`` by ``labels``; each object's part drawn alone against the object's own mask on
    8 held-out views. Also: every splat lands in exactly one part, values bit for bit."""
    parts = split_by_labels(splats, labels)
    assert sum(len(p) for p in parts.values()) == len(splats)
    order = np.argsort(labels, kind="stable")
    joined = Splats.concatenate([parts[k] for k in sorted(parts)])
    for f in FIELDS:
        assert np.array_equal(getattr(joined, f), getattr(splats, f)[order]), f
    viewmats, Ks = orbit_rig(8, RES, z0=0.7, z1=-0.5, phase=0.4)
    scores = []
    for obj in (1, 2, 3):
        mine = silhouettes(parts.get(obj, splats.subset(np.zeros(len(splats), bool))), viewmats, Ks, RES)
        scores.append(iou(mine, silhouettes(truth.subset(objects == obj), viewmats, Ks, RES)))
    return scores


def test_split_known_scene_by_object_masks():
    truth, objects = three_objects()
    viewmats, Ks = orbit_rig(24, RES)
    labels = label_images(truth, objects, viewmats, Ks, RES)
    ctx = Recorder()
    res = run_segment_job({}, payload(truth, labels, viewmats, Ks), ctx)
    out = res.meta["labels"]
    assert out.dtype == np.int32 and out.shape == (len(truth),)
    assert (out == objects).mean() >= 0.99, np.bincount(out + 1)
    assert min(check_split(truth, out, truth, objects)) >= 0.95
    assert len(res.splats) == 0 and res.meta["cancelled"] is False and res.meta["views_done"] == 24
    assert sum(res.meta["label_counts"].values()) == len(truth)
    assert ctx.reports[0][:2] == (0, 0) and "stage" in ctx.reports[0][2]
    assert [r[0] for r in ctx.reports[1:]] == list(range(1, 25)) and all(r[1] == 24 for r in ctx.reports[1:])


def geometric_objects(splats: Splats) -> np.ndarray:
    """Object of each splat by the nearest sphere shell of the ground truth (1..3)."""
    d = np.stack([np.abs(np.linalg.norm(splats.means - np.array(c), axis=1) - r) for c, r in zip(CENTRES, RADII)], 1)
    return np.argmin(d, axis=1) + 1


@pytest.mark.slow
def test_split_trained_scene_by_object_masks():
    trained, truth, objects = trained_three_objects()
    viewmats, Ks = orbit_rig(24, RES)
    labels = label_images(truth, objects, viewmats, Ks, RES)
    res = run_segment_job({}, payload(trained, labels, viewmats, Ks), NullContext())
    out = res.meta["labels"]
    assert res.meta["unlabelled"] == 0
    scores = check_split(trained, out, truth, objects)
    assert min(scores) >= 0.95, scores


@pytest.mark.slow
@pytest.mark.parametrize("phase", [0.0, 2.0])
def test_mask_selection_from_three_views(phase):
    """A mask painted on one object in 3 views (1 on it, 0 elsewhere) selects that object's splats."""
    trained, truth, objects = trained_three_objects()
    viewmats, Ks = orbit_rig(3, RES, z0=0.6, z1=-0.2, phase=phase)
    index_pass = label_images(truth, objects, viewmats, Ks, RES)
    geo = geometric_objects(trained)
    for obj in (1, 2, 3):
        mask = (index_pass == obj).astype(np.uint8)
        res = run_segment_job({}, payload(trained, mask, viewmats, Ks), NullContext())
        sel, want = res.meta["labels"] == 1, geo == obj
        precision, recall = (sel & want).sum() / sel.sum(), (sel & want).sum() / want.sum()
        assert precision >= 0.95 and recall >= 0.95, (obj, precision, recall)
        assert res.meta["unlabelled"] == 0 and 0 <= res.meta["unseen"] <= res.meta["weak"] < len(trained)
    # without filling from 3D neighbours, the backs and insides no view sees stay unselected
    res = run_segment_job({"fill_unseen": False}, payload(trained, mask, viewmats, Ks), NullContext())
    sel = res.meta["labels"] == 1
    assert (sel & want).sum() / want.sum() < 0.95 and res.meta["unlabelled"] == res.meta["weak"] > 0


@pytest.mark.slow
def test_floater_removal_on_trained_scene():
    trained, _, _ = trained_three_objects()
    rng = np.random.default_rng(5)
    centres = []
    while len(centres) < 40:                             # small clusters in the empty space around
        c = rng.uniform(-1.3, 1.3, 3)
        if np.min(np.linalg.norm(trained.means - c, axis=1)) > 0.25:
            centres.append(c)
    pts = np.concatenate([c + rng.normal(0, 0.02, (rng.integers(1, 5), 3)) for c in centres])
    k = len(pts)
    clusters = Splats.from_activated(pts, rng.normal(size=(k, 4)), np.full((k, 3), 0.03), np.full(k, 0.7),
                                     rng.uniform(0, 1, (k, 3)))
    at = trained.means[rng.choice(len(trained), 20)]
    huge = Splats.from_activated(at[:10], rng.normal(size=(10, 4)), np.full((10, 3), 0.6), np.full(10, 0.3),
                                 rng.uniform(0, 1, (10, 3)))
    faint = Splats.from_activated(at[10:] + rng.normal(0, 0.05, (10, 3)), rng.normal(size=(10, 4)),
                                  np.full((10, 3), 0.03), np.full(10, 0.003), rng.uniform(0, 1, (10, 3)))
    scene = Splats.concatenate([trained, clusters, huge, faint])
    injected = np.zeros(len(scene), bool)
    injected[len(trained):] = True
    sel = floaters(scene, 0.5)
    assert sel[injected].mean() >= 0.95 and sel[~injected].mean() < 0.01, (sel[injected].mean(), sel[~injected].mean())


def test_assignment_threshold_and_background_weight():
    c = np.array([[0.0, 3.0, 1.0], [2.0, 1.9, 0.0], [0.01, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.6]])
    # median of the positive totals 4, 3.9, 0.01, 2.1 is 3.0 -> threshold 0.3 at 0.1
    assert assign_labels(c, 0.1).tolist() == [1, 0, -1, -1, 0]
    assert assign_labels(c, 0.1, background_weight=0.5).tolist() == [1, 1, -1, -1, 2]
    assert assign_labels(c, 0.0).tolist() == [1, 0, 0, -1, 0]


def test_cancel_keeps_the_views_done():
    truth, objects = three_objects(100)
    viewmats, Ks = orbit_rig(6, 32)
    labels = label_images(truth, objects, viewmats, Ks, 32)
    res = run_segment_job({}, payload(truth, labels, viewmats, Ks), Recorder(stop_after=2))
    assert res.meta["cancelled"] is True and res.meta["views_done"] == 2 and res.metrics["views"] == 2.0
    assert res.meta["labels"].shape == (300,)


def test_ignored_pixels_vote_for_nothing():
    truth, objects = three_objects(100)
    viewmats, Ks = orbit_rig(6, 32)
    labels = label_images(truth, objects, viewmats, Ks, 32).astype(np.int32)
    full, _ = label_contributions(truth, labels, viewmats, Ks)
    labels[labels == 2] = 7                                  # object 2's pixels ignored
    part, _ = label_contributions(truth, labels, viewmats, Ks, num_labels=3, ignore_label=7)
    assert np.allclose(part[:, [0, 1, 3]], full[:, [0, 1, 3]], atol=1e-5) and part[:, 2].max() == 0.0
    res = run_segment_job({"ignore_label": 7, "fill_unseen": False}, payload(truth, labels, viewmats, Ks),
                          NullContext())
    assert res.meta["num_labels"] == 3 and not (res.meta["labels"] == 2).any()


def small():
    truth, objects = three_objects(20)
    viewmats, Ks = orbit_rig(2, 16)
    return truth, label_images(truth, objects, viewmats, Ks, 16), viewmats, Ks


@pytest.mark.parametrize("change, params, code, words", [
    (lambda p: p.pop("labels"), {}, "bad_input", "segment payload needs 'labels'"),
    (lambda p: p.update(viewmats=p["viewmats"][:1]), {}, "bad_input", "has V=1 but 'labels' has V=2"),
    (lambda p: p.update(labels=p["labels"].astype(np.float32)), {}, "bad_input", "must be uint8/int32"),
    (lambda p: p.update(viewmats=p["viewmats"] * 2), {}, "bad_input", "rigid world-to-camera"),
    (lambda p: p.update(Ks=-p["Ks"]), {}, "bad_input", "positive focal lengths"),
    (lambda p: p.update(labels=np.full((2, 16, 16), -3, np.int32)), {}, "bad_input", "has value -3"),
    (lambda p: p.update(splats={**p["splats"], "means": np.zeros((5, 3), np.float32)}), {}, "bad_input",
     "segment payload splats.quats"),
    (lambda p: None, {"colour": 1}, "bad_params", "unknown segment setting 'colour'"),
    (lambda p: None, {"background_weight": -1.0}, "bad_params", "background_weight=-1.0: out of range"),
])
def test_bad_input_gets_a_clear_error(change, params, code, words):
    p = payload(*small())
    change(p)
    with pytest.raises(JobError) as err:
        run_segment_job(params, p, NullContext())
    assert err.value.code == code and words in err.value.message, err.value.message


def test_segment_job_over_the_server(tmp_path):
    from test_server import ServerProcess, run_until
    truth, labels, viewmats, Ks = small()
    direct = run_segment_job({}, payload(truth, labels, viewmats, Ks), NullContext()).meta["labels"]
    srv = ServerProcess(tmp_path / "store", plugins=[]).start()
    try:
        with srv.client() as c:
            job_id = c.submit("segment", {}, payload(truth, labels, viewmats, Ks))
            job = run_until(c, job_id, 60)
            assert job.state == "done", (job.error, srv.log()[-2000:])
            got = job.meta["labels"]
            assert isinstance(got, np.ndarray) and np.array_equal(got, direct)
            assert len(job.result_splats()) == 0 and sum(job.meta["label_counts"].values()) == len(truth)
            bad = c.submit("segment", {}, {"splats": truth.to_arrays()})
            job = run_until(c, bad, 60)
            assert job.state == "failed" and job.error[0] == "bad_input" and "needs 'labels'" in job.error[1]
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.mark.gpu
def test_gsplat_contributions_match_the_reference():
    truth, objects = three_objects(300)
    viewmats, Ks = orbit_rig(4, RES)
    labels = label_images(truth, objects, viewmats, Ks, RES)
    cpu, _ = label_contributions(truth, labels, viewmats, Ks, device="cpu", backend="reference")
    gpu, _ = label_contributions(truth, labels, viewmats, Ks, device="cuda", backend="gsplat")
    assert np.abs(cpu - gpu).max() < 1e-3 * max(1.0, float(cpu.max()))
    assert np.array_equal(assign_labels(cpu), assign_labels(gpu))


def test_fast_cpu_contributions_match_the_reference():
    """The fast CPU rasterizer's backward gives the same per-splat label contributions as the
    reference's autograd (both through backend.render.rasterize)."""
    truth, objects = three_objects(200)
    viewmats, Ks = orbit_rig(3, 48)
    labels = label_images(truth, objects, viewmats, Ks, 48)
    ref, _ = label_contributions(truth, labels, viewmats, Ks, backend="reference")
    fast, _ = label_contributions(truth, labels, viewmats, Ks, backend="fast")
    assert ref.max() > 1.0
    assert np.abs(ref - fast).max() < 1e-3 * float(ref.max())
    assert np.array_equal(assign_labels(ref), assign_labels(fast))
