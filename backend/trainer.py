"""Fit 3D Gaussians to posed RGBA images: the ``train`` job and ``python -m backend train``.

The loop is gsplat's simple_trainer, one image per step: L1 + 0.2 D-SSIM, per-parameter Adam with
learning rates scaled by the scene extent, SH bands switched on one at a time, gsplat's
DefaultStrategy (capped) or MCMCStrategy. Objects are trained against the image alpha: every step
composes the target over a random background colour and renders with the same background, so
transparent regions come out with no Gaussians. Every ``holdout_every``-th view (index 0, k, 2k,
...) is held out and scored at the end (``eval_psnr``, ``eval_ssim``, over a white background; over
black with ``random_background`` off, as for opaque photos, which then train over black).

Inputs use the shared conventions: images u8[C,H,W,4] (straight alpha; RGB u8[C,H,W,3] means
opaque), OpenCV world-to-camera ``viewmats`` f32[C,4,4], pixel ``Ks`` f32[C,3,3], optional initial
``points`` f32[P,3] (world, metres) and ``colors`` u8[P,3]. Without points, Gaussians start at
random inside the volume that the cameras look at. When every training view is opaque (photos, a
room), Gaussians for the background are added on the rays of random pixels, beyond that volume
(``background_points``): walls and sky that random points near the objects cannot reach.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.job_api import JobContext, JobError, JobResult, NullContext, checked_settings
from backend.job_cli import KindCli, Positional
from backend.losses import photometric_loss, psnr, ssim
from backend.optim import make_optimizers
from backend.optim_loop import run_steps
from backend.params import TensorMap, activated, knn_mean_distance, sh_coeffs, tensors_to_splats
from backend.render import gsplat_cuda_available, rasterize, resolve_backend
from backend.strategies import CappedDefaultStrategy, MCMCStrategy
from backend.train_estimate import (
    PROBE_SHRINK,
    LiveEta,
    calibrate,
    coverage,
    estimate_seconds,
    format_duration,
    measure_cost,
    scored_views,
    step_seconds_from_probe,
)
from shared.cameras import CameraError, cameras_from_arrays
from shared.jobkinds.train import for_device, schedule
from shared.jobspec import Settings
from shared.sh import REST_COUNT, rgb_to_sh0
from shared.splats import logit

# -- inputs ------------------------------------------------------------------------------------

def validate_inputs(images: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray,
                    points: np.ndarray | None, colors: np.ndarray | None) -> np.ndarray:
    """Check shapes, dtypes and finiteness; returns the images as u8[C,H,W,4]. Raises JobError."""
    def bad(msg: str) -> JobError:
        return JobError("bad_input", msg)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise bad(f"images must be u8[C,H,W,4] (or [C,H,W,3]), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise bad(f"images must be uint8, got {images.dtype}")
    C, H, W = images.shape[:3]
    if C < 1 or H < 1 or W < 1:
        raise bad(f"images shape {images.shape} is empty")
    if images.shape[-1] == 3:
        images = np.concatenate([images, np.full((C, H, W, 1), 255, np.uint8)], axis=-1)
    viewmats = np.asarray(viewmats)
    Ks = np.asarray(Ks)
    if viewmats.shape != (C, 4, 4):
        raise bad(f"viewmats must be [{C},4,4] (one per image), got {viewmats.shape}")
    if Ks.shape != (C, 3, 3):
        raise bad(f"Ks must be [{C},3,3] (one per image), got {Ks.shape}")
    try:        # the shared camera rules: finite, rigid OpenCV pose, positive focal lengths
        cameras_from_arrays(viewmats, Ks, W, H)
    except CameraError as exc:
        raise bad(f"viewmats/Ks: {exc}") from None
    if points is not None:
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise bad(f"points must be f32[P,3] with P > 0, got shape {points.shape}")
        if not np.isfinite(points).all():
            raise bad("points contain NaN or Inf")
        if colors is not None:
            colors = np.asarray(colors)
            if colors.shape != points.shape:
                raise bad(f"colors must be u8[{len(points)},3] like points, got {colors.shape}")
            if colors.dtype != np.uint8:
                raise bad(f"colors must be uint8, got {colors.dtype}")
    elif colors is not None:
        raise bad("colors were given without points")
    return images


def camera_centres(viewmats: Tensor) -> Tensor:
    """World positions [C,3] of OpenCV world-to-camera matrices [C,4,4]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -(R.transpose(1, 2) @ t[:, :, None])[..., 0]


