"""Install the built extension zip into a headless Blender (bpy) the way a user does, enable it,
and disable/enable it twice: after each disable nothing of SplatBridge may remain registered.

Runs in a subprocess with its own Blender user folders (BLENDER_USER_* and HOME in a temp dir),
so the real user's Blender configuration is never touched and the add-on's modules are fresh.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import build

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

PKG = "bl_ext.user_default.splatbridge"

SCRIPT = textwrap.dedent(r'''
    import json, sys, threading, types
    import bpy, addon_utils

    ZIP, PKG = sys.argv[-2], sys.argv[-1]
    out = {"cycles": []}

    # Count draw handlers: every Space type's draw_handler_add/remove goes through these wrappers.
    live_draw_handlers = {}
    # Take every original (bound to its own class) before patching any: the subclasses share
    # the base class's attribute, so patching in a loop would wrap a wrapper bound to `Space`.
    originals = {name: (getattr(bpy.types, name).draw_handler_add, getattr(bpy.types, name).draw_handler_remove)
                 for name in dir(bpy.types)
                 if name.startswith("Space") and name != "Space"
                 and hasattr(getattr(bpy.types, name), "draw_handler_add")}
    for name, (add, remove) in originals.items():
            cls = getattr(bpy.types, name)
            def make(cls, name, add, remove):
                def wrapped_add(*args, **kwargs):
                    handle = add(*args, **kwargs)
                    live_draw_handlers[id(handle)] = (name, getattr(args[0], "__module__", "?"), handle)
                    return handle
                def wrapped_remove(handle, *args, **kwargs):
                    live_draw_handlers.pop(id(handle), None)
                    return remove(handle, *args, **kwargs)
                return wrapped_add, wrapped_remove
            cls.draw_handler_add, cls.draw_handler_remove = make(cls, name, add, remove)

    HANDLER_LISTS = [n for n in dir(bpy.app.handlers)
                     if isinstance(getattr(bpy.app.handlers, n), list)]

    def ours(obj):
        mod = getattr(obj, "__module__", None) or ""
        return mod == PKG or mod.startswith(PKG + ".")

    def snapshot():
        """Everything of the add-on that is hooked into Blender right now."""
        state = {}
        classes, stack = set(), [bpy.types.bpy_struct]
        while stack:  # every Python subclass of an RNA type, registered or not
            for sub in stack.pop().__subclasses__():
                if sub not in classes:
                    classes.add(sub)
                    stack.append(sub)
        state["types"] = sorted(c.__name__ for c in classes if ours(c) and getattr(c, "is_registered", False))
        # Registered RNA types also appear in bpy.types (AddonPreferences under their bl_idname).
        state["types"] += sorted("bpy.types." + n for n in dir(bpy.types) if ours(getattr(bpy.types, n, None)))
        state["handlers"] = sorted(f"{n}:{getattr(f, '__name__', f)}" for n in HANDLER_LISTS
                                   for f in getattr(bpy.app.handlers, n) if ours(f))
        timers = []
        for name, mod in list(sys.modules.items()):
            if name == PKG or name.startswith(PKG + "."):
                for attr, value in list(vars(mod).items()):
                    if isinstance(value, types.FunctionType) and bpy.app.timers.is_registered(value):
                        timers.append(f"{name}.{attr}")
        state["timers"] = sorted(timers)
        state["draw_handlers"] = sorted(f"{s}:{m}" for s, m, _ in live_draw_handlers.values())
        menus = []
        for n in dir(bpy.types):
            draw = getattr(getattr(bpy.types, n, None), "draw", None)
            for f in getattr(draw, "_draw_funcs", None) or ():
                if ours(f):
                    menus.append(f"{n}:{f.__name__}")
        state["menu_funcs"] = sorted(menus)
        state["threads"] = sorted(t.name for t in threading.enumerate() if "splatbridge" in t.name.lower())
        bp = sys.modules.get(PKG + ".backend_process")
        state["backend_running"] = bool(bp and bp.is_running())
        return state

    out["before"] = snapshot()
    out["install"] = sorted(bpy.ops.extensions.package_install_files(
        filepath=ZIP, repo="user_default", enable_on_install=True))
    out["enabled"] = list(addon_utils.check(PKG))
    pkg = sys.modules[PKG]
    out["errors"] = dict(pkg.ERRORS)
    out["modules"] = list(pkg.MODULES)
    out["registered"] = [m.__name__.rsplit(".", 1)[-1] for m in pkg._registered]
    prefs = bpy.context.preferences.addons[PKG].preferences
    out["prefs"] = {"backend_address": prefs.backend_address, "port": prefs.port,
                    "start_local_backend": prefs.start_local_backend}
    import glob, os
    site = os.path.join(bpy.utils.user_resource("EXTENSIONS", path=".local"), "lib",
                        "python%d.%d" % sys.version_info[:2], "site-packages")
    out["site_packages"] = sorted(os.listdir(site)) if os.path.isdir(site) else []
    out["wheel_tags"] = {
        os.path.basename(info): [ln.split(": ", 1)[1] for ln in open(os.path.join(info, "WHEEL")).read().splitlines()
                                 if ln.startswith("Tag: ")]
        for info in glob.glob(os.path.join(site, "*.dist-info"))}
    import zmq, msgpack, zstandard, importlib  # whatever Blender put on sys.path for the bundled wheels
    # the add-on's own .spz version 4 path works with the bundled zstandard
    formats = importlib.import_module(PKG + ".shared.formats")
    splats_mod = importlib.import_module(PKG + ".shared.splats")
    import numpy as np, tempfile
    s = splats_mod.Splats(np.zeros((2, 3)), [[1, 0, 0, 0]] * 2, np.zeros((2, 3)), np.zeros(2), np.zeros((2, 3)))
    spz = os.path.join(tempfile.mkdtemp(), "a.spz")
    formats.write_splats(spz, s)
    with open(spz, "rb") as f:
        out["spz_v4"] = [f.read(4).decode(), len(formats.read_splats(spz))]
    out["after_enable"] = snapshot()
    for cycle in range(2):
        addon_utils.disable(PKG, default_set=True)
        disabled = snapshot()
        disabled["enabled"] = list(addon_utils.check(PKG))
        addon_utils.enable(PKG, default_set=True)
        enabled = snapshot()
        enabled["errors"] = dict(sys.modules[PKG].ERRORS)
        out["cycles"].append({"disabled": disabled, "enabled": enabled})
    # F3 "Reload Scripts" as addon_utils.reset_all(reload_scripts=True) does it for an enabled
    # add-on: disable, importlib.reload the package, enable. (bpy.ops.script.reload() in
    # background mode does not reload extensions, so the steps are taken here by hand.)
    import importlib
    old_register = sys.modules[PKG + ".io_ops"].register  # a reload makes new function objects
    addon_utils.disable(PKG)
    importlib.reload(sys.modules[PKG])
    addon_utils.enable(PKG)
    out["reloaded"] = snapshot()
    out["reloaded"]["enabled"] = list(addon_utils.check(PKG))
    out["reloaded"]["errors"] = dict(sys.modules[PKG].ERRORS)
    out["reloaded"]["submodule_reloaded"] = sys.modules[PKG + ".io_ops"].register is not old_register
    addon_utils.disable(PKG, default_set=True)
    out["final"] = snapshot()
    print("RESULT-JSON " + json.dumps(out))
''')


def _run_install(zip_path: Path, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLENDER_")}
    for key, sub in (("BLENDER_USER_RESOURCES", "res"), ("BLENDER_USER_SCRIPTS", "scripts"),
                     ("BLENDER_USER_CONFIG", "config"), ("BLENDER_USER_DATAFILES", "datafiles"),
                     ("BLENDER_USER_EXTENSIONS", "extensions"), ("HOME", "home")):
        (tmp / sub).mkdir()
        env[key] = str(tmp / sub)
    env.pop("PYTHONPATH", None)
    script = tmp / "install_check.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(zip_path), PKG], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT-JSON ")]
    assert proc.returncode == 0 and lines, f"install script failed ({proc.returncode}):\n" \
                                           f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT-JSON "):])


@pytest.fixture(scope="module")
def install_result(built_addon, tmp_path_factory) -> dict:
    return _run_install(built_addon, tmp_path_factory.mktemp("blender_user"))


def test_installs_and_enables(install_result):
    r = install_result
    assert r["install"] == ["FINISHED"]
    assert r["enabled"] == [True, True]
    assert r["errors"] == {}, f"modules failed to load: {r['errors']}"
    assert r["registered"] == r["modules"]          # every part is in the zip and registered, in order
    assert r["prefs"] == {"backend_address": "tcp://127.0.0.1:5555", "port": 5555, "start_local_backend": False}
    after = r["after_enable"]
    for cls in ("SplatBridgePreferences", "IMPORT_SCENE_OT_splatbridge_splats",
                "EXPORT_SCENE_OT_splatbridge_splats", "SPLATBRIDGE_FH_splats", "SPLATBRIDGE_OT_backend_start"):
        assert cls in after["types"], f"{cls} not registered: {after['types']}"
    assert "bpy.types.IMPORT_SCENE_OT_splatbridge_splats" in after["types"]
    assert "TOPBAR_MT_file_import:menu_import" in after["menu_funcs"]


def test_bundled_wheels_installed_for_this_python(install_result):
    """Blender installs only the wheels for its own platform and Python (here Linux, the running one)."""
    r = install_result
    assert {"zmq", "msgpack", "zstandard"} <= set(r["site_packages"]), r["site_packages"]
    tags = r["wheel_tags"]
    pins = build.pinned_versions()
    assert sorted(tags) == [f"msgpack-{pins['msgpack']}.dist-info", f"pyzmq-{pins['pyzmq']}.dist-info",
                            f"zstandard-{pins['zstandard']}.dist-info"], tags
    assert r["spz_v4"] == ["NGSP", 2]   # .spz version 4 written and read inside Blender with the bundled zstd
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    # This Python's own ABI, or the stable ABI from an older 3.x (pyzmq ships cp312-abi3, which
    # Blender 5.1+ with Python 3.13 installs).
    abi3 = tuple(f"cp3{m}-abi3-manylinux" for m in range(2, sys.version_info[1] + 1))
    for dist, wheel_tags in tags.items():
        assert any(t.startswith(f"{py}-{py}-manylinux") or t.startswith(abi3) for t in wheel_tags), \
            (dist, wheel_tags)


def _assert_clean(state: dict, when: str) -> None:
    for key in ("types", "handlers", "timers", "draw_handlers", "menu_funcs", "threads"):
        assert state[key] == [], f"{when}: SplatBridge {key} left behind: {state[key]}"
    assert state["backend_running"] is False, f"{when}: local backend still running"


def test_disable_enable_twice_leaves_nothing_behind(install_result):
    r = install_result
    _assert_clean(r["before"], "before install")
    assert r["cycles"] and len(r["cycles"]) == 2
    for i, cycle in enumerate(r["cycles"]):
        assert cycle["disabled"]["enabled"] == [False, False]
        _assert_clean(cycle["disabled"], f"after disable #{i + 1}")
        assert cycle["enabled"]["types"] == r["after_enable"]["types"], f"re-enable #{i + 1} differs"
        assert cycle["enabled"]["menu_funcs"] == r["after_enable"]["menu_funcs"]
        assert cycle["enabled"]["errors"] == {}
    _assert_clean(r["final"], "after the final disable")


def test_reload_scripts_reloads_the_submodules(install_result):
    r = install_result["reloaded"]
    assert r["enabled"] == [True, True] and r["errors"] == {}
    assert r["types"] == install_result["after_enable"]["types"]
    assert r["menu_funcs"] == install_result["after_enable"]["menu_funcs"]
    assert r["submodule_reloaded"], "Reload Scripts kept the old io_ops module"
