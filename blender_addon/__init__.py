"""SplatBridge: Gaussian splats in Blender, with a GPU backend process over ZeroMQ.

The extension is made of submodules, each with its own ``register()`` / ``unregister()``.
``MODULES`` lists them in registration order (one name per line: add yours where it belongs);
``unregister`` runs in reverse. A module that fails to import or register is reported and the
others go on; each module's ``unregister`` removes everything it added (classes, handlers,
timers, draw handlers, sockets, child processes).
"""
from __future__ import annotations

import importlib
import sys
import traceback
from types import ModuleType

MODULES: tuple[str, ...] = (
    "preferences",
    "splat_object",
    "viewport",
    "connection",
    "backend_process",
    "install_ops",
    "rig",
    "capture",
    "webp_codec",
    "io_ops",
    "ops_train",
    "ops_generate",
    "ops_edit",
    "ops_select",
    "ops_splat_edit",
    "ops_split",
    "ops_reconstruct",
    "final_render",
    "native_render",
    "ui_panel",
    "ui_display",
    "ui_edit",
)

# module name -> message of the last import/register/unregister failure (shown in preferences).
ERRORS: dict[str, str] = {}
# Survives importlib.reload of this package (F3 "Reload Scripts"): what is registered stays known,
# and a reload also reloads the submodules on their next register.
_registered: list[ModuleType] = globals().get("_registered", [])
_reload_submodules: bool = "_reload_submodules" in globals()


def _report(name: str, stage: str) -> None:
    message = f"SplatBridge: {stage} of '{name}' failed:\n{traceback.format_exc()}"
    ERRORS[name] = message.splitlines()[-1]
    print(message, file=sys.stderr)


def _load(name: str) -> ModuleType | None:
    full = f"{__name__}.{name}"
    try:
        if _reload_submodules and full in sys.modules:
            return importlib.reload(sys.modules[full])
        return importlib.import_module(full)
    except Exception:
        _report(name, "import")
        return None


def register() -> None:
    """Import and register every module in MODULES order; failures are reported per module."""
    global _reload_submodules
    if _registered:  # registered twice without unregister: undo first so nothing is doubled
        unregister()
    ERRORS.clear()
    for name in MODULES:
        module = _load(name)
        if module is None:
            continue
        fn = getattr(module, "register", None)
        try:
            if fn is not None:
                fn()
        except Exception:
            _report(name, "register")
            # Undo what a half-finished register left behind, as far as its unregister can.
            try:
                getattr(module, "unregister", lambda: None)()
            except Exception:
                pass
            continue
        _registered.append(module)
    _reload_submodules = False


def unregister() -> None:
    """Unregister the registered modules in reverse order; every module gets its turn."""
    while _registered:
        module = _registered.pop()
        fn = getattr(module, "unregister", None)
        if fn is None:
            continue
        try:
            fn()
        except Exception:
            _report(module.__name__.rsplit(".", 1)[-1], "unregister")
