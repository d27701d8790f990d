"""backend.optim_loop.run_steps: the step loop every optimising job uses (cancel, progress, previews)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from backend.optim_loop import run_steps
from shared.splats import Splats


class Ctx:
    def __init__(self, stop_after: int | None = None):
        self.device, self.job_dir = "cpu", Path(".")
        self.reports: list[tuple[int, int, dict, Splats | None]] = []
        self.stop_after = stop_after
        self.steps_run = 0

    def report(self, step, total, metrics, preview=None):
        self.reports.append((step, total, metrics, preview))

    def should_stop(self):
        return self.stop_after is not None and self.steps_run >= self.stop_after


def test_previews_every_n_steps_metrics_converted_only_when_reported():
    ctx = Ctx()
    evaluated: list[int] = []

    def step(i):
        ctx.steps_run += 1
        return {"loss": torch.tensor(float(i)), "psnr": lambda i=i: evaluated.append(i) or 20.0 + i}

    out = run_steps(10, step, ctx, snapshot=lambda: Splats.random(3, seed=ctx.steps_run), preview_every=4,
                    report_interval_s=3600.0)
    # reports only with a preview (steps 4 and 8) and at the last step; no preview at the last step
    assert [(r[0], r[3] is not None) for r in ctx.reports] == [(4, True), (8, True), (10, False)]
    assert evaluated == [3, 7, 9]                     # callables run only for the reports
    assert ctx.reports[-1][2]["loss"] == 9.0 and isinstance(ctx.reports[-1][2]["loss"], float)
    assert {"steps_per_s", "eta_s"} <= set(ctx.reports[0][2])
    assert out.steps_done == 10 and not out.cancelled and out.metrics["psnr"] == 29.0


def test_cancel_stops_before_the_next_step():
    ctx = Ctx(stop_after=3)

    def step(i):
        ctx.steps_run += 1
        return {"loss": 1.0}

    out = run_steps(100, step, ctx)
    assert out.cancelled and out.steps_done == 3 and ctx.steps_run == 3
    assert [r[0] for r in ctx.reports] == [1, 2, 3]   # report_interval_s 0: every step
    assert all(r[3] is None for r in ctx.reports)      # no snapshot function: no previews


def test_automatic_previews_are_rate_limited():
    ctx = Ctx()

    def step(i):
        time.sleep(0.02)
        return {"loss": 1.0}

    out = run_steps(30, step, ctx, snapshot=lambda: Splats.random(2, seed=0), auto_preview_s=0.25)
    previews = [r[0] for r in ctx.reports if r[3] is not None]
    assert previews[0] == 1                            # the first one right away
    # then at most one per 0.25 s (the run takes >= 0.6 s)
    assert 2 <= len(previews) <= 1 + out.seconds / 0.25, (previews, out.seconds)
    assert len(ctx.reports) == 30                      # progress at every step
