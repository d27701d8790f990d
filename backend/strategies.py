"""Densification strategies that run on the CPU too, with a Gaussian cap, built on gsplat's public API.

- ``MCMCStrategy``: gsplat's ``MCMCStrategy`` (its fields, ``initialize_state``, ``check_sanity``) with
  our own ``step_post_backward``: the same steps as gsplat 1.5.3 (relocate dead Gaussians, add 5 %,
  perturb positions), written here so that CPU tensors use the pure-torch ``relocation_torch`` and
  covariance while CUDA tensors use gsplat's public kernels (``gsplat.relocation.compute_relocation``,
  ``gsplat.quat_scale_to_covar_preci``). Nothing in gsplat is patched.
- ``CappedDefaultStrategy``: gsplat's ``DefaultStrategy`` (clone / split / prune / opacity reset) that
  never ends a step with more than ``cap_max`` Gaussians: at the cap a refinement only prunes; one that
  grows past the cap is followed by dropping the lowest-opacity ones.

tests/test_strategies.py runs gsplat's own strategies next to these and fails if gsplat's behaviour
moves (a new gsplat that changes its MCMC steps or its default refinement).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gsplat import quat_scale_to_covar_preci
from gsplat.relocation import compute_relocation
from gsplat.strategy import DefaultStrategy
from gsplat.strategy import MCMCStrategy as GsplatMCMCStrategy
from gsplat.utils import normalized_quat_to_rotmat
from torch import Tensor

__all__ = ["relocation_torch", "covariances", "CappedDefaultStrategy", "MCMCStrategy"]

Params = dict[str, torch.nn.Parameter] | torch.nn.ParameterDict     # as gsplat's strategies take them


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


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """gsplat's relocation kernel on CUDA tensors, ``relocation_torch`` on the others."""
    if opacities.is_cuda:
        return compute_relocation(opacities=opacities, scales=scales, ratios=ratios, binoms=binoms)
    return relocation_torch(opacities, scales, ratios, binoms)


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances [N,3,3] of Gaussians with (unnormalised, w x y z) ``quats`` and ``scales``
    in metres: gsplat's kernel on CUDA, R diag(s)^2 R^T in torch otherwise."""
    if quats.is_cuda:
        return quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)[0]
    m = normalized_quat_to_rotmat(F.normalize(quats, p=2, dim=-1)) * scales[..., None, :]
    return torch.einsum("...ij,...kj -> ...ik", m, m)


@torch.no_grad()
def _replace(params: Params, optimizers: dict[str, torch.optim.Optimizer],
             param_fn: Callable[[str, Tensor], Tensor], optimizer_fn: Callable[[Tensor], Tensor]) -> None:
    """Swap every parameter for ``param_fn(name, p)`` and its Adam moments for ``optimizer_fn(v)``."""
    for name in list(params.keys()):
        old = params[name]
        new = torch.nn.Parameter(param_fn(name, old), requires_grad=old.requires_grad)
        params[name] = new
        optimizer = optimizers.get(name)
        if optimizer is None:
            continue
        for group in optimizer.param_groups:
            moments = optimizer.state.pop(old, {})
            for key in list(moments):
                if key != "step":
                    moments[key] = optimizer_fn(moments[key])
            group["params"] = [new]
            optimizer.state[new] = moments


def _multinomial(weights: Tensor, n: int) -> Tensor:
    """``n`` indices drawn with replacement in proportion to ``weights`` (numpy past torch's 2^24 limit)."""
    if weights.numel() <= 2 ** 24:
        return torch.multinomial(weights, n, replacement=True)
    p = (weights / weights.sum()).detach().cpu().numpy()
    return torch.from_numpy(np.random.choice(len(p), size=n, p=p, replace=True)).to(weights.device)


@torch.no_grad()
def remove_gaussians(params: Params, optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any],
                     mask: Tensor) -> None:
    """Drop the Gaussians where ``mask`` is true (parameters, Adam moments and per-Gaussian state)."""
    keep = torch.where(~mask)[0]
    _replace(params, optimizers, lambda name, p: p[keep], lambda v: v[keep])
    for k, v in state.items():
        if isinstance(v, Tensor) and v.dim() > 0 and len(v) == len(mask):
            state[k] = v[keep]


def _write_split(name: str, p: Tensor, sampled: Tensor, new_o: Tensor, new_s: Tensor) -> None:
    """The sampled Gaussians get the opacity and scales of one of their copies (raw values, in place)."""
    if name == "opacities":
        p[sampled] = torch.logit(new_o)
    elif name == "scales":
        p[sampled] = torch.log(new_s)


