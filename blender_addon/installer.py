"""Install Local Backend: a virtual environment with the backend's pinned requirements, made from Blender.

bpy-free and standard library only, so it runs (and is tested) without Blender; the add-on's operators
(``install_ops.py``) are a thin shell around ``Installer``, and ``build.py`` reuses the requirement and
local-wheel helpers. What one install does, in order:

1. find a Python 3.11-3.13 (``find_python``): the one the user named, else Blender's own, else those on
   PATH (newest first), else the usual install folders (pyenv, Homebrew, python.org);
2. check the free disk space of the install folder against what the chosen torch build needs;
3. create ``<folder>/venv`` with it (``python -m venv``);
4. choose torch's build (``plan_torch``): the CUDA build matching the NVIDIA driver's CUDA version
   (``nvidia-smi``) from PyTorch's wheel index, the CPU build elsewhere, the default (MPS) build on
   Apple silicon. The index is a setting (``torch_index``, env ``SPLATBRIDGE_TORCH_INDEX``): its base,
   to which the installer appends the build's tag (``cu128``, ``cpu``);
5. ``pip install -r requirements-backend.txt`` in a subprocess, its output parsed for a percentage
   (``PipProgress``) and kept as the log; ``cancel`` terminates pip's whole process group;
6. import torch, gsplat, zmq and msgpack in the new venv, then write a stamp (JSON) with the hash of the
   pinned requirements: ``needs_update`` compares it, so Update Backend reinstalls only on a change.

A failure is an ``InstallError`` whose ``cause`` names it: no suitable Python, no network, no disk space,
no torch build for this platform, or pip's own last error lines.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

SUPPORTED_PYTHONS: tuple[tuple[int, int], ...] = ((3, 11), (3, 12), (3, 13))
REQUIREMENTS_NAME = "requirements-backend.txt"
STAMP_NAME = "splatbridge-backend-stamp.json"
# Bump when what a finished install means changes, so that older installs count as out of date.
STAMP_SCHEMA = 1
TORCH_INDEX_ENV = "SPLATBRIDGE_TORCH_INDEX"
PYTHON_ENV = "SPLATBRIDGE_INSTALL_PYTHON"
# The CUDA builds PyTorch publishes for each torch minor (its install selector lists them), as wheel
# tags. Keep an entry for the torch pinned in requirements-backend.txt (a test checks it).
TORCH_CUDA_TAGS: dict[str, tuple[str, ...]] = {"2.13": ("cu126", "cu128", "cu130")}
# Bytes an install needs on the install folder's disk (venv + pip's downloads, which go to <folder>/tmp):
# measured 1.3 GB for a CPU venv of the 2026-11 pins; CUDA builds add ~4 GB of CUDA libraries, downloaded
# and then unpacked.
DISK_NEEDED: dict[str, int] = {"cpu": 3 * 2 ** 30, "mps": 3 * 2 ** 30, "cuda": 10 * 2 ** 30, "default": 10 * 2 ** 30}
# Distributions a fresh install of requirements-backend.txt brings (57 measured with a CPU torch on Linux):
# the percentage's denominator until a stamp records the real count.
EXPECTED_PACKAGES = 57
VERIFY_CODE = ("import json, torch, gsplat, zmq, msgpack; "
               "mps = getattr(torch.backends, 'mps', None); "
               "print('VERIFY ' + json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
               "'cuda_build': torch.version.cuda, 'mps': bool(mps and mps.is_available())}))")

CAUSES = ("no_python", "no_network", "no_disk_space", "no_torch_build", "bad_source", "pip", "cancelled")


class InstallError(Exception):
    """An install that could not finish; ``cause`` is one of CAUSES, the message says what to do."""

    def __init__(self, cause: str, message: str) -> None:
        assert cause in CAUSES, cause
        super().__init__(message)
        self.cause = cause


# ------------------------------------------------------------------------------------------------
# requirements


_PIN = re.compile(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)")


def requirement_lines(text: str) -> list[str]:
    """The requirement lines of a requirements file: comments and blank lines dropped, whitespace normalised."""
    lines = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(re.sub(r"\s+", " ", line))
    return lines


def parse_pins(text: str) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a requirements file (names lower-cased)."""
    pins = {}
    for line in requirement_lines(text):
        m = _PIN.fullmatch(line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def requirements_hash(text: str) -> str:
    """sha256 of the requirement lines (comments and spacing do not count)."""
    return hashlib.sha256("\n".join(requirement_lines(text)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# finding a Python


@dataclass(frozen=True)
class PythonCandidate:
    """An interpreter looked at: its version (None when it did not run) and why it cannot be used ('' = it can)."""
    path: str
    version: tuple[int, int, int] | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        v = ".".join(map(str, self.version)) if self.version else "?"
        return f"{self.path} (Python {v}): {self.problem or 'usable'}"


_PROBE = ("import importlib.util as u, json, struct, sys; print(json.dumps({'v': list(sys.version_info[:3]), "
          "'venv': u.find_spec('venv') is not None, 'ensurepip': u.find_spec('ensurepip') is not None, "
          "'bits': struct.calcsize('P') * 8}))")


def _clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child interpreter: Blender's own Python settings removed."""
    env = dict(os.environ if env is None else env)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                "__PYVENV_LAUNCHER__", "VIRTUAL_ENV"):
        env.pop(key, None)
    return env


def probe_python(path: str, timeout: float = 30.0) -> PythonCandidate:
    """Run ``path`` and say whether it can make the backend's venv (3.11-3.13, 64-bit, venv and ensurepip)."""
    try:
        out = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                             env=_clean_env())
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return PythonCandidate(path, None, "does not run")
    version = tuple(info["v"])
    wanted = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_PYTHONS)
    if version[:2] not in SUPPORTED_PYTHONS:
        return PythonCandidate(path, version, f"version not supported (the backend needs {wanted})")
    if info["bits"] != 64:
        return PythonCandidate(path, version, "a 32-bit Python (torch needs 64-bit)")
    if not (info["venv"] and info["ensurepip"]):
        return PythonCandidate(path, version, "cannot create virtual environments (no venv/ensurepip module; "
                                              "on Debian/Ubuntu: apt install python%d.%d-venv)" % version[:2])
    return PythonCandidate(path, version)


