"""tests/gpu_on_cpu.py: on a machine without CUDA, a gpu-marked test runs up to its first CUDA call;
reaching it skips the test, an error before it fails the test (as test_generate_job_on_cuda_fp16's
KeyError on the ``stage`` message did, unseen, while gpu tests were skipped outright)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import pytest
import torch

class Ctx:
    def report(self, metrics):
        return metrics["num_gaussians"]

@pytest.fixture
def ctx():
    return Ctx()

@pytest.mark.gpu
def test_reaches_cuda(ctx):
    ctx.report({"num_gaussians": 3})
    torch.zeros(1, device="cuda")

@pytest.mark.gpu
def test_breaks_before_cuda(ctx):
    ctx.report({"stage": "loading"})
    torch.zeros(1, device="cuda")

@pytest.fixture
def broken():
    raise ValueError("fixture broke")

@pytest.mark.gpu
def test_fixture_breaks(broken):
    torch.zeros(1, device="cuda")
'''


def test_gpu_tests_run_on_cpu_up_to_cuda(pytester, monkeypatch):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu tests run in full")
    tests = str(Path(__file__).resolve().parent)       # the inner run loads tests/gpu_on_cpu.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "gpu_on_cpu", "-rs", "-q")
    result.assert_outcomes(passed=0, skipped=1, failed=1, errors=1)
    for pattern in ("*KeyError*num_gaussians*", "*fixture broke*", "*needs CUDA; ran on the CPU up to its CUDA work*"):
        result.stdout.fnmatch_lines([pattern])
