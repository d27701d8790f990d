"""Text-instructed editing of Gaussian splats (Instruct-NeRF2NeRF's Iterative Dataset Update on splats,
as GaussianEditor does it).

The job (``run_edit_job``, job kind "edit") and the command line (``python -m backend edit``):

1. **Views**: ``num_views`` fixed cameras evenly spread around the splats' bounding sphere (centre = the
   mean of the means, radius = the 95th percentile of their distances to it), at the distance that frames
   that sphere for the vertical field of view ``fovy`` (plus a margin), azimuths evenly over
   ``azimuth_range``, elevations spread over ``elevation_range`` by a golden-ratio sequence
   (``backend.camera_sampling.fixed_views``, moved onto the centre). Backgrounds are a fixed solid
   colour (``background``): the edited images are whole pictures, background included.
2. **Dataset**: the input splats rendered from the views (the *originals*); the dataset starts as a copy.
   Before the steps, ``initial_edits`` views are edited (-1: all of them; 0: pure Instruct-NeRF2NeRF).
3. **Fine-tune** all splat parameters from the input (Adam with ``backend.optim.make_optimizers``,
   L1 + 0.2 D-SSIM from ``backend.losses``), one random dataset view per step; every ``edit_every`` steps
   the next dataset view (round robin) is replaced by the editor's edit of the *current* render of that
   view, conditioned on its original render (Iterative Dataset Update).
4. **Result**: the splats in world space (they never leave it: only the cameras are placed around them).

``ImageEditor.edit(current, original, generator)`` is the 2D edit; ``InstructPix2PixEditor`` is
Instruct-NeRF2NeRF's: the current render is encoded with the VAE, noised to a random timestep
t ~ U[t_min, t_max] x 1000, and denoised with DDIM by the InstructPix2Pix UNet conditioned on the
original render's latents and the instruction, with three-way classifier-free guidance
``eps = eps_uncond + s_img (eps_img - eps_uncond) + s_txt (eps_full - eps_img)``.
Everything that determines the result (seed and all settings) is in ``JobResult.meta``.
"""
from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.camera_sampling import ViewBatch, fixed_views
from backend.job_api import JobContext, JobError, JobResult, NullContext, checked_settings
from backend.job_cli import KindCli, Positional
from backend.losses import photometric_loss
from backend.models import cuda_oom_guard, load_pipeline
from backend.optim import make_optimizers
from backend.optim_loop import LoopResult, run_steps
from backend.params import TensorMap, activated, sh_coeffs, splats_to_tensors, tensors_to_splats
from backend.render import rasterize
from shared.jobspec import Settings
from shared.splats import SplatError, Splats

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------

def bounding_sphere(splats: Splats, quantile: float = 0.95) -> tuple[np.ndarray, float]:
    """(centre f64[3], radius in metres): the mean of the means and the ``quantile`` of the distances to
    it (a few stray splats do not push the cameras away). Radius floor 1e-3."""
    means = splats.means.astype(np.float64)
    centre = means.mean(axis=0)
    radius = float(np.quantile(np.linalg.norm(means - centre, axis=1), quantile))
    return centre, max(radius, 1e-3)


def framing_distance(radius: float, fovy_deg: float, margin: float = 1.1) -> float:
    """Camera distance at which a sphere of ``radius`` fills the vertical field of view, times ``margin``."""
    return margin * radius / math.sin(math.radians(fovy_deg) / 2.0)


def orbit_views(centre: np.ndarray, radius: float, elevations_deg: list[float], azimuths_deg: list[float],
                fovy_deg: float, resolution: int, margin: float = 1.1,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                device: torch.device | str = "cpu") -> ViewBatch:
    """``fixed_views`` around the origin at the framing distance, moved onto ``centre`` (world space):
    a world-to-camera matrix of a camera around the origin, times a translation by -centre."""
    views = fixed_views(list(elevations_deg), list(azimuths_deg), framing_distance(radius, fovy_deg, margin),
                        fovy_deg, resolution, resolution, device, background)
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = -torch.as_tensor(np.asarray(centre, np.float64))
    views.viewmats = (views.viewmats.double() @ shift.to(views.viewmats.device)).float()
    return views