def _well_known_pythons(home: Path) -> list[str]:
    """Interpreters in the usual install folders (pyenv, Homebrew, python.org, the Windows installer)."""
    found: list[str] = []
    for major, minor in reversed(SUPPORTED_PYTHONS):
        name = f"python{major}.{minor}"
        found += sorted((str(p) for p in (home / ".pyenv" / "versions").glob(f"{major}.{minor}*/bin/{name}")),
                        reverse=True)
        found += [f"/opt/homebrew/bin/{name}", f"/usr/local/bin/{name}",
                  f"/Library/Frameworks/Python.framework/Versions/{major}.{minor}/bin/{name}"]
        local = os.environ.get("LOCALAPPDATA")
        if local:
            found.append(str(Path(local) / "Programs" / "Python" / f"Python{major}{minor}" / "python.exe"))
    return [p for p in found if Path(p).is_file()]


def candidate_pythons(explicit: str = "", blender_python: str | None = None, search_path: str | None = None,
                      well_known: list[str] | None = None) -> list[str]:
    """Interpreters to try, best first: ``explicit`` alone when given; else Blender's own, those on
    ``search_path`` (PATH by default; newest version first) and ``well_known`` (default: those in the
    usual install folders)."""
    if explicit:
        return [explicit]
    names = [f"python{a}.{b}" for a, b in reversed(SUPPORTED_PYTHONS)] + ["python3", "python"]
    out = [blender_python] if blender_python else []
    out += [p for p in (shutil.which(n, path=search_path) for n in names) if p]
    out += _well_known_pythons(Path.home()) if well_known is None else list(well_known)
    seen, unique = set(), []
    for p in out:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def find_python(explicit: str = "", blender_python: str | None = None, search_path: str | None = None,
                well_known: list[str] | None = None) -> PythonCandidate:
    """The first usable interpreter of ``candidate_pythons``; InstallError('no_python') lists what was
    looked at and why each one is unusable."""
    looked = []
    for path in candidate_pythons(explicit, blender_python, search_path, well_known):
        cand = probe_python(path)
        if cand.ok:
            return cand
        looked.append(cand)
    wanted = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_PYTHONS)
    if explicit:
        head = f"no suitable Python: the Python set for the install, {looked[0].describe()}"
    else:
        head = (f"no suitable Python: the backend needs Python {wanted} (64-bit, with venv); "
                + ("looked at: " + "; ".join(c.describe() for c in looked) if looked else "none was found"))
    raise InstallError("no_python", head + ". Install one (python.org) or set Preferences > Add-ons > "
                                          "SplatBridge > Python for Install")


