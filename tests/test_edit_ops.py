"""shared.edit_ops and shared.color_grade: exact round trips, transforms that keep the render (reference
rasterizer, >= 60 dB), colour grading that is the identity at neutral and consistent across SH bands."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edit_scenes import orbit_rig
from helpers import psnr
from backend.params import activated, sh_coeffs, splats_to_tensors
from backend.render import rasterize
from shared.color_grade import Grade, grade, grade_matrix
from shared.edit_ops import apply_transform, delete, duplicate, merge, separate, split_by_labels
from shared.rotations import quat_to_matrix
from shared.sh import sh_basis
from shared.splats import FIELDS, SplatError, Splats


def same(a: Splats, b: Splats) -> bool:
    """Bit-identical fields."""
    return all(np.array_equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == getattr(b, f).dtype
               for f in FIELDS)


def similarity(axis=(1.0, -2.0, 0.5), angle=0.9, scale=1.3, translate=(0.2, -0.1, 0.3)) -> np.ndarray:
    axis = np.asarray(axis) / np.linalg.norm(axis)
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])) * scale
    m[:3, 3] = translate
    return m


def test_delete_separate_duplicate_keep_order_and_values():
    s = Splats.random(200, sh_degree=2, seed=1)
    mask = np.random.default_rng(0).random(200) < 0.3
    rest, sel = separate(s, mask)
    assert len(rest) + len(sel) == 200 and same(rest, delete(s, mask))
    assert same(sel, s.subset(np.flatnonzero(mask))) and same(rest, s.subset(np.flatnonzero(~mask)))
    dup, new_sel = duplicate(s, mask)
    assert len(dup) == 200 + mask.sum() and new_sel.sum() == mask.sum() and new_sel[200:].all()
    assert same(dup.subset(slice(0, 200)), s) and same(dup.subset(new_sel), sel)
    with pytest.raises(SplatError, match=r"selection has shape \(5,\), the splats are \[200\]"):
        delete(s, np.ones(5, bool))
    with pytest.raises(SplatError, match="must be a bool array"):
        separate(s, np.ones(200, np.uint8))


def test_separate_then_merge_and_merge_then_separate_round_trip_exactly():
    s = Splats.random(300, sh_degree=3, seed=2)
    m = similarity()
    mask = np.random.default_rng(1).random(300) < 0.4
    rest, sel = separate(s, mask)
    merged, slices = merge([(rest, m), (sel, m)])           # both objects share the source's matrix
    order = np.concatenate([np.flatnonzero(~mask), np.flatnonzero(mask)])
    back = merged.subset(np.argsort(order))
    assert same(back, s)
    # merge three objects, then separate each part out again: exact for parts in the target's space
    a, b, c = Splats.random(50, 1, seed=3), Splats.random(70, 3, seed=4), Splats.random(30, 3, seed=5)
    mb = similarity(axis=(0, 0, 1), angle=2.0, scale=0.7, translate=(1, 2, 3))
    merged, slices = merge([(a, m), (b, mb), (c, m)], target_matrix_world=m)
    assert len(merged) == 150 and merged.sh_degree == 3 and [sl.stop for sl in slices] == [50, 120, 150]
    for part, sl in ((a, slices[0]), (c, slices[2])):
        sel_mask = np.zeros(150, bool)
        sel_mask[sl] = True
        rest, out = separate(merged, sel_mask)
        assert same(out.with_sh_degree(part.sh_degree), part)
    # b moved into m's space keeps its world placement: back through the relative matrix
    sel_mask = np.zeros(150, bool)
    sel_mask[slices[1]] = True
    _, out_b = separate(merged, sel_mask)
    world_b, world_out = b.transform(mb), out_b.transform(m)
    assert np.abs(world_b.means - world_out.means).max() < 1e-5
    assert np.abs(world_b.scales - world_out.scales).max() < 1e-5
    assert np.abs(world_b.shN - world_out.shN).max() < 1e-4
    rb, ro = quat_to_matrix(world_b.quats), quat_to_matrix(world_out.quats)
    assert np.abs(rb - ro).max() < 1e-5


def render(s: Splats, viewmats: np.ndarray, Ks: np.ndarray, width: int) -> np.ndarray:
    p = splats_to_tensors(s)
    with torch.no_grad():
        img, _, _ = rasterize(*activated(p), sh_coeffs(p), torch.as_tensor(viewmats, dtype=torch.float32),
                              torch.as_tensor(Ks), width, width, sh_degree=s.sh_degree,
                              backgrounds=torch.full((len(viewmats), 3), 0.2))
    return img.numpy()


def test_apply_transform_keeps_the_render():
    """An object with matrix M seen by camera V is the object's splats rendered with V @ M; after
    applying M they are rendered with V alone: the two images must agree (>= 60 dB)."""
    rng = np.random.default_rng(0)
    n = 600
    base = Splats.random(n, sh_degree=3, seed=7, extent=0.4, scale=0.05)
    base.shN[:] = rng.normal(0, 0.3, base.shN.shape).astype(np.float32)     # strong view dependence
    m = similarity(scale=1.3, translate=(0.1, 0.2, -0.1))
    world = apply_transform(base, m)
    viewmats, Ks = orbit_rig(4, 64, dist=3.0)
    before = render(base, (viewmats.astype(np.float64) @ m).astype(np.float32), Ks, 64)
    after = render(world, viewmats, Ks, 64)
    assert psnr(before, after) >= 60.0, psnr(before, after)
    # without the SH rotation the images differ clearly (the test can fail)
    unrotated = Splats(world.means, world.quats, world.scales, world.opacities, world.sh0, base.shN)
    assert psnr(before, render(unrotated, viewmats, Ks, 64)) < 40.0
    assert same(apply_transform(base, np.eye(4)), base)
    with pytest.raises(SplatError, match="non-uniform scale"):
        apply_transform(base, np.diag([1.0, 2.0, 1.0, 1.0]))


def test_colour_grade_neutral_is_bit_exact_identity():
    s = Splats.random(1000, sh_degree=3, seed=3)
    assert same(grade(s, Grade()), s)
    assert same(grade(s, Grade(hue=360.0)), s)
    assert same(grade(s, Grade(exposure=0.0, contrast=1.0, saturation=1.0, temperature=-0.0)), s)
    a, b = grade_matrix(Grade())
    assert np.array_equal(a, np.eye(3)) and np.array_equal(b, np.zeros(3))


def colour(s: Splats, dirs: np.ndarray) -> np.ndarray:
    """View-dependent linear RGB before the renderer's clamp, float64."""
    coeffs = np.concatenate([s.sh0[:, None], s.shN], axis=1).astype(np.float64)
    return np.einsum("nb,nbc->nc", sh_basis(dirs, s.sh_degree), coeffs) + 0.5


