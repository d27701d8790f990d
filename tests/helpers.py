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


@contextlib.contextmanager
def registered_addon(names: tuple[str, ...]) -> Iterator[dict[str, object]]:
    """The add-on's modules ``names`` registered in order while the block runs ({name: module}); the
    connection (if among them) is closed first on the way out, then each is unregistered in reverse."""
    mods = [importlib.import_module(f"splatbridge.{name}") for name in names]
    for m in mods:
        m.register()
    try:
        yield dict(zip(names, mods))
    finally:
        if "connection" in names:
            mods[names.index("connection")].disconnect()
        for m in reversed(mods):
            m.unregister()


@contextlib.contextmanager
def model_server(store) -> Iterator[object]:
    """A real ``python -m backend serve`` for jobs with local (tiny) models: built-in job kinds only,
    previews every 0.1 s, ``HF_HUB_OFFLINE=1``; it must exit cleanly afterwards."""
    from test_server import ServerProcess
    srv = ServerProcess(store, plugins=[], extra=["--preview-interval", "0.1"], env={"HF_HUB_OFFLINE": "1"}).start()
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def node_material(bpy, name: str):
    """A new material with its default node tree (Principled BSDF + output) on any Blender: 5.0+ makes
    one for every material, 4.x only once ``use_nodes`` is set (5.x deprecates that property)."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    return mat


class RecordingLayout:
    """Stands in for Blender's ``UILayout`` where a panel's ``draw`` is called headless (panels cannot
    draw without a window and region). Records ``(section, kind, name)`` for each ``prop`` / ``operator``
    / ``label`` in draw order; ``section`` is "main", or "box" inside a ``box()``."""

    class _Op:
        pass

    def __init__(self, log: list | None = None, section: str = "main"):
        self.log = [] if log is None else log
        self.section = section
        self.active = self.enabled = self.alert = True
        self.scale_y = 1.0

    def _child(self, section: str | None = None) -> "RecordingLayout":
        return RecordingLayout(self.log, section or self.section)

    def column(self, align: bool = False) -> "RecordingLayout":
        return self._child()

    def row(self, align: bool = False) -> "RecordingLayout":
        return self._child()

    def box(self) -> "RecordingLayout":
        return self._child("box")

    def separator(self) -> None:
        pass

    def prop(self, data, name: str, **kwargs) -> None:
        self.log.append((self.section, "prop", name))

    def operator(self, idname: str, **kwargs) -> "RecordingLayout._Op":
        self.log.append((self.section, "operator", idname))
        return RecordingLayout._Op()

    def label(self, text: str = "", **kwargs) -> None:
        self.log.append((self.section, "label", text))

    def progress(self, **kwargs) -> None:
        self.log.append((self.section, "progress", kwargs.get("text", "")))

    def props(self, section: str | None = None) -> list[str]:
        """The property names drawn (in ``section`` only, if given)."""
        return [n for s, k, n in self.log if k == "prop" and (section is None or s == section)]
