"""One rasterize() for the backend: gsplat's CUDA rasterizer on a GPU, the Numba-compiled fast
rasterizer (``fast.py``) elsewhere (CPU, Apple's MPS via CPU copies), and the pure-torch reference
(``reference.py``), which tests check the others against. All take and return what
``gsplat.rasterization`` does (see ``reference.py`` for the conventions); the trainer and the
generator call only this."""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import Tensor

from .reference import rasterize_reference

log = logging.getLogger("splatbridge.render")

BACKENDS = ("auto", "gsplat", "fast", "reference")


@functools.lru_cache(maxsize=1)
def fast_available() -> bool:
    """True when the fast rasterizer's dependency (Numba) imports."""
    try:
        from . import fast  # noqa: F401
    except Exception as exc:   # Numba missing or broken: say why, render on the reference
        log.warning("fast rasterizer unavailable (%s); using the slow pure-torch reference", exc)
        return False
    return True


@functools.lru_cache(maxsize=1)
def gsplat_cuda_available() -> bool:
    """True when CUDA is present and gsplat's CUDA extension loads (this may compile it once)."""
    if not torch.cuda.is_available():
        return False
    try:
        from gsplat.cuda._backend import _C
    except Exception as exc:   # a missing toolchain, a failed build: say why, render on the reference
        log.warning("gsplat CUDA extension unavailable: %s", exc)
        return False
    return _C is not None


def resolve_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The backend ``rasterize`` uses for tensors on ``device``: "gsplat", "fast" or "reference".

    "auto" is gsplat on CUDA when its extension loads, else "fast" when Numba imports, else
    "reference"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if torch.device(device).type == "cuda" and gsplat_cuda_available():
        return "gsplat"
    return "fast" if fast_available() else "reference"


def rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, *, backend: str = "auto", **options: Any,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C views of N Gaussians: ``(render_colors [C,H,W,D], render_alphas [C,H,W,1], info)``.

    Same arguments and meaning as ``gsplat.rasterization`` (activated scales and opacities,
    OpenCV world-to-camera ``viewmats``, pixel-unit ``Ks``); ``options`` are its keyword
    arguments (``near_plane``, ``far_plane``, ``eps2d``, ``sh_degree``, ``backgrounds``,
    ``render_mode``, ``rasterize_mode``, ``packed``, ``absgrad``), passed as given to either
    backend; their defaults agree, except ``packed``, which is False here (gsplat's is True, the
    reference has no packed mode). ``backend``: "auto" (see ``resolve_backend``), "gsplat", "fast"
    or "reference". ``info["backend"]`` names the one used.
    """
    options.setdefault("packed", False)
    chosen = resolve_backend(means.device, backend)
    if chosen == "reference":
        return rasterize_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                   **options)
    if chosen == "fast":
        from .fast import rasterize_fast
        return rasterize_fast(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options)
    from gsplat import rasterization
    colors_, alphas, info = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width,
                                          height, **options)
    info["backend"] = "gsplat"
    return colors_, alphas, info