def scene_scale(viewmats: Tensor) -> float:
    """Extent of the camera rig (gsplat simple_trainer: 1.1 x max distance of the camera centres
    from their mean); 1.0 for a single camera."""
    c = camera_centres(viewmats.double())
    s = 1.1 * float((c - c.mean(0)).norm(dim=-1).max())
    return s if s > 1e-6 else 1.0


def view_volume(viewmats: Tensor, Ks: Tensor, width: int, height: int) -> tuple[Tensor, float]:
    """Centre and radius of the region the cameras look at: the point nearest to all optical
    axes (least squares) and the radius that the median camera sees at that distance. Falls back
    to one scene-scale in front of the cameras when the axes are (nearly) parallel."""
    vm = viewmats.double().cpu()
    centres = camera_centres(vm)
    fwd = vm[:, 2, :3]                                    # camera z axis in world coordinates
    P = torch.eye(3, dtype=torch.float64) - fwd[:, :, None] * fwd[:, None, :]
    A = P.sum(0)
    b = (P @ centres[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    depth = scene_scale(vm)
    if len(vm) >= 2 and eig[0] > 1e-3 * eig[-1]:
        centre = torch.linalg.solve(A, b)
        if (((centre - centres) * fwd).sum(-1) <= 0).float().mean() > 0.5:   # mostly behind them
            centre = (centres + fwd * depth).mean(0)
    else:
        centre = (centres + fwd * depth).mean(0)
    dists = (centre - centres).norm(dim=-1)
    Kc = Ks.double().cpu()
    tan_half = torch.minimum(width / (2 * Kc[:, 0, 0]), height / (2 * Kc[:, 1, 1]))
    radius = float((dists * tan_half).median())
    return centre.float(), max(radius, 1e-6)


def random_init_points(n: int, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                       generator: torch.Generator) -> Tensor:
    """``n`` points uniform in the ball of ``view_volume``, keeping those that at least half of
    the cameras see (falls back to the ball when too few are)."""
    centre, radius = view_volume(viewmats, Ks, width, height)
    m = 4 * n
    d = torch.randn(m, 3, generator=generator)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = radius * torch.rand(m, 1, generator=generator) ** (1 / 3)
    pts = centre + d * r
    vm, K = viewmats.float().cpu(), Ks.float().cpu()
    pc = torch.einsum("cij,nj->cni", vm[:, :3, :3], pts) + vm[:, None, :3, 3]
    z = pc[..., 2].clamp_min(1e-9)
    u = K[:, None, 0, 0] * pc[..., 0] / z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / z + K[:, None, 1, 2]
    seen = (pc[..., 2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    keep = seen.float().mean(0) >= 0.5
    good = pts[keep]
    if len(good) >= n:
        return good[:n]
    return torch.cat([good, pts[~keep]])[:n]


def background_points(n: int, images_u8: Tensor, viewmats: Tensor, Ks: Tensor, ids: list[int],
                      generator: torch.Generator,
                      sizes: list[tuple[int, int]] | None = None) -> tuple[Tensor, Tensor]:
    """``n`` points for the background of opaque views, with their colours: each on the ray of a
    random pixel of a random view in ``ids``, coloured like that pixel, at a depth log-uniform
    between once and four times that camera's distance to the centre of ``view_volume`` (walls,
    floor and sky lie beyond the volume that random initial points fill). ``sizes``: each view's
    (width, height) on the canvas (``view_sizes``), default the whole canvas. Returns world points
    f32[n,3] and colours f32[n,3] in 0..1 (on the CPU)."""
    H, W = images_u8.shape[1:3]
    vm, K = viewmats.float().cpu(), Ks.float().cpu()
    centre, _ = view_volume(vm, K, W, H)
    cams = torch.tensor(ids)[torch.randint(len(ids), (n,), generator=generator)]
    wh = torch.tensor(sizes if sizes is not None else [(W, H)] * len(vm))[cams]
    u = torch.randint(W, (n,), generator=generator) * wh[:, 0] // W       # a pixel inside the view's own size
    v = torch.randint(H, (n,), generator=generator) * wh[:, 1] // H
    rgb = images_u8[cams, v, u, :3].cpu().float() / 255.0
    centres = camera_centres(vm)[cams]
    near = (centre - centres).norm(dim=-1)
    depth = near * 4.0 ** torch.rand(n, generator=generator)            # along the optical axis
    Kc = K[cams]
    x = (u.float() + 0.5 - Kc[:, 0, 2]) / Kc[:, 0, 0]
    y = (v.float() + 0.5 - Kc[:, 1, 2]) / Kc[:, 1, 1]
    cam_pts = torch.stack([x, y, torch.ones(n)], -1) * depth[:, None]
    R, t = vm[cams, :3, :3], vm[cams, :3, 3]
    world = torch.einsum("nji,nj->ni", R, cam_pts - t)                  # R^T (p - t)
    return world, rgb


def init_params(points: Tensor, rgb: Tensor, settings: Settings, scale_floor: float,
                generator: torch.Generator,
                should_stop: Callable[[], bool] | None = None) -> dict[str, torch.nn.Parameter]:
    """Trainable tensors (raw values, see backend.params) for Gaussians at ``points`` [N,3] with
    base colours ``rgb`` [N,3] in 0..1; ``should_stop`` is polled while the scales are set up."""
    n = len(points)
    mcmc = settings.strategy == "mcmc"
    init_opa = settings.init_opacity if settings.init_opacity is not None else (0.5 if mcmc else 0.1)
    # (gsplat's MCMC preset uses 0.1, meant for dense SfM points and 30k steps; with sparse mesh
    # samples and short runs it leaves holes: 22 dB instead of 38 dB on the test torus)
    init_scale = settings.init_scale
    dist = knn_mean_distance(points, should_stop=should_stop).clamp_min(scale_floor)
    scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
    quats = torch.rand(n, 4, generator=generator).to(points.device)
    opac = torch.full((n,), float(logit(np.float32(init_opa))), device=points.device)
    sh0 = torch.from_numpy(rgb_to_sh0(rgb.cpu().numpy())).to(points.device)[:, None, :]
    shN = torch.zeros(n, REST_COUNT[settings.sh_degree], 3, device=points.device)
    tensors = {"means": points, "scales": scales, "quats": quats, "opacities": opac, "sh0": sh0, "shN": shN}
    return {k: torch.nn.Parameter(v.float().contiguous()) for k, v in tensors.items()}


# -- training ------------------------------------------------------------------------------------

def _composite(rgba_u8: Tensor, bg: Tensor) -> Tensor:
    """u8[...,H,W,4] straight-alpha images -> float RGB over background ``bg`` [...,3]."""
    x = rgba_u8.float() / 255.0
    a = x[..., 3:]
    return x[..., :3] * a + bg[..., None, None, :] * (1.0 - a)


def _render(params: TensorMap, viewmats: Tensor, Ks: Tensor, width: int, height: int,
            sh_degree: int, bg: Tensor, backend: str):
    means, quats, scales, opac = activated(params)
    return rasterize(means, quats, scales, opac, sh_coeffs(params), viewmats, Ks, width, height,
                     sh_degree=sh_degree, backgrounds=bg, packed=False, backend=backend)


def view_sizes(sizes: np.ndarray | None, count: int, width: int, height: int) -> list[tuple[int, int]]:
    """Each view's (width, height): ``sizes`` i4[C,2] for views of several sizes on one canvas of
    ``width`` x ``height`` (each top-left, ``backend.datasets``), else the canvas for all. Raises
    ``JobError`` (bad_input) for sizes that do not fit."""
    if sizes is None:
        return [(width, height)] * count
    s = np.asarray(sizes)
    if s.shape != (count, 2) or not np.issubdtype(s.dtype, np.integer):
        raise JobError("bad_input", f"sizes must be int[{count},2] (width, height per view), got "
                                    f"{s.dtype}{list(s.shape)}")
    if (s < 1).any() or (s[:, 0] > width).any() or (s[:, 1] > height).any():
        raise JobError("bad_input", f"every view size must be within the {width}x{height} images, got "
                                    f"{s.min(0).tolist()}..{s.max(0).tolist()}")
    return [(int(w), int(h)) for w, h in s]


@torch.no_grad()
def evaluate(params: TensorMap, images: Tensor, viewmats: Tensor, Ks: Tensor, ids: list[int],
             sh_degree: int, backend: str, background: float = 1.0,
             sizes: list[tuple[int, int]] | None = None) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the views ``ids`` rendered over a grey level ``background``
    (white by default) vs the images over the same; ``sizes``: each view's (width, height) when
    they differ (:func:`view_sizes`)."""
    if not ids:
        return {}
    H, W = images.shape[1:3]
    white = torch.full((1, 3), float(background), device=images.device)
    ps, ss = [], []
    for i in ids:
        w, h = sizes[i] if sizes is not None else (W, H)
        img, _, _ = _render(params, viewmats[i:i + 1], Ks[i:i + 1], w, h, sh_degree, white, backend)
        img = img.clamp(0, 1)
        gt = _composite(images[i:i + 1, :h, :w], white)
        ps.append(psnr(img, gt))
        ss.append(float(ssim(img, gt)))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}


def train(images: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, points: np.ndarray | None = None,
          colors: np.ndarray | None = None, settings: Settings | None = None,
          ctx: JobContext | None = None, sizes: np.ndarray | None = None) -> JobResult:
    """Train Gaussians on the posed images (see the module docstring for conventions).
    ``sizes``: i4[C,2] (width, height) of each view when the views differ in size and sit
    top-left on the images' canvas (``backend.datasets``); each is rendered at its own size.

    Returns a JobResult: ``splats``; ``metrics`` {eval_psnr, eval_ssim (when views are held out),
    train_psnr, loss, num_gaussians, steps_per_s}; ``meta`` {cancelled, steps_done, settings,
    scene_scale, holdout, initial_gaussians, background_points, backend, device, elapsed_s}. Stops
    early, with ``meta["cancelled"]``, as soon as ``ctx.should_stop()`` is true.
    """
    settings = checked_settings("train", settings)
    ctx = ctx or NullContext()

    def poll_cancel(stage: str) -> None:
        """Every set-up stage ends here: a cancel before the steps leaves nothing to keep."""
        if ctx.should_stop():
            raise JobError("cancelled", f"cancelled while {stage}; nothing was trained yet")
    device = torch.device(ctx.device)
    settings = for_device(settings, device.type)
    images_np = validate_inputs(images, viewmats, Ks, points, colors)
    backend = resolve_backend(device, settings.backend)
    if backend == "gsplat" and not (device.type == "cuda" and gsplat_cuda_available()):
        raise JobError("bad_params", f"backend 'gsplat' needs a CUDA GPU with gsplat's CUDA "
                       f"extension; this job runs on {device.type} without it (use 'auto')")
    sched = schedule(settings)
    t_start = time.perf_counter()

    torch.manual_seed(settings.seed)     # the strategies draw from the global generator
    gen = torch.Generator().manual_seed(settings.seed)

    C, H, W = images_np.shape[:3]
    size_of = view_sizes(sizes, C, W, H)
    images_t = torch.from_numpy(np.ascontiguousarray(images_np)).to(device)
    vm = torch.as_tensor(np.asarray(viewmats), dtype=torch.float32).to(device)
    Kt = torch.as_tensor(np.asarray(Ks), dtype=torch.float32).to(device)
    k = settings.holdout_every
    holdout = [i for i in range(C) if k > 1 and C > 1 and i % k == 0]
    train_ids = [i for i in range(C) if i not in holdout]
    extent = scene_scale(vm)
    poll_cancel("loading the images")

    if points is not None:
        # a copy: the means train in place, and the caller's points must stay as they were
        pts = torch.tensor(np.asarray(points), dtype=torch.float32)
        rgb = (torch.as_tensor(np.asarray(colors), dtype=torch.float32) / 255.0 if colors is not None
               else torch.rand(len(pts), 3, generator=gen))
        if len(pts) > settings.max_gaussians:
            sel = torch.randperm(len(pts), generator=gen)[:settings.max_gaussians]
            pts, rgb = pts[sel], rgb[sel]
    else:
        n0 = min(settings.init_points, settings.max_gaussians)
        pts = random_init_points(n0, vm, Kt, W, H, gen)
        rgb = torch.rand(len(pts), 3, generator=gen)
    n_bg = settings.background_points
    if n_bg is None:        # auto: opaque views (photos, rooms) get a background, half as many as the points
        opaque = all(bool((images_t[i, :size_of[i][1], :size_of[i][0], 3] == 255).all()) for i in train_ids)
        n_bg = len(pts) // 2 if opaque else 0
    n_bg = max(0, min(n_bg, settings.max_gaussians - len(pts)))
    if n_bg > 0:
        bg_pts, bg_rgb = background_points(n_bg, images_t, vm, Kt, train_ids, gen, size_of)
        pts, rgb = torch.cat([pts, bg_pts]), torch.cat([rgb, bg_rgb])
    poll_cancel("choosing the initial points")
    params = init_params(pts.to(device), rgb, settings, 1e-7 * extent, gen, ctx.should_stop)
    optimizers = make_optimizers(params, settings, extent)
    means_sched = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"],
                                                         gamma=0.01 ** (1.0 / sched["lr_decay_steps"]))

    if settings.strategy == "default":
        strategy: Any = CappedDefaultStrategy(
            cap_max=settings.max_gaussians, refine_start_iter=sched["refine_start"],
            refine_stop_iter=sched["refine_stop"], refine_every=sched["refine_every"],
            grow_grad2d=settings.grow_grad2d, reset_every=max(3000, settings.steps + 1))
        state = strategy.initialize_state(scene_scale=extent)
    else:
        strategy = MCMCStrategy(cap_max=settings.max_gaussians, refine_start_iter=sched["refine_start"],
                                refine_stop_iter=sched["refine_stop"], refine_every=sched["refine_every"])
        state = strategy.initialize_state()
    strategy.check_sanity(params, optimizers)
    poll_cancel("setting up the optimiser")

    # the per-step random choices, drawn up front from the seeded generator
    epochs = math.ceil(settings.steps / max(1, len(train_ids)))
    order = torch.cat([torch.tensor(train_ids)[torch.randperm(len(train_ids), generator=gen)]
                       for _ in range(epochs)])[:settings.steps].tolist()
    if settings.random_background:
        backgrounds = torch.rand(settings.steps, 1, 3, generator=gen).to(device)
    else:
        backgrounds = torch.zeros(settings.steps, 1, 3, device=device)

    def step_on(tensors: TensorMap, opts: dict[str, torch.optim.Optimizer], st: dict[str, Any], step: int,
                cam: int, bg: Tensor, sh_deg: int, next_means_lr: Callable[[], float]) -> tuple[Tensor, ...]:
        """One training step on ``tensors`` (the run's, or the calibration's throwaway copies):
        render view ``cam`` over ``bg``, loss, backward, Adam, the strategy; ``next_means_lr()``
        advances the means' learning-rate schedule and returns the new rate (MCMC's noise scale)."""
        w, h = size_of[cam]
        target = _composite(images_t[cam:cam + 1, :h, :w], bg)
        render, _, info = _render(tensors, vm[cam:cam + 1], Kt[cam:cam + 1], w, h, sh_deg, bg, backend)
        if settings.strategy == "default":
            strategy.step_pre_backward(tensors, opts, st, step, info)
        loss = photometric_loss(render, target, settings.ssim_lambda)
        if settings.strategy == "mcmc":
            _, _, scales_m, opacities_01 = activated(tensors)
            loss = loss + settings.mcmc_opacity_reg * opacities_01.mean()
            loss = loss + settings.mcmc_scale_reg * scales_m.mean()
        loss.backward()
        for opt in opts.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        lr = next_means_lr()
        if settings.strategy == "default":
            strategy.step_post_backward(tensors, opts, st, step, info, packed=False)
        else:
            strategy.step_post_backward(tensors, opts, st, step, info, lr=lr)
        return loss, render, target

    # a tiny calibration on this data (and the thread count by measurement), then the estimate
    threads_before = torch.get_num_threads()
    probe_views = [order[i] for i in range(min(len(order), 8))]

    def probe() -> None:
        """A forward + backward of the first training view that changes nothing (gradients dropped)."""
        cam, bg = order[0], backgrounds[0]
        w, h = size_of[cam]
        out, _, _ = _render(params, vm[cam:cam + 1], Kt[cam:cam + 1], w, h, settings.sh_degree, bg, backend)
        photometric_loss(out, _composite(images_t[cam:cam + 1, :h, :w], bg), settings.ssim_lambda).backward()
        for p in params.values():
            p.grad = None

    _, threads, thread_times = calibrate(probe, device.type)

    def throwaway_step(copies: int) -> Callable[[int], None]:
        """Real steps (outside the refinement window: no growth) on throwaway copies of the initial
        Gaussians, ``copies`` times each, shrunk to a trained scene's size (see ``measure_cost``)."""
        tensors = {k: torch.nn.Parameter(torch.cat([v.detach()] * copies)
                                         - (math.log(PROBE_SHRINK) if k == "scales" else 0.0))
                   for k, v in params.items()}
        opts = make_optimizers(tensors, settings, extent)
        st = (strategy.initialize_state(scene_scale=extent) if settings.strategy == "default"
              else strategy.initialize_state())
        lr = optimizers["means"].param_groups[0]["lr"]

        def run(i: int) -> None:
            step_on(tensors, opts, st, 0, probe_views[i % len(probe_views)], backgrounds[i % len(backgrounds)],
                    settings.sh_degree, lambda: lr)
        return run

    cost = measure_cost(throwaway_step(1), throwaway_step(2), device.type)
    poll_cancel("measuring this device's speed")
    n0, given = len(pts), points is not None
    cover = coverage(images_np, train_ids, size_of)
    model: dict[str, Any] = {"share": cost.share, "coverage": cover, "given_points": given}

    def estimate(step_seconds: float) -> float:
        return estimate_seconds(settings, sched, W, H, C, len(holdout), device.type, step_seconds, n0,
                                share=cost.share, coverage=cover, given_points=given)
    step_s = step_seconds_from_probe(cost.wall_s)
    estimate_s = estimate(step_s)
    # the same in CPU time (this process's own): what a busy machine does not change (tests compare it)
    estimate_cpu_s = estimate(step_seconds_from_probe(cost.cpu_s))
    live = LiveEta(settings, sched, n0, cost.share, step_s, scored_views(C, len(holdout)), coverage=cover,
                   given_points=given)
    where = "this GPU" if device.type == "cuda" else f"this CPU ({threads} thread{'s' * (threads > 1)})"
    ctx.report(0, 0, {"stage": f"{format_duration(estimate_s)} on {where} (estimate {estimate_s:.0f} s): "
                               f"{settings.steps} steps, "
                               f"{n0} initial Gaussians, {W}x{H} px, {len(train_ids)} training views",
                      "estimate_s": estimate_s})

    def next_means_lr() -> float:
        means_sched.step()
        return float(means_sched.get_last_lr()[0])

    def one_step(step: int) -> dict[str, Any]:
        sh_deg = min(step // sched["sh_degree_interval"], settings.sh_degree)
        loss, render, target = step_on(params, optimizers, state, step, order[step], backgrounds[step], sh_deg,
                                       next_means_lr)
        live.step_done(len(params["means"]))
        return {"loss": loss, "psnr": lambda: psnr(render.clamp(0, 1), target),
                "num_gaussians": lambda: len(params["means"])}

    t_loop, cpu_loop = time.perf_counter(), time.process_time()
    loop = run_steps(settings.steps, one_step, ctx, snapshot=lambda: tensors_to_splats(params),
                     preview_every=settings.preview_every, report_interval_s=settings.report_interval_s,
                     eta=lambda done: live.eta_s(done, len(params["means"])))
    cancelled, steps_done = loop.cancelled, loop.steps_done
    loop_s = time.perf_counter() - t_loop

    final_deg = min(max(steps_done - 1, 0) // sched["sh_degree_interval"], settings.sh_degree)
    metrics: dict[str, float] = {"loss": loop.metrics.get("loss", float("nan")),
                                 "num_gaussians": float(len(params["means"])), "steps_per_s": loop.steps_per_s}
    t_eval = time.perf_counter()
    if not cancelled:
        # without random backgrounds the splats learnt black behind opaque images: score them so
        eval_bg = 1.0 if settings.random_background else 0.0
        ev = evaluate(params, images_t, vm, Kt, holdout, final_deg, backend, eval_bg, size_of)
        if ev:
            metrics["eval_psnr"], metrics["eval_ssim"] = ev["psnr"], ev["ssim"]
        tr = evaluate(params, images_t, vm, Kt, train_ids[:8], final_deg, backend, eval_bg, size_of)
        metrics["train_psnr"] = tr["psnr"]
    eval_s = time.perf_counter() - t_eval
    loop_cpu_s = time.process_time() - cpu_loop
    splats = tensors_to_splats(params)
    meta = {
        "cancelled": cancelled,
        "steps_done": steps_done,
        "settings": settings.to_meta(),
        "schedule": sched,
        "scene_scale": extent,
        "holdout": holdout,
        "initial_gaussians": len(pts),      # the initial points plus the background ones
        "background_points": n_bg,
        "backend": backend,
        "device": str(device),
        "elapsed_s": time.perf_counter() - t_start,
        "image_size": [W, H],
        "estimate_s": estimate_s,          # the loop + evaluation, as announced before the first step
        "loop_s": loop_s + eval_s,         # ... and as it took
        "estimate_cpu_s": estimate_cpu_s,  # the same in this process's CPU time ...
        "loop_cpu_s": loop_cpu_s,          # ... and as it took (a busy machine changes neither much)
        "estimate_model": {**model, "probe_s": cost.wall_s, "probe_cpu_s": cost.cpu_s, "probe_pairs": cost.pairs},
        "threads": threads,
        "thread_probe_s": {str(k): v for k, v in thread_times.items()},
    }
    torch.set_num_threads(threads_before)
    return JobResult(splats=splats, metrics=metrics, meta=meta)


def run_train_job(params: Settings | dict, payload: dict, ctx: JobContext) -> JobResult:
    """The ``train`` job kind (``shared/jobkinds/train.py``): payload arrays {images, viewmats, Ks,
    points?, colors?}, or ``dataset_path`` (+ ``images_dir``, ``downscale``) on the backend's disk."""
    payload = payload or {}
    settings = checked_settings("train", params, payload)
    if settings.dataset_path:
        return train_from_dataset(settings.dataset_path, settings, ctx, images_dir=settings.images_dir or None,
                                  downscale=settings.downscale)
    return train(payload["images"], payload["viewmats"], payload["Ks"], payload.get("points"),
                 payload.get("colors"), settings, ctx)


def train_from_dataset(path: str, settings: Settings, ctx: JobContext,
                       images_dir: str | None = None, downscale: int = 1) -> JobResult:
    """Train on a dataset folder on the backend's disk (transforms.json or COLMAP), as the
    add-on's "Train from Dataset Folder" asks: the images never cross the wire."""
    from backend.datasets import DatasetCancelled, DatasetError, load_dataset

    ctx.report(0, 0, {"stage": f"reading the dataset {path}"})     # big datasets take a while
    try:
        data = load_dataset(path, images_dir=images_dir, downscale=downscale,
                            should_stop=ctx.should_stop)
    except DatasetError as exc:
        raise JobError("bad_dataset", str(exc)) from None
    except DatasetCancelled:
        raise JobError("cancelled", "cancelled while reading the dataset; nothing was trained "
                       "yet") from None
    ctx.report(0, 0, {"stage": f"{len(data.images)} views of {'up to ' if data.sizes is not None else ''}"
                               f"{data.images.shape[2]}x{data.images.shape[1]} px"
                               f"{'' if data.points is None else f', {len(data.points)} initial points'}"})
    result = train(data.images, data.viewmats, data.Ks, data.points, data.colors, settings, ctx, data.sizes)
    result.meta["dataset_path"] = path
    return result


# -- command line: python -m backend train DATA --out scene.ply [settings] (backend.job_cli) ------------

CLI = KindCli(positionals=(Positional("data", "dataset folder (transforms.json, or COLMAP sparse/0 / sparse / "
                                              "model files)", setting="dataset_path"),))
