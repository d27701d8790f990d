"""backend.strategies against gsplat's own strategies, so that a gsplat upgrade that changes how it
densifies fails here instead of silently changing our training.

Our strategies use gsplat's public API only (nothing in gsplat is patched). On the CPU, gsplat's MCMC
steps call two CUDA kernels (relocation, covariance); for the comparison this test hands gsplat's
strategy the pure-torch versions for the length of one test (pytest's monkeypatch), as a stand-in
for the kernels this machine cannot run; the GPU test compares against the real kernels."""
from __future__ import annotations

import gsplat
import gsplat.relocation
import gsplat.strategy.ops as gsplat_ops
import numpy as np
import pytest
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy import MCMCStrategy as GsplatMCMCStrategy

from backend.optim import make_optimizers
from backend.params import activated, sh_coeffs
from backend.render import rasterize
from backend.strategies import CappedDefaultStrategy, MCMCStrategy, covariances, relocation_torch
from shared.jobkinds.train import SPEC as TRAIN
from test_trainer import small_problem

SIZE = 32


def _scene(n: int = 120, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    t = {"means": torch.randn(n, 3, generator=g) * 0.4, "scales": torch.full((n, 3), -2.5),
         "quats": torch.rand(n, 4, generator=g), "opacities": torch.randn(n, generator=g) * 2 - 1,
         "sh0": torch.rand(n, 1, 3, generator=g), "shN": torch.zeros(n, 0, 3)}
    return {k: torch.nn.Parameter(v.clone()) for k, v in t.items()}


def _run(strategy, steps: int, mcmc: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A few real training steps (reference rasterizer, L1 to one view) with ``strategy``."""
    images, viewmats, Ks = small_problem()
    target = torch.from_numpy(images[:1, ..., :3]).float() / 255.0
    vm, K = torch.as_tensor(viewmats[:1]), torch.as_tensor(Ks[:1])
    params = _scene(seed=seed)
    opts = make_optimizers(params, TRAIN.defaults(), extent=1.0)
    state = strategy.initialize_state() if mcmc else strategy.initialize_state(scene_scale=1.0)
    torch.manual_seed(seed)
    for step in range(steps):
        means, quats, scales, opac = activated(params)
        colors, _, info = rasterize(means, quats, scales, opac, sh_coeffs(params), vm, K, SIZE, SIZE,
                                    sh_degree=0, packed=False)
        if not mcmc:
            strategy.step_pre_backward(params, opts, state, step, info)
        (colors - target).abs().mean().backward()
        for o in opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if mcmc:
            strategy.step_post_backward(params, opts, state, step, info, lr=1e-3)
        else:
            strategy.step_post_backward(params, opts, state, step, info, packed=False)
    return {k: v.detach().clone() for k, v in params.items()}


def test_importing_our_strategies_patches_nothing_in_gsplat():
    assert gsplat_ops.compute_relocation is gsplat.relocation.compute_relocation
    assert gsplat_ops.quat_scale_to_covar_preci is gsplat.quat_scale_to_covar_preci


DEFAULT_KW = dict(refine_start_iter=1, refine_every=2, refine_stop_iter=50, grow_grad2d=1e-7, reset_every=1000,
                  prune_opa=0.05)


def test_default_strategy_matches_gsplat_and_caps_by_opacity():
    theirs = _run(DefaultStrategy(**DEFAULT_KW), 8, mcmc=False)
    ours = _run(CappedDefaultStrategy(cap_max=10 ** 6, **DEFAULT_KW), 8, mcmc=False)
    assert len(theirs["means"]) > 120                   # it grew: the comparison covers refinement
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k       # below the cap: gsplat's strategy bit for bit
    cap = len(theirs["means"]) - 25
    capped = _run(CappedDefaultStrategy(cap_max=cap, **DEFAULT_KW), 3, mcmc=False)
    assert len(capped["means"]) <= cap
    uncapped = _run(DefaultStrategy(**DEFAULT_KW), 3, mcmc=False)
    if len(uncapped["means"]) > cap:                    # what went are the least opaque ones
        kept = np.sort(capped["opacities"].numpy())
        expect = np.sort(uncapped["opacities"].numpy())[-len(kept):]
        assert np.array_equal(kept, expect)


def test_mcmc_strategy_matches_gsplat(monkeypatch):
    kw = dict(cap_max=150, refine_start_iter=1, refine_every=2, refine_stop_iter=50, min_opacity=0.2)
    ours = _run(MCMCStrategy(**kw), 8, mcmc=True)
    # gsplat's strategy with its two CUDA kernels replaced by their torch equivalents, for this test only
    monkeypatch.setattr(gsplat_ops, "compute_relocation",
                        lambda opacities, scales, ratios, binoms: relocation_torch(opacities, scales, ratios, binoms))
    monkeypatch.setattr(gsplat_ops, "quat_scale_to_covar_preci",
                        lambda quats, scales, **kw: (covariances(quats, scales), None))
    theirs = _run(GsplatMCMCStrategy(**kw), 8, mcmc=True)
    assert len(ours["means"]) == len(theirs["means"]) == 138      # grew by 5 % at steps 2, 4 and 6
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k


def test_cpu_covariance_is_r_s2_rt():
    q = torch.tensor([[2.0, 0.0, 0.0, 2.0]])           # 90 degrees about z, unnormalised
    s = torch.tensor([[1.0, 2.0, 3.0]])
    c = covariances(q, s)[0]
    assert torch.allclose(c, torch.diag(torch.tensor([4.0, 1.0, 9.0])), atol=1e-6)


@pytest.mark.gpu
def test_cuda_kernels_agree_with_the_cpu_versions():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (gsplat's kernels); this machine has no GPU")
    g = torch.Generator().manual_seed(0)
    opac, scales = torch.rand(64, generator=g) * 0.9 + 0.05, torch.rand(64, 3, generator=g) + 0.1
    ratios = torch.randint(1, 8, (64,), generator=g)
    binoms = GsplatMCMCStrategy().initialize_state()["binoms"]
    o_cpu, s_cpu = relocation_torch(opac, scales, ratios, binoms)
    o_gpu, s_gpu = gsplat.relocation.compute_relocation(opac.cuda(), scales.cuda(), ratios.int().cuda(), binoms.cuda())
    assert torch.allclose(o_gpu.cpu(), o_cpu, atol=1e-5) and torch.allclose(s_gpu.cpu(), s_cpu, rtol=1e-4)
    q = torch.rand(64, 4, generator=g)
    assert torch.allclose(covariances(q.cuda(), scales.cuda()).cpu(), covariances(q, scales), atol=1e-5)
