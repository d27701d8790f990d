#!/usr/bin/env python3
"""SplatBridge's one build entry point. Standard library only; runs with any python3 >= 3.11.

    python3 build.py setup            create .venv and install requirements.txt (idempotent, fast when done)
    python3 build.py test [ARGS]      setup, then pytest ARGS in the venv (exit 5 "no tests" is a failure)
    python3 build.py demo [ARGS]      setup, then the end-to-end demo (demo/run_demo.py), output in demo-output/
    python3 build.py serve [ARGS]     setup, then `python -m backend serve ARGS` in the venv
    python3 build.py addon            dist/splatbridge-<version>.zip: the Blender extension with bundled wheels
    python3 build.py compat [ARGS]    the add-on's torch-free tests on the newest Blender (bpy from PyPI, Python
                                      3.13, its own venv .venv-blender-latest); CI runs it after `test`
    python3 build.py lint [--fix]     setup, then ruff (lint, import order) and mypy (types) over shared/ and
                                      backend/ with pyproject.toml's settings, and ruff's bug rules (F, E9)
                                      over the add-on, tests, bench and demo; fails on any finding (CI runs it)

The add-on zip bundles the repo's `shared/` package inside the add-on (imported there as `.shared`),
the backend's source in `backend_source/` (backend/, shared/, requirements-backend.txt, pyproject.toml: what
the add-on's Install Local Backend installs and runs) and wheels of pyzmq, msgpack and zstandard for every platform Blender ships on (Linux x86_64, Windows amd64,
macOS arm64 and x86_64) and for both Pythons Blender 4.2+ uses (3.11 up to Blender 5.0, 3.13 from
5.1). Downloaded wheels are cached in dist/wheel-cache, so a rebuild needs no network.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = ROOT / "requirements.txt"
ADDON_SRC = ROOT / "blender_addon"
SHARED_SRC = ROOT / "shared"
DIST = ROOT / "dist"
DEMO_SCRIPT = ROOT / "demo" / "run_demo.py"

# bpy==5.0.1 (Blender 5.0 as a module, used by the tests and the demo) ships cp311 wheels only.
VENV_PYTHON = (3, 11)
# Bump when the meaning of a finished setup changes, so that stamps written before are redone.
SETUP_SCHEMA = "1"
STAMP_NAME = ".splatbridge-setup-stamp"

ADDON_ID = "splatbridge"
BLENDER_VERSION_MIN = (4, 2, 0)
# Packages the add-on needs inside Blender's Python; their versions come from requirements.txt.
BUNDLED_PACKAGES = ("pyzmq", "msgpack", "zstandard")  # zstandard: .spz version 4 (shared.formats.spz)
# Blender's Python: 3.11 in Blender 4.2-5.0, 3.13 from 5.1.
BLENDER_PYTHONS = ("3.11", "3.13")
# Manifest platform name -> pip `--platform` tags (pip expands macOS tags to older versions and
# universal2 by itself). Blender 4.2+ needs glibc 2.28 and macOS 11.
PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64",),
    "macos-x64": ("macosx_11_0_x86_64",),
}
PERMISSIONS_REQUIRED = ("network", "files")


class BuildError(Exception):
    """A build step failed for a reason the message explains."""


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# setup


def venv_dir() -> Path:
    """The project's virtual environment (override with SPLATBRIDGE_VENV for experiments)."""
    return Path(os.environ.get("SPLATBRIDGE_VENV", ROOT / ".venv"))


def venv_python(venv: Path | None = None) -> Path:
    venv = venv or venv_dir()
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