# ------------------------------------------------------------------------------------------------
# choosing torch's build


_CUDA_RE = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")


def parse_nvidia_smi(text: str) -> tuple[int, int] | None:
    """The driver's CUDA version from ``nvidia-smi``'s header ("CUDA Version: 12.8"), or None."""
    m = _CUDA_RE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect_cuda(search_path: str | None = None, timeout: float = 20.0) -> tuple[int, int] | None:
    """The CUDA version the NVIDIA driver supports, from ``nvidia-smi``; None without an NVIDIA GPU/driver."""
    exe = shutil.which("nvidia-smi", path=search_path)
    if exe is None and os.name == "nt":
        default = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvidia-smi.exe"
        exe = str(default) if default.is_file() else None
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else None


def cuda_tag_version(tag: str) -> tuple[int, int]:
    """'cu128' -> (12, 8); 'cu130' -> (13, 0)."""
    digits = tag.removeprefix("cu")
    return int(digits[:-1]), int(digits[-1])


def pick_cuda_tag(cuda: tuple[int, int], torch_version: str) -> str | None:
    """The newest CUDA build of torch ``torch_version`` that the driver's CUDA version runs (None: none)."""
    minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    tags = TORCH_CUDA_TAGS.get(minor, ())
    fitting = [t for t in tags if cuda_tag_version(t) <= tuple(cuda)]
    return max(fitting, key=cuda_tag_version) if fitting else None


@dataclass(frozen=True)
class TorchPlan:
    """Which torch build to install: ``variant`` ('cuda', 'cpu', 'mps' or 'default': the registry's own
    build), the requirement that selects it (None: the pin as it is), the index to add, and notes for
    the log and the UI."""
    variant: str
    requirement: str | None = None
    index: str | None = None
    notes: tuple[str, ...] = ()


def wheel_python_tag(version: tuple[int, ...]) -> str:
    return f"cp{version[0]}{version[1]}"


def local_cpu_wheel(torch_version: str, folders: Iterable[Path], python: tuple[int, ...]) -> Path | None:
    """A CPU build of torch ``torch_version`` for this Python lying in one of ``folders`` (pip's find-links)."""
    tag = wheel_python_tag(python)
    for folder in folders:
        for wheel in sorted(Path(folder).glob(f"torch-{torch_version}+cpu-*.whl")):
            if f"-{tag}-" in wheel.name:
                return wheel
    return None


def pip_find_links(python: str) -> list[Path]:
    """Local folders pip (run by ``python``) is configured to take wheels from (PIP_FIND_LINKS, pip.conf)."""
    values = [os.environ.get("PIP_FIND_LINKS", "")]
    try:
        out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, env=_clean_env()).stdout
        values += [ln.split("=", 1)[1].strip("'\"") for ln in out.splitlines() if "find-links" in ln]
    except (OSError, subprocess.SubprocessError):
        pass
    dirs = []
    for value in values:
        for item in value.split():
            item = item.removeprefix("file://")
            if item and Path(item).is_dir() and Path(item) not in dirs:
                dirs.append(Path(item))
    return dirs


