"""One rasterize() for the backend: gsplat's CUDA rasterizer on a GPU, the pure-torch reference on
the CPU. Both take and return what ``gsplat.rasterization`` does (see ``reference.py`` for the
conventions); the trainer and the generator call only this."""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from .reference import rasterize_reference

BACKENDS = ("auto", "gsplat", "reference")


@functools.lru_cache(maxsize=1)
def gsplat_cuda_available() -> bool:
    """True when CUDA is present and gsplat's CUDA extension loads (this may compile it once)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception:
        return False
    return _C is not None


def resolve_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The backend ``rasterize`` uses for tensors on ``device``: "gsplat" or "reference"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "gsplat" if torch.device(device).type == "cuda" and gsplat_cuda_available() else "reference"


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Tensor] = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    packed: bool = False,
    absgrad: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C views of N Gaussians: ``(render_colors [C,H,W,D], render_alphas [C,H,W,1], info)``.

    Same arguments and meaning as ``gsplat.rasterization`` (activated scales and opacities,
    OpenCV world-to-camera ``viewmats``, pixel-unit ``Ks``). ``backend``: "auto" (gsplat when the
    tensors are on CUDA, else the reference), "gsplat" or "reference". ``info["backend"]`` names
    the one used.
    """
    which = resolve_backend(means.device, backend)
    if which == "gsplat":
        from gsplat import rasterization
        colors_, alphas, info = rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
            backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode,
            packed=packed, absgrad=absgrad)
        info["backend"] = "gsplat"
        return colors_, alphas, info
    return rasterize_reference(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
        backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode,
        packed=packed, absgrad=absgrad)


__all__ = ["rasterize", "rasterize_reference", "resolve_backend", "gsplat_cuda_available", "BACKENDS"]