def dataset_angles(settings: Settings) -> tuple[list[float], list[float]]:
    """(elevations, azimuths) in degrees of the ``num_views`` dataset views: azimuths evenly spread (a full
    turn does not repeat its end), elevations spread over the range by the golden-ratio sequence."""
    n = settings.num_views
    (el0, el1), (az0, az1) = settings.elevation_range, settings.azimuth_range
    full_turn = az1 - az0 >= 360.0 - 1e-9
    az = [az0 + (az1 - az0) * (i / n if full_turn else (i + 0.5) / n) for i in range(n)]
    el = [el0 + (el1 - el0) * ((0.5 + i * GOLDEN) % 1.0) for i in range(n)]
    return el, az


def render(params: TensorMap, views: ViewBatch, index: list[int] | slice,
           sh_degree: int) -> Tensor:
    """Render the views ``index`` of ``views``: f32[B,3,H,W] in 0..1 over the views' backgrounds."""
    means, quats, scales, opacities = activated(params)
    colors, _, _ = rasterize(means, quats, scales, opacities, sh_coeffs(params), views.viewmats[index],
                             views.Ks[index], views.width, views.height, sh_degree=sh_degree,
                             backgrounds=views.backgrounds[index])
    return colors.permute(0, 3, 1, 2).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# 2D editors
# ----------------------------------------------------------------------------------------------

class ImageEditor(abc.ABC):
    """Edits renders: the 2D half of Iterative Dataset Update."""

    @abc.abstractmethod
    def edit(self, current: Tensor, original: Tensor, generator: torch.Generator) -> Tensor:
        """``current``: the splats' render now, ``original``: the unedited render of the same view, both
        f32[B,3,H,W] in 0..1 -> the edited images f32[B,3,H,W] in 0..1 (same device). ``generator`` (a CPU
        generator) draws all randomness, so the same generator state gives the same edit."""


