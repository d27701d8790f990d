"""Steps per second and time left for the progress messages of long jobs."""
from __future__ import annotations

import time
from collections.abc import Callable


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
