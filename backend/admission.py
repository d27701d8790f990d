"""Admission control at submit: what cannot run is refused before anything is stored.

After the kind's spec has checked the params and payload (``bad_params`` / ``bad_input``), a submit
is refused with

- ``too_large`` (it could never run here) when its own inputs are more than ``max_inputs_bytes``,
  or its memory estimate is more than the device's memory for a job;
- ``queue_full`` (it may be submitted again later) when the client already has
  ``max_queued_per_client`` jobs waiting, or the server ``max_queued`` (all clients; running jobs do
  not count), or when its inputs and those the waiting and running jobs hold (in memory until a
  job starts, then in the job store) would be more than ``max_inputs_bytes``.

**Memory estimate** (``estimate_job_bytes``, bytes; deliberately simple, and on the high side):
views ``C x H x W`` cost the images (RGBA u8, about three copies) plus, per rendered pixel, what one
training step holds (on the CPU about 1.2 kB a pixel, measured: one step at 1536 x 1536 px peaks at
2.8 GB; with gsplat on CUDA far less, 0.25 kB); Gaussians cost about 1.1 kB each (59 parameters,
their gradients and two Adam moments, plus the rasterizer's per-splat buffers) up to the run's cap
(``max(initial count, max_gaussians)``); diffusion models count their weights (a local folder: its
size on disk; a hub id: 3 GiB on CUDA in fp16, 6 GiB on the CPU in fp32). Train with
``dataset_path``, whose images are only read when the job starts, counts its Gaussians only.

**The device's memory for jobs** is measured once, when the server starts (so a running job does
not make the next submit look too big): on CUDA the GPU's free memory; on the CPU the least of the
machine's available memory, the cgroup's limit minus its use, and ``RLIMIT_AS`` minus the server's
address space; ``serve --max-job-memory-gb`` overrides it. With ``--executor ray`` the jobs run on
other machines, so only ``--max-job-memory-gb`` applies (no check without it).
"""
from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.jobkinds.train import for_device as train_for_device
from shared.jobspec import JobError, Settings

GIB = 2 ** 30
MIB = 2 ** 20
BYTES_PER_GAUSSIAN = 1100
BYTES_PER_PIXEL = {"cpu": 1200, "cuda": 256}
IMAGE_COPIES = 3
HUB_MODEL_BYTES = {"cpu": 6 * GIB, "cuda": 3 * GIB}
CPU_RUNTIME_BYTES = 512 * MIB      # JIT-compiled rasterizer kernels and their compiler, once