def plan_torch(torch_version: str, system: str, machine: str, cuda: tuple[int, int] | None,
               index_base: str = "", local_cpu: Path | None = None) -> TorchPlan:
    """Choose torch's build for this machine.

    ``system``/``machine``: ``platform.system()``/``platform.machine()``; ``cuda``: the NVIDIA driver's CUDA
    version (None: no NVIDIA GPU); ``index_base``: PyTorch's wheel index without the build tag ('' = not
    set); ``local_cpu``: a CPU wheel pip finds on local disk.
    """
    base = index_base.rstrip("/")
    notes: list[str] = []
    if cuda is not None and system in ("Linux", "Windows"):
        tag = pick_cuda_tag(cuda, torch_version)
        cuda_text = f"{cuda[0]}.{cuda[1]}"
        if tag is None:
            oldest = min(TORCH_CUDA_TAGS.get(".".join(torch_version.split(".")[:2]), ("?",)))
            notes.append(f"NVIDIA driver supports CUDA {cuda_text}, older than torch {torch_version}'s oldest "
                         f"CUDA build ({oldest}): update the driver for GPU training; installing the CPU build")
        elif base:
            return TorchPlan("cuda", f"torch=={torch_version}+{tag}", f"{base}/{tag}",
                             (f"NVIDIA GPU (driver's CUDA {cuda_text}): torch {torch_version}'s {tag} build",))
        elif system == "Linux":
            return TorchPlan("default", None, None, (
                f"NVIDIA GPU (driver's CUDA {cuda_text}): installing PyPI's default Linux build of torch, a CUDA "
                f"build; if it does not run on this driver, set PyTorch's Wheel Index in the preferences "
                f"(the installer then picks the {tag} build)",))
        else:
            notes.append(f"NVIDIA GPU (driver's CUDA {cuda_text}), but PyPI's torch for Windows is CPU-only: set "
                         f"PyTorch's Wheel Index in the preferences for the {tag} build; installing the CPU build")
    if system == "Darwin":
        if machine == "arm64":
            return TorchPlan("mps", None, None, tuple(notes) + (
                "Apple silicon: torch with MPS. gsplat has no Metal path, so the backend trains and renders "
                "splats on the CPU with its reference rasterizer (slow; a remote GPU backend is faster)",))
        return TorchPlan("cpu", None, None, tuple(notes) + ("Intel Mac: torch's CPU build",))
    if base:
        return TorchPlan("cpu", f"torch=={torch_version}+cpu", f"{base}/cpu", tuple(notes) + ("torch's CPU build",))
    if local_cpu is not None:
        return TorchPlan("cpu", f"torch=={torch_version}+cpu", None,
                         tuple(notes) + (f"torch's CPU build from {local_cpu.parent}",))
    if system == "Windows":
        return TorchPlan("cpu", None, None, tuple(notes) + ("torch's CPU build (PyPI's Windows build)",))
    return TorchPlan("default", None, None, tuple(notes) + (
        "no NVIDIA GPU: installing PyPI's default Linux build of torch, which bundles CUDA libraries (a few GB "
        "more); set PyTorch's Wheel Index in the preferences for the smaller CPU build",))


# ------------------------------------------------------------------------------------------------
# pip: progress and failures


_STARTS = ("Collecting ", "Processing ", "Requirement already satisfied: ")
_INSTALLING = "Installing collected packages: "


