"""The backend installer's logic without Blender (blender_addon/installer.py is bpy-free): choosing torch's
build, finding a Python, pip's progress, and each named failure with real interpreters and a real pip.

The whole install (a real venv, a real pip install of requirements-backend.txt, a backend started from
it and a job trained through it from Blender) is tests/test_backend_install.py.
"""
from __future__ import annotations

import glob
import importlib
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

# Also in `build.py compat` (Python 3.13, as in Blender 5.1+): the installer runs inside Blender's Python.
pytestmark = pytest.mark.bpy_only

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_SMI_HEADER = """\
Sun Nov 29 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
"""


@pytest.fixture(scope="module")
def inst(addon_dir):
    return importlib.import_module("splatbridge.installer")


def _old_python() -> str | None:
    """A real interpreter older than 3.11 on this machine (pyenv keeps several), if any."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0]*/bin/python3.10"))
                   + glob.glob(os.path.expanduser("~/.pyenv/versions/3.[6-9]*/bin/python3.[6-9]")))
    return found[-1] if found else None


def _source(tmp_path: Path, requirements: str) -> Path:
    src = tmp_path / "src"
    (src / "backend").mkdir(parents=True)
    (src / "backend" / "__main__.py").write_text("")
    (src / "requirements-backend.txt").write_text(requirements)
    return src


def test_pins_and_hash_ignore_comments_and_spacing(inst):
    a = "# c\ntorch==2.13.0   # the build is chosen per machine\nnumpy>=1.26\n\nmsgpack == 1.2.4\n"
    b = "torch==2.13.0\nnumpy>=1.26\nmsgpack == 1.2.4\n# another comment\n"
    assert inst.parse_pins(a) == {"torch": "2.13.0", "msgpack": "1.2.4"}
    assert inst.requirements_hash(a) == inst.requirements_hash(b)
    assert inst.requirements_hash(a) != inst.requirements_hash(b.replace("1.2.4", "1.2.5"))


def test_pinned_torch_has_its_cuda_builds_listed(inst):
    """Bumping torch in requirements-backend.txt must come with the CUDA builds PyTorch publishes for it."""
    torch = inst.parse_pins((ROOT / "requirements-backend.txt").read_text())["torch"]
    assert ".".join(torch.split(".")[:2]) in inst.TORCH_CUDA_TAGS


@pytest.mark.parametrize("cuda, tag", [((12, 8), "cu128"), ((12, 9), "cu128"), ((12, 6), "cu126"),
                                       ((13, 1), "cu130"), ((12, 4), None), ((11, 8), None)])
def test_cuda_build_for_the_driver(inst, cuda, tag):
    assert inst.pick_cuda_tag(cuda, "2.13.0") == tag


def test_nvidia_smi_is_read_for_the_drivers_cuda(inst, tmp_path):
    # This machine has no NVIDIA GPU: a stand-in nvidia-smi prints the real tool's header (driver 570).
    assert inst.detect_cuda(search_path=str(tmp_path)) is None           # no nvidia-smi: no NVIDIA GPU
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\ncat <<'EOF'\n" + NVIDIA_SMI_HEADER + "EOF\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    assert inst.detect_cuda(search_path=str(tmp_path)) == (12, 8)
    exe.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n"
                   "exit 9\n")
    assert inst.detect_cuda(search_path=str(tmp_path)) is None


def test_torch_build_per_platform(inst, tmp_path):
    base = "https://wheels.example/whl/"          # a made-up index base: the user's setting
    p = inst.plan_torch("2.13.0", "Linux", "x86_64", (12, 8), base)
    assert (p.variant, p.requirement, p.index) == ("cuda", "torch==2.13.0+cu128", "https://wheels.example/whl/cu128")
    p = inst.plan_torch("2.13.0", "Windows", "AMD64", (13, 0), base)
    assert (p.requirement, p.index) == ("torch==2.13.0+cu130", "https://wheels.example/whl/cu130")
    p = inst.plan_torch("2.13.0", "Windows", "AMD64", (12, 8), "")
    assert p.variant == "cpu" and p.requirement is None and "Wheel Index" in p.notes[0]
    p = inst.plan_torch("2.13.0", "Linux", "x86_64", (12, 2), base)          # driver too old
    assert p.variant == "cpu" and p.index == "https://wheels.example/whl/cpu" and "update the driver" in p.notes[0]
    p = inst.plan_torch("2.13.0", "Linux", "x86_64", None, base)
    assert (p.variant, p.requirement, p.index) == ("cpu", "torch==2.13.0+cpu", "https://wheels.example/whl/cpu")
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"")
    assert inst.local_cpu_wheel("2.13.0", [tmp_path], (3, 11)) == wheel
    assert inst.local_cpu_wheel("2.13.0", [tmp_path], (3, 13)) is None      # another Python's wheel
    p = inst.plan_torch("2.13.0", "Linux", "x86_64", None, "", wheel)
    assert (p.variant, p.requirement, p.index) == ("cpu", "torch==2.13.0+cpu", None)
    p = inst.plan_torch("2.13.0", "Linux", "x86_64", None, "")
    assert p.variant == "default" and p.requirement is None and "Wheel Index" in p.notes[0]
    p = inst.plan_torch("2.13.0", "Darwin", "arm64", None, base)
    assert p.variant == "mps" and p.index is None and "reference rasterizer" in p.notes[-1]


def test_pip_progress_rises_through_the_phases(inst, tmp_path):
    prog = inst.PipProgress(expected=4)
    seen = [prog.percent]
    for line in ["Looking in indexes: ...", "Processing /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "Collecting gsplat==1.5.3 (from -r req.txt (line 5))", "  Downloading gsplat-1.5.3-py3-none-any.whl (6.5 MB)",
                 "Requirement already satisfied: numpy>=1.26 in ./v/lib (1.26.4)", "Collecting jaxtyping (from gsplat==1.5.3)",
                 "Collecting rich>=12 (from gsplat==1.5.3)"]:
        prog.feed(line)
        seen.append(prog.percent)
    assert prog.current == "collecting rich"
    assert seen == sorted(seen) and seen[2] > seen[1] == seen[0] and seen[-1] < prog.mid   # more than expected: capped
    prog.feed("Installing collected packages: torch, gsplat, jaxtyping, rich")
    assert prog.percent == prog.mid
    prog.installed(2)
    assert prog.percent == pytest.approx((prog.mid + prog.hi) / 2)
    prog.feed("Successfully installed gsplat-1.5.3 jaxtyping-0.3.11 rich-15.0.0 torch-2.13.0+cpu")
    assert prog.percent == prog.hi and prog.finished


def test_pip_failures_are_named(inst):
    disk = ["Processing ./torch.whl", "ERROR: Could not install packages due to an OSError: [Errno 28] No space "
                                      "left on device"]
    assert inst.classify_pip_failure(disk, 1).cause == "no_disk_space"
    net = ["WARNING: Retrying (Retry(total=4, connect=None)) after connection broken by 'NewConnectionError("
           "'...: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')'",
           "ERROR: No matching distribution found for gsplat==1.5.3"]
    assert inst.classify_pip_failure(net, 1).cause == "no_network"
    mac = ["Looking in indexes: file:///nowhere", "ERROR: Could not find a version that satisfies the requirement "
           "torch==2.13.0 (from versions: 2.2.2)", "ERROR: No matching distribution found for torch==2.13.0"]
    err = inst.classify_pip_failure(mac, 1, (3, 13))
    assert err.cause == "no_torch_build" and "Python 3.13" in str(err)
    other = inst.classify_pip_failure(["ERROR: something else broke"], 2)
    assert other.cause == "pip" and "exit 2" in str(other) and "something else broke" in str(other)


def test_no_suitable_python_is_named(inst, tmp_path):
    """Only a Python older than 3.11 and one that does not run are there: the error lists both, and
    nothing is created."""
    old = _old_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old)
    broken = bin_dir / "python3.12"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    folder = tmp_path / "install"
    job = inst.Installer(inst.InstallOptions(folder=folder, source_dir=_source(tmp_path, "torch==2.13.0\n"),
                                             blender_python=None, search_path=str(bin_dir), well_known=[], cuda=None))
    with pytest.raises(inst.InstallError) as exc:
        job.run()
    msg = str(exc.value)
    assert exc.value.cause == "no_python" and job.state == "failed"
    assert msg.startswith("no suitable Python: the backend needs Python 3.11, 3.12, 3.13")
    assert f"{bin_dir / 'python3'} (Python 3." in msg and "version not supported" in msg
    assert f"{broken} (Python ?): does not run" in msg
    assert not (folder / "venv").exists()
    # A Python set by the user is the only one tried.
    with pytest.raises(inst.InstallError, match=r"the Python set for the install, .*version not supported"):
        inst.find_python(explicit=old, blender_python=sys.executable)


def test_blender_python_is_tried_first(inst, tmp_path):
    cand = inst.find_python(blender_python=sys.executable, search_path=str(tmp_path), well_known=[])
    assert cand.path == sys.executable and cand.version[:2] == sys.version_info[:2]


def test_no_disk_space_is_named_before_anything_is_written(inst, tmp_path):
    folder = tmp_path / "install"
    job = inst.Installer(inst.InstallOptions(
        folder=folder, source_dir=_source(tmp_path, "torch==2.13.0\n"), python=sys.executable, cuda=None,
        disk_needed={k: 2 ** 60 for k in inst.DISK_NEEDED}))
    with pytest.raises(inst.InstallError, match=r"no disk space: [\d.]+ GiB free at .*needs about \d+ GiB") as exc:
        job.run()
    assert exc.value.cause == "no_disk_space" and not folder.exists()


def _pip_env(monkeypatch, index: str) -> None:
    """pip without this machine's configuration (local wheel folders and indexes), on ``index`` only."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "1")


