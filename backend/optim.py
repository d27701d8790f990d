"""The optimiser set-up shared by every job that optimises splats (train, generate, edit).

One Adam per parameter group, as gsplat's simple_trainer: ``eps=1e-15`` (the gradients of the
raw values are tiny), and the learning rate of the positions scaled by the scene extent so that
the same settings work for objects of any size.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

LR_NAMES = {"means": "lr_means", "scales": "lr_scales", "quats": "lr_quats", "opacities": "lr_opacities",
            "sh0": "lr_sh0", "shN": "lr_shN"}


def make_optimizers(params: Mapping[str, torch.nn.Parameter] | torch.nn.ParameterDict, settings: Mapping[str, float],
                    extent: float) -> dict[str, torch.optim.Optimizer]:
    """One Adam per entry of ``params`` (``means``, ``scales``, ...), learning rates from the
    ``settings`` fields ``lr_means`` (times ``extent``, metres), ``lr_scales``, ``lr_quats``,
    ``lr_opacities``, ``lr_sh0``, ``lr_shN``."""
    lrs = {k: float(settings[name]) for k, name in LR_NAMES.items()}
    lrs["means"] *= extent
    return {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15) for k in params}
