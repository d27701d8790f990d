"""The ``segment`` job: per-splat labels from 2D label masks (FlashSplat's closed-form assignment).

Spec and result format: ``shared/jobkinds/segment.py``. Method:

1. **Contributions, one rendering pass per view.** A splat i's share of pixel p is its compositing
   weight ``w_i(p) = alpha_i(p) T_i(p)``. Rendering per-splat "colours" ``c_i`` (one channel per label)
   gives ``R_l(p) = sum_i c_il w_i(p)``, which is linear in c; so the gradient of
   ``sum_p sum_l onehot_l(p) R_l(p)`` with respect to ``c_il`` is ``sum_{p with label l} w_i(p)``: every
   splat's contribution to every label from one forward and one backward pass. It runs through
   ``backend.render.rasterize`` (gsplat on CUDA, the reference rasterizer on the CPU), with the splats'
   geometry and opacity as constants.
2. **Assignment** (FlashSplat's optimum of its linear program, one splat at a time): the label with the
   largest summed contribution over the views; the background's (label 0) is scaled by
   ``background_weight``; splats with a total below ``min_contribution`` x the median total are *weak*
   (-1): hidden or nearly hidden in every view, their few pixels decide nothing. (At the default 1.0
   that is the half of the splats that contribute least.)
3. **Weak splats** (``fill_unseen``): the majority label of their well-seen neighbours on a voxel grid
   (``shared.selection.fill_labels``). With masks in only 2-3 views, the backs and insides of objects
   are never seen; they belong with the visible splats next to them.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from backend.job_api import JobContext, JobError, JobResult, NullContext, checked_settings
from backend.job_cli import KindCli, Positional
from backend.params import activated, splats_to_tensors
from backend.progress import StepRate
from backend.render import rasterize
from shared.jobspec import Settings
from shared.selection import fill_labels, splat_sizes
from shared.splats import SplatError, Splats


def label_contributions(splats: Splats, labels: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray,
                        num_labels: int | None = None, ignore_label: int = -1, labels_per_pass: int = 32,
                        device: str | torch.device = "cpu", backend: str = "auto",
                        ctx: JobContext | None = None) -> tuple[np.ndarray, int]:
    """Each splat's summed ``alpha * T`` over the pixels of each label: (f32[N, L+1], views done).

    ``labels`` int[V,H,W] (0 background .. L); pixels equal to ``ignore_label`` count for no label.
    Reports one progress step per view on ``ctx`` and stops early (returning what it has) when
    ``ctx.should_stop()``.
    """
    ctx = ctx or NullContext()
    device = torch.device(device)
    V, H, W = labels.shape
    L = int(num_labels if num_labels is not None else labels.max(initial=0)) + 1
    n = len(splats)
    p = splats_to_tensors(splats, device)
    means, quats, scales, opac = activated(p)
    vm = torch.as_tensor(np.asarray(viewmats, np.float32), device=device)
    ks = torch.as_tensor(np.asarray(Ks, np.float32), device=device)
    out = torch.zeros(n, L, dtype=torch.float32, device=device)
    rate = StepRate(V)
    done = 0
    for v in range(V):
        if ctx.should_stop():
            break
        lab = torch.as_tensor(labels[v].astype(np.int64), device=device)
        valid = (lab != ignore_label) & (lab >= 0) & (lab < L)
        for start in range(0, L, labels_per_pass):
            stop = min(L, start + labels_per_pass)
            onehot = torch.zeros(H, W, stop - start, dtype=torch.float32, device=device)
            inside = valid & (lab >= start) & (lab < stop)
            onehot[inside, lab[inside] - start] = 1.0
            if not bool(inside.any()):
                continue
            colors = torch.zeros(n, stop - start, dtype=torch.float32, device=device, requires_grad=True)
            img, _, _ = rasterize(means, quats, scales, opac, colors, vm[v:v + 1], ks[v:v + 1], W, H,
                                  backend=backend)
            (grad,) = torch.autograd.grad((img[0] * onehot).sum(), colors)
            out[:, start:stop] += grad
        done = v + 1
        ctx.report(done, V, {"num_gaussians": float(n), **rate.update(done)})
    return out.cpu().numpy(), done


def assign_labels(contrib: np.ndarray, min_contribution: float = 1.0, background_weight: float = 1.0
                  ) -> np.ndarray:
    """FlashSplat's assignment: int32[N], the argmax over labels of ``contrib`` [N, L+1] with column 0
    (background) scaled by ``background_weight``; -1 where the row's total is below ``min_contribution``
    times the median of the positive totals."""
    c = np.array(contrib, dtype=np.float64, copy=True)
    total = c.sum(axis=1)
    positive = total[total > 0]
    threshold = min_contribution * float(np.median(positive)) if len(positive) else np.inf
    c[:, 0] *= background_weight
    labels = np.argmax(c, axis=1).astype(np.int32)
    labels[(total < threshold) | (total <= 0)] = -1
    return labels


def _inputs(payload: dict) -> tuple[Splats, np.ndarray, np.ndarray, np.ndarray]:
    try:
        splats = Splats.from_arrays(payload["splats"])
    except SplatError as exc:
        raise JobError("bad_input", f"segment payload splats.{exc}") from None
    if len(splats) == 0:
        raise JobError("bad_input", "segment payload 'splats' is empty: nothing to label")
    labels = np.asarray(payload["labels"])
    if labels.dtype == np.int32 and labels.size and labels.min() < -1:
        raise JobError("bad_input", f"segment payload 'labels' has value {int(labels.min())}; "
                                    "labels are 0 (background) .. L, or ignore_label")
    viewmats = np.asarray(payload["viewmats"], np.float64)
    Ks = np.asarray(payload["Ks"], np.float64)
    if not (np.isfinite(viewmats).all() and np.isfinite(Ks).all()):
        raise JobError("bad_input", "segment payload viewmats/Ks contain NaN or Inf")
    rot = viewmats[:, :3, :3]
    if not np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-3) or \
            not np.allclose(viewmats[:, 3], [0, 0, 0, 1], atol=1e-6):
        raise JobError("bad_input", "segment payload 'viewmats' must be rigid world-to-camera matrices "
                                    "(rotation + translation, last row 0 0 0 1)")
    if (Ks[:, 0, 0] <= 0).any() or (Ks[:, 1, 1] <= 0).any():
        raise JobError("bad_input", "segment payload 'Ks' need positive focal lengths fx, fy")
    return splats, labels, viewmats, Ks


def run_segment_job(params: Settings | dict, payload: dict, ctx: JobContext) -> JobResult:
    """Job kind ``segment`` (see the module docstring and ``shared/jobkinds/segment.py``)."""
    settings = checked_settings("segment", params, payload)
    splats, labels, viewmats, Ks = _inputs(payload)
    t0 = time.perf_counter()
    ctx.report(0, 0, {"stage": f"labelling {len(splats)} splats from {labels.shape[0]} views"})
    num_labels = int(labels[labels != settings.ignore_label].max(initial=0))
    contrib, done = label_contributions(
        splats, labels, viewmats, Ks, num_labels=num_labels, ignore_label=settings.ignore_label,
        labels_per_pass=settings.labels_per_pass, device=ctx.device, backend=settings.backend, ctx=ctx)
    out = assign_labels(contrib, settings.min_contribution, settings.background_weight)
    unseen = int((contrib.sum(axis=1) <= 0).sum())
    weak = int((out == -1).sum())
    if settings.fill_unseen and weak:
        cell = settings.fill_cell or 2.0 * float(np.median(splat_sizes(splats)))
        out = fill_labels(splats, out, cell).astype(np.int32)
    values, counts = np.unique(out, return_counts=True)
    meta: dict[str, Any] = {
        "labels": out,
        "label_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "unseen": unseen,
        "weak": weak,
        "unlabelled": int((out == -1).sum()),
        "num_labels": num_labels,
        "views_done": done,
        "cancelled": done < labels.shape[0],
        "settings": settings.to_meta(),
        "device": str(ctx.device),
        "method": "FlashSplat closed-form assignment from alpha-weighted contributions (one pass per view)",
    }
    metrics = {"seconds": time.perf_counter() - t0, "views": float(done), "num_gaussians": float(len(splats))}
    return JobResult(Splats.random(0), metrics, meta)


def _cli_payload(args, settings: Settings) -> dict:
    """``python -m backend segment SPLATS MASKS.npz``: the splat file and an .npz with ``labels``
    [V,H,W], ``viewmats`` [V,4,4] and ``Ks`` [V,3,3] (the payload's arrays)."""
    from shared.formats import read_splats
    try:
        splats = read_splats(args.input)
    except (OSError, ValueError) as exc:
        raise JobError("bad_input", f"cannot read {args.input}: {exc}") from None
    try:
        with np.load(args.masks, allow_pickle=False) as f:
            missing = [k for k in ("labels", "viewmats", "Ks") if k not in f.files]
            if missing:
                raise JobError("bad_input", f"{args.masks} has no array {', '.join(map(repr, missing))}: it needs "
                                            "labels [V,H,W], viewmats [V,4,4] and Ks [V,3,3]")
            arrays = {k: f[k] for k in ("labels", "viewmats", "Ks")}
    except (OSError, ValueError) as exc:
        raise JobError("bad_input", f"cannot read {args.masks}: {exc}") from None
    if arrays["labels"].dtype not in (np.uint8, np.int32):
        arrays["labels"] = arrays["labels"].astype(np.int32)
    return {"splats": splats.to_arrays(), **arrays}


# python -m backend segment scene.ply masks.npz --out labels.ply: the labels go to labels.ply.labels.npy
CLI = KindCli(positionals=(Positional("input", "splat file to label (.ply, .splat, ...)"),
                           Positional("masks", ".npz with labels [V,H,W] (0 background, 1..L), viewmats [V,4,4] "
                                               "(world-to-camera, OpenCV) and Ks [V,3,3]")),
              payload=_cli_payload)