@dataclass(frozen=True)
class Caps:
    """The ``serve`` options of admission control (0 turns a cap off)."""

    max_queued_per_client: int = 16
    max_queued: int = 64
    max_inputs_bytes: int = 2 * GIB
    max_job_memory_bytes: int = 0          # 0: the device's memory, measured at start
    max_uploads_bytes_per_client: int = 32 * GIB


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 ``memory.max - memory.current`` of this process's group (None: no limit)."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split("::", 1)[1]
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text().strip())
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` minus this process's virtual size (None: no limit)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft


def device_memory(device: str) -> int:
    """Bytes of memory a job may use on ``device`` now (see the module docstring)."""
    if device == "cuda":
        import torch
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    figures = [f for f in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom())
               if f is not None]
    return max(0, min(figures)) if figures else 8 * GIB


def _shape(payload: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    v = payload.get(key)
    shape = getattr(v, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def _model_bytes(model: str, device: str) -> int:
    p = Path(model)
    if p.is_absolute() and p.is_dir():
        return int(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) * 1.2)
    return HUB_MODEL_BYTES["cuda" if device == "cuda" else "cpu"]


def _splat_count(payload: Mapping[str, Any]) -> int:
    splats = payload.get("splats")
    if isinstance(splats, Mapping):
        s = _shape(splats, "means")
        if s:
            return s[0]
    return 0


def estimate_job_bytes(kind: str, s: Settings, payload: Mapping[str, Any], device: str) -> int:
    """Peak memory of a job, in bytes (see the module docstring)."""
    dev = "cuda" if device == "cuda" else "cpu"
    px_cost = BYTES_PER_PIXEL[dev]
    runtime = CPU_RUNTIME_BYTES if dev == "cpu" else 0
    payload_bytes = sum(int(getattr(v, "nbytes", 0)) for v in payload.values())
    if kind == "train":
        s = train_for_device(s, dev)          # per-device nulls (init_points, steps) filled in
        shape = _shape(payload, "images")
        views = 0
        if shape is not None and len(shape) == 4:
            c, h, w = shape[:3]
            views = c * h * w * 4 * IMAGE_COPIES + h * w * px_cost
        pts = _shape(payload, "points")
        initial = pts[0] if pts else s.init_points
        return runtime + views + BYTES_PER_GAUSSIAN * max(initial, s.max_gaussians)
    if kind == "reconstruct":
        side = s.max_image_size // max(1, s.train_downscale)
        return runtime + side * side * px_cost + BYTES_PER_GAUSSIAN * s.max_gaussians
    if kind == "generate":
        render = s.resolution ** 2 * s.batch_size * px_cost
        models = _model_bytes(s.guidance_model, dev)
        if s.init == "shap-e":
            models += _model_bytes(s.prior_model, dev)
        n = max(s.num_points, s.max_gaussians)
        return runtime + render + models + BYTES_PER_GAUSSIAN * n
    if kind == "edit":
        views = s.num_views * s.resolution ** 2 * 3 * 4 * 2 + s.resolution ** 2 * px_cost
        return (runtime + views + _model_bytes(s.edit_model, dev)
                + BYTES_PER_GAUSSIAN * _splat_count(payload))
    if kind == "segment":
        shape = _shape(payload, "labels")
        px = shape[1] * shape[2] if shape and len(shape) == 3 else 0
        n = _splat_count(payload)
        return runtime + payload_bytes + px * px_cost + n * (BYTES_PER_GAUSSIAN + 8 * s.labels_per_pass)
    return payload_bytes * 2           # a plug-in kind: its inputs and a working copy


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


class Admission:
    """Applies ``Caps`` and the memory estimate at submit (socket thread)."""

    def __init__(self, device: str, caps: Caps = Caps(), measure: bool = True):
        """``measure=False`` (jobs run elsewhere, e.g. on a Ray cluster): the memory check uses
        ``caps.max_job_memory_bytes`` only, none when it is 0."""
        self.device = device
        self.caps = caps
        self.memory = caps.max_job_memory_bytes or (device_memory(device) if measure else 0)

    def check(self, kind: str, settings: Settings, payload: Mapping[str, Any], owner: str | None,
              queued_by_owner: int, queued: int, held_inputs: int, inputs: int) -> int:
        """Raise ``JobError('queue_full' | 'too_large')`` or return the job's memory estimate.
        ``queued_by_owner``/``queued``: jobs waiting now (this client's, everyone's);
        ``held_inputs``: payload bytes of queued and running jobs; ``inputs``: this job's."""
        caps = self.caps
        # first what could never run (too_large), then what must wait its turn (queue_full)
        if caps.max_inputs_bytes and inputs > caps.max_inputs_bytes:
            raise JobError("too_large", f"this job's inputs ({inputs / MIB:.1f} MiB) are more than the "
                                        f"server takes ({caps.max_inputs_bytes / MIB:.0f} MiB)")
        need = estimate_job_bytes(kind, settings, payload, self.device)
        if self.memory and need > self.memory:
            raise JobError("too_large", f"the {kind} job needs about {_gib(need)} of "
                           f"{'GPU' if self.device == 'cuda' else 'CPU'} memory and this server has "
                           f"{_gib(self.memory)} for a job: use fewer or smaller views, fewer "
                           "initial points or a lower max_gaussians"
                           + (", or a GPU server" if self.device != "cuda" else ""))
        if caps.max_queued_per_client and owner is not None and queued_by_owner >= caps.max_queued_per_client:
            raise JobError("queue_full", f"you already have {queued_by_owner} jobs waiting (at most "
                                         f"{caps.max_queued_per_client} per client): wait for some to "
                                         "finish, or cancel some, and submit again")
        if caps.max_queued and queued >= caps.max_queued:
            raise JobError("queue_full", f"the server's queue is full ({queued} jobs waiting, at most "
                                         f"{caps.max_queued}); submit again when it has room")
        if caps.max_inputs_bytes and held_inputs + inputs > caps.max_inputs_bytes:
            raise JobError("queue_full", f"this job's inputs ({inputs / MIB:.1f} MiB) do not fit beside "
                                         f"those of the waiting and running jobs ({held_inputs / MIB:.1f} "
                                         f"MiB; at most {caps.max_inputs_bytes / MIB:.0f} MiB together); "
                                         "submit again later")
        return need


__all__ = ["Admission", "Caps", "device_memory", "estimate_job_bytes"]