@functools.lru_cache(maxsize=None)
def _installer():
    """The add-on's installer module (standard library only, no bpy): the one place of requirement parsing
    and of finding a local CPU build of torch, shared with the add-on's Install Local Backend."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_splatbridge_installer", ADDON_SRC / "installer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def requirement_files(path: Path | None = None) -> list[Path]:
    """``path`` (default requirements.txt) and the requirements files it includes (``-r FILE``),
    recursively, in order."""
    path = REQUIREMENTS if path is None else path
    files = [path]
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"\s*(?:-r|--requirement)\s*(\S+)\s*(?:#.*)?", line)
        if m:
            files += [f for f in requirement_files(path.parent / m.group(1)) if f not in files]
    return files


def requirements_hash() -> str:
    """Hash of what a finished setup depends on: requirements.txt and what it includes, the venv Python,
    the schema."""
    h = hashlib.sha256()
    for path in requirement_files():
        h.update(path.read_bytes())
    h.update(f"py{VENV_PYTHON}-schema{SETUP_SCHEMA}".encode())
    return h.hexdigest()


def pinned_versions() -> dict[str, str]:
    """`name==version` pins of requirements.txt and the files it includes, names lower-cased."""
    pins: dict[str, str] = {}
    for path in requirement_files():
        pins.update(_installer().parse_pins(path.read_text()))
    return pins


def find_base_python() -> str:
    """An interpreter of version VENV_PYTHON to create the venv with."""
    if sys.version_info[:2] == VENV_PYTHON:
        return sys.executable
    name = "python{}.{}".format(*VENV_PYTHON)
    found = shutil.which(name)
    if found:
        return found
    raise BuildError(
        f"the venv needs Python {VENV_PYTHON[0]}.{VENV_PYTHON[1]} (bpy==5.0.1 ships only cp311 wheels), "
        f"but this is Python {sys.version.split()[0]} and no '{name}' is on PATH: install Python "
        f"{VENV_PYTHON[0]}.{VENV_PYTHON[1]} or run build.py with it")


def _installed_version(python: Path, dist: str) -> str | None:
    out = subprocess.run(
        [str(python), "-c",
         f"import importlib.metadata as m\ntry: print(m.version({dist!r}))\nexcept m.PackageNotFoundError: pass"],
        capture_output=True, text=True)
    return out.stdout.strip() or None


def _pip_find_links() -> list[Path]:
    """Local folders pip is configured to take wheels from (PIP_FIND_LINKS / pip.conf find-links)."""
    return _installer().pip_find_links(sys.executable)


def _torch_cpu_constraint(python: Path, tmp: Path) -> list[str]:
    """pip arguments that keep a fresh install on a CPU build of torch when one lies on local disk.

    Nothing is constrained when torch is already installed (a GPU machine installs the CUDA build
    of the same minor first, and that must stay).
    """
    version = pinned_versions().get("torch")
    if version is None or _installed_version(python, "torch") is not None:
        return []
    wheel = _installer().local_cpu_wheel(version, _pip_find_links(), VENV_PYTHON)
    if wheel is not None:
        path = tmp / "torch-cpu-constraint.txt"
        path.write_text(f"torch=={version}+cpu\n")
        log(f"torch {version}: using the CPU build found in {wheel.parent}")
        return ["-c", str(path)]
    log(f"note: no local CPU build of torch {version}; pip takes PyPI's default build")
    return []


def setup(force: bool = False) -> Path:
    """Create the venv if missing and install requirements.txt into it. Returns the venv python.

    Fast when already done: a stamp in the venv records the hash of requirements.txt.
    """
    venv = venv_dir()
    python = venv_python(venv)
    stamp = venv / STAMP_NAME
    want = requirements_hash()
    if not force and python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if not python.exists():
        base = find_base_python()
        log(f"creating {venv} with {base}")
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    else:
        version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()
        if tuple(int(x) for x in version.split(".")) != VENV_PYTHON:
            raise BuildError(f"{venv} has Python {version}, SplatBridge needs {VENV_PYTHON[0]}.{VENV_PYTHON[1]}: "
                             f"remove the folder and run setup again")
    log(f"installing {REQUIREMENTS.name} into {venv} (first time takes a few minutes)")
    with tempfile.TemporaryDirectory() as tmp:
        extra = _torch_cpu_constraint(python, Path(tmp))
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
               "-r", str(REQUIREMENTS), *extra]
        result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        raise BuildError(f"pip install -r {REQUIREMENTS.name} failed (exit {result.returncode})")
    stamp.write_text(want + "\n")
    log("setup done")
    return python


def child_env() -> dict[str, str]:
    """Environment for venv children: the repo root importable (backend, shared, tests)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# --------------------------------------------------------------------------------------------
# test, demo, serve


