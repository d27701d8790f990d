"""The built-in job kinds' specs: one module per kind, each registering its ``JobSpec`` with
``shared.jobspec.register``. ``load_builtin()`` imports every module of this package (found by
listing the package, so a new kind's module needs no edit here)."""
from __future__ import annotations

import importlib
import pkgutil

from ..jobspec import JobSpec, all_specs


def load_builtin() -> list[JobSpec]:
    """Import every spec module in this package; returns all registered specs."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f".{info.name}", __name__)
    return all_specs()