class PipProgress:
    """A percentage from pip's output lines (``feed``), in three phases:

    - resolving and downloading (``lo``..``mid``): one step per ``Collecting``/``Processing``/``Requirement
      already satisfied`` line, of ``expected`` distributions (a guess until pip has resolved);
    - installing (``mid``..``hi``): after "Installing collected packages: a, b, ..." the number of packages is
      known, and pip prints nothing more until it ends, so ``installed(n)`` takes how many of them are in
      place (the installer counts new ``*.dist-info`` folders);
    - done (``hi``) on "Successfully installed".
    """

    def __init__(self, expected: int = EXPECTED_PACKAGES, lo: float = 5.0, mid: float = 70.0, hi: float = 97.0):
        self.expected, self.lo, self.mid, self.hi = max(1, expected), lo, mid, hi
        self.collected: list[str] = []
        self.to_install: list[str] = []
        self.installed_count = 0
        self.finished = False
        self.current = ""

    def feed(self, line: str) -> None:
        line = line.strip()
        for start in _STARTS:
            if line.startswith(start):
                name = re.split(r"[\s=<>!~;\[(]", line[len(start):].strip(), maxsplit=1)[0]
                self.collected.append(name)
                self.current = f"{start.strip().rstrip(':').split()[0].lower()} {Path(name).name}"
                return
        if line.startswith(_INSTALLING):
            self.to_install = [n.strip() for n in line[len(_INSTALLING):].split(",") if n.strip()]
            self.current = f"installing {len(self.to_install)} packages"
        elif line.startswith("Successfully installed"):
            self.finished = True
            self.current = "installed"

    def installed(self, n: int) -> None:
        """``n`` of the packages being installed are in place."""
        self.installed_count = max(self.installed_count, n)

    @property
    def installing(self) -> bool:
        return bool(self.to_install) and not self.finished

    @property
    def percent(self) -> float:
        if self.finished:
            return self.hi
        if self.to_install:
            return self.mid + (self.hi - self.mid) * min(1.0, self.installed_count / len(self.to_install))
        frac = min(0.98, len(self.collected) / self.expected)
        return self.lo + (self.mid - self.lo) * frac


_NETWORK = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
            "Name or service not known", "getaddrinfo failed", "Network is unreachable", "No route to host",
            "Connection refused", "ConnectTimeoutError", "ReadTimeoutError", "Read timed out", "ProxyError",
            "Connection reset by peer", "Could not fetch URL", "nodename nor servname provided",
            "Max retries exceeded")
_DISK = ("No space left on device", "[Errno 28]", "There is not enough space on the disk", "[WinError 112]",
         "Disk quota exceeded")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def _indexes_unreachable(lines: list[str], timeout: float = 5.0) -> bool:
    """Whether no web index of pip's "Looking in indexes: ..." line accepts a TCP connection (pip does not
    always report a failed connection, e.g. with no retries)."""
    import socket
    from urllib.parse import urlsplit
    urls = [u.strip() for ln in lines if ln.startswith("Looking in indexes:")
            for u in ln.split(":", 1)[1].split(",")]
    web = [urlsplit(u) for u in urls if u.startswith(("http://", "https://"))]
    if not web or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return False
    for url in web:
        try:
            with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                          timeout=timeout):
                return False
        except OSError:
            continue
    return True


def classify_pip_failure(lines: list[str], returncode: int, python: tuple[int, ...] | None = None) -> InstallError:
    """The cause of a failed ``pip install`` from its output: no disk space, no network, no build of a
    package for this platform/Python, or else pip's own last error lines."""
    text = "\n".join(lines)
    tail = "\n".join([ln for ln in lines if ln.startswith("ERROR")][-3:] or lines[-3:])
    if any(s in text for s in _DISK):
        return InstallError("no_disk_space", "no disk space: the disk filled up while pip installed the backend "
                                             f"(free some space and install again). pip said: {tail}")
    if any(s in text for s in _NETWORK):
        return InstallError("no_network", "no network: pip could not reach the package index (check the "
                                          "connection or proxy settings, then install again). pip said: " + tail)
    m = _NO_MATCH.search(text)
    if m and "(from versions: none)" in text and _indexes_unreachable(lines):
        return InstallError("no_network", "no network: pip could not reach the package index (check the "
                                          "connection or proxy settings, then install again). pip said: " + tail)
    if m:
        py = "Python %d.%d" % tuple(python[:2]) if python else "this Python"
        what = m.group(1)
        return InstallError("no_torch_build" if what.lower().startswith("torch") else "pip",
                            f"pip found no {what} for this platform and {py} "
                            f"({platform.system()} {platform.machine()}). pip said: {tail}")
    return InstallError("pip", f"pip install failed (exit {returncode}): {tail}")


# ------------------------------------------------------------------------------------------------
# the install


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_dir(folder: Path) -> Path:
    return Path(folder) / "venv"