def _pytest(python: Path, pytest_args: list[str]) -> int:
    """pytest in ``python``'s venv from the repo root; "no tests collected" (exit 5) is a failure."""
    cmd = [str(python), "-m", "pytest", *pytest_args]
    log("running " + " ".join(cmd[1:]))
    code = subprocess.run(cmd, cwd=ROOT, env=child_env()).returncode
    if code == 5:
        log("pytest collected no tests: treated as a failure")
        return 1
    return code


def run_tests(pytest_args: list[str]) -> int:
    return _pytest(setup(), pytest_args)


def run_demo(demo_args: list[str]) -> int:
    python = setup()
    if not DEMO_SCRIPT.exists():
        print(f"The demo is not written yet: {DEMO_SCRIPT.relative_to(ROOT)} does not exist, so there is "
              f"nothing to run. `python3 build.py test` runs everything that exists.", file=sys.stderr)
        return 2
    return subprocess.run([str(python), str(DEMO_SCRIPT), *demo_args], cwd=ROOT, env=child_env()).returncode


def run_serve(serve_args: list[str]) -> int:
    python = setup()
    try:
        return subprocess.run([str(python), "-m", "backend", "serve", *serve_args],
                              cwd=ROOT, env=child_env()).returncode
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------------------------
# lint

# What `lint` checks; the rules and the type checker's settings are pyproject.toml's ([tool.ruff], [tool.mypy]).
LINT_PATHS = ("shared", "backend")
# The rest of the tree (the add-on runs inside Blender, tests and benches against a live bpy): ruff's
# rules for real bugs only (undefined and unused names, syntax), not style or types.
BUG_LINT_PATHS = ("blender_addon", "tests", "bench", "demo", "build.py")
BUG_RULES = "F,E9"


def run_lint(fix: bool = False, paths: list[str] | None = None) -> int:
    """ruff, then mypy, from the venv over ``paths`` (default LINT_PATHS) with pyproject.toml's settings;
    both always run and print their findings. Returns 0 when both are clean, else 1. ``fix``: ruff
    applies its safe fixes first."""
    python = str(setup())
    paths = list(paths or LINT_PATHS)
    config = str(ROOT / "pyproject.toml")
    ruff = [python, "-m", "ruff", "check", "--config", config, *(["--fix"] if fix else []), *paths]
    mypy = [python, "-m", "mypy", "--config-file", config, *paths]
    checks = [("ruff", ruff), ("mypy", mypy)]
    if paths == list(LINT_PATHS):
        checks.insert(1, ("ruff (bugs only)", [python, "-m", "ruff", "check", "--config", config,
                                               "--select", BUG_RULES, *(["--fix"] if fix else []),
                                               *BUG_LINT_PATHS]))
    failed = []
    for name, cmd in checks:
        log("running " + " ".join(cmd[1:]))
        code = subprocess.run(cmd, cwd=ROOT, env=child_env()).returncode
        if code != 0:
            failed.append(f"{name} (exit {code})")
    if failed:
        log(f"lint: problems found by {' and '.join(failed)}; see above")
        return 1
    log("lint: ruff and mypy clean")
    return 0


# --------------------------------------------------------------------------------------------
# compat: the add-on on the newest Blender

COMPAT_REQUIREMENTS = ROOT / "requirements-blender-latest.txt"
COMPAT_PYTHON = (3, 13)          # Blender 5.1+ (bpy 5.1-5.3 on PyPI ship cp313 wheels only)
COMPAT_VENV = ROOT / ".venv-blender-latest"
# The add-on's tests and those of what it imports (shared/, numpy 2 inside Blender 5.1+) that need no torch
# carry the pytest marker ``bpy_only`` (module-level ``pytestmark`` where the whole file qualifies); a test in
# such a file that needs torch after all (a reference image from the backend's rasterizer) is also marked
# ``torch``. The backend (torch) has its own venv and is tested there with bpy 5.0.1.
COMPAT_MARKER = "bpy_only"
COMPAT_SELECT = "bpy_only and not torch"
TESTS_DIR = ROOT / "tests"


