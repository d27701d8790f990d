"""backend.progress.ReportThrottle: the one rate limit for job progress, in-process and in a Ray task."""
from __future__ import annotations

import numpy as np

from backend.progress import ReportThrottle, plain_metrics
from shared.splats import Splats


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _splats(n: int = 3) -> Splats:
    rng = np.random.default_rng(0)
    return Splats(rng.normal(size=(n, 3)), np.tile([1.0, 0, 0, 0], (n, 1)), np.zeros((n, 3)),
                  np.zeros(n), np.zeros((n, 3)), None)


def test_rate_limit_final_step_and_previews() -> None:
    clock = Clock()
    th = ReportThrottle(min_interval_s=1.0, preview_interval_s=5.0, clock=clock)
    assert th.event(0, 10, {"loss": np.float32(0.5)}) == {"step": 0, "total": 10, "metrics": {"loss": 0.5}}
    clock.t += 0.5
    assert th.event(1, 10, {}) is None                      # inside the interval
    clock.t += 0.6
    assert th.event(2, 10, {})["step"] == 2
    clock.t += 0.1
    assert th.event(10, 10, {})["step"] == 10               # the final step always goes out
    sp = _splats()
    clock.t += 0.1
    ev = th.event(10, 10, {}, sp)                           # first preview: due
    assert ev is not None and np.array_equal(ev["preview"]["means"], sp.means)
    assert ev["preview"]["means"] is not sp.means           # copied
    clock.t += 1.5
    ev = th.event(10, 10, {}, sp)                           # final step, preview not due yet
    assert ev is not None and "preview" not in ev
    clock.t += 4.0
    assert "preview" in th.event(10, 10, {}, sp)


def test_steps_only_go_forward_within_a_stage() -> None:
    clock = Clock()
    th = ReportThrottle(min_interval_s=0.0, clock=clock)
    assert th.event(5, 10, {"stage": "features"}) is not None
    assert th.event(3, 10, {"stage": "features"}) is None   # backwards in one stage: dropped
    assert th.event(0, 4, {"stage": "matching"})["step"] == 0  # a new stage counts anew
    assert th.event(2, 1, {})["total"] == 2                 # total never below step


def test_unsend_forgets_an_event_that_was_not_sent() -> None:
    clock = Clock()
    th = ReportThrottle(min_interval_s=1.0, clock=clock)
    assert th.event(3, 10, {}) is not None
    th.unsend()
    assert th.event(2, 10, {}) is not None                  # neither the time nor the step counted


def test_plain_metrics_unwraps_scalars() -> None:
    import torch
    out = plain_metrics({"a": np.float64(1.5), "b": np.array(2), "c": torch.tensor(3.0), 4: "x"})
    assert out == {"a": 1.5, "b": 2, "c": 3.0, "4": "x"}
    assert all(type(v) in (float, int, str) for v in out.values())


def test_restart_lets_a_rerun_count_from_zero() -> None:
    th = ReportThrottle(min_interval_s=0.0, clock=Clock())
    assert th.event(7, 10, {}) is not None
    assert th.event(1, 10, {}) is None
    th.restart()
    assert th.event(1, 10, {})["step"] == 1
