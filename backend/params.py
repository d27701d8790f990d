"""Splats <-> torch tensors, in the layout of gsplat's simple_trainer.

Tensors hold the raw (trainable) values, exactly as ``shared.splats.Splats`` does: ``means``
[N,3], ``quats`` [N,4] (w,x,y,z), ``scales`` [N,3] log, ``opacities`` [N] logit, ``sh0`` [N,1,3],
``shN`` [N,K,3]. Activation for rendering is ``activated()`` (exp / sigmoid; the rasterizer
normalises quaternions itself).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from shared.splats import Splats

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")

#: Trainable tensors by name (``KEYS``): a dict (train) or a ``torch.nn.ParameterDict`` (generate, edit), which
#: reads the same but is no ``Mapping`` to a type checker.
TensorMap = Mapping[str, Tensor] | torch.nn.ParameterDict


def splats_to_tensors(splats: Splats, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Copy ``splats`` into fresh tensors on ``device`` (sh0 gets gsplat's [N,1,3] shape)."""
    arrays = splats.to_arrays()
    out = {k: torch.tensor(np.array(arrays[k]), dtype=dtype, device=device) for k in KEYS}
    out["sh0"] = out["sh0"].reshape(-1, 1, 3)
    return out


def tensors_to_splats(params: TensorMap) -> Splats:
    """Build a validated ``Splats`` from tensors as ``splats_to_tensors`` makes them (or
    ``torch.nn.Parameter``s of the same shapes; sh0 may also be [N,3]). Copies to the CPU."""
    def arr(key: str) -> np.ndarray:
        return params[key].detach().to("cpu", torch.float32).numpy().copy()

    n = params["means"].shape[0]
    shN = arr("shN") if "shN" in params else np.zeros((n, 0, 3), np.float32)
    return Splats(means=arr("means"), quats=arr("quats"), scales=arr("scales"),
                  opacities=arr("opacities").reshape(n), sh0=arr("sh0").reshape(n, 3), shN=shN)


def sh_coeffs(params: TensorMap) -> Tensor:
    """All SH coefficients [N, 1+K, 3] (DC first), as ``rasterize(..., sh_degree=d)`` takes them."""
    return torch.cat([params["sh0"], params["shN"]], dim=1)


def activated(params: TensorMap) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(means, quats, scales in metres, opacities in 0..1) for the rasterizer."""
    return params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"])


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 32768,
                      should_stop: Callable[[], bool] | None = None) -> Tensor:
    """RMS distance of each point to its ``k`` nearest other points [P] (simple_trainer's init),
    in the points' units. A KD-tree (scipy's cKDTree): O(P log P), queried in chunks of ``chunk``
    points with ``should_stop`` polled between them (``JobError('cancelled')`` when true)."""
    from scipy.spatial import cKDTree

    from shared.jobspec import JobError

    n = len(points)
    if n < 2:
        return torch.ones(n, device=points.device)
    k = min(k, n - 1)
    pts = points.detach().to("cpu", torch.float64).numpy()
    tree = cKDTree(pts)
    out = np.empty(n, np.float64)
    for s in range(0, n, chunk):
        if should_stop is not None and should_stop():
            raise JobError("cancelled", f"cancelled while setting up the {n} initial Gaussians "
                           "(nearest-neighbour scales); nothing was trained yet")
        d, _ = tree.query(pts[s:s + chunk], k=k + 1)     # column 0: the point itself (or a twin)
        out[s:s + chunk] = np.sqrt(np.mean(np.square(d[:, 1:]), axis=1))
    return torch.from_numpy(out).to(points.device, torch.float32)