def marked_test_files(marker: str = COMPAT_MARKER, tests: Path = TESTS_DIR) -> list[Path]:
    """The test modules that use ``pytest.mark.<marker>`` anywhere (module ``pytestmark`` or a test's
    decorator), found by parsing them: the compat venv has no torch, so modules without the marker are
    not even imported there (collecting them would fail on ``import torch``). pytest's ``-m`` then picks
    the marked tests inside them."""
    import ast
    found = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Attribute) and n.attr == marker and isinstance(n.value, ast.Attribute)
               and n.value.attr == "mark" for n in ast.walk(tree)):
            found.append(path)
    return found


def find_compat_python() -> str:
    """A Python 3.13 interpreter: ``python3.13`` on PATH, else one installed by pyenv."""
    want = "{}.{}".format(*COMPAT_PYTHON)
    candidates = [shutil.which(f"python{want}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{want}*/bin/python{want}"))
    for c in candidates:
        if not c:
            continue
        try:
            out = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == want:
            return c
    raise BuildError(f"`compat` needs Python {want} (the newest Blender's bpy ships only cp{want.replace('.', '')} "
                     f"wheels) and found none on PATH or under {pyenv}: install Python {want}")


def compat_setup() -> Path:
    """Create .venv-blender-latest with Python 3.13 and install requirements-blender-latest.txt (once)."""
    python = venv_python(COMPAT_VENV)
    stamp = COMPAT_VENV / STAMP_NAME
    want = hashlib.sha256(COMPAT_REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if not python.exists():
        base = find_compat_python()
        log(f"creating {COMPAT_VENV} with {base}")
        subprocess.run([base, "-m", "venv", str(COMPAT_VENV)], check=True)
    log(f"installing {COMPAT_REQUIREMENTS.name} into {COMPAT_VENV}")
    result = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar",
                             "off", "-r", str(COMPAT_REQUIREMENTS)], cwd=ROOT)
    if result.returncode != 0:
        raise BuildError(f"pip install -r {COMPAT_REQUIREMENTS.name} failed (exit {result.returncode})")
    stamp.write_text(want + "\n")
    return python


def run_compat(pytest_args: list[str]) -> int:
    files = [p.relative_to(ROOT).as_posix() for p in marked_test_files()]
    return _pytest(compat_setup(), [*files, "-m", COMPAT_SELECT, *pytest_args])


# --------------------------------------------------------------------------------------------
# addon: wheels


@dataclass(frozen=True)
class WheelName:
    """The parts of a wheel file name that decide where it installs."""
    filename: str
    distribution: str
    version: str
    python_tags: tuple[str, ...]
    abi_tags: tuple[str, ...]
    platform_tags: tuple[str, ...]

    @staticmethod
    def parse(filename: str) -> "WheelName":
        if not filename.endswith(".whl"):
            raise BuildError(f"{filename}: not a wheel (no .whl suffix)")
        parts = filename[:-4].split("-")
        if len(parts) not in (5, 6):
            raise BuildError(f"{filename}: wheel name does not follow name-version[-build]-py-abi-platform")
        return WheelName(filename, parts[0].lower().replace("_", "-"), parts[1], tuple(parts[-3].split(".")),
                         tuple(parts[-2].split(".")), tuple(parts[-1].split(".")))

    def installs_on(self, platform: str, python: str) -> bool:
        """Whether Blender on `platform` (a manifest name) with Python `python` ("3.13") takes this wheel.

        Mirrors Blender's own filter (bl_pkg `_extensions_wheel_filter_for_this_system`): manylinux
        of the same arch on Linux, any macOS version of the arch or universal2 on macOS, and a
        stable-ABI (abi3) wheel built for an older CPython on a newer one.
        """
        arch_ok = False
        for tag in self.platform_tags:
            if tag == "any":
                arch_ok = True
            elif platform == "linux-x64":
                arch_ok |= (tag.startswith("manylinux") and tag.endswith("_x86_64")) or tag == "linux_x86_64"
            elif platform == "windows-x64":
                arch_ok |= tag == "win_amd64"
            elif platform == "macos-arm64":
                arch_ok |= tag.startswith("macosx_") and (tag.endswith("_arm64") or tag.endswith("_universal2"))
            elif platform == "macos-x64":
                arch_ok |= tag.startswith("macosx_") and (tag.endswith("_x86_64") or tag.endswith("_universal2"))
        if not arch_ok:
            return False
        major, minor = (int(x) for x in python.split("."))
        for tag in self.python_tags:
            m = re.fullmatch(r"(?:cp|py)(\d)(\d*)", tag)
            if not m:
                continue
            t_major, t_minor = int(m.group(1)), int(m.group(2) or -1)
            if t_minor < 0 and t_major == major:
                return True
            if (t_major, t_minor) == (major, minor):
                return True
            if "abi3" in self.abi_tags and t_major == major and t_minor <= minor:
                return True
        return False


