"""The fast (Numba) rasterizer against the pure-torch reference: images, alphas, depths, info and the
gradients of every input the trainer optimises, across SH degrees, backgrounds, render modes,
cameras and edge cases; absgrad against its definition; and a short training run through the
trainer with the fast path as the CPU default, reaching the reference's PSNR."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.render import rasterize, resolve_backend
from backend.render.fast import rasterize_fast
from backend.render.reference import rasterize_reference
from shared.cameras import look_at

# What "agree" means here (float32 inputs; the fast path accumulates in float64):
MIN_PSNR_DB = 40.0        # the bar for images; in practice they agree to ~1e-6 (> 100 dB)
MAX_ABS_DIFF = 1e-4       # any pixel, any channel (relative for depths above 1 m)
MAX_REL_GRAD = 1e-3       # |g_fast - g_ref| / |g_ref| per tensor (observed ~1e-5)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-30))


def cameras(C: int, W: int, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """C cameras around the origin at distance 2.2..3, different intrinsics, one principal point off-centre."""
    vms, Ks = [], []
    for c in range(C):
        a = 2 * math.pi * c / C + 0.3
        eye = np.array([math.cos(a) * (2.2 + 0.4 * c), 0.6 * math.sin(1.7 * c), math.sin(a) * (2.2 + 0.4 * c)])
        vms.append(look_at(eye, np.zeros(3)))
        f = W * (0.9 + 0.25 * c)
        cx, cy = W / 2 + (5.0 if c == 1 else 0.0), H / 2 - (3.0 if c == 1 else 0.0)
        Ks.append([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    return torch.tensor(np.stack(vms), dtype=torch.float32), torch.tensor(Ks, dtype=torch.float32)


def scene_with_edge_cases(n: int, seed: int, sh_degree: int | None, viewmats: torch.Tensor) -> list[torch.Tensor]:
    """A random cloud plus: a Gaussian behind camera 0, one far off screen, a tiny one, a huge one,
    one at zero opacity and one barely above the 1/255 cut, one just in front of camera 0."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.4
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.06 + 0.01
    opac = torch.rand(n, generator=g) * 0.85 + 0.1
    cam0 = torch.inverse(viewmats[0])                       # camera-to-world of camera 0
    fwd0, pos0 = cam0[:3, 2], cam0[:3, 3]
    extra = [
        (pos0 - 0.5 * fwd0, 0.05, 0.9),                     # behind camera 0
        (torch.tensor([40.0, 0.0, 0.0]), 0.05, 0.9),        # far off every screen
        (torch.tensor([0.1, 0.1, 0.0]), 1e-5, 0.9),         # tiny: only the 0.3 px^2 low-pass is left
        (torch.tensor([0.0, 0.0, 0.0]), 0.9, 0.35),         # huge: covers the image
        (torch.tensor([0.2, -0.1, 0.1]), 0.05, 0.0),        # zero opacity
        (torch.tensor([-0.2, 0.1, 0.0]), 0.05, 1.0 / 255 + 1e-4),   # barely above the cut
        (pos0 + 0.05 * fwd0, 0.01, 0.8),                    # just in front of camera 0
    ]
    means = torch.cat([means, torch.stack([e[0] for e in extra])])
    quats = torch.cat([quats, torch.tensor([[1.0, 0, 0, 0]] * len(extra))])
    scales = torch.cat([scales, torch.tensor([[e[1]] * 3 for e in extra])])
    opac = torch.cat([opac, torch.tensor([e[2] for e in extra])])
    N = len(means)
    if sh_degree is None:
        colors = torch.rand(N, 3, generator=g)
    else:
        colors = torch.randn(N, 16, 3, generator=g) * 0.3
        colors[:, 0] = (torch.rand(N, 3, generator=g) - 0.5) / 0.2820947917738781
    return [means, quats, scales, opac, colors]


