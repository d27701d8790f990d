"""Image losses and metrics for training and evaluation (torch, any device).

Images are float tensors [B,H,W,3] (channels last, as the rasterizer returns them) in 0..1.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


@functools.lru_cache(maxsize=8)
def _gauss_window(device: str, dtype: torch.dtype, channels: int) -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-x * x / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    w = torch.outer(g, g).to(device=device, dtype=dtype)
    return w.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity of two image batches [B,H,W,C] (Wang et al. 2004: 11x11 Gaussian
    window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, data range 1, "valid" windows only, as gsplat's
    simple_trainer evaluates it). Differentiable. Images smaller than 11 px fall back to 'same'
    zero padding.

    Five plain 2D depthwise convolutions: on an H100 at 800x800 this measured 140 training
    steps/s against 104 for separable 1D passes over the stacked moments."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two [B,H,W,C] batches of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    c = a.shape[-1]
    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    w = _gauss_window(str(a.device), a.dtype, c)
    pad = 0 if min(a.shape[1], a.shape[2]) >= SSIM_WINDOW else SSIM_WINDOW // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=pad, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sxx + syy + SSIM_C2)
    return (num / den).mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in 0..1 (mean over all pixels and channels)."""
    mse = (a.detach().float() - b.detach().float()).square().mean().item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float = 0.2) -> Tensor:
    """3DGS training loss: (1 - lambda) * L1 + lambda * (1 - SSIM)."""
    l1 = (render - target).abs().mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(render, target))