@functools.lru_cache(maxsize=None)
def _pip_python() -> str:
    """An interpreter that has pip: this one, else the venv's."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return sys.executable
    venv = venv_python()
    if venv.exists():
        return str(venv)
    raise BuildError(f"{sys.executable} has no pip: install pip or run `python3 build.py setup` first")


def _download_wheels(specs: list[str], platform: str, python: str, dest: Path) -> dict[str, Path]:
    """pip download one wheel of each `name==version` in specs for (platform, python) into dest.

    Returns {spec: wheel path}. Raises BuildError naming what pip could not find.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [_pip_python(), "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--dest", tmp]
        for tag in PLATFORMS[platform]:
            cmd += ["--platform", tag]
        result = subprocess.run(cmd + specs, capture_output=True, text=True)
        found: dict[str, Path] = {}
        for spec in specs:
            name = spec.split("==")[0].lower().replace("_", "-")
            wheels = [w for w in Path(tmp).glob("*.whl") if WheelName.parse(w.name).distribution == name]
            if result.returncode != 0 or len(wheels) != 1:
                raise BuildError(f"no {spec} wheel for {platform} / Python {python}: pip download said:\n"
                                 f"{(result.stdout + result.stderr).strip()[-2000:]}")
            target = dest / wheels[0].name
            if not target.exists():
                shutil.move(str(wheels[0]), target)
            found[spec] = target
        return found


def collect_wheels(cache: Path, offline: bool = False) -> list[Path]:
    """Wheels of BUNDLED_PACKAGES covering every PLATFORMS x BLENDER_PYTHONS, from cache or pip.

    The cache keeps an index (package==version, platform, python) -> file name, so a rebuild
    runs no pip at all. Missing wheels are fetched with one `pip download` per (platform,
    python), a few at a time. `offline` (or SPLATBRIDGE_OFFLINE=1) turns a cache miss into an
    error. Returns the distinct wheel files, sorted by name.
    """
    offline = offline or os.environ.get("SPLATBRIDGE_OFFLINE") == "1"
    pins = pinned_versions()
    specs = []
    for package in BUNDLED_PACKAGES:
        if package not in pins:
            raise BuildError(f"{REQUIREMENTS.name} must pin {package} (name==version) to bundle it")
        specs.append(f"{package}=={pins[package]}")
    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / "index.json"
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.exists() else {}

    def key(spec: str, platform: str, python: str) -> str:
        return f"{spec}|{platform}|{python}"

    missing: dict[tuple[str, str], list[str]] = {}
    for platform in PLATFORMS:
        for python in BLENDER_PYTHONS:
            for spec in specs:
                k = key(spec, platform, python)
                if k not in index or not (cache / index[k]).exists():
                    if offline:
                        raise BuildError(f"offline build, but the wheel cache {cache} has no {k}")
                    missing.setdefault((platform, python), []).append(spec)
    if missing:
        from concurrent.futures import ThreadPoolExecutor
        log(f"downloading {sum(map(len, missing.values()))} wheels for {len(missing)} platform/Python pairs")
        with ThreadPoolExecutor(max_workers=4) as pool:
            jobs = {pair: pool.submit(_download_wheels, wanted, pair[0], pair[1], cache)
                    for pair, wanted in missing.items()}
            for (platform, python), job in jobs.items():
                for spec, path in job.result().items():
                    index[key(spec, platform, python)] = path.name
        index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    chosen: set[Path] = set()
    for platform in PLATFORMS:
        for python in BLENDER_PYTHONS:
            for spec in specs:
                wheel = cache / index[key(spec, platform, python)]
                if not WheelName.parse(wheel.name).installs_on(platform, python):
                    raise BuildError(f"{wheel.name} does not install on {platform} with Python {python}")
                chosen.add(wheel)
    return sorted(chosen, key=lambda p: p.name)


