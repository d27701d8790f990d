"""Scenes for the editing and segmentation tests (not fixtures: plain, cached builders).

* ``cube_mesh`` / ``uv_sphere_mesh`` / ``hollow_box_mesh``: closed triangle meshes (vertices, triangles);
* ``three_objects``: three separate sphere shells of splats with known object labels;
* ``orbit_rig``: cameras on a Fibonacci band around the origin (shared.cameras.look_at);
* ``label_images``: the object-index pass of a labelled splat scene (per pixel: the object with the
  largest alpha-weighted share, background where the alpha is below 0.5);
* ``trained_three_objects``: splats *trained* by backend.trainer (CPU) on renders of ``three_objects``
  (cached per test session: about 30 s on a 2-core CPU).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from shared.cameras import look_at
from shared.splats import Splats

# torch and the backend are imported inside the functions that render, so that the mesh builders
# serve torch-free tests (build.py compat) too


def cube_mesh(lo: float = -1.0, hi: float = 1.0, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (lo, hi) for y in (lo, hi) for z in (lo, hi)], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    t = []
    for a, b, c, d in quads:
        t += [(a, b, c), (a, c, d)]
    t = np.array(t)
    return v, (t[:, ::-1] if flip else t)


def hollow_box_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A cube [-1, 1]^3 with a cubic cavity [-0.5, 0.5]^3 (one mesh, two shells)."""
    vo, to = cube_mesh()
    vi, ti = cube_mesh(-0.5, 0.5, flip=True)
    return np.concatenate([vo, vi]), np.concatenate([to, ti + len(vo)])


def uv_sphere_mesh(nu: int = 32, nv: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere of radius 1 (Blender's default segment counts), poles on Z."""
    v = [[0.0, 0.0, -1.0]]
    for j in range(1, nv):
        th = -math.pi / 2 + math.pi * j / nv
        for i in range(nu):
            ph = 2 * math.pi * i / nu
            v.append([math.cos(th) * math.cos(ph), math.cos(th) * math.sin(ph), math.sin(th)])
    v.append([0.0, 0.0, 1.0])
    t = [(0, 1 + (i + 1) % nu, 1 + i) for i in range(nu)]
    for j in range(nv - 2):
        for i in range(nu):
            a, b = 1 + j * nu + i, 1 + j * nu + (i + 1) % nu
            t += [(a, b, b + nu), (a, b + nu, a + nu)]
    top, base = len(v) - 1, 1 + (nv - 2) * nu
    t += [(base + i, base + (i + 1) % nu, top) for i in range(nu)]
    return np.array(v), np.array(t)


def _shell(rng, n: int, centre, radius: float) -> np.ndarray:
    d = rng.normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True) * radius + np.asarray(centre)


CENTRES = ((-0.6, 0.0, 0.0), (0.6, 0.0, 0.0), (0.0, 0.55, 0.1))
RADII = (0.3, 0.3, 0.25)
COLOURS = ((0.9, 0.2, 0.2), (0.2, 0.9, 0.2), (0.2, 0.3, 0.9))


def three_objects(n: int = 400, seed: int = 0) -> tuple[Splats, np.ndarray]:
    """Three sphere shells of ``n`` splats each (red, green, blue) and each splat's object (1, 2, 3)."""
    rng = np.random.default_rng(seed)
    means = np.concatenate([_shell(rng, n, c, r) for c, r in zip(CENTRES, RADII)])
    cols = np.repeat(np.array(COLOURS), n, axis=0)
    N = len(means)
    splats = Splats.from_activated(means, rng.normal(size=(N, 4)),
                                   0.05 * rng.uniform(0.7, 1.3, (N, 3)), np.full(N, 0.9), cols)
    return splats, np.repeat(np.arange(1, 4), n)


def orbit_rig(count: int, width: int, dist: float = 3.2, z0: float = 0.9, z1: float = -0.7,
              phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` cameras looking at the origin from ``dist``, heights z0..z1 (unit sphere), 50 deg fov."""
    vms = []
    for i in range(count):
        z = z0 + (z1 - z0) * (i + 0.5) / count
        phi = phase + i * math.pi * (3 - math.sqrt(5))
        r = math.sqrt(1 - z * z)
        vms.append(look_at(dist * np.array([r * math.cos(phi), r * math.sin(phi), z]), np.zeros(3)))
    f = width / (2 * math.tan(math.radians(25)))
    K = np.array([[f, 0, width / 2], [0, f, width / 2], [0, 0, 1]])
    return np.stack(vms).astype(np.float32), np.stack([K] * count).astype(np.float32)


def render(splats: Splats, colors: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, width: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """(colour [C,H,W,D], alpha [C,H,W]) of ``splats`` with per-splat ``colors`` [N,D] (reference rasterizer)."""
    import torch
    from backend.params import activated, splats_to_tensors
    from backend.render import rasterize
    if len(splats) == 0:
        return (np.zeros((len(viewmats), width, width, colors.shape[1]), np.float32),
                np.zeros((len(viewmats), width, width), np.float32))
    p = splats_to_tensors(splats)
    with torch.no_grad():
        img, a, _ = rasterize(*activated(p), torch.as_tensor(colors, dtype=torch.float32),
                              torch.as_tensor(viewmats), torch.as_tensor(Ks), width, width)
    return img.numpy(), a[..., 0].numpy()


def silhouettes(splats: Splats, viewmats: np.ndarray, Ks: np.ndarray, width: int) -> np.ndarray:
    """bool[C,H,W]: where ``splats`` drawn alone reach alpha 0.5."""
    return render(splats, np.ones((len(splats), 1), np.float32), viewmats, Ks, width)[1] >= 0.5


def label_images(splats: Splats, objects: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, width: int
                 ) -> np.ndarray:
    """u8[C,H,W] object-index pass: the object with the largest alpha-weighted share of each pixel,
    0 where the scene's alpha is below 0.5."""
    k = int(objects.max())
    img, alpha = render(splats, np.eye(k + 1, dtype=np.float32)[objects], viewmats, Ks, width)
    lab = np.argmax(img[..., 1:], axis=-1) + 1
    lab[alpha < 0.5] = 0
    return lab.astype(np.uint8)


def rgba_images(splats: Splats, viewmats: np.ndarray, Ks: np.ndarray, width: int) -> np.ndarray:
    img, alpha = render(splats, splats.base_colors(), viewmats, Ks, width)
    rgb = np.clip(img / np.maximum(alpha[..., None], 1e-6), 0, 1)
    return (np.concatenate([rgb, alpha[..., None]], -1) * 255 + 0.5).astype(np.uint8)


TRAIN_RES = 64


@functools.lru_cache(maxsize=1)
def trained_three_objects() -> tuple[Splats, Splats, np.ndarray]:
    """(trained splats, the ground-truth scene, its object labels): 200 CPU steps on 24 views of 64 px."""
    import torch
    from backend.trainer import train
    from shared.jobkinds.train import SPEC as TRAIN
    torch.manual_seed(0)
    truth, objects = three_objects()
    viewmats, Ks = orbit_rig(24, TRAIN_RES)
    images = rgba_images(truth, viewmats, Ks, TRAIN_RES)
    rng = np.random.default_rng(1)
    points = (truth.means + rng.normal(0, 0.03, truth.means.shape)).astype(np.float32)
    res = train(images, viewmats, Ks, points, (truth.base_colors() * 255).astype(np.uint8),
                TRAIN.make(steps=200, sh_degree=0, holdout_every=0, report_interval_s=0.0, preview_every=0))
    return res.splats, truth, objects
