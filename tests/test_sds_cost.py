"""The cost structure of one SDS step, counted with ``torch.utils.flop_counter`` (as ``bench/generate.py
--flops`` counts it at full size).

Score distillation skips the UNet's Jacobian and the guidance models' weights are frozen, so the only
backward pass of a step is the VAE encoder's *input* gradient: it costs about what the encoder's forward
does, and the UNet (a CFG batch of 2B) runs forward only. A regression here (VAE weights left trainable,
a loss that reaches the UNet without the stop-gradient) would double the VAE's backward or add the UNet's,
at every one of the 1200 steps, and would show in no other CPU test. The tiny random-weight pipeline of tests/tiny_models.py runs the
real diffusers classes, so the counts cover the same operators as the full-size models.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from backend.models import load_pipeline
from backend.sds import StableDiffusionGuidance
from tiny_models import tiny_models

BENCH = Path(__file__).resolve().parents[1] / "bench" / "generate.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def guidance():
    pipe = load_pipeline(str(tiny_models()["sd"]), "stable-diffusion", "cpu")
    return StableDiffusionGuidance(pipe, "a ceramic teapot", "", True)


def test_backward_is_the_vae_input_gradient_only(bench, guidance):
    flops = bench.count_sds_flops(guidance, batch=2, resolution=16)
    assert flops["vae_encode"] > 0 and flops["unet_cfg"] > 0
    ratio = flops["backward"] / flops["vae_encode"]
    # Input gradient only: ~1x the forward (1.00 here, 1.03 at full size); trainable VAE weights make it 2x.
    assert 0.9 < ratio < 1.25, flops


def test_unfrozen_vae_weights_would_be_caught(bench, guidance):
    """The check above can fail: with the VAE's weights trainable the same count doubles."""
    guidance.vae.requires_grad_(True)
    try:
        flops = bench.count_sds_flops(guidance, batch=2, resolution=16)
    finally:
        guidance.vae.requires_grad_(False)
    assert flops["backward"] / flops["vae_encode"] > 1.6, flops


def test_unet_cost_scales_with_the_cfg_batch(bench, guidance):
    one = bench.count_sds_flops(guidance, batch=1, resolution=16)
    four = bench.count_sds_flops(guidance, batch=4, resolution=16)
    assert four["unet_cfg"] == pytest.approx(4 * one["unet_cfg"], rel=1e-6)
    assert four["vae_encode"] == pytest.approx(4 * one["vae_encode"], rel=1e-6)


def test_full_size_step_counts_on_meta_tensors(bench):
    """SD 2.1 base's real configs on the meta device (no memory, no compute): the figures the bench prints.
    A step of 4 views at 512 px is 15.5 TFLOP: encoder 4.47, UNet (CFG batch 8) 6.43, encoder backward 4.60."""
    sd = bench.build_sd(torch.device("meta"), torch.float16)
    g = StableDiffusionGuidance(sd, "a ceramic teapot", "", True)
    assert bench.count(sd.unet) == pytest.approx(865.9, abs=0.5)
    flops = bench.count_sds_flops(g, batch=4, resolution=512)
    assert flops["vae_encode"] / 1e12 == pytest.approx(4.47, abs=0.01)
    assert flops["unet_cfg"] / 1e12 == pytest.approx(6.43, abs=0.01)
    assert flops["backward"] / 1e12 == pytest.approx(4.60, abs=0.01)
