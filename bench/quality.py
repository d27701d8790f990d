"""Quality per step: SplatBridge's trainer (default and MCMC strategies) against a plain gsplat
loop, on the same Blender-rendered scenes, from the same initial points, with the same rasterizer.

    python bench/quality.py --quick            # CPU, CI-sized: 64 px, 500/1000/2000 steps, both scenes
    python bench/quality.py                    # 64 px, 500/1k/2k/3k/5k/7k steps
    python bench/quality.py --size 256         # GPU-sized (gsplat's CUDA rasterizer where one loads)
    python bench/quality.py --json out.json    # also write the table
    python bench/quality.py --quick --seeds 0 1 2              # mean and spread over seeds
    python bench/quality.py --merge a.json b.json              # one table from runs made in parts

Scenes (``bench/quality_scenes.py``, rendered once with bpy and cached under ``bench/.cache``):
``alpha`` (objects on a transparent film) and ``opaque`` (the objects in a room); 40 views, every
5th held out (8 test, 32 train views).

The plain loop is gsplat's simple_trainer recipe written out: L1 loss (``--plain-ssim-lambda``
adds D-SSIM), gsplat's ``DefaultStrategy`` with its default schedule (refine every 100 steps from
step 500, opacity reset every 3000), SH degree 3 with a band every 1000 steps, Adam at gsplat's
learning rates (means 1.6e-4 x scene scale, exponentially decayed to 1 % over the longest run),
initial opacity 0.1, scales from the 3 nearest neighbours, a random background colour per step.
Its schedule does not depend on the run length except for the decay of the position learning
rate, so it runs once, to the largest step count, and is evaluated at every step count on the way
(its learning rate at step s < max is thus that of the long run, as gsplat's own checkpoints are).
Our trainer compresses its schedule to the run length, so it runs once per step count, as a user
would ask for it. ``--plain-horizon N`` decays the plain loop's position learning rate over N steps
while it runs only to the largest step count asked: ``--steps 500 --plain-horizon 7000`` gives
exactly the 500-step checkpoint of the full curve's 7000-step run, in 500 steps.

A long curve can run in parts (``--scenes``, ``--loops``, ``--steps`` subsets, one ``--json`` each,
one process after another) and ``--merge`` prints the one table of all their rows. With several
``--seeds`` (each seed draws its own initial points, camera order and backgrounds, for every loop)
each cell is the mean over the seeds with their sample standard deviation, and the differences
"ours - plain" are the mean of the per-seed differences with the smallest per-seed one after it.

Both loops render with the same rasterizer (``--backend``, default ``auto``: the fast Numba one
on the CPU, gsplat's on CUDA) and are scored by one evaluator: PSNR and SSIM of the held-out views
over a white background (``backend.trainer.evaluate``). Time is the wall time of training
(evaluation excluded); on the CPU all runs use one thread and run one after another in this
process, so load from other processes hits them alike. Initial points: ``--init random``
(2,000 points in the volume that the cameras see, random colours, as the issue measured) or
``surface`` (the mesh surface samples that the add-on sends, with their colours).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.losses import ssim as ssim_fn  # noqa: E402
from backend.optim import make_optimizers  # noqa: E402
from backend.params import activated, sh_coeffs, splats_to_tensors  # noqa: E402
from backend.render import rasterize, resolve_backend  # noqa: E402
from backend.trainer import _composite, evaluate, init_params, random_init_points, scene_scale, train  # noqa: E402
from bench.quality_scenes import CACHE, SCENES, scene_path  # noqa: E402
from shared.jobkinds.train import SPEC as TRAIN  # noqa: E402

HOLDOUT_EVERY = 5
QUICK_STEPS = (500, 1000, 2000)
FULL_STEPS = (500, 1000, 2000, 3000, 5000, 7000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_scene(name: str, size: int, views: int) -> dict[str, np.ndarray]:
    """The cached render of a scene, rendering it first (a bpy subprocess) when missing."""
    path = scene_path(CACHE, name, size, views)
    if not path.exists():
        log(f"rendering scene {name!r} at {size} px with bpy (once; cached in {path.parent}) ...")
        subprocess.run([sys.executable, str(ROOT / "bench" / "quality_scenes.py"), "--size", str(size),
                        "--views", str(views), "--scenes", name, "--out", str(CACHE)], check=True,
                       stdout=subprocess.DEVNULL)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def initial_points(data: dict[str, np.ndarray], kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The initial points and u8 colours that every loop starts from."""
    g = torch.Generator().manual_seed(seed)
    if kind == "surface":
        idx = torch.randperm(len(data["points"]), generator=g)[:n].numpy()
        return data["points"][idx], data["colors"][idx]
    H, W = data["images"].shape[1:3]
    pts = random_init_points(n, torch.from_numpy(data["viewmats"]), torch.from_numpy(data["Ks"]), W, H, g)
    rgb = (torch.rand(len(pts), 3, generator=g) * 255).round().to(torch.uint8)
    return pts.numpy(), rgb.numpy()


def split(count: int) -> tuple[list[int], list[int]]:
    test = [i for i in range(count) if i % HOLDOUT_EVERY == 0]
    return [i for i in range(count) if i not in test], test