def render_and_grads(fn, params, viewmats, Ks, W, H, **kw):
    ps = [p.clone().requires_grad_(True) for p in params]
    img, alpha, info = fn(*ps, viewmats, Ks, W, H, **kw)
    info["means2d"].retain_grad()
    g = torch.Generator().manual_seed(7)
    wi = torch.rand(img.shape, generator=g)
    wa = torch.rand(alpha.shape, generator=g)
    ((img * wi).sum() + (alpha * wa).sum()).backward()
    return img.detach(), alpha.detach(), info, [p.grad for p in ps] + [info["means2d"].grad]


def assert_agree(ref, fast, names=("means", "quats", "scales", "opacities", "colors", "means2d")):
    (ri, ra, rinfo, rg), (fi, fa, finfo, fg) = ref, fast
    assert psnr(fi, ri) >= MIN_PSNR_DB and psnr(fa, ra) >= MIN_PSNR_DB
    assert ((fi - ri).abs() <= MAX_ABS_DIFF * ri.abs().clamp_min(1)).all()     # depth is in metres
    assert ((fa - ra).abs() <= MAX_ABS_DIFF).all()
    for name, a, b in zip(names, rg, fg):
        if a is None:                  # not in the reference's graph (colours in "D" mode)
            assert b is None or not b.any(), name
            continue
        assert b is not None and torch.isfinite(b).all(), name
        rel = float((a - b).norm() / a.norm().clamp_min(1e-12))
        assert rel <= MAX_REL_GRAD, (name, rel)
    # the info the trainer and gsplat's strategies read
    rr, fr = rinfo["radii"], finfo["radii"]
    assert ((rr - fr).abs() <= 1).all() and (rr == fr).float().mean() >= 0.99   # ceil() may flip in float64
    assert torch.equal(rr > 0, fr > 0)
    vis = (rr > 0).all(-1)
    for key in ("means2d", "conics", "depths", "opacities"):
        torch.testing.assert_close(finfo[key][vis], rinfo[key][vis], rtol=1e-4, atol=1e-4)
    assert finfo["backend"] == "fast" and finfo["width"] == rinfo["width"] and finfo["n_cameras"] == rinfo["n_cameras"]


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_images_and_gradients_match_the_reference_across_sh_degrees(sh_degree):
    W, H = 48, 36
    viewmats, Ks = cameras(3, W, H)
    params = scene_with_edge_cases(300, seed=sh_degree or 0, sh_degree=sh_degree, viewmats=viewmats)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0], [0.0, 0.3, 0.1]])
    kw = dict(sh_degree=sh_degree, backgrounds=bg)
    ref = render_and_grads(rasterize_reference, params, viewmats, Ks, W, H, **kw)
    fast = render_and_grads(rasterize_fast, params, viewmats, Ks, W, H, **kw)
    assert_agree(ref, fast)
    # the edge cases are culled the same way: behind/in front of camera 0, off screen, zero opacity
    n = len(params[0]) - 7
    assert (fast[2]["radii"][0, [n, n + 1, n + 4]] == 0).all()
    assert (fast[2]["radii"][:, n + 3] > 0).all()          # the huge one is seen by every camera
    assert (ref[0] > 0).any() and ref[1].max() > 0.5      # the scene is not empty


@pytest.mark.parametrize("render_mode", ["RGB+ED", "D", "ED", "RGB+D"])
def test_depth_render_modes_match(render_mode):
    W, H = 40, 32
    viewmats, Ks = cameras(2, W, H)
    params = scene_with_edge_cases(200, seed=3, sh_degree=1, viewmats=viewmats)
    kw = dict(sh_degree=1, render_mode=render_mode, backgrounds=torch.ones(2, 3))
    assert_agree(render_and_grads(rasterize_reference, params, viewmats, Ks, W, H, **kw),
                 render_and_grads(rasterize_fast, params, viewmats, Ks, W, H, **kw))


