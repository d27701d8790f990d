"""Settings that several job kinds share the shape of (not a kind: ``load_builtin`` skips ``_`` modules)."""
from __future__ import annotations

from ..jobspec import Setting

INT32_MAX = 2 ** 31 - 1    # Blender's IntProperty is a C int

#: rasterizers a job may ask for (backend.render.BACKENDS): "auto" is gsplat on CUDA, else the fast
#: CPU rasterizer (Numba), else the pure-torch reference
RASTER_BACKENDS = ("auto", "gsplat", "fast", "reference")


def seed_setting() -> Setting:
    """The random seed of a job."""
    return Setting("seed", 0, "Random seed: the same seed and settings give the same result", min=0,
                   max=INT32_MAX)


def lr_settings(means: float, scales: float, quats: float, opacities: float, sh0: float, shN: float,
                means_note: str) -> tuple[Setting, ...]:
    """The Adam learning rates of the six splat parameter groups (``backend.optim.make_optimizers``);
    ``means_note`` says how the positions' rate is scaled and decayed."""
    what = (("lr_means", means, f"positions ({means_note})"), ("lr_scales", scales, "log scales"),
            ("lr_quats", quats, "rotations"), ("lr_opacities", opacities, "opacity logits"),
            ("lr_sh0", sh0, "base colours"), ("lr_shN", shN, "higher SH coefficients"))
    return tuple(Setting(name, default, f"Adam learning rate of the {text}", min=0.0, max=1.0, advanced=True)
                 for name, default, text in what)
