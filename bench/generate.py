"""Generation benchmark (GPU): seconds per score-distillation step at full model size.

    python bench/generate.py [--steps 20] [--warmup 5] [--resolution 512] [--batch-size 4 1]
                             [--num-points 50000] [--compile] [--no-shap-e] [--json FILE]
    python bench/generate.py --tiny          # CPU smoke test with the tiny test pipelines
    python bench/generate.py --flops         # no GPU needed: exact FLOPs of one step at full size (meta tensors)
    python bench/generate.py --cpu           # the full-size pipelines run end to end on this CPU (fp32, few steps)

No weights can be downloaded on the benchmark machines, so the models are the real diffusers/transformers
classes built from the real configs with RANDOM weights: the same compute as the real models.

* Guidance: Stable Diffusion 2.1 base: UNet (865M parameters, 4 levels 320/640/1280/1280, linear
  projections, 1024-wide cross-attention), VAE (83.7M), OpenCLIP ViT-H/14 text encoder (23 layers, 1024
  wide, 340M). fp16, channels_last; renders at ``--resolution`` encoded by the VAE at 512.
* Prior: Shap-E: PriorTransformer (24 layers, 1024 wide, 1024 latent tokens), CLIP ViT-L/14 text encoder
  with projection, ShapERenderer (NeRSTF MLP); 64 sampling steps then SDF surface extraction on a 128^3 grid.

For each batch size it runs ``backend.generate.distill`` (the job's own loop: camera sampling, gsplat
rendering, VAE encode, one UNet batch of 2B with CFG, SDS backward, Adam) for ``--warmup`` + ``--steps``
steps on ``--num-points`` Gaussians (densification off so that the count, hence the cost, stays fixed),
and prints the median seconds per step, the projected time for 1200 steps and the peak GPU memory; then
a breakdown of one step (render / VAE encode fwd / UNet / backward).

``--flops`` builds the same models on PyTorch's ``meta`` device (shapes only, no memory, no compute) and
counts, with ``torch.utils.flop_counter``, the floating-point operations of the guidance's own code path
(``StableDiffusionGuidance.encode`` / ``sds_grad`` / the SDS backward into the images; the VAE's weights
are frozen, so its backward is the input gradient only) and of the Shap-E init. It prints them with the
sustained throughput that 1200 steps in 2 minutes need, for comparison with a card's peak. The splat
rasterization (gsplat, a few ms a step on a GPU) is not included.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shared.jobkinds.generate import SPEC as GENERATE  # noqa: E402
from backend.generate import (distill, points_to_splats, render_views,  # noqa: E402
                              shap_e_surface_points, sphere_init)
from backend.camera_sampling import sample_views  # noqa: E402
from backend.sds import StableDiffusionGuidance, sds_loss  # noqa: E402

SD21_BASE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, center_input_sample=False,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215)
OPENCLIP_H_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=0, eos_token_id=1,
    pad_token_id=1)
SHAP_E_PRIOR = dict(
    num_attention_heads=16, attention_head_dim=64, num_layers=24, embedding_dim=1024, num_embeddings=1024,
    additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer", encoder_hid_proj_type=None,
    added_emb_type=None, time_embed_dim=4096, embedding_proj_dim=768, clip_embed_dim=2048)
CLIP_L_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=1,
    pad_token_id=1)


H100_SXM_DENSE_FP16_TFLOPS = 989.0    # NVIDIA's data sheet (dense, no sparsity); the PCIe card: 756
TARGET_S = 120.0                      # the target for 1200 steps on one H100
TARGET_STEPS = 1200


def _tokenizer():
    from tiny_models import write_tiny_clip_tokenizer
    from transformers import CLIPTokenizer
    # Token ids only pick embedding rows: a small vocabulary gives the same compute (77 tokens, padded).
    return CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")))


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def build_sd(device: torch.device, dtype: torch.dtype):
    """StableDiffusionPipeline with SD 2.1 base's architecture and random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_BASE_UNET).to(dtype)
        vae = AutoencoderKL(**SD_VAE).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)).to(dtype)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_shap_e(device: torch.device, dtype: torch.dtype):
    """ShapEPipeline with openai/shap-e's architecture and random weights."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    torch.manual_seed(0)
    with torch.device(device):
        prior = PriorTransformer(**SHAP_E_PRIOR).to(dtype)
        text = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L_TEXT)).to(dtype)
        renderer = ShapERenderer().to(dtype)
    sched = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                  use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    pipe = ShapEPipeline(prior=prior, text_encoder=text, tokenizer=_tokenizer(), scheduler=sched,
                         shap_e_renderer=renderer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_sds_flops(guidance, batch: int, resolution: int) -> dict[str, float]:
    """FLOPs (multiply-add = 2) of one SDS step's guidance work, by part, for ``batch`` views."""
    from torch.utils.flop_counter import FlopCounterMode
    device = guidance.device
    views = sample_views(batch, resolution, resolution, torch.Generator().manual_seed(0))
    cond = guidance.condition(views)            # cached per label: once per run, not per step
    images = torch.rand(batch, 3, resolution, resolution, device=device, requires_grad=True)
    out = {}
    with FlopCounterMode(display=False) as fc:
        latents = guidance.encode(images)
    out["vae_encode"] = fc.get_total_flops()
    t = torch.full((batch,), guidance.num_train_timesteps // 2)
    with FlopCounterMode(display=False) as fc:
        grad = guidance.sds_grad(latents, t, cond, 100.0, torch.randn_like(latents))
    out["unet_cfg"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        sds_loss(latents, grad).backward()
    out["backward"] = fc.get_total_flops()
    if images.grad is None or tuple(images.grad.shape) != tuple(images.shape):
        raise RuntimeError("the SDS gradient did not reach the rendered images")
    return {k: float(v) for k, v in out.items()}


def count_shap_e_flops(shap, prior_steps: int, grid: int) -> dict[str, float]:
    """FLOPs of the Shap-E init: every prior evaluation of the Heun sampler (CFG batch 2) and the SDF
    grid query of the NeRSTF MLP (the colour query of the surface points is small and not counted)."""
    from torch.utils.flop_counter import FlopCounterMode
    prior, cfg = shap.prior, shap.prior.config
    device, dtype = prior.device, prior.dtype
    shap.scheduler.set_timesteps(prior_steps, device="cpu")
    evals = len(shap.scheduler.timesteps)
    x = torch.zeros(2, cfg.num_embeddings, cfg.embedding_dim, device=device, dtype=dtype)
    emb = torch.zeros(2, cfg.embedding_proj_dim, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        prior(x, timestep=torch.tensor(500, device=device), proj_embedding=emb)
    per_eval = fc.get_total_flops()
    chunk = 32768
    pos = torch.zeros(1, chunk, 3, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        shap.shap_e_renderer.mlp(position=pos, direction=None, ts=None, nerf_level="fine", rendering_mode="stf")
    per_point = fc.get_total_flops() / chunk
    return {"prior_evals": float(evals), "prior": float(per_eval * evals), "sdf_grid": float(per_point * grid ** 3)}


def flops_report(batches: list[int], resolution: int, prior_steps: int, grid: int) -> dict:
    """The ``--flops`` mode (see the module docstring)."""
    meta = torch.device("meta")
    sd = build_sd(meta, torch.float16)
    guidance = StableDiffusionGuidance(sd, "a ceramic teapot", "", True, None)
    results: dict = {"mode": "flops", "resolution": resolution,
                     "params_M": {"unet": count(sd.unet), "vae": count(sd.vae), "text_encoder": count(sd.text_encoder)},
                     "h100_sxm_dense_fp16_tflops": H100_SXM_DENSE_FP16_TFLOPS, "sds": []}
    for batch in batches:
        parts = count_sds_flops(guidance, batch, resolution)
        total = sum(parts.values())
        need = total * TARGET_STEPS / TARGET_S / 1e12
        results["sds"].append({"batch_size": batch, "tflop_per_step": {k: v / 1e12 for k, v in parts.items()},
                               "tflop_per_step_total": total / 1e12, "pflop_per_1200_steps": total * 1200 / 1e15,
                               "tflops_needed_for_target": need,
                               "fraction_of_h100_peak_needed": need / H100_SXM_DENSE_FP16_TFLOPS})
        print(f"SDS batch {batch} @ {resolution}px: {total / 1e12:.2f} TFLOP/step ("
              + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in parts.items())
              + f"); 1200 steps = {total * 1200 / 1e15:.1f} PFLOP; 1200 steps in {TARGET_S:.0f} s need "
              f"{need:.0f} TFLOP/s sustained = {100 * need / H100_SXM_DENSE_FP16_TFLOPS:.1f} % of an H100 SXM's "
              f"dense fp16 peak", flush=True)
    shap = build_shap_e(meta, torch.float16)
    s = count_shap_e_flops(shap, prior_steps, grid)
    results["shap_e"] = {"prior_steps": prior_steps, "grid": grid, "prior_evals": int(s["prior_evals"]),
                         "tflop_prior": s["prior"] / 1e12, "tflop_sdf_grid": s["sdf_grid"] / 1e12}
    print(f"Shap-E init ({prior_steps} Heun steps = {int(s['prior_evals'])} prior evaluations of batch 2, "
          f"{grid}^3 SDF grid): {s['prior'] / 1e12:.1f} + {s['sdf_grid'] / 1e12:.2f} TFLOP", flush=True)
    return results


class TimingContext:
    def __init__(self, device: str, sync: bool):
        self.device, self.job_dir, self.sync = device, Path(tempfile.gettempdir()), sync
        self.times: list[float] = []

    def report(self, step, total, metrics, preview=None) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def should_stop(self) -> bool:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sds(guidance, device, resolution: int, batch: int, n_points: int, steps: int, warmup: int) -> dict:
    pts, cols = sphere_init(n_points, np.random.default_rng(0))
    splats = points_to_splats(pts, cols)
    settings = GENERATE.make(prompt="a ceramic teapot", steps=warmup + steps, resolution=resolution,
                                batch_size=batch, densify=False, preview_every=100_000)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ctx = TimingContext(str(device), device.type == "cuda")
    sync(device)
    t0 = time.perf_counter()
    distill(splats, guidance, settings, ctx, device)
    stamps = [t0] + ctx.times
    per_step = np.diff(stamps)[warmup:]
    med = float(statistics.median(per_step))
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"batch_size": batch, "resolution": resolution, "gaussians": n_points, "s_per_step": med,
            "s_per_step_mean": float(np.mean(per_step)), "projected_1200_s": med * 1200, "peak_gib": peak}


def breakdown(guidance, device, resolution: int, batch: int, n_points: int, repeat: int = 5) -> dict:
    """Median seconds of each part of one SDS step."""
    from backend.params import splats_to_tensors
    pts, cols = sphere_init(n_points, np.random.default_rng(0))
    params = {k: torch.nn.Parameter(v) for k, v in splats_to_tensors(points_to_splats(pts, cols), device).items()}
    gen = torch.Generator().manual_seed(0)
    parts: dict[str, list[float]] = {"render": [], "vae_encode": [], "unet_cfg": [], "backward": []}
    for _ in range(repeat + 1):
        views = sample_views(batch, resolution, resolution, gen, device=device)
        sync(device); t0 = time.perf_counter()
        images, _ = render_views(params, views, 0)
        sync(device); t1 = time.perf_counter()
        latents = guidance.encode(images)
        sync(device); t2 = time.perf_counter()
        t = torch.randint(20, 980, (batch,))
        grad = guidance.sds_grad(latents, t, guidance.condition(views), 100.0, torch.randn_like(latents))
        sync(device); t3 = time.perf_counter()
        sds_loss(latents, grad).backward()
        sync(device); t4 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(v)
    return {k: float(statistics.median(v[1:])) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny test pipelines")
    mode.add_argument("--flops", action="store_true", help="count FLOPs at full size (meta tensors; no GPU)")
    mode.add_argument("--cpu", action="store_true", help="full-size random-weight pipelines on this CPU (fp32)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, nargs="+", default=None, help="default: 4 1 (--cpu: 1)")
    ap.add_argument("--num-points", type=int, default=50_000)
    ap.add_argument("--encode-resolution", type=int, default=0, help="0: native (512)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--no-shap-e", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    a.batch_size = a.batch_size or ([1] if a.cpu else [4, 1])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    results: dict = {"torch": torch.__version__}
    if a.flops:
        results.update(flops_report(a.batch_size, a.resolution, 64, 128))
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
        return 0
    if a.tiny:
        torch.set_num_threads(2)
        from tiny_models import tiny_models
        from backend.models import load_pipeline
        device, dtype = torch.device("cpu"), torch.float32
        paths = tiny_models()
        sd = load_pipeline(str(paths["sd"]), "stable-diffusion", device)
        shap = load_pipeline(str(paths["shap-e"]), "shap-e", device)
        a.resolution, a.num_points, a.steps, a.warmup = 16, 200, 3, 1
        grid, prior_steps = 16, 2
    elif a.cpu:
        # The real sizes through the real code, to show they run; a few steps only (each ~4 TFLOP in fp32).
        torch.set_num_threads(max(1, torch.get_num_threads()))
        device, dtype = torch.device("cpu"), torch.float32
        t = time.perf_counter()
        sd = build_sd(device, dtype)
        shap = None if a.no_shap_e else build_shap_e(device, dtype)
        results["build_s"] = time.perf_counter() - t
        a.num_points = min(a.num_points, 2000)
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
        grid, prior_steps = 64, 2
    else:
        if not torch.cuda.is_available():
            print("needs CUDA (use --tiny for a CPU smoke test)", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.float16
        results["gpu"] = torch.cuda.get_device_name()
        t = time.perf_counter()
        sd = build_sd(device, dtype)
        shap = None if a.no_shap_e else build_shap_e(device, dtype)
        results["build_s"] = time.perf_counter() - t
        grid, prior_steps = 128, 64
    results["params_M"] = {"unet": count(sd.unet), "vae": count(sd.vae), "text_encoder": count(sd.text_encoder)}
    print(f"device {device} {results.get('gpu', '')}; parameters (M): " +
          ", ".join(f"{k} {v:.1f}" for k, v in results["params_M"].items()), flush=True)
    if a.compile:
        sd.unet = torch.compile(sd.unet)
    guidance = StableDiffusionGuidance(sd, "a ceramic teapot", "", True, a.encode_resolution or None)

    if shap is not None:
        sync(device)
        t = time.perf_counter()
        pts, _ = shap_e_surface_points(shap, "a ceramic teapot", 0, prior_steps, 15.0, grid, device)
        sync(device)
        results["shap_e_init_s"] = time.perf_counter() - t
        results["shap_e_points"] = int(len(pts))
        print(f"Shap-E init ({prior_steps} prior steps, {grid}^3 SDF grid): {results['shap_e_init_s']:.2f} s, "
              f"{len(pts)} surface points (random weights)", flush=True)
        del shap
        if device.type == "cuda":
            torch.cuda.empty_cache()

    results["sds"] = []
    for batch in a.batch_size:
        r = bench_sds(guidance, device, a.resolution, batch, a.num_points, a.steps, a.warmup)
        r["breakdown_s"] = breakdown(guidance, device, a.resolution, batch, a.num_points,
                                     repeat=1 if device.type == "cpu" else 5)
        results["sds"].append(r)
        parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in r["breakdown_s"].items())
        print(f"SDS batch {batch} @ {a.resolution}px, {a.num_points} Gaussians: {r['s_per_step'] * 1000:.1f} ms/step "
              f"(mean {r['s_per_step_mean'] * 1000:.1f}), 1200 steps ~ {r['projected_1200_s']:.1f} s, "
              f"peak {r['peak_gib']:.2f} GiB  [{parts}]", flush=True)
    if device.type == "cuda" and a.batch_size:
        # The same first configuration without cuDNN autotuning (the job's default is on), same run.
        import contextlib
        import backend.generate as generate_module
        tuned = generate_module.cudnn_autotune
        generate_module.cudnn_autotune = lambda device: contextlib.nullcontext()
        try:
            batch = a.batch_size[0]
            base = bench_sds(guidance, device, a.resolution, batch, a.num_points, a.steps, a.warmup)
        finally:
            generate_module.cudnn_autotune = tuned
        ratio = base["s_per_step"] / results["sds"][0]["s_per_step"]
        results["no_autotune"] = {**base, "speedup_from_autotune": ratio}
        print(f"SDS batch {batch} without cuDNN autotuning: {base['s_per_step'] * 1000:.1f} ms/step; autotuning "
              f"is {ratio:.2f}x as fast", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
