"""What this backend can do: the fields of the server's ``hello`` reply.

Nothing here runs on the socket loop per message except ``hello_fields``, which only reads
what was collected.
Probing gsplat's CUDA extension can trigger a JIT build that takes minutes on a fresh machine, so
it runs in a background thread (after the model scan); until it finishes ``gsplat_cuda`` reads
False.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("splatbridge.server")

SERVER_VERSION = "0.1.0"


class DeviceError(Exception):
    """The requested compute device is not available."""


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU raises."""
    if requested not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                          "install the CUDA build of torch or use --device cpu")
    return "cpu"


class Capabilities:
    """Collects the device facts once; ``hello_fields`` builds a ``hello`` reply's fields.

    The model list comes from ``backend.models.available_models()``, which imports torch and
    looks at the hub cache: it runs in a background thread at start-up and again (in the
    background) when a ``hello`` finds it older than ``models_max_age_s``; ``hello`` answers
    with the last list (empty until the first scan finished) and never waits for it.
    """

    def __init__(self, device: str, job_kinds: list[str], models_max_age_s: float = 60.0):
        self.device = device
        self.job_kinds = list(job_kinds)
        self.cuda = False
        self.gpu_name: str | None = None
        self.gpu_memory_bytes: int | None = None
        self.gsplat_cuda = False
        self._models: Any = []
        self._models_at = -1e9
        self._models_max_age_s = models_max_age_s
        self._scan_lock = threading.Lock()
        self._scanning = False
        if device == "cuda":
            import torch
            self.cuda = True
            props = torch.cuda.get_device_properties(0)
            self.gpu_name = str(props.name)
            self.gpu_memory_bytes = int(props.total_memory)
        self._background(probe_gsplat=self.cuda)

    def _background(self, probe_gsplat: bool = False) -> None:
        with self._scan_lock:
            if self._scanning:
                return
            self._scanning = True
        threading.Thread(target=self._scan, args=(probe_gsplat,), name="capabilities",
                         daemon=True).start()

    def _scan(self, probe_gsplat: bool) -> None:
        try:
            self._models = self._list_models()
            self._models_at = time.monotonic()
            if probe_gsplat:
                self._probe_gsplat()
        finally:
            with self._scan_lock:
                self._scanning = False

    def _probe_gsplat(self) -> None:
        from backend.render import gsplat_cuda_available  # the rasterizer's own test (cached)
        self.gsplat_cuda = gsplat_cuda_available()
        log.info("gsplat CUDA extension: %s", "available" if self.gsplat_cuda else "missing")

    @staticmethod
    def _list_models() -> Any:
        """``backend.models.available_models()`` when that module imports, else []."""
        try:
            from backend.models import available_models
        except Exception as exc:
            log.info("model list unavailable (backend.models does not import: %s)", exc)
            return []
        try:
            return available_models()
        except Exception as exc:
            log.warning("available_models() failed: %s", exc)
            return []

    def hello_fields(self, protocol_version: int) -> dict[str, Any]:
        if time.monotonic() - self._models_at > self._models_max_age_s:
            self._background()
        return {
            "protocol": protocol_version,
            "server_version": SERVER_VERSION,
            "device": self.device,
            "cuda": self.cuda,
            "gsplat_cuda": bool(self.gsplat_cuda),
            "gpu_name": self.gpu_name,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "job_kinds": self.job_kinds,
            "models": self._models,
        }