@dataclass
class MCMCStrategy(GsplatMCMCStrategy):
    """3DGS-MCMC (gsplat's fields and defaults), runnable on the CPU; see the module docstring."""

    def step_post_backward(self, params: Params, optimizers: dict[str, torch.optim.Optimizer],
                           state: dict[str, Any], step: int, info: dict[str, Any], lr: float) -> None:
        """After ``loss.backward()`` and the optimiser step: every ``refine_every`` steps inside the
        refine window move the dead Gaussians onto live ones and add 5 % (up to ``cap_max``); every
        step, perturb low-opacity positions by noise shaped like their covariance (``lr * noise_lr``)."""
        binoms = state["binoms"] = state["binoms"].to(params["means"].device)
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            opacities = torch.sigmoid(params["opacities"].flatten())
            dead = opacities <= self.min_opacity
            if dead.sum().item() > 0:
                self._move_dead(params, optimizers, dead, binoms)
            n_new = max(0, min(self.cap_max, int(1.05 * len(params["means"]))) - len(params["means"]))
            if n_new > 0:
                self._add(params, optimizers, n_new, binoms)
            if params["means"].is_cuda:
                torch.cuda.empty_cache()
        self._perturb(params, lr * self.noise_lr)

    @torch.no_grad()
    def _split_opacity(self, params: Params, sampled: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
        opacities = torch.sigmoid(params["opacities"])
        new_o, new_s = relocation(opacities[sampled], torch.exp(params["scales"])[sampled],
                                  torch.bincount(sampled)[sampled] + 1, binoms)
        eps = torch.finfo(torch.float32).eps
        return torch.clamp(new_o, max=1.0 - eps, min=self.min_opacity), new_s

    @torch.no_grad()
    def _move_dead(self, params: Params, optimizers: dict, dead: Tensor, binoms: Tensor) -> None:
        dead_idx = dead.nonzero(as_tuple=True)[0]
        alive_idx = (~dead).nonzero(as_tuple=True)[0]
        probs = torch.sigmoid(params["opacities"])[alive_idx].flatten()
        sampled = alive_idx[_multinomial(probs, len(dead_idx))]
        new_o, new_s = self._split_opacity(params, sampled, binoms)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_o, new_s)
            p[dead_idx] = p[sampled]
            return p

        def moments_fn(v: Tensor) -> Tensor:
            v[sampled] = 0
            return v

        _replace(params, optimizers, param_fn, moments_fn)

    @torch.no_grad()
    def _add(self, params: Params, optimizers: dict, n: int, binoms: Tensor) -> None:
        sampled = _multinomial(torch.sigmoid(params["opacities"]).flatten(), n)
        new_o, new_s = self._split_opacity(params, sampled, binoms)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_o, new_s)
            return torch.cat([p, p[sampled]])

        def moments_fn(v: Tensor) -> Tensor:
            return torch.cat([v, torch.zeros((len(sampled), *v.shape[1:]), device=v.device)])

        _replace(params, optimizers, param_fn, moments_fn)

    @torch.no_grad()
    def _perturb(self, params: Params, scaler: float) -> None:
        opacities = torch.sigmoid(params["opacities"].flatten())
        covars = covariances(params["quats"], torch.exp(params["scales"]))
        gate = 1 / (1 + torch.exp(-100 * ((1 - opacities) - 0.995)))     # ~1 only for near-transparent ones
        noise = torch.randn_like(params["means"]) * gate.unsqueeze(-1) * scaler
        params["means"].add_(torch.einsum("bij,bj->bi", covars, noise))


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy (clone / split / prune / opacity reset) that never grows past
    ``cap_max`` Gaussians: when a refinement would, it keeps the highest-opacity ones."""

    cap_max: int = 1_000_000

    def step_post_backward(self, params: Params, optimizers: dict[str, torch.optim.Optimizer],
                           state: dict[str, Any], step: int, info: dict[str, Any], packed: bool = False) -> None:
        """gsplat's refinement (with no growth once at ``cap_max``: both growth thresholds are
        infinite for that step), then the lowest-opacity Gaussians beyond ``cap_max`` go."""
        at_cap = len(params["means"]) >= self.cap_max
        # (gsplat ships no types: mypy cannot see that DefaultStrategy defines these two fields)
        thresholds = self.grow_grad2d, self.grow_scale2d  # type: ignore[has-type]
        if at_cap:
            self.grow_grad2d = self.grow_scale2d = float("inf")
        try:
            super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        finally:
            if at_cap:
                self.grow_grad2d, self.grow_scale2d = thresholds
        excess = len(params["means"]) - self.cap_max
        if excess > 0:
            opac = params["opacities"].flatten()
            drop = torch.zeros(len(opac), dtype=torch.bool, device=opac.device)
            drop[torch.argsort(opac)[:excess]] = True
            remove_gaussians(params, optimizers, state, drop)
