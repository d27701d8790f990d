"""The pure-torch reference rasterizer: known answers, gradients, SH, and (on a GPU) parity with
gsplat's CUDA rasterizer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.render import rasterize, resolve_backend
from backend.render.reference import ALPHA_THRESHOLD, project_gaussians, rasterize_reference



def pinhole(f: float, cx: float, cy: float, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]], dtype=dtype)


def splats(means, scale, opacity, colors, dtype=torch.float32):
    means = torch.tensor(means, dtype=dtype).reshape(-1, 3)
    n = len(means)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dtype)
    scales = torch.full((n, 3), float(scale), dtype=dtype)
    opac = torch.tensor(opacity, dtype=dtype).reshape(n)
    cols = torch.tensor(colors, dtype=dtype).reshape(n, -1)
    return means, quats, scales, opac, cols


EYE = torch.eye(4)[None]


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_single_gaussian_matches_closed_form(backend):
    # A sphere of std s at depth z projects to an isotropic 2D Gaussian of variance (f s / z)^2,
    # plus the 0.3 px^2 low-pass; its mean lands on the centre of pixel (16, 16).
    f, s, z, o = 40.0, 0.05, 2.0, 0.7
    W = H = 33
    args = splats([0, 0, z], s, [o], [1.0, 0.5, 0.25])
    colors, alphas, info = rasterize(*args, EYE, pinhole(f, 16.5, 16.5), W, H, backend=backend)
    var = (f * s / z) ** 2 + 0.3
    jj, ii = np.meshgrid(np.arange(W), np.arange(H), indexing="xy")
    r2 = (jj - 16) ** 2 + (ii - 16) ** 2
    expected = o * np.exp(-r2 / (2 * var))
    expected[expected < ALPHA_THRESHOLD] = 0.0
    got = alphas[0, ..., 0].numpy()
    assert got[16, 16] == pytest.approx(o, abs=1e-6)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)   # float32 rounding
    np.testing.assert_allclose(colors[0].numpy(), expected[..., None] * np.array([1.0, 0.5, 0.25]), rtol=2e-5, atol=1e-6)
    # radius: the opacity-aware 3-sigma box of gsplat 1.5.3
    extend = min(3.33, math.sqrt(2 * math.log(o / ALPHA_THRESHOLD)))
    assert info["radii"].tolist() == [[[math.ceil(extend * math.sqrt(var))] * 2]]
    assert info["backend"] == backend


def test_off_axis_projection_matches_ewa_jacobian():
    # An elongated Gaussian off the optical axis: the 2D covariance is J Sigma J^T (+0.3 I) with
    # the perspective Jacobian at the mean.
    f, W, H = 50.0, 64, 48
    mean = np.array([0.4, -0.2, 2.5])
    q = np.array([0.9, 0.2, -0.3, 0.1]); q /= np.linalg.norm(q)
    sc = np.array([0.08, 0.02, 0.04])
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    cov3 = R @ np.diag(sc ** 2) @ R.T
    tx, ty, tz = mean
    J = np.array([[f / tz, 0, -f * tx / tz ** 2], [0, f / tz, -f * ty / tz ** 2]])
    cov2 = J @ cov3 @ J.T + 0.3 * np.eye(2)
    conic = np.linalg.inv(cov2)
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    K = pinhole(f, 32.0, 24.0, torch.float64)
    radii, means2d, depths, conics, _ = project_gaussians(
        t(mean[None]), t(q[None]), t(sc[None]), t([0.9]), torch.eye(4, dtype=torch.float64)[None], K, W, H)
    np.testing.assert_allclose(means2d[0, 0].numpy(), [f * tx / tz + 32, f * ty / tz + 24], rtol=1e-12)
    np.testing.assert_allclose(conics[0, 0].numpy(), [conic[0, 0], conic[0, 1], conic[1, 1]], rtol=1e-10)
    assert depths[0, 0].item() == pytest.approx(2.5)


def test_two_splats_composite_front_to_back_whatever_the_input_order():
    f, W = 40.0, 32
    K = pinhole(f, 16.5, 16.5)
    red_front = ([0, 0, 2.0], [1.0, 0, 0])
    green_back = ([0, 0, 3.0], [0, 1.0, 0])
    for order in ([red_front, green_back], [green_back, red_front]):
        args = splats([m for m, _ in order], 0.1, [0.8, 0.8], [c for _, c in order])
        colors, alphas, _ = rasterize(*args, EYE, K, W, W)
        np.testing.assert_allclose(colors[0, 16, 16].numpy(), [0.8, 0.2 * 0.8, 0.0], atol=1e-6)
        assert alphas[0, 16, 16, 0].item() == pytest.approx(1 - 0.2 * 0.2, abs=1e-6)


def test_background_depth_and_transmittance_cutoff():
    f, W = 40.0, 32
    K = pinhole(f, 16.5, 16.5)
    args = splats([[0, 0, 2.0], [0, 0, 3.0]], 0.1, [0.6, 0.5], [[1.0, 0, 0], [0, 1.0, 0]])
    bg = torch.tensor([[0.2, 0.3, 0.9]])
    colors, alphas, _ = rasterize(*args, EYE, K, W, W, backgrounds=bg, render_mode="RGB+ED")
    w1, w2 = 0.6, 0.4 * 0.5
    a = w1 + w2
    assert alphas[0, 16, 16, 0].item() == pytest.approx(a, abs=1e-6)
    np.testing.assert_allclose(colors[0, 16, 16, :3].numpy(),
                               [w1 + (1 - a) * 0.2, w2 + (1 - a) * 0.3, (1 - a) * 0.9], atol=1e-6)
    assert colors[0, 16, 16, 3].item() == pytest.approx((w1 * 2 + w2 * 3) / a, abs=1e-5)   # expected depth
    np.testing.assert_allclose(colors[0, 0, 0, :3].numpy(), [0.2, 0.3, 0.9], atol=1e-6)    # uncovered: bg
    # an opaque splat (alpha clamps to 0.999) ends the pixel: the one behind it would bring the
    # transmittance to <= 1e-4, so gsplat skips it entirely
    args = splats([[0, 0, 2.0], [0, 0, 3.0]], 0.1, [1.0, 0.95], [[1.0, 0, 0], [0, 1.0, 0]])
    colors, alphas, _ = rasterize(*args, EYE, K, W, W)
    np.testing.assert_allclose(colors[0, 16, 16].numpy(), [0.999, 0, 0], atol=1e-6)
    assert alphas[0, 16, 16, 0].item() == pytest.approx(0.999, abs=1e-6)


def test_culling_behind_camera_and_outside_image():
    K = pinhole(40.0, 16.0, 16.0)
    args = splats([[0, 0, -2.0], [5.0, 0, 2.0], [0, 0, 0.005]], 0.05, [0.9, 0.9, 0.9], [[1.0, 1, 1]] * 3)
    colors, alphas, info = rasterize(*args, EYE, K, 32, 32)
    assert (info["radii"] == 0).all()
    assert alphas.abs().max().item() == 0.0


def random_scene(n: int, seed: int, C: int = 2, W: int = 40, H: int = 32, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.6, 1.2, 1.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.02
    opac = torch.rand(n, generator=g) * 0.8 + 0.15
    colors = torch.rand(n, 3, generator=g)
    viewmats = torch.eye(4).repeat(C, 1, 1)
    for c in range(C):   # cameras on a small arc around the cloud, looking at it
        a = (c - (C - 1) / 2) * 0.3
        R = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
        viewmats[c, :3, :3] = R
        viewmats[c, :3, 3] = torch.tensor([0, 0, 2.5])
    Ks = torch.tensor([[W * 1.1, 0, W / 2], [0, W * 1.1, H / 2], [0, 0, 1]]).repeat(C, 1, 1)
    out = [means, quats, scales, opac, colors, viewmats, Ks]
    return [t.to(device=device, dtype=dtype) for t in out]


def test_tile_batching_does_not_change_the_image():
    scene = random_scene(300, 1)
    a = rasterize_reference(*scene, 40, 32)
    b = rasterize_reference(*scene, 40, 32, max_elements=256 * 8)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)


def test_info_carries_what_gsplat_strategies_read():
    means, quats, scales, opac, colors, viewmats, Ks = random_scene(50, 2, C=3)
    means[:5, 2] = -10.0          # behind every camera: culled, no gradient
    means.requires_grad_()
    img, alpha, info = rasterize(means, quats, scales, opac, colors, viewmats, Ks, 40, 32)
    assert img.shape == (3, 32, 40, 3) and alpha.shape == (3, 32, 40, 1)
    assert info["radii"].shape == (3, 50, 2) and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (3, 50, 2) and info["depths"].shape == (3, 50)
    assert info["gaussian_ids"] is None and info["n_cameras"] == 3
    assert (info["width"], info["height"]) == (40, 32)
    info["means2d"].retain_grad()
    img.sum().backward()
    g = info["means2d"].grad
    visible = (info["radii"] > 0).all(-1)
    assert g.abs().sum(-1)[visible].gt(0).float().mean() > 0.9
    assert (~visible).sum() >= 15 and g[~visible].abs().max().item() == 0.0


def test_gradients_match_finite_differences():
    # float64, a handful of splats on a small image; every input that carries a gradient
    means, quats, scales, opac, colors, viewmats, Ks = random_scene(4, 3, C=1, W=20, H=16, dtype=torch.float64)
    means = means * 0.5
    scales = scales + 0.05
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)

    g = torch.Generator().manual_seed(0)
    w_img = torch.randn(2, 1, 16, 20, 4, generator=g, dtype=torch.float64)
    w_a = torch.randn(2, 1, 16, 20, 1, generator=g, dtype=torch.float64)

    def f(m, q, s, o, c):
        # two random projections of every output pixel: one backward pass each in gradcheck
        img, a, _ = rasterize_reference(m, q, s, o, c, viewmats, Ks, 20, 16, backgrounds=bg, render_mode="RGB+ED")
        return (w_img * img).sum(dim=(1, 2, 3, 4)) + (w_a * a).sum(dim=(1, 2, 3, 4))

    inputs = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_sh_degree_1_colour_follows_view_direction():
    from shared.sh import eval_sh, rgb_to_sh0

    sh0 = rgb_to_sh0(np.array([[0.4, 0.5, 0.6]]))
    shN = np.array([[[0.3, -0.2, 0.1], [0.0, 0.25, -0.1], [-0.3, 0.1, 0.2]]], np.float32)
    coeffs = torch.tensor(np.concatenate([sh0[:, None], shN], axis=1))
    means, quats, scales, opac, _ = splats([0, 0, 0], 0.05, [0.999], [0, 0, 0])
    # two cameras looking at the origin from +x and from -y (OpenCV axes: rows are x, y, z of the camera)
    looks = {"+x": ([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], [2.0, 0, 0]),
             "-y": ([[1, 0, 0], [0, 0, -1], [0, 1, 0]], [0, -2.0, 0])}
    viewmats = []
    for R, centre in looks.values():
        R = torch.tensor(R, dtype=torch.float32)
        v = torch.eye(4)
        v[:3, :3] = R
        v[:3, 3] = -R @ torch.tensor(centre)
        viewmats.append(v)
    viewmats = torch.stack(viewmats)
    K = pinhole(40.0, 16.5, 16.5).repeat(2, 1, 1)
    img, alpha, _ = rasterize(means, quats, scales, opac, coeffs, viewmats, K, 33, 33, sh_degree=1)
    got = (img[:, 16, 16] / alpha[:, 16, 16]).numpy()
    for i, (_, centre) in enumerate(looks.values()):
        d = -np.array(centre) / np.linalg.norm(centre)        # camera -> splat
        want = eval_sh(sh0, shN, d[None])[0]
        np.testing.assert_allclose(got[i], want, atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 0.1
    # degree 0 on the same coefficients ignores the view
    img0, alpha0, _ = rasterize(means, quats, scales, opac, coeffs, viewmats, K, 33, 33, sh_degree=0)
    c0 = (img0[:, 16, 16] / alpha0[:, 16, 16]).numpy()
    np.testing.assert_allclose(c0[0], c0[1], atol=1e-6)


def test_bad_input_is_named():
    scene = random_scene(5, 4)
    with pytest.raises(ValueError, match="the reference rasterizer has no packed mode"):
        rasterize_reference(*scene, 40, 32, packed=True)
    with pytest.raises(ValueError, match=r"render_mode must be one of \(.*\), got 'RGBA'"):
        rasterize_reference(*scene, 40, 32, render_mode="RGBA")
    bad = list(scene)
    bad[2] = bad[2][:4]
    with pytest.raises(ValueError, match=r"scales must be \[5, 3\], got \[4, 3\]"):
        rasterize_reference(*bad, 40, 32)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'gsplat', 'fast', 'reference'\), got 'vulkan'"):
        resolve_backend("cpu", "vulkan")
    assert resolve_backend("cpu") == "fast"        # the Numba rasterizer is the CPU default


def test_render_png(artifacts):
    from PIL import Image
    scene = random_scene(400, 5, C=1, W=128, H=96)
    scene[-1] = torch.tensor([[[140.0, 0, 64], [0, 140.0, 48], [0, 0, 1]]])
    img, alpha, _ = rasterize(*scene, 128, 96, backgrounds=torch.ones(1, 3))
    Image.fromarray((img[0].clamp(0, 1).numpy() * 255).astype(np.uint8)).save(artifacts / "render_reference.png")
    # The saved picture is the black-background render composited over white, and the cloud
    # covers most of the frame but not all of it (the uncovered pixels are pure white).
    img_black, alpha_black, _ = rasterize(*scene, 128, 96)
    torch.testing.assert_close(alpha, alpha_black, atol=0, rtol=0)
    torch.testing.assert_close(img, img_black + (1 - alpha), atol=1e-6, rtol=0)
    uncovered = alpha[0, ..., 0] == 0
    assert 0 < uncovered.float().mean() < 0.2 and (alpha[0, ..., 0] > 0.5).float().mean() > 0.5
    assert (img[0][uncovered] == 1.0).all()


@pytest.mark.gpu
def test_reference_matches_gsplat_cuda():
    dev = "cuda"
    scene = random_scene(2000, 7, C=3, W=96, H=72, device=dev)
    sh = torch.randn(2000, 4, 3, device=dev, generator=torch.Generator(dev).manual_seed(0)) * 0.3
    params = [t.clone().requires_grad_() for t in scene[:4]] + [sh.requires_grad_()]
    outs = {}
    for name in ("gsplat", "reference"):
        for p in params:
            p.grad = None
        img, alpha, info = rasterize(*params, scene[5], scene[6], 96, 72, sh_degree=1,
                                     backgrounds=torch.full((3, 3), 0.3, device=dev), render_mode="RGB+ED",
                                     backend=name)
        info["means2d"].retain_grad()
        (img[..., :3].square().sum() + alpha.sum() + 0.01 * img[..., 3].sum()).backward()
        outs[name] = (img.detach(), alpha.detach(), info["radii"], info["means2d"].grad.clone(),
                      [p.grad.clone() for p in params])
    g, r = outs["gsplat"], outs["reference"]
    mse = (g[0][..., :3] - r[0][..., :3]).square().mean().item()
    psnr = -10 * math.log10(max(mse, 1e-20))
    assert psnr >= 40, psnr
    assert (g[2] == r[2]).float().mean() > 0.99                    # same radii almost everywhere
    for a, b in zip(g[4] + [g[3]], r[4] + [r[3]]):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert cos > 0.99, cos