def score(params: dict[str, torch.Tensor], data: dict[str, Any], test: list[int], sh_degree: int,
          backend: str) -> dict[str, float]:
    """The one evaluator: held-out PSNR / SSIM over white."""
    return evaluate(params, data["images_t"], data["vm"], data["Ks_t"], test, sh_degree, backend, 1.0)


# -- the plain loop ------------------------------------------------------------------------------------

def run_plain(data: dict[str, Any], pts: np.ndarray, rgb: np.ndarray, checkpoints: list[int], args,
              seed: int) -> list[dict]:
    """gsplat simple_trainer's loop (see the module docstring); one row per checkpoint."""
    from gsplat.strategy import DefaultStrategy
    device = data["device"]
    backend = data["backend"]
    train_ids, test = split(len(data["images"]))
    max_steps = max(checkpoints)
    horizon = max(max_steps, args.plain_horizon or 0)     # the position learning rate's decay
    s = TRAIN.make(steps=max_steps, sh_degree=3, seed=seed, strategy="default")  # gsplat's lrs, init
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    extent = scene_scale(data["vm"])
    params = init_params(torch.tensor(pts, device=device), torch.from_numpy(rgb).float() / 255.0, s,
                         1e-7 * extent, gen)
    optimizers = make_optimizers(params, s, extent)
    sched = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.01 ** (1.0 / horizon))
    strategy = DefaultStrategy()               # gsplat's defaults: refine 500..15000 every 100, reset 3000
    state = strategy.initialize_state(scene_scale=extent)
    strategy.check_sanity(params, optimizers)
    H, W = data["images"].shape[1:3]
    rows = []
    t_train = 0.0
    order: list[int] = []
    for step in range(max_steps):
        t0 = time.perf_counter()
        if not order:
            order = [train_ids[i] for i in torch.randperm(len(train_ids), generator=gen).tolist()]
        cam = order.pop()
        sh_deg = min(step // 1000, 3)
        bg = torch.rand(1, 3, generator=gen).to(device)
        target = _composite(data["images_t"][cam:cam + 1], bg)
        means, quats, scales, opac = activated(params)
        render, _, info = rasterize(means, quats, scales, opac, sh_coeffs(params), data["vm"][cam:cam + 1],
                                    data["Ks_t"][cam:cam + 1], W, H, sh_degree=sh_deg, backgrounds=bg,
                                    packed=False, backend=backend)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (render - target).abs().mean()
        if args.plain_ssim_lambda > 0:
            loss = (1 - args.plain_ssim_lambda) * loss + args.plain_ssim_lambda * (1 - ssim_fn(render, target))
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        sched.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_train += time.perf_counter() - t0
        if step + 1 in checkpoints:
            ev = score(params, data, test, sh_deg, backend)
            rows.append({"loop": "plain", "steps": step + 1, "psnr": ev["psnr"], "ssim": ev["ssim"],
                         "seconds": t_train, "gaussians": len(params["means"])})
            log(f"  plain   {step + 1:>5} steps  {ev['psnr']:6.2f} dB  ssim {ev['ssim']:.4f}  "
                f"{t_train:7.1f} s  {len(params['means']):>6} Gaussians")
    return rows


# -- our trainer ---------------------------------------------------------------------------------------

def run_ours(data: dict[str, Any], pts: np.ndarray, rgb: np.ndarray, steps: int, strategy: str, args,
             extra: dict[str, Any], seed: int) -> dict:
    """One run of ``backend.trainer.train`` with ``steps`` steps and the given strategy."""
    settings = TRAIN.make(steps=steps, strategy=strategy, seed=seed, holdout_every=HOLDOUT_EVERY,
                          preview_every=0, report_interval_s=3600.0, backend=args.backend, **extra)
    t0 = time.perf_counter()
    res = train(data["images"], data["viewmats"], data["Ks"], pts, rgb, settings, _Ctx(str(data["device"])))
    wall = time.perf_counter() - t0
    _, test = split(len(data["images"]))
    assert res.meta["holdout"] == test, (res.meta["holdout"], test)
    params = splats_to_tensors(res.splats, data["device"])
    ev = score(params, data, test, res.splats.sh_degree, data["backend"])
    row = {"loop": f"ours-{strategy}", "steps": steps, "psnr": ev["psnr"], "ssim": ev["ssim"],
           "seconds": wall, "gaussians": len(res.splats)}
    log(f"  {row['loop']:<13} {steps:>5} steps  {ev['psnr']:6.2f} dB  ssim {ev['ssim']:.4f}  {wall:7.1f} s  "
        f"{len(res.splats):>6} Gaussians")
    return row


class _Ctx:
    def __init__(self, device: str):
        self.device = device
        self.job_dir = Path(".")

    def report(self, step, total, metrics, preview=None) -> None:
        pass

    def should_stop(self) -> bool:
        return False


# -- main ------------------------------------------------------------------------------------------

def _mean_sd(x: list[float]) -> tuple[float, float]:
    return float(np.mean(x)), (float(np.std(x, ddof=1)) if len(x) > 1 else 0.0)


def table(rows: list[dict], steps: list[int] | None = None) -> str:
    """PSNR per loop and step count, with ours minus plain; over several seeds the mean (and the
    sample standard deviation, and the smallest per-seed difference)."""
    steps = steps or sorted({r["steps"] for r in rows})
    loops = list(dict.fromkeys(r["loop"] for r in rows))
    seeds = sorted({r.get("seed", 0) for r in rows})
    multi = len(seeds) > 1
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["scene"], r["loop"], r["steps"]), []).append(r)
    out = []
    if multi:
        out.append(f"seeds {seeds}: each cell the mean (± sample sd) over the seeds")
    for scene in dict.fromkeys(r["scene"] for r in rows):
        out.append(f"scene {scene}: held-out PSNR dB (SSIM) [s, Gaussians]")
        out.append("  " + f"{'loop':<14}" + "".join(f"{s:>34}" for s in steps))
        for loop in loops:
            cells = []
            for s in steps:
                rs = by.get((scene, loop, s))
                if not rs:
                    cells.append("-")
                    continue
                p, sd = _mean_sd([r["psnr"] for r in rs])
                spread = f"±{sd:.2f}" if multi else ""
                cells.append(f"{p:6.2f}{spread} ({np.mean([r['ssim'] for r in rs]):.3f}) "
                             f"[{np.mean([r['seconds'] for r in rs]):5.0f}s "
                             f"{np.mean([r['gaussians'] for r in rs]):>6.0f}]")
            out.append("  " + f"{loop:<14}" + "".join(f"{c:>34}" for c in cells))
        for loop in loops:
            if loop == "plain":
                continue
            d = []
            for s in steps:
                a = {r.get("seed", 0): r["psnr"] for r in by.get((scene, loop, s), [])}
                b = {r.get("seed", 0): r["psnr"] for r in by.get((scene, "plain", s), [])}
                diffs = [a[k] - b[k] for k in a if k in b]
                if not diffs:
                    d.append("-")
                else:
                    d.append(f"{np.mean(diffs):+.2f} (min {min(diffs):+.2f})" if multi else f"{diffs[0]:+.2f}")
            out.append("  " + f"{loop + ' - plain':<22}" + "".join(f"{c:>26}" for c in d))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"CI-sized: 64 px, steps {QUICK_STEPS}")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--steps", type=int, nargs="*", default=None, help=f"step counts (default {FULL_STEPS})")
    p.add_argument("--scenes", nargs="*", default=list(SCENES), choices=SCENES)
    p.add_argument("--loops", nargs="*", default=["plain", "default", "mcmc"],
                   choices=["plain", "default", "mcmc"])
    p.add_argument("--init", choices=("random", "surface"), default="random")
    p.add_argument("--init-points", type=int, default=2000)
    p.add_argument("--plain-ssim-lambda", type=float, default=0.0)
    p.add_argument("--ours", default="{}", help="JSON dict of extra train settings for our runs")
    p.add_argument("--backend", default="auto", choices=("auto", "fast", "reference", "gsplat"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    p.add_argument("--seed", type=int, default=0, help="one seed (see --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds: mean and spread")
    p.add_argument("--plain-horizon", type=int, default=None,
                   help="decay the plain loop's position lr over this many steps (default: the largest step count)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="print one table of the rows in these --json files (runs nothing)")
    args = p.parse_args(argv)
    if args.merge:
        rows_m = [r for f in args.merge for r in json.loads(f.read_text())["rows"]]
        print(table(rows_m))
        return 0
    seeds = args.seeds or [args.seed]
    steps = sorted(args.steps or (QUICK_STEPS if args.quick else FULL_STEPS))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    backend = resolve_backend(device, args.backend)
    extra = json.loads(args.ours)
    log(f"quality: {device} ({backend} rasterizer), {args.size} px, steps {steps}, init {args.init} "
        f"({args.init_points}), loops {args.loops}, ours {extra or 'defaults'}")
    rows: list[dict] = []

    def save() -> None:          # after every row: a run cut short keeps its figures
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "rows": rows}, indent=1))

    for name in args.scenes:
        data: dict[str, Any] = load_scene(name, args.size, args.views)
        data.update(device=device, backend=backend,
                    images_t=torch.from_numpy(data["images"]).to(device),
                    vm=torch.from_numpy(data["viewmats"]).to(device), Ks_t=torch.from_numpy(data["Ks"]).to(device))
        for seed in seeds:
            pts, rgb = initial_points(data, args.init, args.init_points, seed)
            log(f"scene {name}, seed {seed}: {len(data['images'])} views, {len(pts)} initial points")
            if "plain" in args.loops:
                rows.extend(dict(r, scene=name, seed=seed) for r in run_plain(data, pts, rgb, steps, args, seed))
                save()
            for strategy in ("default", "mcmc"):
                if strategy in args.loops:
                    for s in steps:
                        rows.append(dict(run_ours(data, pts, rgb, s, strategy, args, extra, seed),
                                         scene=name, seed=seed))
                        save()
    print(table(rows, steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