@pytest.mark.parametrize("case", ["antialiased", "sh_per_camera", "sh_degree_4", "odd_size"])
def test_paths_outside_the_fused_projection_match(case):
    """Antialiased mode, per-camera SH and SH degree 4 project in torch (the reference's code) and
    composite with the Numba kernels; an image size that is not a multiple of 16 crops the tiles."""
    W, H = (37, 23) if case == "odd_size" else (40, 32)
    viewmats, Ks = cameras(2, W, H)
    params = scene_with_edge_cases(150, seed=5, sh_degree=3, viewmats=viewmats)
    kw: dict = dict(sh_degree=3)
    if case == "antialiased":
        kw["rasterize_mode"] = "antialiased"
    elif case == "sh_per_camera":
        params[4] = params[4][None].repeat(2, 1, 1, 1) * torch.tensor([1.0, 0.8])[:, None, None, None]
    elif case == "sh_degree_4":
        params[4] = torch.cat([params[4], 0.1 * torch.randn(len(params[4]), 9, 3)], 1)
        kw["sh_degree"] = 4
    assert_agree(render_and_grads(rasterize_reference, params, viewmats, Ks, W, H, **kw),
                 render_and_grads(rasterize_fast, params, viewmats, Ks, W, H, **kw))


def test_float64_inputs_match():
    W, H = 32, 32
    viewmats, Ks = cameras(1, W, H)
    params = [p.double() for p in scene_with_edge_cases(100, seed=9, sh_degree=2, viewmats=viewmats)]
    kw = dict(sh_degree=2)
    ref = render_and_grads(rasterize_reference, params, viewmats.double(), Ks.double(), W, H, **kw)
    fast = render_and_grads(rasterize_fast, params, viewmats.double(), Ks.double(), W, H, **kw)
    assert fast[0].dtype == torch.float64 and fast[3][0].dtype == torch.float64
    assert_agree(ref, fast)


def test_absgrad_is_the_sum_of_per_pixel_gradient_magnitudes():
    """gsplat's absgrad: for each Gaussian, the sum over pixels of |d loss_pixel / d means2d|,
    computed here pixel by pixel through the reference's autograd."""
    W, H = 16, 12
    viewmats, Ks = cameras(1, W, H)
    params = scene_with_edge_cases(12, seed=2, sh_degree=None, viewmats=viewmats)
    wimg = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(3))
    ps = [p.clone().requires_grad_(True) for p in params]
    img, _, info = rasterize_fast(*ps, viewmats, Ks, W, H, absgrad=True)
    info["means2d"].retain_grad()
    (img * wimg).sum().backward()
    absgrad = info["means2d"].absgrad
    expected = torch.zeros_like(absgrad)
    img_r, _, info_r = rasterize_reference(*[p.clone().requires_grad_(True) for p in params], viewmats, Ks, W, H)
    for y in range(H):
        for x in range(W):
            g, = torch.autograd.grad((img_r[0, y, x] * wimg[0, y, x]).sum(), info_r["means2d"], retain_graph=True)
            expected += g.abs()
    assert expected.sum() > 0
    torch.testing.assert_close(absgrad, expected, rtol=1e-3, atol=1e-6)
    assert (absgrad + 1e-6 >= info["means2d"].grad.abs()).all()
    with pytest.raises(ValueError, match="the reference rasterizer does not support it"):
        rasterize_reference(*params, viewmats, Ks, W, H, absgrad=True)


def test_auto_picks_the_fast_path_on_cpu_and_it_feeds_gsplats_strategy():
    from gsplat.strategy import DefaultStrategy
    assert resolve_backend("cpu") == "fast"
    W, H = 32, 32
    viewmats, Ks = cameras(1, W, H)
    p = scene_with_edge_cases(50, seed=1, sh_degree=0, viewmats=viewmats)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in
                                     zip(("means", "quats", "scales", "opacities", "colors"), p)})
    opts = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in params}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1000, absgrad=True)
    state = strategy.initialize_state()
    img, _, info = rasterize(params["means"], params["quats"], params["scales"], params["opacities"],
                             params["colors"], viewmats, Ks, W, H, sh_degree=0, absgrad=True)
    assert info["backend"] == "fast"
    strategy.step_pre_backward(params, opts, state, 0, info)
    img.sum().backward()
    strategy.step_post_backward(params, opts, state, 0, info, packed=False)
    assert state["count"].sum() > 0 and state["grad2d"].sum() > 0


