"""Running a job function from the command line (``python -m backend generate / edit``): the device
choice, a context that prints progress and stops on the first Ctrl+C (keeping what the job has), and
writing the result (splats by extension, plus ``<out>.json`` with metrics and meta)."""
from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backend.job_api import JobError, JobResult
from shared.splats import Splats


def cli_device(choice: str) -> str | None:
    """"auto" / "cpu" / "cuda" -> the torch device to use; None (after printing why) when "cuda" is
    asked for and torch sees no CUDA GPU."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return None
    return choice


class CliContext:
    """A ``JobContext`` for the command line: progress lines on stderr (at most one per 2 s, and every
    ``stage``, with its step/total when it counts); ``stop`` set by the first Ctrl+C."""

    def __init__(self, device: str, job_dir: Path):
        self.device = device
        self.job_dir = job_dir
        self.stop = False
        self._last = 0.0

    def report(self, step: int, total: int, metrics: dict, preview: Splats | None = None) -> None:
        now = time.monotonic()
        if "stage" in metrics:      # a stage may count its own steps ("extracting features 37/150")
            print(f"{metrics['stage']}" + (f" {step}/{total}" if total else " ..."), file=sys.stderr, flush=True)
        elif now - self._last >= 2.0 or step >= total:
            self._last = now
            print(f"step {step}/{total}  loss {metrics.get('loss', float('nan')):.4g}  "
                  f"gaussians {int(metrics.get('num_gaussians', 0))}  {metrics.get('steps_per_s', 0):.2f} it/s  "
                  f"eta {metrics.get('eta_s', 0):.0f} s", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return self.stop


def run_job_cli(job: Callable[[dict, dict, CliContext], JobResult], params: dict, payload: dict,
                device: str) -> JobResult:
    """Run ``job(params, payload, ctx)`` with a ``CliContext``; the first Ctrl+C asks it to finish early
    (a second one aborts). ``JobError`` propagates."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = CliContext(device, Path(tmp))
        previous = signal.getsignal(signal.SIGINT)

        def _stop(signum, frame):   # first Ctrl+C: finish early and write what we have
            print("stopping after this step (Ctrl+C again to abort)", file=sys.stderr, flush=True)
            ctx.stop = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, _stop)
        try:
            return job(params, payload, ctx)
        finally:
            signal.signal(signal.SIGINT, previous)


def write_cli_result(out: str | Path, result: JobResult) -> Path:
    """Write the result's splats to ``out`` (format by extension) and ``<out>.json`` (metrics, meta);
    returns the JSON's path."""
    from shared.formats import write_splats
    out = Path(out)
    write_splats(out, result.splats)
    meta_path = out.with_suffix(out.suffix + ".json")
    meta_path.write_text(json.dumps({"metrics": result.metrics, "meta": result.meta}, indent=2, default=str))
    print(f"wrote {out} ({len(result.splats)} splats) and {meta_path}", file=sys.stderr)
    return meta_path


def report_job_error(exc: JobError) -> int:
    """Print ``error (code): message`` and return the CLI's exit status for a failed job (1)."""
    print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
    return 1
