"""SSIM's CPU path (separable 1D passes over the stacked moments) against the 2D-window definition
that the CUDA path computes: equal values and gradients to float rounding, at the training sizes
and below the window size (zero 'same' padding)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend import losses as L


def ssim_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s SSIM with the 11x11 window as one 2D convolution per moment (float64)."""
    a, b = a.double(), b.double()
    c = a.shape[-1]
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    w = L._gauss_window("cpu", torch.float64, c)
    pad = 0 if min(a.shape[1], a.shape[2]) >= L.SSIM_WINDOW else L.SSIM_WINDOW // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, padding=pad, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    num = (2 * mx * my + L.SSIM_C1) * (2 * sxy + L.SSIM_C2)
    den = (mx * mx + my * my + L.SSIM_C1) * (sxx + syy + L.SSIM_C2)
    return (num / den).mean()


@pytest.mark.parametrize("h,w", [(64, 64), (40, 75), (8, 9), (11, 11)])
def test_cpu_ssim_matches_2d_window(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * 100 + w)
    target = torch.rand(2, h, w, 3, generator=g)
    render = (target + 0.2 * torch.randn(2, h, w, 3, generator=g)).clamp(0, 1).requires_grad_(True)
    ours = L.ssim(render, target)
    ref = ssim_2d(render, target)
    assert 0.0 < ref.item() < 0.99                       # a non-trivial similarity
    assert abs(ours.item() - ref.item()) < 1e-6
    g_ours, = torch.autograd.grad(ours, render)
    g_ref, = torch.autograd.grad(ref, render)
    assert ((g_ours.double() - g_ref).abs().max() / g_ref.abs().max()).item() < 1e-4


def test_ssim_of_identical_images_is_one_and_bad_shapes_are_named() -> None:
    a = torch.rand(1, 32, 32, 3)
    assert abs(L.ssim(a, a.clone()).item() - 1.0) < 1e-5
    with pytest.raises(ValueError, match="same shape"):
        L.ssim(a, a[:, :16])
