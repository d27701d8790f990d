"""Views of several sizes (phone photos in portrait and landscape, COLMAP's undistorted images):
the dataset loaders keep each view's size on one padded canvas, and the trainer renders every view
at its own size, so the padding is never trained on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.datasets import load_dataset
from backend.job_api import JobError
from backend.params import splats_to_tensors
from backend.render import rasterize
from backend.trainer import evaluate, train, view_sizes
from shared.cameras import look_at
from shared.jobkinds.train import SPEC as TRAIN
from test_trainer import Recorder, torus_cloud

LANDSCAPE, PORTRAIT = (48, 32), (32, 48)


def _backdrop(n: int, radius: float = 6.0, seed: int = 1):
    """A shell of big opaque Gaussians around everything, coloured by direction: every pixel of
    every view sees it, as photos see a room."""
    g = np.random.default_rng(seed)
    d = g.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return ((radius * d).astype(np.float32), g.normal(size=(n, 4)), np.full((n, 3), 0.6),
            np.full(n, 0.99), 0.5 + 0.4 * d)


def _mixed_views(count: int, focal: float = 40.0):
    """``count`` cameras inside a coloured backdrop looking at the torus, alternately landscape and
    portrait; their opaque renders (reference rasterizer, each at its own size) top-left on a
    48 x 48 canvas (RGB: photos), the sizes, viewmats, Ks."""
    parts = [torus_cloud(1500), _backdrop(3000)]
    cloud = [torch.tensor(np.concatenate([np.asarray(p[k], np.float64) for p in parts]), dtype=torch.float32)
             for k in range(5)]
    canvas = np.zeros((count, 48, 48, 3), np.uint8)
    sizes, vms, Ks = [], [], []
    for i in range(count):
        z = 0.85 - 1.5 * (i + 0.5) / count
        phi = i * np.pi * (3 - np.sqrt(5))
        r = np.sqrt(1 - z * z)
        vm = look_at(3.0 * np.array([r * np.cos(phi), r * np.sin(phi), z]), np.zeros(3)).astype(np.float32)
        w, h = LANDSCAPE if i % 2 == 0 else PORTRAIT
        K = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], np.float32)
        with torch.no_grad():
            img, alpha, _ = rasterize(*cloud, torch.from_numpy(vm)[None], torch.from_numpy(K)[None], w, h)
        assert float(alpha.min()) > 0.99                        # opaque everywhere, as photos
        canvas[i, :h, :w] = (img[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        sizes.append((w, h))
        vms.append(vm)
        Ks.append(K)
    points = cloud[0].numpy()[::2]                            # a sparse cloud, as COLMAP gives
    colors = (cloud[4].numpy()[::2].clip(0, 1) * 255).astype(np.uint8)
    return canvas, np.array(sizes, np.int32), np.stack(vms), np.stack(Ks), points, colors


def test_views_of_two_sizes_train_as_well_as_their_own_sizes_allow():
    """Held-out views of both orientations, scored at their own sizes: training with the sizes
    beats training on the padded canvas (which learns the padding, black, as part of the scene)
    by >= 3 dB."""
    images, sizes, vms, Ks, points, colors = _mixed_views(24)
    settings = TRAIN.make(steps=300, holdout_every=4, preview_every=0, seed=0,
                          backend="fast")
    held = [i for i in range(24) if i % 4 == 0]
    assert {tuple(sizes[i]) for i in held} == {LANDSCAPE}     # and the portrait ones below
    scores = {}
    for name, given in (("sizes", sizes), ("canvas", None)):
        res = train(images, vms, Ks, points, colors, settings=settings, ctx=Recorder(), sizes=given)
        params = splats_to_tensors(res.splats, "cpu")
        rgba = np.concatenate([images, np.full(images.shape[:3] + (1,), 255, np.uint8)], -1)
        args = (params, torch.from_numpy(rgba), torch.from_numpy(vms), torch.from_numpy(Ks))
        own = view_sizes(sizes, 24, 48, 48)
        scores[name] = (evaluate(*args, held, res.splats.sh_degree, "fast", 1.0, own)["psnr"],
                        evaluate(*args, [1, 5, 9, 13], res.splats.sh_degree, "fast", 1.0, own)["psnr"])
        if name == "sizes":
            assert abs(res.metrics["eval_psnr"] - scores[name][0]) < 1e-3   # the trainer's own score agrees
    print(scores)
    assert min(scores["sizes"]) >= 24.0, scores
    assert scores["sizes"][0] >= scores["canvas"][0] + 3.0, scores
    assert scores["sizes"][1] >= scores["canvas"][1] + 3.0, scores


def test_view_sizes_are_checked():
    assert view_sizes(None, 2, 40, 30) == [(40, 30), (40, 30)]
    assert view_sizes(np.array([[40, 20], [10, 30]]), 2, 40, 30) == [(40, 20), (10, 30)]
    with pytest.raises(JobError, match=r"sizes must be int\[2,2\]"):
        view_sizes(np.array([[40, 20]]), 2, 40, 30)
    with pytest.raises(JobError, match="within the 40x30 images"):
        view_sizes(np.array([[41, 20], [10, 30]]), 2, 40, 30)
    with pytest.raises(JobError, match="within the 40x30 images"):
        view_sizes(np.array([[0, 20], [10, 30]]), 2, 40, 30)


def test_a_transforms_dataset_of_mixed_sizes_loads_on_one_canvas(tmp_path: Path):
    rng = np.random.default_rng(0)
    frames, pictures = [], {}
    for i, (w, h) in enumerate([(40, 30), (30, 40), (40, 30), (24, 36)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"f{i}.png")
        pictures[i] = rgb
        frames.append({"file_path": f"f{i}.png", "fl_x": 30.0, "transform_matrix": np.eye(4).tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))
    data = load_dataset(tmp_path)
    assert data.images.shape == (4, 40, 40, 4)
    assert data.sizes.tolist() == [[40, 30], [30, 40], [40, 30], [24, 36]]
    for i, rgb in pictures.items():
        h, w = rgb.shape[:2]
        assert np.array_equal(data.images[i, :h, :w, :3], rgb) and (data.images[i, :h, :w, 3] == 255).all()
        assert not data.images[i, h:].any() and not data.images[i, :, w:].any()
        assert data.Ks[i, 0, 2] == w / 2 and data.Ks[i, 1, 2] == h / 2     # each frame's own centre
    same = load_dataset(tmp_path, split="train")
    assert same.sizes is not None