def read_stamp(folder: Path) -> dict | None:
    """The stamp of a finished install in ``folder`` (None: none, or unreadable)."""
    try:
        return json.loads((venv_dir(folder) / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def installed_python(folder: Path) -> Path | None:
    """The venv interpreter of a finished install in ``folder``, or None."""
    stamp = read_stamp(folder)
    python = venv_python(venv_dir(folder))
    return python if stamp is not None and python.is_file() else None


def needs_update(folder: Path, source_dir: Path) -> bool:
    """Whether the pinned requirements in ``source_dir`` differ from those the install in ``folder`` has
    (True too when there is no finished install)."""
    stamp = read_stamp(folder)
    try:
        text = (Path(source_dir) / REQUIREMENTS_NAME).read_text(encoding="utf-8")
    except OSError:
        return True
    return stamp is None or stamp.get("schema") != STAMP_SCHEMA or stamp.get("requirements") != requirements_hash(text)


def _free_bytes(path: Path) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


@dataclass
class InstallOptions:
    """What to install where. ``folder``: the install folder (the venv goes in ``folder/venv``);
    ``source_dir``: the backend source (``backend/``, ``shared/``, requirements-backend.txt);
    ``python``: an interpreter to use ('' = search; env SPLATBRIDGE_INSTALL_PYTHON too); ``blender_python``:
    Blender's own (tried first when searching); ``torch_index``: PyTorch's wheel index base ('' = env
    SPLATBRIDGE_TORCH_INDEX, else none); ``update``: do nothing when the requirements are unchanged."""
    folder: Path
    source_dir: Path
    python: str = ""
    blender_python: str | None = None
    torch_index: str = ""
    update: bool = False
    search_path: str | None = None      # for finding Python and nvidia-smi (None: PATH)
    well_known: list[str] | None = None  # interpreters to try after PATH (None: the usual install folders)
    cuda: tuple[int, int] | None | str = "detect"   # "detect": run nvidia-smi
    system: str = field(default_factory=platform.system)
    machine: str = field(default_factory=platform.machine)
    disk_needed: dict[str, int] = field(default_factory=lambda: dict(DISK_NEEDED))


class Installer:
    """One install (or update) of the local backend. ``run()`` does it in the calling thread and returns
    the venv's Python (raises InstallError); ``start()`` runs it in a thread. ``percent``, ``phase``,
    ``state`` and ``lines()`` may be read from any thread meanwhile; ``cancel()`` stops it."""

    def __init__(self, options: InstallOptions, on_line: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.on_line = on_line
        self.state = "idle"          # idle, running, done, up_to_date, failed, cancelled
        self.phase = ""
        self.error: InstallError | None = None
        self.python: Path | None = None
        self.plan: TorchPlan | None = None
        self.verified: dict | None = None
        self.thread: threading.Thread | None = None
        self._percent = 0.0
        self._progress: PipProgress | None = None
        self._install_started = 0.0
        self._site: Path | None = None
        self._log: deque[str] = deque(maxlen=5000)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self.log_version = 0

    # -- reading the state (any thread)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._log)

    @property
    def percent(self) -> float:
        prog = self._progress
        if prog is not None and prog.installing and self._site is not None:
            prog.installed(self._count_new_dist_info())
        return max(self._percent, prog.percent if prog is not None else 0.0)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def status_text(self) -> str:
        if self.state == "running":
            return f"Installing the SplatBridge backend: {self.percent:.0f}% ({self.phase})"
        if self.state in ("failed", "cancelled") and self.error is not None:
            return f"Backend install {self.state}: {self.error}"
        return {"done": "Backend installed", "up_to_date": "Backend up to date"}.get(self.state, "")

    # -- control

    def start(self) -> threading.Thread:
        self.state = "running"
        self.thread = threading.Thread(target=self._run_quietly, name="splatbridge-backend-install", daemon=True)
        self.thread.start()
        return self.thread

    def cancel(self, wait: float = 10.0) -> None:
        """Stop the install: pip's process group is terminated (killed after 5 s)."""
        self._cancel.set()
        self._terminate()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(wait)

    def _run_quietly(self) -> None:
        try:
            self.run()
        except InstallError:
            pass

    # -- the work

    def log(self, line: str) -> None:
        line = line.rstrip("\r\n")
        with self._lock:
            self._log.append(line)
            self.log_version += 1
        if self.on_line is not None:
            self.on_line(line)

    def _set(self, percent: float, phase: str) -> None:
        self._percent, self.phase = percent, phase
        self.log(f"[SplatBridge] {phase}")

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise InstallError("cancelled", "cancelled: the install was stopped (Install Local Backend starts again)")

    def run(self) -> Path:
        """Install (or update); returns the venv's Python. Raises InstallError naming the cause."""
        self.state = "running"
        o = self.options
        folder = Path(o.folder)
        try:
            result = self._run(folder)
        except InstallError as exc:
            self.error = exc
            self.state = "cancelled" if exc.cause == "cancelled" else "failed"
            self.log(f"[SplatBridge] {self.state}: {exc}")
            raise
        finally:
            shutil.rmtree(folder / "tmp", ignore_errors=True)
            self._write_log_file(folder)
        self.state = "up_to_date" if result is None else "done"
        self.python = installed_python(folder)
        self._percent = 100.0
        return self.python

    def _write_log_file(self, folder: Path) -> None:
        try:
            if folder.is_dir():
                (folder / "install.log").write_text("\n".join(self.lines()) + "\n", encoding="utf-8")
        except OSError:
            pass

    def _run(self, folder: Path) -> Path | None:
        o = self.options
        source = Path(o.source_dir)
        req = source / REQUIREMENTS_NAME
        if not (req.is_file() and (source / "backend" / "__main__.py").is_file()):
            raise InstallError("bad_source", f"{source} is not a backend source folder (it needs backend/ and "
                                             f"{REQUIREMENTS_NAME})")
        req_text = req.read_text(encoding="utf-8")
        torch_version = parse_pins(req_text).get("torch")
        if torch_version is None:
            raise InstallError("bad_source", f"{req} does not pin torch (torch==VERSION)")
        venv = venv_dir(folder)
        py = venv_python(venv)
        if o.update and py.is_file() and not needs_update(folder, source):
            self._set(100.0, f"the backend in {venv} is up to date (requirements unchanged)")
            return None

        self._set(1.0, "looking for Python 3.11-3.13")
        existing = probe_python(str(py)) if py.is_file() else None
        if existing is not None and existing.ok:
            base = existing
            self.log(f"[SplatBridge] reusing the virtual environment {venv} (Python "
                     f"{'.'.join(map(str, existing.version))})")
        else:
            base = find_python(o.python or os.environ.get(PYTHON_ENV, ""), o.blender_python, o.search_path,
                               o.well_known)
            self.log(f"[SplatBridge] using {base.describe()}")
        self._check_cancel()

        cuda = detect_cuda(o.search_path) if o.cuda == "detect" else o.cuda
        index = o.torch_index or os.environ.get(TORCH_INDEX_ENV, "")
        # The CPU wheel on local disk is looked up with the base interpreter's pip (the venv's reads the
        # same configuration); no pip there: none found.
        local = local_cpu_wheel(torch_version, pip_find_links(str(py if py.is_file() else base.path)),
                                base.version) if cuda is None and not index else None
        plan = plan_torch(torch_version, o.system, o.machine, cuda, index, local)
        self.plan = plan
        for note in plan.notes:
            self.log(f"[SplatBridge] {note}")

        need = o.disk_needed.get(plan.variant, DISK_NEEDED["default"]) // (3 if py.is_file() else 1)
        free = _free_bytes(folder)
        if free < need:
            raise InstallError("no_disk_space", f"no disk space: {free / 2 ** 30:.1f} GiB free at {folder}, the "
                                                f"backend ({plan.variant} torch) needs about {need / 2 ** 30:.0f} GiB: "
                                                f"free some space or choose another Install Folder")
        folder.mkdir(parents=True, exist_ok=True)
        if existing is None or not existing.ok:
            self._set(2.0, f"creating the virtual environment {venv}")
            if venv.exists():
                shutil.rmtree(venv)
            rc, out = self._call([base.path, "-m", "venv", str(venv)])
            if rc != 0 or not py.is_file():
                raise self._classify(out, rc, base.version, "python -m venv")
        self._check_cancel()
        (venv / STAMP_NAME).unlink(missing_ok=True)   # a half-finished update is not a finished install

        tmp = folder / "tmp"
        tmp.mkdir(exist_ok=True)
        cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
               "-r", str(req)]
        if plan.requirement:
            constraint = tmp / "torch-constraint.txt"
            constraint.write_text(plan.requirement + "\n", encoding="utf-8")
            cmd += ["-c", str(constraint)]
        if plan.index:
            cmd += ["--extra-index-url", plan.index]
        old = read_stamp(folder) or {}
        self._progress = PipProgress(int(old.get("packages", EXPECTED_PACKAGES)))
        self._site = self._site_packages(py)
        self._install_started = time.time()
        self._set(5.0, f"pip install -r {REQUIREMENTS_NAME}")
        rc, out = self._call(cmd, pip=True, tmp=tmp)
        if rc != 0:
            raise self._classify(out, rc, base.version, "pip install")

        self._set(97.0, "checking the new environment (import torch, gsplat, zmq, msgpack)")
        rc, out = self._call([str(py), "-c", VERIFY_CODE])
        verified = [ln for ln in out if ln.startswith("VERIFY ")]
        if rc != 0 or not verified:
            raise InstallError("pip", "the installed backend does not import: " + " | ".join(out[-3:]))
        self.verified = json.loads(verified[-1][len("VERIFY "):])
        stamp = {"schema": STAMP_SCHEMA, "requirements": requirements_hash(req_text), "torch_plan": asdict(plan),
                 "verified": self.verified, "python": list(probe_python(str(py)).version or ()),
                 "packages": len(self._progress.to_install) or len(self._progress.collected),
                 "source_dir": str(source),
                 "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        (venv / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        self._set(100.0, f"done: torch {self.verified['torch']} in {venv}")
        return py

    def _classify(self, out: list[str], rc: int, version, what: str) -> InstallError:
        if self._cancel.is_set():
            return InstallError("cancelled", "cancelled: the install was stopped (Install Local Backend starts again)")
        err = classify_pip_failure(out, rc, version)
        if what != "pip install" and err.cause == "pip":
            return InstallError("pip", f"{what} failed (exit {rc}): " + " | ".join(out[-3:]))
        return err

    def _site_packages(self, py: Path) -> Path | None:
        venv = py.parent.parent
        found = sorted(venv.glob("lib/python3*/site-packages")) + sorted(venv.glob("Lib/site-packages"))
        return found[0] if found else None

    def _count_new_dist_info(self) -> int:
        try:
            return sum(1 for d in os.scandir(self._site) if d.name.endswith(".dist-info")
                       and d.stat().st_mtime >= self._install_started - 1)
        except OSError:
            return 0

    def _call(self, cmd: list[str], pip: bool = False, tmp: Path | None = None) -> tuple[int, list[str]]:
        """Run ``cmd`` (its output to the log, and to the progress when ``pip``); cancellable."""
        self._check_cancel()
        env = _clean_env()
        env["PYTHONUNBUFFERED"] = "1"
        if tmp is not None:  # pip's downloads and unpacked wheels: on the install folder's disk, cleaned after
            for key in ("TMPDIR", "TEMP", "TMP"):
                env[key] = str(tmp)
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # its own process group: cancel reaches pip's children too
        self.log("[SplatBridge] $ " + " ".join(cmd))
        out: list[str] = []
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, encoding="utf-8", errors="replace", env=env, **kwargs)
        self._proc = proc
        if self._cancel.is_set():
            self._terminate()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\r\n")
            out.append(line)
            self.log(line)
            if pip and self._progress is not None:
                self._progress.feed(line)
                if self._progress.current:
                    self.phase = self._progress.current
        rc = proc.wait()
        self._proc = None
        self._check_cancel()
        return rc, out

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "nt":
                proc.terminate()
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            if os.name == "nt":
                proc.kill()
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