class InstructPix2PixEditor(ImageEditor):
    """Instruct-NeRF2NeRF's edit with an InstructPix2Pix pipeline (see the module docstring).

    Uses the pipeline's ``vae``, ``unet``, ``tokenizer``/``text_encoder`` (via its ``_encode_prompt``) and a
    DDIM scheduler made from its scheduler's config (deterministic given the initial noise, as
    Instruct-NeRF2NeRF uses). Images are resized to a multiple of the VAE's scale factor if needed.
    """

    def __init__(self, pipe: Any, prompt: str, text_guidance: float = 7.5, image_guidance: float = 1.5,
                 diffusion_steps: int = 20, t_min: float = 0.02, t_max: float = 0.98):
        from diffusers import DDIMScheduler

        if getattr(pipe.unet.config, "in_channels", None) != 8:
            raise ValueError(f"the UNet takes {pipe.unet.config.in_channels} input channels, not the 8 of "
                             f"InstructPix2Pix (4 noisy latents + 4 image latents)")
        self.pipe = pipe
        self.device = pipe._execution_device
        self.dtype = pipe.unet.dtype
        self.text_guidance, self.image_guidance = float(text_guidance), float(image_guidance)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(int(diffusion_steps))
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.scale = float(pipe.vae.config.scaling_factor)
        self.factor = int(getattr(pipe, "vae_scale_factor", 8))
        with torch.no_grad():
            # [text, empty, empty]: the three branches' text conditions (full, image-only, unconditional)
            self.embeds = pipe._encode_prompt(prompt, self.device, 1, True).to(self.dtype)

    @torch.no_grad()
    def edit(self, current: Tensor, original: Tensor, generator: torch.Generator) -> Tensor:
        if current.shape != original.shape or current.dim() != 4 or current.shape[1] != 3:
            raise ValueError(f"current and original must both be [B,3,H,W], got {tuple(current.shape)} "
                             f"and {tuple(original.shape)}")
        b, _, h, w = current.shape
        out_device = current.device
        hh, ww = (max(self.factor, round(s / self.factor) * self.factor) for s in (h, w))

        def prep(x: Tensor) -> Tensor:
            x = x.to(self.device, torch.float32)
            if (hh, ww) != (h, w):
                x = torch.nn.functional.interpolate(x, (hh, ww), mode="bilinear", align_corners=False)
            return (x * 2.0 - 1.0).to(self.dtype)

        vae, unet = self.pipe.vae, self.pipe.unet
        latents = vae.encode(prep(current)).latent_dist.mean * self.scale          # what to edit
        image_latents = vae.encode(prep(original)).latent_dist.mode()            # the condition (unscaled)
        cond = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        embeds = self.embeds.repeat_interleave(b, dim=0)                          # [3B, L, D]

        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        t_start = int(round((self.t_min + (self.t_max - self.t_min) * u) * (self.num_train_timesteps - 1)))
        timesteps = [int(t) for t in self.scheduler.timesteps if int(t) <= t_start] or \
            [int(self.scheduler.timesteps[-1])]
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)
        latents = self.scheduler.add_noise(latents, noise, torch.tensor([timesteps[0]], device=self.device))
        for t in timesteps:
            x = torch.cat([torch.cat([latents] * 3), cond], dim=1)
            eps_full, eps_img, eps_uncond = unet(x, t, encoder_hidden_states=embeds).sample.chunk(3)
            eps = eps_uncond + self.image_guidance * (eps_img - eps_uncond) \
                + self.text_guidance * (eps_full - eps_img)
            latents = self.scheduler.step(eps, t, latents, eta=0.0).prev_sample
        images = vae.decode(latents / self.scale).sample.float()
        images = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
        if (hh, ww) != (h, w):
            images = torch.nn.functional.interpolate(images, (h, w), mode="bilinear", align_corners=False)
        return images.to(out_device)