# --------------------------------------------------------------------------------------------
# addon: manifest, zip, validation


def read_source_manifest() -> tuple[str, dict]:
    path = ADDON_SRC / "blender_manifest.toml"
    text = path.read_text(encoding="utf-8")
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path}: {exc}") from None


def _toml_list(key: str, values: list[str]) -> str:
    if len(values) <= 4 and sum(len(v) for v in values) < 70:
        return f"{key} = [" + ", ".join(json.dumps(v) for v in values) + "]\n"
    return f"{key} = [\n" + "".join(f"  {json.dumps(v)},\n" for v in values) + "]\n"


def manifest_with(text: str, platforms: list[str], wheels: list[str]) -> str:
    """The manifest text with top-level `platforms` and `wheels` replaced by the given lists.

    Top-level keys must precede the first [table], so existing assignments (also multi-line ones)
    are dropped and the new ones are put just before the first table header.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    first_table = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if first_table is None and line.startswith("["):  # a table header (arrays inside tables are indented)
            first_table = len(out)
        if first_table is None and re.match(r"(platforms|wheels)\s*=", stripped):
            depth = stripped.count("[") - stripped.count("]")
            while depth > 0 and i + 1 < len(lines):
                i += 1
                depth += lines[i].count("[") - lines[i].count("]")
            i += 1
            continue
        out.append(line)
        i += 1
    block = [_toml_list("platforms", platforms), _toml_list("wheels", wheels), "\n"]
    if first_table is None:
        out += ["\n"] + block[:2]
    else:
        out[first_table:first_table] = block
    result = "".join(out)
    parsed = tomllib.loads(result)
    if parsed.get("platforms") != platforms or parsed.get("wheels") != wheels:
        raise BuildError("internal error: the generated manifest does not hold the wheels/platforms written")
    return result


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _walk(src: Path, prefix: str) -> list[tuple[Path, str]]:
    """(file, prefix + its path under ``src``) for every file below ``src``, byte code left out; a
    symbolic link is an error (the add-on holds real files only)."""
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if path.is_symlink():
            raise BuildError(f"{path} is a symbolic link: the add-on must hold real files")
        if not path.is_dir():
            files.append((path, prefix + rel.as_posix()))
    return files


def _addon_files() -> list[tuple[Path, str]]:
    """(source file, path in the zip) for the add-on code, the vendored shared package and the backend's
    source (``_backend_source_files``).

    ``blender_addon/shared`` is a committed relative symlink to ``../shared``, so that the source tree's
    ``from .shared import ...`` resolves for editors and type checkers; the zip and the assembled add-on
    get the real files of the repo's ``shared/`` instead (never a link: Blender's extension installer
    and Windows checkouts do not follow one)."""
    link = ADDON_SRC / "shared"
    if link.is_symlink():
        if link.resolve() != SHARED_SRC.resolve():
            raise BuildError(f"{link} links to {os.readlink(link)}, expected ../shared")
    elif link.exists():
        raise BuildError("blender_addon/shared must be the symlink to ../shared (build.py vendors the repo's "
                         "shared/), not a folder of its own")
    files: list[tuple[Path, str]] = []
    for entry in sorted(ADDON_SRC.iterdir()):
        if entry.name in ("shared", "__pycache__", "blender_manifest.toml", "build_info.json") \
                or entry.suffix in (".pyc", ".pyo"):
            continue
        if entry.is_symlink():
            raise BuildError(f"{entry} is a symbolic link: the add-on must hold real files")
        files += _walk(entry, entry.name + "/") if entry.is_dir() else [(entry, entry.name)]
    return files + _walk(SHARED_SRC, "shared/") + _backend_source_files()


# The backend's source inside the extension: what Install Local Backend installs the requirements of and
# what the local backend then runs (also `pip install` -able: pyproject.toml and the README come along).
BACKEND_SOURCE_DIR = "backend_source"
BACKEND_REQUIREMENTS = ROOT / "requirements-backend.txt"


def _backend_source_files() -> list[tuple[Path, str]]:
    prefix = BACKEND_SOURCE_DIR + "/"
    return (_walk(ROOT / "backend", prefix + "backend/") + _walk(SHARED_SRC, prefix + "shared/")
            + [(ROOT / name, prefix + name) for name in (BACKEND_REQUIREMENTS.name, "pyproject.toml", "README.md")])


def assemble_addon(dest: Path) -> Path:
    """Lay the add-on out as the extension installs it, without wheels: ``dest/splatbridge``
    holding blender_addon/ and the vendored ``shared/`` (for tests and the demo, which put
    ``dest`` on sys.path and import ``splatbridge``). Returns the package folder."""
    target = Path(dest) / ADDON_ID
    if target.exists():
        shutil.rmtree(target)
    for src, name in _addon_files() + [(ADDON_SRC / "blender_manifest.toml", "blender_manifest.toml")]:
        out = target / name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return target


def build_addon(dist: Path = DIST, cache: Path | None = None, offline: bool = False) -> Path:
    """Write and validate dist/splatbridge-<version>.zip. Returns its path."""
    text, manifest = read_source_manifest()
    version = manifest.get("version")
    if manifest.get("id") != ADDON_ID or not isinstance(version, str):
        raise BuildError(f"blender_addon/blender_manifest.toml: expected id '{ADDON_ID}' and a version string")
    wheels = collect_wheels(cache or dist / "wheel-cache", offline=offline)
    wheel_paths = [f"./wheels/{w.name}" for w in wheels]
    platforms = list(PLATFORMS)
    if sorted(manifest.get("platforms", [])) != sorted(platforms):
        raise BuildError(f"blender_manifest.toml: platforms {manifest.get('platforms')} must be {platforms}, "
                         f"the platforms whose wheels are bundled")
    build_info = {"version": version, "source_root": str(ROOT), "git_commit": _git_commit(),
                  "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{ADDON_ID}-{version}.zip"
    tmp_target = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp_target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_with(text, platforms, wheel_paths))
        zf.writestr("build_info.json", json.dumps(build_info, indent=1) + "\n")
        for src, name in _addon_files():
            zf.write(src, name)
        for wheel in wheels:
            zf.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
    problems = validate_addon_zip(tmp_target)
    if problems:
        tmp_target.unlink()
        raise BuildError("the built add-on is not valid:\n  " + "\n  ".join(problems))
    os.replace(tmp_target, target)
    log(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
        f"({target.stat().st_size / 1e6:.1f} MB, {len(wheels)} wheels)")
    return target


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def validate_addon_zip(path: Path) -> list[str]:
    """Problems with a built extension zip (empty list: valid).

    Checks the manifest fields Blender requires, the permissions and platforms SplatBridge
    declares, that every listed wheel is in the zip and that the wheels cover each platform and
    Blender Python, that the add-on and the vendored shared package are there; then runs Blender's
    own validator (bl_pkg's `blender_ext.py validate`) when the venv's bpy provides it.
    """
    problems: list[str] = []
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "blender_manifest.toml" not in names:
            return ["blender_manifest.toml is not at the zip's root"]
        try:
            manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return [f"blender_manifest.toml does not parse: {exc}"]
    expect = {"schema_version": "1.0.0", "id": ADDON_ID, "type": "add-on"}
    for key, value in expect.items():
        if manifest.get(key) != value:
            problems.append(f"manifest {key} is {manifest.get(key)!r}, expected {value!r}")
    for key in ("name", "tagline", "maintainer", "version", "blender_version_min", "license"):
        if not manifest.get(key):
            problems.append(f"manifest lacks {key}")
    if _version_tuple(str(manifest.get("version", ""))) is None:
        problems.append(f"manifest version {manifest.get('version')!r} is not MAJOR.MINOR.PATCH")
    vmin = _version_tuple(str(manifest.get("blender_version_min", "")))
    if vmin is None or vmin < BLENDER_VERSION_MIN:
        problems.append(f"blender_version_min {manifest.get('blender_version_min')!r} must be >= "
                        + ".".join(map(str, BLENDER_VERSION_MIN)))
    perms = manifest.get("permissions", {})
    for key in PERMISSIONS_REQUIRED:
        reason = perms.get(key) if isinstance(perms, dict) else None
        if not isinstance(reason, str) or not reason or reason.endswith("."):
            problems.append(f"permission {key!r} missing or its reason is empty or ends with a period")
    platforms = manifest.get("platforms", [])
    if sorted(platforms) != sorted(PLATFORMS):
        problems.append(f"platforms {platforms} != {list(PLATFORMS)}")
    wheels = manifest.get("wheels", [])
    parsed = []
    for entry in wheels:
        if not entry.startswith("./wheels/"):
            problems.append(f"wheel path {entry!r} does not start with ./wheels/")
        if entry.removeprefix("./") not in names:
            problems.append(f"listed wheel {entry} is not in the zip")
        try:
            parsed.append(WheelName.parse(entry.rsplit("/", 1)[-1]))
        except BuildError as exc:
            problems.append(str(exc))
    for package in BUNDLED_PACKAGES:
        for platform in platforms:
            for python in BLENDER_PYTHONS:
                if not any(w.distribution == package and w.installs_on(platform, python) for w in parsed):
                    problems.append(f"no {package} wheel for {platform} / Python {python}")
    with zipfile.ZipFile(path) as zf:
        links = [i.filename for i in zf.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000]
    if links:
        problems.append(f"symbolic links in the zip: {links}")
    for required in ("__init__.py", "shared/__init__.py", "build_info.json",
                     *(f"{BACKEND_SOURCE_DIR}/{f}" for f in ("backend/__main__.py", "shared/__init__.py",
                                                             BACKEND_REQUIREMENTS.name, "pyproject.toml"))):
        if required not in names:
            problems.append(f"{required} is not in the zip")
    problems += _blender_validate(path)
    return problems


def blender_ext_script() -> Path | None:
    """Blender's extension command-line tool, as shipped inside the venv's bpy module."""
    venv = venv_dir()
    candidates = sorted(venv.glob("lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    candidates += sorted(venv.glob("Lib/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return candidates[-1] if candidates else None


def _blender_validate(path: Path) -> list[str]:
    script = blender_ext_script()
    if script is None:
        log("note: Blender's extension validator is not available (no bpy in the venv): own checks only")
        return []
    result = subprocess.run([sys.executable, str(script), "validate", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        return ["Blender's validator: " + (result.stdout + result.stderr).strip()]
    return []


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="create .venv and install requirements.txt")
    p_setup.add_argument("--force", action="store_true", help="reinstall even if the stamp says done")
    sub.add_parser("test", help="setup, then pytest (extra arguments go to pytest)", add_help=False)
    sub.add_parser("demo", help="setup, then the end-to-end demo", add_help=False)
    sub.add_parser("serve", help="setup, then `python -m backend serve ...`", add_help=False)
    sub.add_parser("compat", help="the add-on's tests on the newest Blender (Python 3.13 venv)", add_help=False)
    p_lint = sub.add_parser("lint", help="ruff and mypy over shared/ and backend/ (settings in pyproject.toml)")
    p_lint.add_argument("--fix", action="store_true", help="let ruff apply its safe fixes first")
    p_lint.add_argument("paths", nargs="*", help=f"what to check (default: {' '.join(LINT_PATHS)})")
    p_addon = sub.add_parser("addon", help="build dist/splatbridge-<version>.zip")
    p_addon.add_argument("--dist", type=Path, default=DIST, help="output folder (default: dist/)")
    p_addon.add_argument("--wheel-cache", type=Path, default=None, help="default: <dist>/wheel-cache")
    p_addon.add_argument("--offline", action="store_true", help="fail instead of downloading a missing wheel")
    argv = list(sys.argv[1:] if argv is None else argv)
    # test/demo/serve pass everything after the command through untouched (pytest's -k, -x ...).
    passthrough = {"test": run_tests, "demo": run_demo, "serve": run_serve, "compat": run_compat}
    try:
        if argv and argv[0] in passthrough:
            return passthrough[argv[0]](argv[1:])
        args = parser.parse_args(argv)
        if args.command == "setup":
            setup(force=args.force)
            return 0
        if args.command == "lint":
            return run_lint(fix=args.fix, paths=args.paths)
        if args.command == "addon":
            build_addon(args.dist.resolve(), args.wheel_cache.resolve() if args.wheel_cache else None,
                        offline=args.offline)
            return 0
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"build.py: error: {' '.join(map(str, exc.cmd))} failed with exit {exc.returncode}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {argv[0]!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
