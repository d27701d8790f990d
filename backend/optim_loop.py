"""The one optimisation step loop of the jobs (train, generate, edit): cancel, step timing,
progress with rate and ETA, rate-limited previews and metrics. Each kind supplies only its step.

``step(i)`` runs step ``i`` (0-based) and returns its metrics. Values may be tensors or
zero-argument callables: they are turned into floats only when a progress message goes out,
so a GPU job does not wait for the device on every step just to report.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.job_api import JobContext
from backend.progress import StepRate
from shared.splats import Splats

StepFunction = Callable[[int], Mapping[str, Any]]


@dataclass
class LoopResult:
    """How the loop ended: ``steps_done`` (steps finished), ``cancelled`` (a cancel stopped it),
    ``seconds`` (wall time of the loop), ``steps_per_s`` (the smoothed rate of the last report;
    ``mean_steps_per_s`` is steps_done / seconds) and the last reported ``metrics``."""

    steps_done: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    steps_per_s: float = 0.0
    mean_steps_per_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _value(v: Any) -> float:
    if callable(v):
        v = v()
    if hasattr(v, "detach"):
        v = v.detach()
    return float(v)


def run_steps(total: int, step: StepFunction, ctx: JobContext, *,
              snapshot: Callable[[], Splats] | None = None, preview_every: int = 0,
              auto_preview_s: float | None = None, report_interval_s: float = 0.0,
              eta: Callable[[int], float] | None = None) -> LoopResult:
    """Run ``step(0) .. step(total - 1)``, stopping before a step once ``ctx.should_stop()``.

    Progress: ``ctx.report(done, total, metrics + {steps_per_s, eta_s}, preview)`` after a step
    when ``report_interval_s`` has passed since the last report, at the last step, and with every
    preview. Previews (``snapshot()``, never after the last step): every ``preview_every`` steps,
    or, when that is 0, every ``auto_preview_s`` seconds (None: no previews). ``eta(done)``, when
    given, replaces the reported ``eta_s`` (seconds left; a kind whose steps grow costlier knows
    better than the current rate), called only when a report goes out.
    """
    meter = StepRate(total)
    timing = meter.update(0)
    out = LoopResult()
    t0 = time.perf_counter()
    t_report = t0
    last_preview = -float("inf")      # the first automatic preview goes out after the first step
    for i in range(total):
        if ctx.should_stop():
            out.cancelled = True
            break
        metrics = step(i)
        done = i + 1
        out.steps_done = done
        timing = meter.update(done)
        now = time.perf_counter()
        if snapshot is None or done >= total:
            want_preview = False
        elif preview_every > 0:
            want_preview = done % preview_every == 0
        else:
            want_preview = auto_preview_s is not None and now - last_preview >= auto_preview_s
        if want_preview or done == total or now - t_report >= report_interval_s:
            out.metrics = {k: _value(v) for k, v in metrics.items()}
            preview = None
            if want_preview and snapshot is not None:
                preview = snapshot()
                last_preview = time.perf_counter()
            if eta is not None:
                timing = {**timing, "eta_s": eta(done)}
            ctx.report(done, total, {**out.metrics, **timing}, preview)
            t_report = now
    out.seconds = time.perf_counter() - t0
    out.steps_per_s = timing["steps_per_s"]
    out.mean_steps_per_s = out.steps_done / max(out.seconds, 1e-9)
    return out
