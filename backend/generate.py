"""Text-to-3D generation: Gaussian splats distilled from a text-to-image diffusion model (SDS).

The job (``run_generate_job``, job kind "generate") and the command line (``python -m backend generate``):

1. **Init** the splats in a canonical frame (object centred at the origin, bounding radius 1, Z up, front
   facing -Y): ``"sphere"`` (points filling a ball of radius 0.6, grey), ``"mesh"`` (surface samples of the
   user's object sent as payload ``points`` f32[P,3] + ``colors`` u8[P,3]), or ``"shap-e"`` (text-to-3D
   prior: a Shap-E latent for the prompt, its signed-distance field sampled on a grid, the zero crossings
   taken as surface points and coloured by the texture field; GaussianDreamer's recipe).
2. **Distil**: each step renders a batch of random views (``camera_sampling``) over random solid
   backgrounds with ``backend.render.rasterize``, encodes them with the guidance model, and applies the
   SDS gradient (``backend.sds``) with Adam on all splat parameters; gsplat's ``DefaultStrategy``
   densifies and prunes in the middle of the run (``backend.strategies.CappedDefaultStrategy``, as the
   trainer uses it, capped at ``max_gaussians``).
3. **Result**: the splats, centred at the origin, scaled back to the size of the init mesh (``"mesh"``) or
   with bounding radius 1 m (other inits). The add-on places the object (at the 3D cursor).

Defaults follow DreamFusion/GaussianDreamer: 1200 steps, guidance scale 100 (SDS needs a much larger
classifier-free-guidance scale than sampling does: at 7.5 the distilled object is blurry and over-smooth),
t ~ U[0.02, t_max] with t_max annealed 0.98 -> 0.5, w(t) = 1 - abar_t, render 512 px, 4 views per step.
Everything that determines the result (seed and all settings) is in ``JobResult.meta``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.camera_sampling import CameraRanges, ViewBatch, sample_views
from backend.job_api import JobContext, JobError, JobResult, NullContext, checked_settings
from backend.job_cli import KindCli, Positional
from backend.models import cuda_oom_guard, cudnn_autotune, load_pipeline
from backend.optim import make_optimizers
from backend.optim_loop import run_steps
from backend.params import TensorMap, activated, knn_mean_distance, sh_coeffs, splats_to_tensors, tensors_to_splats
from backend.render import rasterize
from backend.sds import Guidance, StableDiffusionGuidance, TimestepSchedule, sds_loss
from backend.strategies import CappedDefaultStrategy
from shared.jobspec import Settings
from shared.sh import REST_COUNT, rgb_to_sh0
from shared.splats import Splats, logit

CANONICAL_RADIUS = 1.0


def timestep_schedule(settings: Settings) -> TimestepSchedule:
    """The SDS timestep schedule of ``settings`` (t_min, t_max_start -> t_max_end)."""
    return TimestepSchedule(settings.t_min, settings.t_max_start, settings.t_max_end)


def camera_ranges(settings: Settings) -> CameraRanges:
    """The random-view ranges of ``settings`` (degrees; distance in object radii)."""
    return CameraRanges(settings.elevation_range, settings.azimuth_range, settings.distance_range,
                        settings.fovy_range)


# ----------------------------------------------------------------------------------------------
# Initialisation (canonical frame: centred, bounding radius CANONICAL_RADIUS)
# ----------------------------------------------------------------------------------------------

def normalise_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre points on their bounding-box centre and scale them to radius 1: -> (points, centre, radius)."""
    points = np.asarray(points, dtype=np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    if not np.isfinite(radius) or radius <= 1e-9:
        radius = 1.0
    return ((points - centre) / radius * CANONICAL_RADIUS).astype(np.float32), centre, radius


def resample_points(points: np.ndarray, colors: np.ndarray, n: int, rng: np.random.Generator,
                    jitter: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``n`` points: a random subset, or all points plus jittered copies (sigma ``jitter``)."""
    p = len(points)
    if p >= n:
        idx = rng.choice(p, size=n, replace=False)
        return points[idx], colors[idx]
    extra = rng.integers(0, p, size=n - p)
    new = points[extra] + rng.normal(0.0, jitter, (n - p, 3)).astype(np.float32)
    return np.concatenate([points, new]).astype(np.float32), np.concatenate([colors, colors[extra]])


def sphere_init(n: int, rng: np.random.Generator, radius: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform in a ball (canonical frame), grey with a little colour noise."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
    r = radius * rng.uniform(0.0, 1.0, n) ** (1.0 / 3.0)
    colors = np.clip(0.5 + rng.normal(0.0, 0.05, (n, 3)), 0.0, 1.0)
    return (d * r[:, None]).astype(np.float32), colors.astype(np.float32)


def mesh_init(payload: dict) -> tuple[np.ndarray, np.ndarray]:
    """Validated payload ``points`` f32[P,3] and ``colors`` u8[P,3] -> (points, colours 0..1)."""
    if "points" not in payload:
        raise JobError("bad_input", "init 'mesh' needs payload 'points' f32[P,3] (surface samples of the mesh)")
    points = np.asarray(payload["points"])
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise JobError("bad_input", f"payload 'points' must be [P,3] with P >= 1, got shape {points.shape}")
    if not np.issubdtype(points.dtype, np.floating) or not np.all(np.isfinite(points)):
        raise JobError("bad_input", "payload 'points' must be finite floats")
    colors = payload.get("colors")
    if colors is None:
        colors = np.full((len(points), 3), 128, np.uint8)
    colors = np.asarray(colors)
    if colors.shape != points.shape:
        raise JobError("bad_input", f"payload 'colors' must be u8[P,3] matching points {points.shape}, "
                                      f"got shape {colors.shape}")
    if colors.dtype != np.uint8:
        raise JobError("bad_input", f"payload 'colors' must be u8, got {colors.dtype}")
    return points.astype(np.float32), colors.astype(np.float32) / 255.0


@torch.no_grad()
def shap_e_surface_points(pipe: Any, prompt: str, seed: int, steps: int, guidance_scale: float,
                          grid_size: int, device: torch.device,
                          query_batch: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Surface points and sRGB colours (0..1) of Shap-E's object for ``prompt``, in Shap-E's frame
    (the box [-1, 1]^3, Z up, front towards -Y: the frame of diffusers' ``create_pan_cameras``).

    Samples a latent with the pipeline, loads it into the renderer's NeRSTF MLP as
    ``ShapERenderer.decode_to_mesh`` does, samples the signed distance (positive inside) on a
    ``grid_size``^3 grid padded with "outside", and returns the linearly interpolated zero crossings along
    grid edges (the vertices marching cubes would make) with the MLP's texture colour there.
    """
    from diffusers.pipelines.shap_e.renderer import volume_query_points

    gen = torch.Generator(device=pipe._execution_device).manual_seed(int(seed))
    latents = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
                   output_type="latent").images
    renderer = pipe.shap_e_renderer
    projected = renderer.params_proj(latents[0][None])
    for name, param in renderer.mlp.state_dict().items():
        if f"nerstf.{name}" in projected:
            param.copy_(projected[f"nerstf.{name}"].squeeze(0))
    mlp_device, mlp_dtype = next(renderer.mlp.parameters()).device, renderer.mlp.dtype

    def query(pos: Tensor, what: str) -> Tensor:
        out = []
        for i in range(0, pos.shape[0], query_batch):
            chunk = pos[i:i + query_batch][None].to(mlp_device, mlp_dtype)
            res = renderer.mlp(position=chunk, direction=None, ts=None, nerf_level="fine", rendering_mode="stf")
            out.append(getattr(res, what)[0].float())
        return torch.cat(out)

    g = int(grid_size)
    grid_pts = volume_query_points(renderer.volume, g).to(mlp_device)    # x-major: index = (x*g + y)*g + z
    sdf = query(grid_pts, "signed_distance").reshape(g, g, g)
    field = torch.full((g + 2,) * 3, -1.0, device=sdf.device)            # closed border, as decode_to_mesh
    field[1:-1, 1:-1, 1:-1] = sdf
    lo = renderer.volume.bbox_min.to(sdf.device).float()
    spacing = (renderer.volume.bbox_max.to(sdf.device).float() - lo) / (g - 1)
    idx = torch.stack(torch.meshgrid(*[torch.arange(g + 2, device=sdf.device)] * 3, indexing="ij"), -1).float()
    coords = lo + (idx - 1.0) * spacing                                   # padded grid's world positions
    points = []
    for axis in range(3):
        a = field.narrow(axis, 0, g + 1)
        b = field.narrow(axis, 1, g + 1)
        ca = coords.narrow(axis, 0, g + 1)
        cb = coords.narrow(axis, 1, g + 1)
        cross = (a > 0) != (b > 0)
        frac = (a[cross] / (a[cross] - b[cross])).clamp(0.0, 1.0)[:, None]
        points.append(ca[cross] + frac * (cb[cross] - ca[cross]))
    pts = torch.cat(points)
    if pts.shape[0] == 0:
        raise JobError("prior_failed", f"Shap-E produced no surface for {prompt!r}; try another seed or "
                                       f"init 'sphere'")
    colors = query(pts, "channels").clamp(0.0, 1.0)
    return pts.cpu().numpy().astype(np.float32), colors.cpu().numpy().astype(np.float32)


def points_to_splats(points: np.ndarray, colors: np.ndarray, sh_degree: int = 0,
                     opacity: float = 0.1) -> Splats:
    """Isotropic Gaussians at ``points`` (scale = RMS distance to the 3 nearest neighbours, as 3DGS
    initialises), identity rotation, opacity ``opacity``, DC colour ``colors`` (0..1), zero higher SH."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    n = pts.shape[0]
    scale = knn_mean_distance(pts).clamp_min(1e-4).numpy() if n > 1 else np.full(n, 0.05, np.float32)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return Splats(means=np.asarray(points, np.float32), quats=quats,
                  scales=np.repeat(np.log(scale)[:, None], 3, axis=1).astype(np.float32),
                  opacities=np.full(n, logit(np.array(opacity)), np.float32),
                  sh0=rgb_to_sh0(np.asarray(colors, np.float32)),
                  shN=np.zeros((n, REST_COUNT[sh_degree], 3), np.float32))


def make_init(settings: Settings, payload: dict, device: torch.device,
              stage: Callable[[str], None] = lambda text: None) -> tuple[Splats, float, np.ndarray]:
    """-> (canonical splats, output radius in metres, centre of the input in world space). ``stage(text)`` is
    told what the slow parts are doing (loading and sampling the prior)."""
    rng = np.random.default_rng(settings.seed)
    centre, radius = np.zeros(3), 1.0
    if settings.init == "sphere":
        pts, cols = sphere_init(settings.num_points, rng)
    elif settings.init == "mesh":
        pts, cols = mesh_init(payload)
        pts, centre, radius = normalise_points(pts)
        pts, cols = resample_points(pts, cols, settings.num_points, rng)
    else:
        stage(f"loading the Shap-E prior ({settings.prior_model})")
        pipe = load_pipeline(settings.prior_model, "shap-e", device, low_memory=settings.low_memory)
        stage(f"sampling the Shap-E prior ({settings.prior_steps} steps)")
        with cuda_oom_guard("sampling the Shap-E prior"):
            pts, cols = shap_e_surface_points(pipe, settings.prompt, settings.seed, settings.prior_steps,
                                              settings.prior_guidance_scale, settings.prior_grid_size, device)
        pts, _, _ = normalise_points(pts)
        pts, cols = resample_points(pts, cols, settings.num_points, rng)
    return points_to_splats(pts, cols, settings.sh_degree), radius, centre


# ----------------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------------

def render_views(params: TensorMap, views: ViewBatch, sh_degree: int) -> tuple[Tensor, dict]:
    """Render ``views`` of the splats: images f32[B,3,H,W] (0..1, over each view's background) and info."""
    means, quats, scales, opacities = activated(params)
    colors, _, info = rasterize(means, quats, scales, opacities, sh_coeffs(params), views.viewmats, views.Ks,
                                views.width, views.height, sh_degree=sh_degree, backgrounds=views.backgrounds)
    return colors.permute(0, 3, 1, 2).clamp(0.0, 1.0), info


def sds_objective(params: TensorMap, guidance: Guidance, views: ViewBatch, t: Tensor,
                  noise_gen: torch.Generator, guidance_scale: float, sh_degree: int,
                  before_backward: Callable[[dict], None] | None = None) -> tuple[Tensor, dict]:
    """Render, encode, and build the SDS loss of one step (call ``.backward()`` on it)."""
    images, info = render_views(params, views, sh_degree)
    if before_backward is not None:
        before_backward(info)
    latents = guidance.encode(images)
    noise = torch.randn(latents.shape, generator=noise_gen, device=noise_gen.device).to(latents.device)
    grad = guidance.sds_grad(latents, t, guidance.condition(views), guidance_scale, noise)
    return sds_loss(latents, grad), info


def _make_strategy(settings: Settings) -> CappedDefaultStrategy:
    steps = settings.steps
    return CappedDefaultStrategy(
        cap_max=settings.max_gaussians, prune_opa=0.005, grow_grad2d=float("inf"), grow_scale3d=0.01, prune_scale3d=0.1,
        refine_start_iter=max(1, steps // 8), refine_stop_iter=max(2, (steps * 3) // 4),
        refine_every=max(2, steps // 24), reset_every=steps + 1, refine_scale2d_stop_iter=0,
        absgrad=False, verbose=False)


def distill(splats: Splats, guidance: Guidance, settings: Settings,
            ctx: JobContext | None = None, device: torch.device | str = "cpu",
            preview_transform: Callable[[Splats], Splats] | None = None) -> tuple[Splats, dict[str, Any]]:
    """Optimise ``splats`` (canonical frame) by SDS against ``guidance``. Returns the splats and run info
    (steps done, cancelled, timings). The same ``settings`` (seed included) give the same result bit for bit
    on the CPU; on CUDA, gsplat's backward accumulates with atomics, so reruns agree only closely."""
    ctx = ctx or NullContext(str(device))
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    view_gen = torch.Generator().manual_seed(settings.seed)
    noise_gen = torch.Generator(device=device).manual_seed(settings.seed + 1)
    schedule, ranges = timestep_schedule(settings), camera_ranges(settings)

    tensors = splats_to_tensors(splats, device)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in tensors.items()})
    optimizers = make_optimizers(params, settings, extent=CANONICAL_RADIUS)
    means_decay = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.02 ** (1.0 / settings.steps))

    densify = settings.densify and settings.steps >= 40
    strategy = _make_strategy(settings) if densify else None
    state = strategy.initialize_state(scene_scale=CANONICAL_RADIUS) if strategy is not None else None
    if strategy is not None:
        strategy.check_sanity(params, optimizers)
    calibrated = False
    last: dict[str, float | None] = {"loss": float("nan"), "ema": None}

    def one_step(step: int) -> dict[str, Any]:
        nonlocal calibrated
        views = sample_views(settings.batch_size, settings.resolution, settings.resolution, view_gen, ranges, device)
        t = schedule.sample(settings.batch_size, step, settings.steps, guidance.num_train_timesteps, view_gen)
        pre = ((lambda info, step=step: strategy.step_pre_backward(params, optimizers, state, step, info))
               if strategy is not None else None)
        with cuda_oom_guard(f"step {step} of score distillation"), cudnn_autotune(device):
            loss, info = sds_objective(params, guidance, views, t, noise_gen, settings.guidance_scale,
                                       settings.sh_degree, pre)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            means_decay.step()
            if strategy is not None and state is not None:      # densify
                if not calibrated and step + 1 > strategy.refine_start_iter \
                        and (step + 1) % strategy.refine_every == 0 and state["count"] is not None:
                    # SDS gradients have no fixed scale (they grow with the guidance scale and depend on the
                    # model), so the growth threshold is set once from the gradients seen so far.
                    seen = state["count"] > 0
                    avg = state["grad2d"][seen] / state["count"][seen]
                    if avg.numel():
                        strategy.grow_grad2d = float(torch.quantile(avg.float().cpu(), settings.densify_grad_quantile))
                        calibrated = True
                strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        value, ema = float(loss.detach()), last["ema"]
        last["loss"] = value
        last["ema"] = value if ema is None else 0.9 * ema + 0.1 * value
        return {"loss": last["ema"], "num_gaussians": len(params["means"]), "t": t.float().mean()}

    def snapshot() -> Splats:
        preview = tensors_to_splats(params)
        return preview_transform(preview) if preview_transform is not None else preview

    loop = run_steps(settings.steps, one_step, ctx, snapshot=snapshot, preview_every=settings.preview_every,
                     auto_preview_s=1.0)
    info = {"steps_done": loop.steps_done, "cancelled": loop.cancelled, "seconds": loop.seconds,
            "steps_per_s": loop.mean_steps_per_s, "final_loss": last["loss"],
            "num_gaussians": len(params["means"]),
            "grow_grad2d": strategy.grow_grad2d if strategy is not None else None}
    return tensors_to_splats(params), info


# ----------------------------------------------------------------------------------------------
# Job and CLI
# ----------------------------------------------------------------------------------------------

def output_transform(radius: float) -> np.ndarray:
    """Canonical frame -> output: uniform scale by ``radius`` about the origin."""
    m = np.eye(4)
    m[:3, :3] *= radius / CANONICAL_RADIUS
    return m


def make_guidance(settings: Settings, device: torch.device) -> StableDiffusionGuidance:
    pipe = load_pipeline(settings.guidance_model, "stable-diffusion", device, low_memory=settings.low_memory)
    try:
        return StableDiffusionGuidance(pipe, settings.prompt, settings.negative_prompt, settings.view_dependent,
                                       settings.encode_resolution or None)
    except ValueError as exc:
        raise JobError("bad_model", f"{settings.guidance_model}: {exc}") from None


def run_generate_job(params: Settings | dict, payload: dict, ctx: JobContext,
                     guidance: Guidance | None = None) -> JobResult:
    """Job kind "generate" (see module docstring). ``guidance`` overrides the diffusion model (tests)."""
    payload = payload or {}
    settings = checked_settings("generate", params, payload)
    device = torch.device(ctx.device)
    def stage(text: str) -> None:       # step 0 of 0: what the job does before its steps start
        if ctx.should_stop():           # each set-up stage starts with a cancel check
            raise JobError("cancelled", f"cancelled before {text}; nothing was generated yet")
        ctx.report(0, 0, {"stage": text})

    t0 = time.perf_counter()
    init_splats, radius, centre = make_init(settings, payload, device, stage)
    t_init = time.perf_counter() - t0
    if ctx.should_stop():
        splats = init_splats.transform(output_transform(radius))
        return JobResult(splats, {"seconds": t_init}, _meta(settings, device, radius, centre,
                                                           {"steps_done": 0, "cancelled": True}))
    if guidance is None:
        stage(f"loading the guidance model ({settings.guidance_model})")
        guidance = make_guidance(settings, device)
    to_out = output_transform(radius)
    splats, info = distill(init_splats, guidance, settings, ctx, device,
                           preview_transform=lambda s: s.transform(to_out))
    metrics = {"seconds": time.perf_counter() - t0, "init_seconds": t_init, "steps_per_s": info["steps_per_s"],
               "final_loss": info["final_loss"], "num_gaussians": float(info["num_gaussians"])}
    return JobResult(splats.transform(to_out), metrics, _meta(settings, device, radius, centre, info))


def _meta(settings: Settings, device: torch.device, radius: float, centre: np.ndarray,
          info: dict) -> dict[str, Any]:
    import diffusers
    return {"settings": settings.to_meta(), "seed": settings.seed, "device": str(device),
            "cancelled": bool(info.get("cancelled", False)), "steps_done": int(info.get("steps_done", 0)),
            "output_radius_m": float(radius), "init_centre": [float(c) for c in centre],
            "grow_grad2d": info.get("grow_grad2d"),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "method": "SDS (DreamFusion) on Gaussian splats; CFG scale as DreamFusion/GaussianDreamer"}


def _load_init_points(path: str) -> dict[str, np.ndarray]:
    """Payload for init 'mesh' from a .npz (``points``, optional ``colors`` u8) or any splat file."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        with np.load(p) as data:
            out = {"points": data["points"].astype(np.float32)}
            if "colors" in data:
                out["colors"] = data["colors"].astype(np.uint8)
            return out
    from shared.formats import read_splats
    s = read_splats(p)
    return {"points": s.means.astype(np.float32), "colors": np.round(s.base_colors() * 255).astype(np.uint8)}


def _cli_payload(args: Any, settings: Settings) -> dict:
    if settings.init != "mesh":
        if args.init_points:
            raise JobError("bad_params", "--init-points is for --init mesh")
        return {}
    if not args.init_points:
        raise JobError("bad_params", "--init mesh needs --init-points FILE")
    return _load_init_points(args.init_points)


# python -m backend generate "a ceramic teapot" --out teapot.ply [settings] (backend.job_cli)
CLI = KindCli(positionals=(Positional("prompt", "what to generate, e.g. 'a ceramic teapot'", setting="prompt"),),
              options=((("--init-points",), {"metavar": "FILE", "help": "for --init mesh: .npz (points, colors) "
                                                                        "or a splat file"}),),
              payload=_cli_payload)
