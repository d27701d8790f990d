"""Progress of long jobs: steps per second and time left (``StepRate``), and which reports become
progress messages (``ReportThrottle``, ``plain_metrics``)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.splats import Splats

log = logging.getLogger(__name__)


class StepRate:
    """Rate and ETA of a loop of ``total`` steps.

    The rate is an exponential moving average over windows of at least ``window_s`` seconds
    (the newest window weighs ``smoothing``): the ETA follows slow changes, such as a scene that
    grows by densification, without jumping when a single step stalls on a busy machine.
    """

    def __init__(self, total: int, smoothing: float = 0.25, window_s: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter):
        self.total = int(total)
        self.smoothing = smoothing
        self.window_s = window_s
        self.clock = clock
        self._t = clock()
        self._done = 0
        self.rate: float | None = None

    def update(self, done: int) -> dict[str, float]:
        """Record that ``done`` steps are finished; returns ``{"steps_per_s", "eta_s"}``."""
        now = self.clock()
        if now - self._t >= self.window_s or self.rate is None and done > self._done:
            window_rate = (done - self._done) / max(now - self._t, 1e-9)
            self.rate = window_rate if self.rate is None else \
                (1 - self.smoothing) * self.rate + self.smoothing * window_rate
            self._t, self._done = now, done
        rate = self.rate or 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        return {"steps_per_s": rate, "eta_s": eta}


def plain_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics as plain Python values (numpy and torch scalars and 0-d arrays unwrapped), keys as str."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v.item()
        elif hasattr(v, "item") and callable(v.item) and not isinstance(v, np.ndarray):
            try:                       # numpy / torch scalars
                v = v.item()
            except (TypeError, ValueError, RuntimeError):
                pass
        out[str(k)] = v
    return out


class ReportThrottle:
    """Which of a job's ``report(step, total, metrics, preview)`` calls become a progress event.

    The one rate limit for every place a job reports from (the server's own worker thread and a
    Ray task): at most one event per ``min_interval_s``, at most one preview per
    ``preview_interval_s``, the final step (``step >= total``) always. Steps only go forward within
    a stage (``metrics["stage"]``: a job of several stages, e.g. reconstruct, counts each stage's
    steps from 0); a step that goes back is dropped with a warning. Preview arrays are copied,
    because a trainer's numpy views may share memory with tensors that keep changing.
    """

    def __init__(self, min_interval_s: float = 0.05, preview_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "job"):
        self.min_interval_s = min_interval_s
        self.preview_interval_s = preview_interval_s
        self.clock = clock
        self.name = name
        self._last_sent = -1e9
        self._last_preview = -1e9
        self._last_step = -1
        self._stage: Any = None
        self._undo = (self._last_sent, self._last_step, self._last_preview)

    def event(self, step: int, total: int, metrics: dict[str, Any] | None,
              preview: Splats | None = None) -> dict[str, Any] | None:
        """The progress fields to send now (``step``, ``total``, ``metrics``, maybe ``preview``:
        the preview's arrays), or None when this report is to be skipped. Calling it counts as
        sending: a caller that then fails to send should call ``unsend()``."""
        step, total = int(step), int(total)
        now = self.clock()
        want_preview = preview is not None and now - self._last_preview >= self.preview_interval_s
        if not (step >= total or want_preview or now - self._last_sent >= self.min_interval_s):
            return None
        stage = metrics.get("stage") if isinstance(metrics, dict) else None
        if stage != self._stage:         # a new stage (or the steps after the stages) counts anew
            self._stage, self._last_step = stage, -1
        if step < self._last_step:
            log.warning("%s reported step %d after step %d; dropped", self.name, step, self._last_step)
            return None
        fields: dict[str, Any] = {"step": step, "total": max(total, step), "metrics": plain_metrics(metrics)}
        self._undo = (self._last_sent, self._last_step, self._last_preview)
        if want_preview and preview is not None:
            fields["preview"] = {k: np.array(v, copy=True) for k, v in preview.to_arrays().items()}
            self._last_preview = now
        self._last_sent, self._last_step = now, step
        return fields

    def restart(self) -> None:
        """The job starts over: steps may begin again from 0."""
        self._stage, self._last_step = None, -1

    def unsend(self) -> None:
        """Forget the last ``event()``: it could not be sent (e.g. it did not encode)."""
        self._last_sent, self._last_step, self._last_preview = self._undo