def make_editor(settings: Settings, device: torch.device) -> InstructPix2PixEditor:
    """Load ``settings.edit_model`` (the shared loader: fp16 on CUDA) and wrap it."""
    pipe = load_pipeline(settings.edit_model, "instruct-pix2pix", device, low_memory=settings.low_memory)
    try:
        return InstructPix2PixEditor(pipe, settings.prompt, settings.text_guidance, settings.image_guidance,
                                     settings.diffusion_steps, settings.t_min, settings.t_max)
    except ValueError as exc:
        raise JobError("bad_model", f"{settings.edit_model}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Iterative Dataset Update
# ----------------------------------------------------------------------------------------------

def edit_views(settings: Settings, splats: Splats, device: torch.device | str = "cpu") -> ViewBatch:
    """The dataset cameras of ``settings`` around ``splats``."""
    centre, radius = bounding_sphere(splats)
    el, az = dataset_angles(settings)
    return orbit_views(centre, radius, el, az, settings.fovy, settings.resolution, settings.frame_margin,
                       settings.background, device)


def edit_splats(splats: Splats, editor: ImageEditor, settings: Settings, ctx: JobContext | None = None,
                device: torch.device | str = "cpu",
                stage: Callable[[str], None] = lambda text: None,
                mask: np.ndarray | None = None) -> tuple[Splats, dict[str, Any]]:
    """Fine-tune ``splats`` (world space) toward ``editor``'s edits of their renders (module docstring).
    Returns the splats and run info (steps done, edits made, cancelled, timings). The same settings (seed
    included) and editor give the same splats bit for bit on the CPU.

    ``mask`` (bool[N]): only these splats change (GaussianEditor's edit region; in Blender, the splats
    selected in Edit Mode); the others keep every value bit for bit, since their gradients are zeroed
    and Adam's update of a parameter that never had a gradient is exactly 0."""
    ctx = ctx or NullContext(str(device))
    device = torch.device(device)
    if len(splats) == 0:
        raise JobError("bad_input", "payload 'splats' is empty: nothing to edit")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)           # views per step
    edit_gen = torch.Generator().manual_seed(settings.seed + 1)  # the editor's randomness
    sh_degree = splats.sh_degree
    _, radius = bounding_sphere(splats)
    views = edit_views(settings, splats, device)
    n = len(views)

    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in splats_to_tensors(splats, device).items()})
    if mask is not None:
        keep = torch.as_tensor(np.asarray(mask, dtype=bool), device=device)
        for p in params.values():
            p.register_hook(lambda g, keep=keep: g * keep.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))
    with torch.no_grad():
        originals = torch.cat([render(params, views, [i], sh_degree) for i in range(n)])
    dataset = originals.clone()
    edits = 0
    next_view = 0

    def edit_next() -> None:
        nonlocal edits, next_view
        i = next_view
        with torch.no_grad():
            current = render(params, views, [i], sh_degree)
        with cuda_oom_guard(f"editing view {i}"):
            edited = editor.edit(current, originals[i:i + 1], edit_gen)
        dataset[i:i + 1] = edited.to(dataset.device, dataset.dtype).clamp(0.0, 1.0)
        edits += 1
        next_view = (next_view + 1) % n

    t0 = time.perf_counter()
    first = n if settings.initial_edits < 0 else settings.initial_edits
    cancelled = False
    if first:
        stage(f"making the first edits ({first} of {n} views)")
    for _ in range(first):
        if ctx.should_stop():
            cancelled = True
            break
        edit_next()
    t_first = time.perf_counter() - t0

    optimizers = make_optimizers(params, settings, extent=radius)
    means_decay = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"],
                                                         gamma=0.1 ** (1.0 / max(1, settings.steps)))
    order = torch.randint(0, n, (settings.steps,), generator=gen).tolist()
    last: dict[str, float | None] = {"loss": float("nan"), "ema": None}

    def one_step(step: int) -> dict[str, Any]:
        if step % settings.edit_every == 0 and (step > 0 or first == 0):
            edit_next()
        i = order[step]
        with cuda_oom_guard(f"step {step} of the edit"):
            image = render(params, views, [i], sh_degree)
            loss = photometric_loss(image.permute(0, 2, 3, 1), dataset[i:i + 1].permute(0, 2, 3, 1))
            loss.backward()
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            means_decay.step()
        value, ema = float(loss.detach()), last["ema"]
        last["loss"] = value
        last["ema"] = value if ema is None else 0.9 * ema + 0.1 * value
        return {"loss": last["ema"], "num_gaussians": len(params["means"]), "edits": edits}

    loop = LoopResult(cancelled=True) if cancelled else run_steps(
        settings.steps, one_step, ctx, snapshot=lambda: tensors_to_splats(params),
        preview_every=settings.preview_every, auto_preview_s=1.0)
    info = {"steps_done": loop.steps_done, "edits": edits, "cancelled": loop.cancelled,
            "seconds": time.perf_counter() - t0, "first_edits_seconds": t_first,
            "steps_per_s": loop.mean_steps_per_s, "final_loss": last["loss"],
            "num_gaussians": len(params["means"]), "radius": radius}
    return tensors_to_splats(params), info


# ----------------------------------------------------------------------------------------------
# Job and CLI
# ----------------------------------------------------------------------------------------------