def test_bad_input_is_named_like_the_reference():
    viewmats, Ks = cameras(1, 16, 16)
    params = scene_with_edge_cases(5, seed=0, sh_degree=None, viewmats=viewmats)
    with pytest.raises(ValueError, match="the fast rasterizer has no packed mode"):
        rasterize_fast(*params, viewmats, Ks, 16, 16, packed=True)
    with pytest.raises(ValueError, match=r"sh_degree 1 needs 4 coefficients"):
        rasterize_fast(params[0], params[1], params[2], params[3], torch.zeros(len(params[0]), 1, 3),
                       viewmats, Ks, 16, 16, sh_degree=1)


def test_training_through_the_trainer_reaches_the_references_psnr():
    """The trainer with backend "auto" (= fast on the CPU) against the same run on the reference:
    same seed, data and schedule. Float rounding differs (float64 accumulation here, float32 there), so
    densification decisions near their thresholds can differ and the runs drift apart a little:
    the held-out PSNRs agree within 1 dB (seen: 29.6 fast, 29.1 reference)."""
    from backend.trainer import train
    from shared.jobkinds.train import SPEC as TRAIN
    from tests.test_trainer import render_dataset, sphere_rig, torus_cloud
    cloud = torus_cloud(600)
    viewmats, Ks = sphere_rig(16, 48)
    images = render_dataset(cloud, viewmats, Ks, 48)
    rng = np.random.default_rng(1)
    points = (cloud[0] + rng.normal(0, 0.03, cloud[0].shape)).astype(np.float32)
    colors = (cloud[4] * 255).astype(np.uint8)
    out = {}
    for backend in ("auto", "reference"):
        settings = TRAIN.make(steps=120, sh_degree=1, preview_every=0, report_interval_s=0.0, backend=backend)
        res = train(images, viewmats, Ks, points, colors, settings)
        out[res.meta["backend"]] = res.metrics["eval_psnr"]
    assert set(out) == {"fast", "reference"}
    assert out["reference"] >= 24.0, out
    assert abs(out["fast"] - out["reference"]) <= 1.0, out


def test_one_thread_many_threads_and_concurrent_calls_agree():
    """One torch thread runs the serial kernels; more run the parallel ones (one call at a time,
    behind a lock): same images and gradients, also when two Python threads render at once."""
    import threading
    W, H = 48, 40
    viewmats, Ks = cameras(2, W, H)
    params = scene_with_edge_cases(400, seed=4, sh_degree=2, viewmats=viewmats)
    kw = dict(sh_degree=2, backgrounds=torch.ones(2, 3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = render_and_grads(rasterize_fast, params, viewmats, Ks, W, H, **kw)
        torch.set_num_threads(2)
        results: list = [None, None]

        def work(i: int) -> None:
            results[i] = render_and_grads(rasterize_fast, params, viewmats, Ks, W, H, **kw)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(before)
    for r in results:
        torch.testing.assert_close(r[0], serial[0], rtol=0, atol=1e-6)
        for a, b in zip(r[3], serial[3]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("render_mode", ["RGB", "RGB+D"])
def test_a_learnable_background_gets_the_references_gradient(render_mode):
    """The fast kernels blend the background in (colour + (1 - alpha) background) and take its share
    of d loss / d alpha in the backward (RGB: the fused kernels; RGB+D: the general-D ones); a
    background that requires grad gets sum(v_colour (1 - alpha)), as the reference's autograd."""
    W, H = 40, 24
    viewmats, Ks = cameras(2, W, H)
    params = scene_with_edge_cases(150, seed=11, sh_degree=1, viewmats=viewmats)
    out = {}
    for name, fn in (("reference", rasterize_reference), ("fast", rasterize_fast)):
        bg = torch.tensor([[0.3, 0.6, 0.9], [0.8, 0.1, 0.4]], requires_grad=True)
        res = render_and_grads(fn, params, viewmats, Ks, W, H, sh_degree=1, backgrounds=bg, render_mode=render_mode)
        out[name] = (res, bg.grad)
    assert_agree(out["reference"][0], out["fast"][0])
    g_ref, g_fast = out["reference"][1], out["fast"][1]
    assert g_fast is not None and (g_ref.abs() > 1e-3).all()       # every channel sees the background
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)