def test_no_network_is_named(inst, tmp_path, monkeypatch):
    """A real venv and a real pip whose index (a closed port on loopback) cannot be reached."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _pip_env(monkeypatch, f"http://127.0.0.1:{port}/simple")
    job = inst.Installer(inst.InstallOptions(folder=tmp_path / "install", python=sys.executable, cuda=None,
                                             source_dir=_source(tmp_path, "msgpack==1.2.4\ntorch==2.13.0\n")))
    with pytest.raises(inst.InstallError) as exc:
        job.run()
    assert exc.value.cause == "no_network", str(exc.value)
    assert str(exc.value).startswith("no network: pip could not reach the package index")
    assert inst.read_stamp(tmp_path / "install") is None
    assert "[SplatBridge] failed: no network" in (tmp_path / "install" / "install.log").read_text()


def test_cancel_terminates_pip(inst, tmp_path, monkeypatch):
    """pip waits on an index that accepts the connection and never answers; cancel ends pip's process
    group within seconds and leaves no finished-install stamp."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)                 # connections queue up; nothing ever answers them
    try:
        _pip_env(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}/simple")
        monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "120")
        job = inst.Installer(inst.InstallOptions(folder=tmp_path / "install", python=sys.executable, cuda=None,
                                                 source_dir=_source(tmp_path, "torch==2.13.0\n")))
        job.start()
        deadline = time.monotonic() + 120
        while job.running and time.monotonic() < deadline \
                and not any(ln.startswith("Looking in indexes") for ln in job.lines()):
            time.sleep(0.2)
        assert job.running and job._proc is not None, job.lines()[-5:]
        pip = job._proc
        assert 5.0 <= job.percent < 70.0 and job.phase.startswith("pip install")
        t0 = time.monotonic()
        job.cancel()
        assert time.monotonic() - t0 < 8.0
        assert pip.poll() is not None                      # pip is gone
        assert job.state == "cancelled" and job.error.cause == "cancelled"
        assert not job.thread.is_alive()
        assert inst.read_stamp(tmp_path / "install") is None
        assert not (tmp_path / "install" / "tmp").exists()
    finally:
        server.close()


def test_update_runs_nothing_while_the_pins_are_unchanged(inst, tmp_path):
    folder = tmp_path / "install"
    src = _source(tmp_path, "torch==2.13.0\nmsgpack==1.2.4\n")
    py = inst.venv_python(inst.venv_dir(folder))
    py.parent.mkdir(parents=True)
    py.symlink_to(sys.executable)
    text = (src / "requirements-backend.txt").read_text()
    stamp = {"schema": inst.STAMP_SCHEMA, "requirements": inst.requirements_hash(text)}
    (inst.venv_dir(folder) / inst.STAMP_NAME).write_text(__import__("json").dumps(stamp))
    job = inst.Installer(inst.InstallOptions(folder=folder, source_dir=src, update=True, cuda=None))
    assert job.run() == py and job.state == "up_to_date" and job.percent == 100.0
    assert not any(ln.startswith("[SplatBridge] $ ") for ln in job.lines()), job.lines()   # nothing was run
    (src / "requirements-backend.txt").write_text("# a comment does not count\n" + text)
    assert not inst.needs_update(folder, src)
    (src / "requirements-backend.txt").write_text(text.replace("1.2.4", "1.2.5"))
    assert inst.needs_update(folder, src)
