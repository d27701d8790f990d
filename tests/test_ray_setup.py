"""The Ray pool's configuration, without a cluster: Ray stays optional (never imported by the default
in-process runner), its pin agrees between requirements.txt and the package's [ray] extra, and bad
``serve`` options for it get clear errors before anything starts. (The pool itself:
tests/test_ray_pool.py, on a local Ray cluster.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pin(text: str, name: str) -> str | None:
    for line in text.splitlines():
        m = re.match(rf"\s*{name}\s*==\s*([^\s;#]+)", line)
        if m:
            return m.group(1)
    return None


def test_ray_pin_is_the_same_in_requirements_and_the_ray_extra():
    dev = _pin((ROOT / "requirements.txt").read_text(), "ray")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert dev and extra == [f"ray=={dev}"], (dev, extra)
    assert _pin((ROOT / "requirements-backend.txt").read_text(), "ray") is None   # optional


def test_the_default_runner_never_imports_ray():
    code = ("import sys, backend.server, backend.jobs, backend.__main__; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("args, words", [
    (["--ray-address", "127.0.0.1:6379"], "--ray-address and --memory-class need --executor ray"),
    (["--executor", "ray", "--memory-class", "generate"], "--memory-class 'generate' must look like KIND=GB"),
    (["--executor", "ray", "--memory-class", "generate=0"], "GB a whole number > 0"),
    (["--executor", "ray", "--ray-cpus-per-job", "-1"], "--ray-cpus-per-job must be a number >= 0"),
])
def test_bad_pool_options_are_clear_errors(tmp_path, args, words):
    out = subprocess.run([sys.executable, "-m", "backend", "serve", "--store", str(tmp_path / "s"),
                          "--bind", "tcp://127.0.0.1:0", *args], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert words in out.stderr, out.stderr[-2000:]


def test_memory_classes_parse():
    from backend.ray_pool import class_name, class_resource, parse_memory_classes
    assert parse_memory_classes(["generate=40", "edit=24"]) == {"generate": 40, "edit": 24}
    assert class_resource(40) == "gpu_mem_40gb" and class_name(40) == "40gb"
    assert class_name(None) == "any"
    with pytest.raises(ValueError, match="'train=big' must look like KIND=GB"):
        parse_memory_classes(["train=big"])
