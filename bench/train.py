"""Training benchmark: our trainer (the ``train`` job's code path, minus the server) against a plain
gsplat loop (gsplat.rasterization + Adam + DefaultStrategy, nothing else) on the same synthetic scene,
in the same process.

    python bench/train.py                 # GPU: 100 views of 800x800, 7000 steps each (~2-4 min on an H100)
    python bench/train.py --tiny          # CPU smoke test: 6 views of 32x32, 30 steps (CPU rasterizer)
    python bench/train.py --cpu           # CPU rasterizers: fast (Numba) vs reference, then a short training run
    python bench/train.py --out result.json

Prints steps/s of both loops and their ratio (target >= 0.9), held-out PSNR at the checkpoints
(2000 and 7000 steps), peak GPU memory and the number of Gaussians; writes the same as JSON.
Both loops use the same images, initial points, learning rates, loss (L1 + 0.2 D-SSIM), random
background per step, SH schedule and densification schedule; steps/s is measured after a warm-up
(the first 5 % of steps) and excludes checkpoint evaluation. Exit status 1 if a phase failed.

``--cpu`` instead compares the two CPU rasterizers in one process, on one thread each: steps/s of a
forward + backward (SH degree 3, random background, L1 loss, gradients to every parameter) of the
fast path (backend/render/fast.py) and of the pure-torch reference, interleaved so that load from
other processes hits both alike, at 64 and 256 px with 2k and 20k Gaussians, for a fitted-looking
cloud (small opaque splats on surfaces) and for the trainer's random initialisation (large,
overlapping, opacity 0.1); then the trainer itself on a 64 px scene with each rasterizer (PSNR,
wall time). Target: fast >= 10x the reference.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.losses import photometric_loss                                  # noqa: E402
from backend.params import splats_to_tensors                                  # noqa: E402
from backend.render import rasterize, resolve_backend                         # noqa: E402
from backend.strategies import CappedDefaultStrategy                          # noqa: E402
from backend.optim import make_optimizers                                     # noqa: E402
from backend.trainer import _composite, evaluate, init_params, scene_scale, train  # noqa: E402
from shared.jobkinds.train import SPEC as TRAIN, schedule                     # noqa: E402
from shared.jobspec import Settings                                           # noqa: E402
from shared.cameras import look_at                                            # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the synthetic scene ---------------------------------------------------------------------------

def gt_cloud(n: int, seed: int) -> list[np.ndarray]:
    """A known Gaussian cloud: three interlocked tori and a sphere shell, smooth colours, opaque."""
    g = np.random.default_rng(seed)
    parts = []
    per = n // 4
    for k, (axis, shift) in enumerate([((0, 0, 1), (0, 0, 0)), ((0, 1, 0), (0.35, 0, 0)), ((1, 0, 0), (-0.35, 0, 0.1))]):
        u, v = g.uniform(0, 2 * np.pi, per), g.uniform(0, 2 * np.pi, per)
        p = np.stack([(0.55 + 0.15 * np.cos(v)) * np.cos(u), (0.55 + 0.15 * np.cos(v)) * np.sin(u), 0.15 * np.sin(v)], 1)
        if axis == (0, 1, 0):
            p = p[:, [0, 2, 1]]
        elif axis == (1, 0, 0):
            p = p[:, [2, 0, 1]]
        parts.append((p + np.array(shift), np.stack([0.5 + 0.4 * np.cos(u + k), 0.5 + 0.4 * np.sin(2 * v), 0.5 + 0.4 * np.cos(u - v)], 1)))
    m = n - 3 * per
    d = g.normal(size=(m, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    parts.append((0.25 * d, 0.5 + 0.45 * d))
    means = np.concatenate([p for p, _ in parts]).astype(np.float32)
    colors = np.clip(np.concatenate([c for _, c in parts]), 0, 1).astype(np.float32)
    spacing = 1.2 / math.sqrt(n)          # roughly the surface spacing: splats overlap a little
    scales = (spacing * g.uniform(0.6, 1.6, (n, 3))).astype(np.float32)
    quats = g.normal(size=(n, 4)).astype(np.float32)
    opac = g.uniform(0.7, 0.99, n).astype(np.float32)
    return [means, quats, scales, opac, colors]


def camera_rig(views: int, size: int, dist: float = 3.0, fov_deg: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    vms = []
    for i in range(views):
        z = 0.9 - 1.8 * (i + 0.5) / views
        phi = i * math.pi * (3 - math.sqrt(5))
        r = math.sqrt(max(0.0, 1 - z * z))
        vms.append(look_at(dist * np.array([r * math.cos(phi), r * math.sin(phi), z]), np.zeros(3)))
    f = size / (2 * math.tan(math.radians(fov_deg) / 2))
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    return np.stack(vms).astype(np.float32), np.stack([K] * views).astype(np.float32)


@torch.no_grad()
def render_images(cloud: list[np.ndarray], viewmats: np.ndarray, Ks: np.ndarray, size: int,
                  device: torch.device, batch: int = 8) -> np.ndarray:
    """RGBA u8 ground truth (straight alpha) of the cloud, rendered by backend.render.rasterize."""
    t = [torch.tensor(a, device=device) for a in cloud]
    out = []
    for s in range(0, len(viewmats), batch):
        vm = torch.tensor(viewmats[s:s + batch], device=device)
        K = torch.tensor(Ks[s:s + batch], device=device)
        img, alpha, _ = rasterize(*t, vm, K, size, size)
        rgb = (img / alpha.clamp_min(1e-6)).clamp(0, 1)
        out.append((torch.cat([rgb, alpha], -1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def make_scene(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cloud = gt_cloud(args.gt_gaussians, args.seed)
    viewmats, Ks = camera_rig(args.views, args.size)
    t0 = time.perf_counter()
    images = render_images(cloud, viewmats, Ks, args.size, device)
    log(f"scene: {args.gt_gaussians} ground-truth Gaussians, {args.views} views of {args.size}x{args.size} "
        f"rendered in {time.perf_counter() - t0:.1f} s; mean coverage {images[..., 3].mean() / 255:.2f}")
    g = np.random.default_rng(args.seed + 1)
    idx = g.choice(len(cloud[0]), size=min(args.init_points, len(cloud[0])), replace=False)
    # "mesh samples": points near the surface with roughly right colours, as Blender would send
    points = (cloud[0][idx] + g.normal(0, 0.01, (len(idx), 3))).astype(np.float32)
    colors = (np.clip(cloud[4][idx] + g.normal(0, 0.05, (len(idx), 3)), 0, 1) * 255).astype(np.uint8)
    return {"images": images, "viewmats": viewmats, "Ks": Ks, "points": points, "colors": colors}


def settings_for(args: argparse.Namespace) -> Settings:
    return TRAIN.make(steps=args.steps, sh_degree=args.sh_degree, max_gaussians=args.max_gaussians,
                         seed=args.seed, preview_every=0, report_interval_s=0.5)


# -- our trainer --------------------------------------------------------------------------------------

class BenchContext:
    """JobContext that records report times and keeps snapshot splats at the checkpoints."""

    def __init__(self, device: str, checkpoints: list[int]):
        self.device = device
        self.job_dir = Path(".")
        self.reports: list[tuple[float, int, dict]] = []
        self.checkpoints = set(checkpoints)
        self.snapshots: dict[int, Any] = {}

    def report(self, step, total, metrics, preview=None):
        self.reports.append((time.perf_counter(), step, dict(metrics)))
        if preview is not None and step in self.checkpoints:
            self.snapshots[step] = preview

    def should_stop(self):
        return False


def run_ours(data: dict, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    settings = settings_for(args)
    checkpoints = [c for c in args.checkpoints if c < args.steps]
    if checkpoints:
        # one preview per checkpoint: the trainer reports a preview at every multiple of preview_every
        settings = settings.replace(preview_every=math.gcd(*checkpoints) if len(checkpoints) > 1 else checkpoints[0])
    ctx = BenchContext(str(device), checkpoints)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = train(data["images"], data["viewmats"], data["Ks"], data["points"], data["colors"], settings, ctx)
    wall = time.perf_counter() - t0
    warm = max(1, args.steps // 20)
    rep = [r for r in ctx.reports if r[1] >= warm]
    sps = (rep[-1][1] - rep[0][1]) / max(rep[-1][0] - rep[0][0], 1e-9) if len(rep) >= 2 else float("nan")
    out: dict[str, Any] = {"steps_per_s": sps, "wall_s": wall, "num_gaussians": len(res.splats),
                           "psnr": {}, "backend": res.meta["backend"]}
    out["psnr"][args.steps] = res.metrics.get("eval_psnr")
    out["ssim_final"] = res.metrics.get("eval_ssim")
    if device.type == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    images_t = torch.from_numpy(data["images"]).to(device)
    vm = torch.tensor(data["viewmats"], device=device)
    Kt = torch.tensor(data["Ks"], device=device)
    holdout = res.meta["holdout"]
    sched = schedule(settings)
    for step, splats in sorted(ctx.snapshots.items()):
        deg = min((step - 1) // sched["sh_degree_interval"], settings.sh_degree)
        ev = evaluate(splats_to_tensors(splats, device), images_t, vm, Kt, holdout, deg, res.meta["backend"])
        out["psnr"][step] = ev.get("psnr")
    return out


# -- a plain gsplat loop -----------------------------------------------------------------------------

def run_plain(data: dict, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """simple_trainer's inner loop, written out: no job context, reports or previews."""
    settings = settings_for(args)
    sched = schedule(settings)
    backend = resolve_backend(device, "auto")
    if backend == "gsplat":
        from gsplat import rasterization as raster
    else:                      # CPU smoke test: gsplat's rasterization needs CUDA
        from functools import partial
        raster = partial(rasterize, backend=backend)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    images = torch.from_numpy(data["images"]).to(device)
    vm = torch.tensor(data["viewmats"], device=device)
    Kt = torch.tensor(data["Ks"], device=device)
    C, H, W = images.shape[:3]
    holdout = [i for i in range(C) if i % settings.holdout_every == 0] if C > 1 else []
    train_ids = [i for i in range(C) if i not in holdout]
    extent = scene_scale(vm)
    pts = torch.tensor(data["points"], device=device)
    rgb = torch.tensor(data["colors"], dtype=torch.float32) / 255.0
    params = init_params(pts, rgb, settings, 1e-7 * extent, gen)
    optimizers = make_optimizers(params, settings, extent)
    sched_means = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.01 ** (1.0 / settings.steps))
    strategy = CappedDefaultStrategy(cap_max=settings.max_gaussians, refine_start_iter=sched["refine_start"],
                                     refine_stop_iter=sched["refine_stop"], refine_every=sched["refine_every"],
                                     grow_grad2d=settings.grow_grad2d, reset_every=max(3000, settings.steps + 1))
    state = strategy.initialize_state(scene_scale=extent)
    order = torch.cat([torch.tensor(train_ids)[torch.randperm(len(train_ids), generator=gen)]
                       for _ in range(math.ceil(settings.steps / len(train_ids)))])[:settings.steps].tolist()
    bgs = torch.rand(settings.steps, 1, 3, generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = max(1, args.steps // 20)
    psnrs: dict[int, float] = {}
    t_start = None
    paused = 0.0
    for step in range(settings.steps):
        if step == warm:
            sync(device)
            t_start = time.perf_counter()
        cam = order[step]
        deg = min(step // sched["sh_degree_interval"], settings.sh_degree)
        bg = bgs[step]
        target = _composite(images[cam:cam + 1], bg)
        colors = torch.cat([params["sh0"], params["shN"]], 1)
        render, alpha, info = raster(params["means"], params["quats"], torch.exp(params["scales"]),
                                     torch.sigmoid(params["opacities"]), colors, vm[cam:cam + 1], Kt[cam:cam + 1],
                                     W, H, sh_degree=deg, backgrounds=bg, packed=False)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = photometric_loss(render, target, settings.ssim_lambda)
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        sched_means.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        done = step + 1
        if done in args.checkpoints or done == settings.steps:
            sync(device)
            t0 = time.perf_counter()
            ev = evaluate(params, images, vm, Kt, holdout, deg, backend)
            psnrs[done] = ev.get("psnr")
            paused += time.perf_counter() - t0
    sync(device)
    elapsed = time.perf_counter() - (t_start or time.perf_counter()) - paused
    out: dict[str, Any] = {"steps_per_s": (settings.steps - warm) / max(elapsed, 1e-9),
                           "num_gaussians": len(params["means"]), "psnr": psnrs, "backend": backend}
    if device.type == "cuda":
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out



# -- CPU rasterizers: fast vs reference ------------------------------------------------------------

def _bench_gaussians(kind: str, n: int, viewmats: torch.Tensor, Ks: torch.Tensor, size: int,
                     seed: int) -> list[torch.Tensor]:
    """(means, quats, scales, opacities, SH [N,16,3]) as leaf tensors, activated."""
    from backend.params import activated, sh_coeffs
    from backend.trainer import random_init_points
    from shared.sh import rgb_to_sh0
    gen = torch.Generator().manual_seed(seed)
    if kind == "fitted":
        means, quats, scales, opac, rgb = (torch.tensor(a) for a in gt_cloud(n, seed))
        sh = torch.zeros(n, 16, 3)
        sh[:, 0] = torch.from_numpy(rgb_to_sh0(rgb.numpy()))
        sh[:, 1:] = 0.05 * torch.randn(n, 15, 3, generator=gen)
        return [means, quats, scales, opac, sh]
    pts = random_init_points(n, viewmats, Ks, size, size, gen)
    params = init_params(pts, torch.rand(n, 3, generator=gen), TRAIN.make(sh_degree=3),
                         1e-7 * scene_scale(viewmats), gen)
    with torch.no_grad():
        return [t.detach().clone() for t in (*activated(params), sh_coeffs(params))]


def _raster_step(backend: str, gaussians: list[torch.Tensor], vm: torch.Tensor, K: torch.Tensor,
                 size: int, bg: torch.Tensor, target: torch.Tensor) -> None:
    ps = [t.clone().requires_grad_(True) for t in gaussians]
    img, _, info = rasterize(*ps, vm, K, size, size, sh_degree=3, backgrounds=bg, backend=backend)
    info["means2d"].retain_grad()           # as the strategies do
    (img - target).abs().mean().backward()


def bench_cpu_rasterizers(seconds: float, seed: int) -> list[dict[str, Any]]:
    rows = []
    for size in (64, 256):
        viewmats, Ks = camera_rig(8, size)
        vm_all, K_all = torch.tensor(viewmats), torch.tensor(Ks)
        for n in (2000, 20000):
            for kind in ("fitted", "init"):
                g = _bench_gaussians(kind, n, vm_all, K_all, size, seed)
                gen = torch.Generator().manual_seed(seed)
                target = torch.rand(1, size, size, 3, generator=gen)
                spent = {"reference": 0.0, "fast": 0.0}
                cpu = {"reference": 0.0, "fast": 0.0}
                steps = {"reference": 0, "fast": 0}
                for b in ("reference", "fast"):          # warm-up (the first fast call compiles)
                    _raster_step(b, g, vm_all[:1], K_all[:1], size, torch.rand(1, 3, generator=gen), target)
                t_end = time.perf_counter() + seconds
                i = 0
                while time.perf_counter() < t_end or min(steps.values()) < 2:
                    cam = i % len(vm_all)
                    bg = torch.rand(1, 3, generator=gen)
                    # interleave: one reference step, then fast steps for about as long
                    for b in ("reference", "fast"):
                        budget = spent["reference"] / max(1, steps["reference"]) if b == "fast" else 0.0
                        t0, c0 = time.perf_counter(), time.process_time()
                        while True:
                            _raster_step(b, g, vm_all[cam:cam + 1], K_all[cam:cam + 1], size, bg, target)
                            steps[b] += 1
                            if b == "reference" or time.perf_counter() - t0 >= budget:
                                break
                        spent[b] += time.perf_counter() - t0
                        cpu[b] += time.process_time() - c0
                    i += 1
                row = {"size": size, "gaussians": n, "scene": kind,
                       "reference_steps_per_s": steps["reference"] / spent["reference"],
                       "fast_steps_per_s": steps["fast"] / spent["fast"],
                       "cpu_ratio": (cpu["reference"] / steps["reference"]) / max(cpu["fast"] / steps["fast"], 1e-9)}
                row["ratio"] = row["fast_steps_per_s"] / row["reference_steps_per_s"]
                log(f"  {size} px, {n} Gaussians, {kind}: reference {row['reference_steps_per_s']:.2f} steps/s, "
                    f"fast {row['fast_steps_per_s']:.1f} steps/s, ratio {row['ratio']:.1f} (CPU time {row['cpu_ratio']:.1f})")
                rows.append(row)
    return rows


def train_cpu_comparison(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The trainer on one 64 px scene with each CPU rasterizer: held-out PSNR and wall time."""
    device = torch.device("cpu")
    data = make_scene(args, device)
    out = []
    for backend in ("fast", "reference"):
        settings = settings_for(args).replace(backend="auto" if backend == "fast" else backend)  # auto: fast on CPU
        t0 = time.perf_counter()
        res = train(data["images"], data["viewmats"], data["Ks"], data["points"], data["colors"], settings,
                    BenchContext("cpu", []))
        row = {"rasterizer": res.meta["backend"], "wall_s": time.perf_counter() - t0,
               "eval_psnr": res.metrics.get("eval_psnr"), "gaussians": len(res.splats)}
        log(f"  trainer, {row['rasterizer']}: {args.steps} steps in {row['wall_s']:.1f} s, "
            f"held-out PSNR {row['eval_psnr']:.2f} dB, {row['gaussians']} Gaussians")
        out.append(row)
    return out


def main_cpu(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    result: dict[str, Any] = {"device": "cpu", "threads": 1, "torch": torch.__version__}
    import numba
    result["numba"] = numba.__version__
    log("rasterizer forward + backward, one thread, interleaved ...")
    rows = bench_cpu_rasterizers(args.cpu_seconds, args.seed)
    result["rasterizer"] = rows
    lines = [f"{'px':>4s}{'gaussians':>10s}{'scene':>8s}{'reference':>11s}{'fast':>9s}{'ratio':>7s}{'cpu ratio':>10s}"
             "   (steps/s, forward+backward)"]
    for r in rows:
        lines.append(f"{r['size']:4d}{r['gaussians']:10d}{r['scene']:>8s}{r['reference_steps_per_s']:11.2f}"
                     f"{r['fast_steps_per_s']:9.1f}{r['ratio']:7.1f}{r['cpu_ratio']:10.1f}")
    lines.append("target: fast >= 10x the reference")
    print("\n".join(lines), flush=True)
    if args.train_steps > 0:
        args.views, args.size, args.steps = 16, 64, args.train_steps
        args.gt_gaussians, args.init_points, args.sh_degree, args.max_gaussians = 2000, 2000, 3, 20000
        log(f"trainer: {args.steps} steps, 64 px, 16 views, 2000 initial points, each rasterizer ...")
        result["training"] = train_cpu_comparison(args)
        lines = [f"{'trainer':>10s}{'wall s':>9s}{'PSNR dB':>9s}{'gaussians':>10s}"]
        for r in result["training"]:
            lines.append(f"{r['rasterizer']:>10s}{r['wall_s']:9.1f}{r['eval_psnr']:9.2f}{r['gaussians']:10d}")
        print("\n".join(lines), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
    return 0


# -- main ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU-sized smoke run (6 views of 32x32, 30 steps)")
    p.add_argument("--cpu", action="store_true", help="CPU rasterizers: fast vs reference steps/s, then the trainer with each")
    p.add_argument("--cpu-seconds", type=float, default=4.0, help="--cpu: seconds per rasterizer configuration")
    p.add_argument("--train-steps", type=int, default=300, help="--cpu: trainer steps per rasterizer (0 skips)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--views", type=int, default=100)
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--steps", type=int, default=7000)
    p.add_argument("--checkpoints", type=int, nargs="*", default=[2000, 7000])
    p.add_argument("--gt-gaussians", type=int, default=200_000)
    p.add_argument("--init-points", type=int, default=50_000)
    p.add_argument("--max-gaussians", type=int, default=1_000_000)
    p.add_argument("--sh-degree", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", choices=("ours", "plain"), action="append", default=[])
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        args.views, args.size, args.steps, args.checkpoints = 6, 32, 30, [10, 30]
        args.gt_gaussians, args.init_points, args.sh_degree = 300, 200, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpu:
        return main_cpu(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(1)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "views": args.views, "size": args.size,
                              "steps": args.steps, "init_points": args.init_points, "errors": {}}
    try:
        import gsplat
        result["gsplat"] = gsplat.__version__
    except Exception:
        pass
    log(f"device {result['device']}, rasterizer {resolve_backend(device)}")
    failed = False
    try:
        data = make_scene(args, device)
    except Exception:
        traceback.print_exc()
        result["errors"]["scene"] = traceback.format_exc(limit=3)
        data = None
        failed = True
    for name, fn in (("plain", run_plain), ("ours", run_ours)):
        if data is None or name in args.skip:
            continue
        log(f"running {name} loop: {args.steps} steps ...")
        try:
            result[name] = fn(data, args, device)
            log(f"  {name}: {json.dumps(result[name], default=float)}")
        except Exception:
            traceback.print_exc()
            result["errors"][name] = traceback.format_exc(limit=5)
            failed = True
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ours, plain = result.get("ours"), result.get("plain")
    if ours and plain:
        result["ratio_steps_per_s"] = ours["steps_per_s"] / plain["steps_per_s"]
    lines = [f"{'':8s}{'steps/s':>10s}{'gaussians':>11s}{'peak GB':>9s}" + "".join(f"{'PSNR@' + str(c):>11s}" for c in args.checkpoints)]
    for name, r in (("plain", plain), ("ours", ours)):
        if r:
            lines.append(f"{name:8s}{r['steps_per_s']:10.1f}{r['num_gaussians']:11d}{r.get('peak_gpu_mem_gb', float('nan')):9.2f}"
                         + "".join(f"{(r['psnr'].get(c) or float('nan')):11.2f}" for c in args.checkpoints))
    if "ratio_steps_per_s" in result:
        lines.append(f"ratio ours/plain steps/s = {result['ratio_steps_per_s']:.3f} (target >= 0.9)")
    print("\n".join(lines), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
