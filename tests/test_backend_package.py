"""The backend as a package of its own: ``pip install ./`` (pyproject.toml) gives the ``splatbridge-backend``
command with every subcommand of ``python -m backend``, the ``backend`` and ``shared`` packages, and the
runtime pins of requirements-backend.txt as its dependencies.

To keep CI short this installs with ``--no-deps`` into a fresh venv that sees the shared test venv's
site-packages (torch, gsplat, pyzmq ... through a .pth file) instead of downloading them again: the package,
its entry point and its metadata are built and installed for real (setuptools from the package index, with
build isolation), its dependency list is checked against requirements-backend.txt, and the installed
command serves a real hello. The full dependency install is what tests/test_backend_install.py does.
"""
from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from shared.client import BackendClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"                    # a copy: pip builds in the source folder (build/, *.egg-info)
    for name in ("backend", "shared"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "requirements-backend.txt", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    v = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(v)], check=True, timeout=300)
    site = next(v.glob("lib/python3*/site-packages"))
    (site / "_shared_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(_bin(v, "python")), "-m", "pip", "install", "--no-deps",
                           "--disable-pip-version-check", "./"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return v


def _run(venv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(_bin(venv, "splatbridge-backend")), *args], cwd=venv.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_installed_packages_and_metadata(venv):
    code = ("import backend, shared, importlib.metadata as m; print(backend.__file__); print(shared.__file__); "
            "print(m.version('splatbridge-backend')); print('\\n'.join(m.requires('splatbridge-backend')))")
    out = subprocess.run([str(_bin(venv, "python")), "-c", code], cwd=venv.parent, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    backend_file, shared_file, version, *requires = out.stdout.splitlines()
    for path in (backend_file, shared_file):
        assert Path(path).is_relative_to(venv), f"{path} is not the installed copy"
    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    assert version == manifest["version"]
    inst = importlib.import_module("build")._installer()
    expected = inst.requirement_lines((ROOT / "requirements-backend.txt").read_text())
    base = [r for r in requires if "extra ==" not in r]        # the optional extras: [ray]
    assert [r.replace(" ", "") for r in base] == [r.replace(" ", "") for r in expected]
    assert [r.replace(" ", "") for r in requires if "extra ==" in r] == ['ray==2.60.0;extra=="ray"']


def test_every_subcommand_is_there(venv, tmp_path):
    from backend.__main__ import COMMANDS
    top = _run(venv, "--help")
    assert top.returncode == 0, top.stderr
    assert "splatbridge-backend serve" in top.stdout
    bare = _run(venv)
    assert bare.returncode == 2 and bare.stderr.strip() == "usage: splatbridge-backend {serve,<job kind>," + \
        ",".join(c for c in COMMANDS if c != "serve") + "} [options]  (-h for help)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {cmd: subprocess.Popen([str(_bin(venv, "splatbridge-backend")), cmd, "--help"], cwd=venv.parent, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in [*COMMANDS, "train", "generate", "edit"]}   # all at once: each imports torch (most)
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.startswith("usage: "), (cmd, out[-500:], err[-2000:])
        assert f" {cmd}" in out.splitlines()[0]
    assert _run(venv, "serve", "--help").stdout.startswith("usage: splatbridge-backend serve")
    keys = _run(venv, "keys", str(tmp_path / "keys"), "--name", "box")
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "keys" / "box.key").is_file() and (tmp_path / "keys" / "box.key_secret").is_file()


def test_installed_command_serves(venv, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([str(_bin(venv, "splatbridge-backend")), "serve", "--bind", f"tcp://127.0.0.1:{port}",
                             "--store", str(tmp_path / "store"), "--device", "cpu"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = BackendClient(f"tcp://127.0.0.1:{port}", timeout_s=120)
    try:
        client.send_hello()
        assert client.wait_for(lambda: client.server_info is not None, timeout=120), "no hello"
        assert "train" in client.server_info["job_kinds"]
    finally:
        client.close()
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
