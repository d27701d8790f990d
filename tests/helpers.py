"""Plain helpers several test modules share (not fixtures: those live in conftest.py)."""
from __future__ import annotations

import contextlib
import importlib
import math
from typing import Iterator

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of images ``a`` and ``b`` (values clipped to 0..1 first; inf when equal)."""
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


@contextlib.contextmanager
def registered(name: str) -> Iterator[object]:
    """The assembled add-on's module ``splatbridge.<name>``, registered while the block runs (needs
    the ``addon_dir`` fixture, which puts the add-on on sys.path)."""
    mod = importlib.import_module(f"splatbridge.{name}")
    mod.register()
    try:
        yield mod
    finally:
        mod.unregister()
