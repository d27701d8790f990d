"""gsplat densification strategies, usable on the CPU, with a Gaussian cap.

gsplat's MCMC operations call two CUDA kernels: ``compute_relocation`` (Eq. 9 of "3D Gaussian
Splatting as Markov Chain Monte Carlo") and ``quat_scale_to_covar_preci`` (in the position noise).
``install_cpu_fallbacks()`` routes CPU tensors to the pure-torch versions below; CUDA tensors still
go to gsplat's kernels. ``CappedDefaultStrategy`` is gsplat's DefaultStrategy that stops growing
at ``cap_max`` Gaussians.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gsplat.strategy.ops as _ops
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from torch import Tensor

__all__ = ["relocation_torch", "install_cpu_fallbacks", "CappedDefaultStrategy", "MCMCStrategy"]


@functools.lru_cache(maxsize=4)
def _binom_prefix(n_max: int, device: str) -> Tensor:
    """P[n, k] = sum_{i=1..n} C(i-1, k), float64, for n in 0..n_max."""
    import math
    b = torch.zeros(n_max + 1, n_max, dtype=torch.float64)
    for i in range(1, n_max + 1):
        for k in range(i):
            b[i, k] = math.comb(i - 1, k)
    return torch.cumsum(b, dim=0).to(device)


def relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-torch ``gsplat.relocation.compute_relocation``: a Gaussian copied into ``n`` (= ratio,
    clamped to [1, n_max]) Gaussians gets opacity 1 - (1 - o)^(1/n) and its scales multiplied by
    o / sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1).

    Evaluated in float64 (the alternating binomial sum cancels badly in float32)."""
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    o = opacities.double()
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.double())
    k = torch.arange(n_max, device=o.device, dtype=torch.float64)
    sign = torch.where(k.long() % 2 == 0, 1.0, -1.0).to(o.device)
    coeff = _binom_prefix(n_max, str(o.device))[n]                       # [N, n_max]
    terms = coeff * sign / torch.sqrt(k + 1.0) * torch.pow(new_o[:, None], k + 1.0)
    denom = terms.sum(dim=-1)
    new_scales = (o / denom)[:, None] * scales.double()
    return new_o.to(opacities.dtype), new_scales.to(scales.dtype)


def _compute_relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor):
    if opacities.is_cuda:
        return _GSPLAT_RELOCATION(opacities, scales, ratios, binoms)
    return relocation_torch(opacities, scales, ratios, binoms)


def _quat_scale_covar(quats: Tensor, scales: Tensor, compute_covar: bool = True,
                      compute_preci: bool = True, triu: bool = False):
    if quats.is_cuda:
        return _GSPLAT_COVAR(quats, scales, compute_covar, compute_preci, triu)
    return _quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)


_GSPLAT_RELOCATION = _ops.compute_relocation
_GSPLAT_COVAR = _ops.quat_scale_to_covar_preci


def install_cpu_fallbacks() -> None:
    """Make gsplat's strategy ops work on CPU tensors (idempotent; CUDA tensors are unaffected)."""
    _ops.compute_relocation = _compute_relocation
    _ops.quat_scale_to_covar_preci = _quat_scale_covar


install_cpu_fallbacks()


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy (clone / split / prune / opacity reset) that never grows past
    ``cap_max`` Gaussians: when a refinement would, it keeps the highest-opacity ones."""

    cap_max: int = 1_000_000

    @torch.no_grad()
    def _grow_gs(self, params: Any, optimizers: dict, state: dict, step: int) -> tuple[int, int]:
        if len(params["means"]) >= self.cap_max:
            return 0, 0
        n_dupli, n_split = super()._grow_gs(params, optimizers, state, step)
        excess = len(params["means"]) - self.cap_max
        if excess > 0:
            opac = params["opacities"].flatten()
            drop = torch.zeros(len(opac), dtype=torch.bool, device=opac.device)
            drop[torch.argsort(opac)[:excess]] = True
            _ops.remove(params=params, optimizers=optimizers, state=state, mask=drop)
        return n_dupli, n_split
