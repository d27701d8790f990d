"""Score distillation sampling (SDS, DreamFusion): the guidance interface and its Stable Diffusion form.

For rendered images x (differentiable in the splat parameters) encoded to latents z = E(x), one SDS step

    t ~ U[t_min, t_max(step)] (integer DDPM timesteps),  eps ~ N(0, I)
    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
    eps_hat = eps_u + s (eps_c - eps_u)          (classifier-free guidance, scale s, one batch of 2B)
    grad = w(t) (eps_hat - eps),  w(t) = 1 - abar_t

is applied through the reparametrisation ``target = (z - grad).detach()``, ``loss = 0.5 |z - target|^2 / B``,
whose gradient with respect to z is exactly ``grad / B`` (the UNet Jacobian is skipped, as in DreamFusion).

``Guidance`` is the small interface the distillation loop uses, so that a test can swap in an analytic
denoiser with a known score. ``StableDiffusionGuidance`` wraps a diffusers ``StableDiffusionPipeline``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.camera_sampling import ViewBatch


@dataclass(frozen=True)
class TimestepSchedule:
    """Fractions of the diffusion's training timesteps. ``t_max`` anneals linearly from ``t_max_start`` to
    ``t_max_end`` over the first ``anneal_fraction`` of the steps (large noise early for shape, small noise
    late for detail)."""

    t_min: float = 0.02
    t_max_start: float = 0.98
    t_max_end: float = 0.50
    anneal_fraction: float = 1.0

    def validate(self) -> None:
        if not (0.0 <= self.t_min < self.t_max_end <= self.t_max_start <= 1.0):
            raise ValueError(f"timestep schedule needs 0 <= t_min < t_max_end <= t_max_start <= 1, got "
                             f"{self.t_min}, {self.t_max_end}, {self.t_max_start}")
        if not (0.0 < self.anneal_fraction <= 1.0):
            raise ValueError(f"anneal_fraction must be in (0, 1], got {self.anneal_fraction}")

    def bounds(self, step: int, total: int, num_train_timesteps: int) -> tuple[int, int]:
        """Integer [lo, hi] timestep range for ``step`` (0-based) of ``total``."""
        progress = min(1.0, step / max(1.0, self.anneal_fraction * total))
        t_max = self.t_max_start + (self.t_max_end - self.t_max_start) * progress
        lo = int(round(self.t_min * (num_train_timesteps - 1)))
        hi = max(lo, int(round(t_max * (num_train_timesteps - 1))))
        return lo, hi

    def sample(self, n: int, step: int, total: int, num_train_timesteps: int,
               generator: torch.Generator) -> Tensor:
        """n timesteps (int64, CPU) drawn uniformly from the range of ``step``."""
        lo, hi = self.bounds(step, total, num_train_timesteps)
        return torch.randint(lo, hi + 1, (n,), generator=generator, dtype=torch.long)


class Guidance(ABC):
    """A diffusion prior as score distillation uses it.

    Implementations hold ``alphas_cumprod`` (f32[T] on the device: abar_t of the DDPM forward process).
    """

    alphas_cumprod: Tensor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @abstractmethod
    def condition(self, views: ViewBatch) -> Any:
        """Per-view conditioning for ``predict_noise`` (e.g. cached text embeddings chosen by view label)."""

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """Differentiable map from images f32[B,3,H,W] (RGB 0..1) to the space the diffusion runs in."""

    @abstractmethod
    def predict_noise(self, noisy: Tensor, t: Tensor, cond: Any, guidance_scale: float) -> Tensor:
        """Classifier-free-guided noise prediction eps_hat for ``noisy`` latents at timesteps ``t`` [B]."""

    def weight(self, t: Tensor) -> Tensor:
        """SDS weighting w(t) = 1 - abar_t (DreamFusion's sigma_t^2), shape [B]."""
        return 1.0 - self.alphas_cumprod[t.to(self.alphas_cumprod.device)]

    @torch.no_grad()
    def sds_grad(self, latents: Tensor, t: Tensor, cond: Any, guidance_scale: float,
                 noise: Tensor) -> Tensor:
        """The SDS gradient w(t) (eps_hat - eps) with respect to ``latents`` (same shape, fp32)."""
        latents = latents.detach().float()
        t = t.to(self.alphas_cumprod.device)
        abar = self.alphas_cumprod[t].view(-1, *([1] * (latents.ndim - 1)))
        noisy = abar.sqrt() * latents + (1.0 - abar).sqrt() * noise
        eps_hat = self.predict_noise(noisy, t, cond, guidance_scale).float()
        grad = self.weight(t).view_as(abar) * (eps_hat - noise)
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """0.5 |latents - (latents - grad)|^2 / B: its gradient w.r.t. ``latents`` is ``grad / B``."""
    target = (latents.float() - grad).detach()
    return 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / latents.shape[0]


class StableDiffusionGuidance(Guidance):
    """SDS with a diffusers ``StableDiffusionPipeline`` (UNet predicting epsilon, VAE latents).

    ``view_dependent``: append ", front view" / ", side view" / ", back view" / ", overhead view" to the
    prompt by each view's label; the text embeddings of each variant are computed once and cached.
    ``encode_resolution``: images are resized to this square size before the VAE (default: the model's
    native size, 512 for SD 2.1 base); the latents are resized to the UNet's native latent size. A smaller
    value (e.g. 256) is the cheaper mode: the VAE then encodes 4x fewer pixels.
    """

    def __init__(self, pipe: Any, prompt: str, negative_prompt: str = "", view_dependent: bool = True,
                 encode_resolution: int | None = None, channels_last: bool = True):
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.device = pipe._execution_device
        self.dtype = self.unet.dtype
        for module in (self.unet, self.vae, pipe.text_encoder):
            module.requires_grad_(False)
            module.eval()
        if channels_last and self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        sched = pipe.scheduler.config
        if sched.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"SDS here needs an epsilon-prediction model; this one predicts "
                             f"{sched.get('prediction_type')!r}")
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size = int(self.unet.config.sample_size)
        self.native_resolution = self.latent_size * self.vae_scale
        self.encode_resolution = int(encode_resolution or self.native_resolution)
        if self.encode_resolution % self.vae_scale:
            raise ValueError(f"encode_resolution {self.encode_resolution} must be a multiple of {self.vae_scale}")
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.view_dependent = view_dependent
        self._embeddings: dict[str, tuple[Tensor, Tensor]] = {}

    def prompt_for(self, label: str) -> str:
        """The prompt text used for a view label."""
        return f"{self.prompt}, {label} view" if self.view_dependent and label else self.prompt

    @torch.no_grad()
    def _embed(self, label: str) -> tuple[Tensor, Tensor]:
        key = label if self.view_dependent else ""
        if key not in self._embeddings:
            cond, uncond = self.pipe.encode_prompt(self.prompt_for(key), self.device, 1, True,
                                                   negative_prompt=self.negative_prompt or "")
            self._embeddings[key] = (cond.to(self.dtype), uncond.to(self.dtype))
        return self._embeddings[key]

    def condition(self, views: ViewBatch) -> Tensor:
        """Text embeddings [2B, 77, D]: B unconditional (negative prompt) then B conditional."""
        pairs = [self._embed(label) for label in (views.labels or [""] * len(views))]
        uncond = torch.cat([p[1] for p in pairs])
        cond = torch.cat([p[0] for p in pairs])
        return torch.cat([uncond, cond])

    def encode(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.encode_resolution or images.shape[-2] != self.encode_resolution:
            images = F.interpolate(images, (self.encode_resolution, self.encode_resolution), mode="bilinear",
                                   align_corners=False)
        x = (images * 2.0 - 1.0).to(self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(x).latent_dist.mean * self.scaling_factor
        if latents.shape[-1] != self.latent_size:
            latents = F.interpolate(latents.float(), (self.latent_size, self.latent_size), mode="bilinear",
                                    align_corners=False)
        return latents.float()

    def predict_noise(self, noisy: Tensor, t: Tensor, cond: Tensor, guidance_scale: float) -> Tensor:
        x = torch.cat([noisy, noisy]).to(self.dtype)
        tt = torch.cat([t, t]).to(self.device)
        eps = self.unet(x, tt, encoder_hidden_states=cond).sample
        eps_u, eps_c = eps.float().chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)
