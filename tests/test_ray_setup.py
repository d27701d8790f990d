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


def test_status_text_shows_gpu_use_per_node_and_queue_per_class():
    from backend.status_cli import format_status
    fields = {"jobs": [{"job_id": "a1", "kind": "train", "state": "running", "step": 5, "total": 9,
                        "queue_position": 0},
                       {"job_id": "b2", "kind": "generate", "state": "queued", "step": 0, "total": 0,
                        "queue_position": 1}],
              "pool": {"executor": "ray", "address": "head:6379", "queue": {"40gb": 1},
                       "nodes": [{"node_id": "n" * 40, "address": "10.0.0.2", "alive": True, "gpus": 2,
                                  "gpus_busy": 1, "classes": ["24gb", "40gb"], "jobs": ["a1"]},
                                 {"node_id": "m" * 40, "address": "10.0.0.3", "alive": False, "gpus": 1,
                                  "gpus_busy": 0, "classes": [], "jobs": []}]}}
    assert format_status(fields).splitlines() == [
        "jobs: 2",
        "  a1  train  running  step 5/9",
        "  b2  generate  queued position 1  step 0/0",
        "pool: ray at head:6379, 1/2 GPUs busy on 1 live node(s)",
        f"  node {'n' * 12}  10.0.0.2  GPUs 1/2 busy  classes 24gb,40gb  jobs a1",
        f"  node {'m' * 12}  10.0.0.3  GPUs 0/1 busy  classes -  jobs -  DEAD",
        "  queue: 40gb 1",
    ]
    assert format_status({"jobs": []}) == "jobs: 0 (none)"      # the in-process runner: no pool