def splats_from_payload(payload: dict) -> Splats:
    """Payload ``splats`` (a splat map, as shared.protocol) -> validated ``Splats``, or ``bad_input``."""
    data = (payload or {}).get("splats")
    if data is None:
        raise JobError("bad_input", "payload 'splats' is missing: send the splats to edit as a splat map "
                                    "(means, quats, scales, opacities, sh0, optional shN)")
    if not isinstance(data, dict):
        raise JobError("bad_input", "payload 'splats' must be a splat map (means, quats, scales, ...)")
    try:
        splats = Splats.from_arrays(data)
    except SplatError as exc:
        raise JobError("bad_input", f"payload splats.{exc}") from None
    if len(splats) == 0:
        raise JobError("bad_input", "payload 'splats' is empty: nothing to edit")
    return splats


def mask_from_payload(payload: dict, n: int) -> np.ndarray | None:
    """Optional payload ``mask`` (bool or u8 [N]: the splats the edit may change) -> bool[N], or
    ``bad_input`` naming the problem. None when absent."""
    data = (payload or {}).get("mask")
    if data is None:
        return None
    mask = np.asarray(data)
    if mask.shape != (n,):
        raise JobError("bad_input", f"payload 'mask' must be [N] = [{n}] (one flag per splat), got shape "
                                    f"{mask.shape}")
    if mask.dtype != np.bool_ and mask.dtype != np.uint8:
        raise JobError("bad_input", f"payload 'mask' must be bool or u8, got {mask.dtype}")
    mask = mask.astype(bool)
    if not mask.any():
        raise JobError("bad_input", "payload 'mask' selects no splats: nothing to edit")
    return mask


def run_edit_job(params: Settings | dict, payload: dict, ctx: JobContext,
                 editor: ImageEditor | None = None) -> JobResult:
    """Job kind "edit" (see module docstring). ``editor`` overrides the diffusion model (tests)."""
    settings = checked_settings("edit", params, payload)
    splats = splats_from_payload(payload)
    mask = mask_from_payload(payload, len(splats))
    device = torch.device(ctx.device)

    def stage(text: str) -> None:       # step 0 of 0: what the job does before its steps start
        if ctx.should_stop():           # each set-up stage starts with a cancel check
            raise JobError("cancelled", f"cancelled before {text}; nothing was edited yet")
        ctx.report(0, 0, {"stage": text})

    t0 = time.perf_counter()
    if editor is None:
        stage(f"loading the edit model ({settings.edit_model})")
        editor = make_editor(settings, device)
    t_load = time.perf_counter() - t0
    out, info = edit_splats(splats, editor, settings, ctx, device, stage, mask)
    info["selected"] = len(splats) if mask is None else int(mask.sum())
    metrics = {"seconds": time.perf_counter() - t0, "load_seconds": t_load, "steps_per_s": info["steps_per_s"],
               "final_loss": info["final_loss"], "num_gaussians": float(info["num_gaussians"]),
               "edits": float(info["edits"])}
    return JobResult(out, metrics, _meta(settings, device, info))


def _meta(settings: Settings, device: torch.device, info: dict) -> dict[str, Any]:
    import diffusers
    return {"settings": settings.to_meta(), "seed": settings.seed, "device": str(device),
            "cancelled": bool(info.get("cancelled", False)), "steps_done": int(info.get("steps_done", 0)),
            "edits": int(info.get("edits", 0)), "radius_m": float(info.get("radius", 0.0)),
            "selected": int(info.get("selected", 0)),
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "method": "Instruct-NeRF2NeRF Iterative Dataset Update on Gaussian splats (InstructPix2Pix edits)"}


def _cli_payload(args: Any, settings: Settings) -> dict:
    from shared.formats import read_splats
    try:
        splats = read_splats(Path(args.input))
    except (OSError, ValueError) as exc:
        raise JobError("bad_input", f"cannot read {args.input}: {exc}") from None
    return {"splats": splats.to_arrays()}


# python -m backend edit in.ply "make it look like bronze" --out out.ply [settings] (backend.job_cli)
CLI = KindCli(positionals=(Positional("input", "splat file to edit (.ply, .splat, ...)"),
                           Positional("prompt", "the instruction, e.g. 'make it look like bronze'", setting="prompt")),
              payload=_cli_payload)
