"""Run ``gpu``-marked tests on machines without CUDA as far as the CPU reaches, so a GPU test cannot
rot unseen: its fixtures and parameters are set up and its body runs until its first CUDA call.

On such a machine the body runs with ``torch.cuda``'s lazy initialisation replaced by one that raises
``CudaReached``. A body that stops there, or on an error that names CUDA (e.g. "backend 'gsplat'
needs a CUDA GPU", a server refusing ``--device cuda``), is reported as skipped ("reached CUDA work");
any other error (a KeyError in the test's own context, a fixture that broke) fails the test.
conftest.py imports the hook below; ``-p gpu_on_cpu`` loads it elsewhere.
"""
from __future__ import annotations

import pytest


class CudaReached(RuntimeError):
    """The test body asked for CUDA on a machine without it."""


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def _reached_cuda(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CudaReached) or "CUDA" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if "gpu" not in item.keywords or _cuda_available():
        return          # the normal run
    import torch.cuda

    def no_cuda(*args, **kwargs):
        raise CudaReached("this machine has no CUDA: the test reached its first CUDA call")

    real = torch.cuda._lazy_init
    torch.cuda._lazy_init = no_cuda
    try:
        item.runtest()
    except pytest.skip.Exception:
        raise
    except BaseException as exc:    # noqa: BLE001 (sorted below)
        if _reached_cuda(exc):
            pytest.skip(f"needs CUDA; ran on the CPU up to its CUDA work ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")
        raise
    finally:
        torch.cuda._lazy_init = real
    pytest.skip("needs CUDA; its body ran through on the CPU without calling CUDA")