def test_colour_grade_is_consistent_across_sh_bands():
    s = Splats.random(500, sh_degree=3, seed=5)
    rng = np.random.default_rng(2)
    g = Grade(exposure=0.7, contrast=1.3, saturation=0.6, hue=40.0, temperature=0.5)
    out = grade(s, g)
    a, b = grade_matrix(g)
    for _ in range(3):
        d = rng.normal(size=(500, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        assert np.abs(colour(out, d) - (colour(s, d) @ a.T + b)).max() < 1e-4
    assert np.array_equal(out.opacities, s.opacities) and np.array_equal(out.means, s.means)


def test_colour_grade_operations_do_what_they_say():
    cols = np.array([[1.0, 0.0, 0.0], [0.2, 0.4, 0.6], [0.5, 0.5, 0.5]])
    s = Splats.from_activated(np.zeros((3, 3)), np.tile([1.0, 0, 0, 0], (3, 1)), np.full((3, 3), 0.1),
                              np.full(3, 0.5), cols)
    rgb = lambda x: x.sh0 * 0.28209479177387814 + 0.5
    assert np.allclose(rgb(grade(s, Grade(exposure=1.0))), 2 * cols, atol=1e-5)
    grey = rgb(grade(s, Grade(saturation=0.0)))
    assert np.allclose(grey, grey[:, :1], atol=1e-6)
    assert np.allclose(grey[:, 0], cols @ [0.2126, 0.7152, 0.0722], atol=1e-5)
    assert np.allclose(rgb(grade(s, Grade(hue=120.0)))[0], [0, 1, 0], atol=1e-5)   # red -> green
    assert np.allclose(rgb(grade(s, Grade(hue=77.0)))[2], [0.5] * 3, atol=1e-6)    # greys stay grey
    warm = rgb(grade(s, Grade(temperature=1.0)))[2]
    assert warm[0] > warm[1] > warm[2]
    assert np.allclose(rgb(grade(s, Grade(contrast=2.0)))[2], 0.18 + 2 * (0.5 - 0.18), atol=1e-5)
    only = grade(s, Grade(exposure=1.0), mask=np.array([True, False, False]))
    assert np.allclose(rgb(only)[0], 2 * cols[0], atol=1e-5) and np.array_equal(only.sh0[1:], s.sh0[1:])
    with pytest.raises(ValueError, match="temperature=2 is outside -1..1"):
        Grade(temperature=2)


def test_split_by_labels_partitions():
    s = Splats.random(100, sh_degree=1, seed=0)
    labels = np.random.default_rng(0).integers(-1, 4, 100).astype(np.int32)
    parts = split_by_labels(s, labels)
    assert sorted(parts) == sorted(set(labels.tolist()))
    assert sum(len(p) for p in parts.values()) == 100
    for v, p in parts.items():
        assert same(p, s.subset(labels == v))
    with pytest.raises(SplatError, match=r"labels must be int\[100\]"):
        split_by_labels(s, labels[:5])
