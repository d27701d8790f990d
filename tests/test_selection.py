"""shared.selection on constructed scenes: exact counts for volumes, thresholds, colour and floaters;
invert/grow/shrink; clear errors for bad meshes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edit_scenes import cube_mesh, hollow_box_mesh, uv_sphere_mesh
from shared.rotations import quat_to_matrix
from shared.selection import (by_color, by_color_of, by_opacity, by_size, floaters, grow, inside_box,
                              inside_mesh, inside_sphere, invert, shrink, splat_sizes)
from shared.splats import Splats

pytestmark = pytest.mark.bpy_only


def grid(step: float = 0.1, half: float = 1.95) -> np.ndarray:
    """Points at odd multiples of step/2 (never on a surface at a multiple of 0.5): 40^3 = 64000."""
    a = np.arange(-half, half + 1e-9, step)
    return np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)


def similarity(rot_axis_angle=((1.0, 2.0, 3.0), 0.7), scale: float = 1.0, translate=(0.0, 0.0, 0.0)) -> np.ndarray:
    axis, angle = rot_axis_angle
    axis = np.asarray(axis) / np.linalg.norm(axis)
    q = np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(q) * scale
    m[:3, 3] = translate
    return m


def local(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(m)
    return points @ inv[:3, :3].T + inv[:3, 3]


def test_cube_mesh_counts_exactly_with_rays_through_edges_and_vertices():
    p = grid()
    # axis-aligned unit cube scaled by 0.5: 10 grid values per axis inside -> 1000 points; the grid
    # puts points under the faces' diagonal edges (x == y), where a naive ray test double counts
    m = np.diag([0.5, 0.5, 0.5, 1.0])
    sel = inside_mesh(p, *cube_mesh(), m)
    assert sel.sum() == 1000
    assert np.array_equal(sel, (np.abs(p) < 0.5).all(axis=1))
    # rotated, scaled, moved: compare with the analytic box in the cube's own frame
    m = similarity(scale=0.8, translate=(0.3, -0.2, 0.1))
    expected = (np.abs(local(p, m)) <= 1).all(axis=1)
    assert np.array_equal(inside_mesh(p, *cube_mesh(), m), expected) and expected.sum() > 4000
    assert np.array_equal(inside_box(p, m), expected)


def test_vertex_hits_count_once():
    # rays straight through the cube's vertices and edges from outside and inside
    v, t = cube_mesh()
    pts = np.array([[1, 1, -3], [-1, 1, -3], [1, 0, -3], [0, 1, -3], [0, 0, -3], [0.5, 0.5, 0],
                    [0.5, 0.5, 2], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-0.999, 0.999, 0.2]], float)
    got = inside_mesh(pts, v, t, resolution=4)
    assert got.tolist() == [False, False, False, False, False, True, False, got[7], True, True]


def test_hollow_box_and_uv_sphere():
    p = grid()
    sel = inside_mesh(p, *hollow_box_mesh())
    # 40 values per axis: |x| < 1 -> 20 values, |x| < 0.5 -> 10 values
    assert sel.sum() == 20 ** 3 - 10 ** 3
    rng = np.random.default_rng(3)
    q = rng.uniform(-1.2, 1.2, (200_000, 3))
    r = np.linalg.norm(q, axis=1)
    q = q[(r < 0.95) | (r > 1.0)]                    # leave out the band between the polygons and the sphere
    m = np.diag([1.5, 1.5, 1.5, 1.0])
    m[:3, 3] = (0.1, 0.2, -0.3)
    qw = q * 1.5 + m[:3, 3]
    sel = inside_mesh(qw, *uv_sphere_mesh(), m)
    assert sel.sum() == (np.linalg.norm(q, axis=1) < 0.95).sum()
    assert np.array_equal(sel, np.linalg.norm(q, axis=1) < 0.95)
    assert np.array_equal(inside_sphere(qw, m), np.linalg.norm(q, axis=1) <= 1.0)


def test_open_mesh_and_bad_input_are_refused():
    v, t = cube_mesh()
    with pytest.raises(ValueError, match="not closed: 4 edges"):
        inside_mesh(np.zeros((3, 3)), v, t[:-2])
    with pytest.raises(ValueError, match="no faces"):
        inside_mesh(np.zeros((3, 3)), v, np.zeros((0, 3), int))
    with pytest.raises(ValueError, match="index vertices 0..7, found 0..8"):
        inside_mesh(np.zeros((3, 3)), v, np.where(t == 7, 8, t))
    with pytest.raises(ValueError, match="singular"):
        inside_box(np.zeros((3, 3)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"points must be \[N, 3\]"):
        inside_sphere(np.zeros((3, 2)))


def test_duplicate_vertices_are_welded():
    v, t = cube_mesh()
    # every triangle with its own three vertices (as an unwelded import gives)
    vs = v[t].reshape(-1, 3)
    ts = np.arange(len(vs)).reshape(-1, 3)
    p = grid()
    assert np.array_equal(inside_mesh(p, vs, ts), inside_mesh(p, v, t))


def test_opacity_size_and_colour_thresholds_exact_counts():
    n = 100
    alphas = (np.arange(n) + 0.5) / n                 # 0.005 .. 0.995
    sizes = 0.01 + 0.001 * np.arange(n)              # largest axis: 0.010 .. 0.109
    scales = np.stack([sizes, sizes * 0.5, sizes * 0.25], 1)
    cols = np.zeros((n, 3))
    cols[:40] = (0.8, 0.1, 0.1)
    cols[40:70] = (0.1, 0.8, 0.1)
    cols[70:] = (0.79, 0.12, 0.1)
    s = Splats.from_activated(np.zeros((n, 3)), np.tile([1.0, 0, 0, 0], (n, 1)), scales, alphas, cols)
    assert by_opacity(s, 0.2).sum() == 80
    assert by_opacity(s, 0.2, 0.5).sum() == 30
    assert by_opacity(s, high=0.1).sum() == 10
    assert by_size(s, low=0.0595).sum() == 50 and by_size(s, high=0.0595).sum() == 50
    assert by_size(s, 0.0195, 0.0305).sum() == 11     # 0.020 .. 0.030
    assert np.allclose(splat_sizes(s, "mean"), sizes * 0.5, rtol=1e-5)
    assert by_color(s, (0.8, 0.1, 0.1), 0.05).sum() == 70
    assert by_color(s, (0.8, 0.1, 0.1), 0.001).sum() == 40
    assert by_color_of(s, 50, 0.1).sum() == 30
    with pytest.raises(IndexError, match="picked splat 100"):
        by_color_of(s, 100, 0.1)


def blob_with_floaters():
    """A dense 20^3 block (8000 splats, 5 cm apart, 2 cm sizes), 5 far clusters of 3, 4 huge splats
    and 6 near-transparent ones inside the block: 8000 + 25 splats, the 25 last are floaters."""
    rng = np.random.default_rng(0)
    a = np.arange(20) * 0.05
    block = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
    clusters = np.concatenate([c + rng.normal(0, 0.01, (3, 3)) for c in
                               [(3, 0, 0), (-2, 1, 0), (0, 3, 2), (2, 2, -2), (-1, -2, 2)]])
    huge = rng.uniform(0.2, 0.8, (4, 3))
    faint = rng.uniform(0.2, 0.8, (6, 3))
    means = np.concatenate([block, clusters, huge, faint])
    n = len(means)
    sizes = np.full(n, 0.02)
    sizes[8015:8019] = 1.0
    alphas = np.full(n, 0.8)
    alphas[8019:] = 0.002
    s = Splats.from_activated(means, rng.normal(size=(n, 4)), np.stack([sizes] * 3, 1), alphas,
                              rng.uniform(0, 1, (n, 3)))
    truth = np.zeros(n, bool)
    truth[8000:] = True
    return s, truth


def test_floaters_exact_on_constructed_scene():
    s, truth = blob_with_floaters()
    sel = floaters(s, 0.5)
    assert sel.sum() == 25 and np.array_equal(sel, truth)
    assert not floaters(s, 0.0).any()
    assert floaters(s, 1.0).sum() >= 25
    with pytest.raises(ValueError, match="strength must be in 0..1"):
        floaters(s, 1.5)


def test_invert_grow_shrink_on_a_grid():
    a = np.arange(10) * 0.1
    p = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)          # 1000 points, 10 cm apart
    centre = np.all(np.abs(p - 0.4) < 0.01, axis=1)                               # the point (0.4, 0.4, 0.4)
    assert centre.sum() == 1
    assert invert(centre).sum() == 999
    g = grow(p, centre, radius=0.1)
    assert g.sum() == 27                                                          # its 26-neighbourhood
    assert grow(p, g, radius=0.1).sum() == 125
    assert np.array_equal(shrink(p, grow(p, g, radius=0.1), radius=0.1), g)
    assert shrink(p, g, radius=0.1).sum() == 1
    assert grow(p, np.zeros(1000, bool)).sum() == 0
