"""The contract between the job runner and the job functions (train, generate, ...).

A job kind is a spec (``shared/jobkinds/<kind>.py``, a ``shared.jobspec.JobSpec``) whose
``runner`` names its job function::

    def run(settings: Settings, payload: dict, ctx: JobContext) -> JobResult

``settings`` are the ``submit`` message's params as checked by ``spec.validate`` (the server
does that before queueing the job), ``payload`` its arrays (numpy; checked against the spec's
payload schema). Library callers may pass plain params: ``checked_settings`` validates them. The function
calls ``ctx.report`` as it goes and polls ``ctx.should_stop()``; when that is
true it returns the result as it stands (a cancelled job still yields splats).
Errors are raised as ``JobError`` (a user-facing message) or any exception
(reported as an internal error); the runner turns them into ``error`` replies.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.jobkinds import load_builtin
from shared.jobspec import JobError, Settings, get_spec
from shared.splats import Splats

__all__ = ["JobContext", "JobError", "JobFunction", "JobResult", "NullContext", "checked_settings"]


def checked_settings(kind: str, params: Settings | Mapping[str, Any] | None,
                     payload: Mapping[str, Any] | None = None) -> Settings:
    """``params`` as checked ``Settings`` of ``kind``: returned as they are when the runner (or a
    caller) already validated them, else ``get_spec(kind).validate(params, payload)``. Raises
    ``JobError`` (``bad_params`` / ``bad_input``)."""
    if isinstance(params, Settings):
        if params.kind != kind:
            raise JobError("bad_params", f"settings of a {params.kind} job given to the {kind} job")
        return params
    load_builtin()
    return get_spec(kind).validate(params or {}, payload or {})


class JobContext(Protocol):
    job_dir: Path          # a folder of this job's own in the job store (scratch + outputs)
    device: str            # torch device string: "cuda" or "cpu"

    def report(self, step: int, total: int, metrics: dict[str, Any],
               preview: Splats | None = None) -> None:
        """Stream a ``progress`` message. ``metrics`` keys used by the UI: loss, psnr,
        num_gaussians, steps_per_s, eta_s, and ``stage`` (a string: what the job is doing before its
        steps start, e.g. loading a model; report it as step 0 of 0). ``preview`` is sent when given
        (rate-limit it)."""

    def should_stop(self) -> bool:
        """True once a cancel arrived: return the current result promptly."""


class NullContext:
    """A ``JobContext`` for direct library calls: reports nothing, never stops."""

    def __init__(self, device: str = "cpu", job_dir: Path | None = None):
        self.device = device
        self.job_dir = job_dir if job_dir is not None else Path(tempfile.gettempdir())

    def report(self, step: int, total: int, metrics: dict[str, Any],
               preview: Splats | None = None) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class JobResult:
    splats: Splats
    metrics: dict[str, float] = field(default_factory=dict)   # e.g. eval_psnr, eval_ssim
    # settings, seed, ...; "cancelled": whether the job stopped early (when absent, the runner
    # assumes it did if a cancel arrived while it ran)
    meta: dict[str, Any] = field(default_factory=dict)


JobFunction = Callable[[Settings, dict, JobContext], JobResult]
