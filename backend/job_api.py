"""The contract between the job runner and the job functions (train, generate, ...).

A job function has the signature::

    def run(params: dict, payload: dict, ctx: JobContext) -> JobResult

``params`` are the plain msgpack values of the ``submit`` message, ``payload``
its arrays (numpy, already validated by the protocol layer). The function
calls ``ctx.report`` as it goes and polls ``ctx.should_stop()``; when that is
true it returns the result as it stands (a cancelled job still yields splats).
Errors are raised as ``JobError`` (a user-facing message) or any exception
(reported as an internal error); the runner turns them into ``error`` replies.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from shared.splats import Splats


class JobError(Exception):
    """A job failed for a reason the user can act on. ``code`` is a short machine tag."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JobContext(Protocol):
    job_dir: Path          # a folder of this job's own in the job store (scratch + outputs)
    device: str            # torch device string: "cuda" or "cpu"

    def report(self, step: int, total: int, metrics: dict[str, float],
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

    def report(self, step: int, total: int, metrics: dict[str, float],
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


JobFunction = Callable[[dict, dict, JobContext], JobResult]
