"""Shared pytest fixtures: repo on sys.path, artefact folder, headless Blender helpers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One OpenMP thread for torch in the tests and in every backend subprocess they start (children
# inherit the environment): on a 2-core box the test process, a server and Blender compete, and
# torch with 2 threads there runs ~10x slower than with 1. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARTIFACTS = ROOT / "test-artifacts"


def cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


# gpu-marked tests on a machine without CUDA: fixtures, parameters and the body up to the first CUDA
# call run; then the test is skipped ("reached CUDA work"), or fails if it broke before (tests/gpu_on_cpu.py).
from gpu_on_cpu import pytest_runtest_call  # noqa: E402,F401


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for PNGs and other outputs a person should look at (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def bpy_empty():
    """A factory-fresh, empty Blender scene (headless bpy); returns the bpy module."""
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


@pytest.fixture
def gpu_ready(bpy_empty, addon_dir):
    """Blender's GPU module usable in background mode (the add-on's ``ensure_gpu_module``: one
    tiny render); returns the bpy module."""
    from splatbridge.viewport.offscreen import ensure_gpu_module
    ensure_gpu_module()
    return bpy_empty


@pytest.fixture(scope="session")
def addon_dir(tmp_path_factory) -> Path:
    """The add-on assembled as `splatbridge` in a temp folder that is on sys.path."""
    base = tmp_path_factory.mktemp("addon")
    from build import assemble_addon        # build.py at the repo root: the one add-on layout
    assemble_addon(base)
    sys.path.insert(0, str(base))
    return base / "splatbridge"


@pytest.fixture(scope="session")
def built_addon(tmp_path_factory) -> Path:
    """`python build.py addon` into a temp dist folder; returns the extension zip.

    Wheels come from the repo's dist/wheel-cache (downloaded from PyPI on the first build only).
    """
    import subprocess
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "addon", "--dist", str(out),
                           "--wheel-cache", str(ROOT / "dist" / "wheel-cache")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"build.py addon failed:\n{proc.stdout}\n{proc.stderr}"
    zips = list(out.glob("splatbridge-*.zip"))
    assert len(zips) == 1, f"expected one zip in {out}, found {zips}"
    return zips[0]


@pytest.fixture
def so(addon_dir):
    """The add-on's splat_object module (imported from the assembled add-on)."""
    import importlib
    return importlib.import_module("splatbridge.splat_object")
