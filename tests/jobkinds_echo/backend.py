"""The ``echo`` job kind's job function and command line (``python -m backend echo MESSAGE --out F``)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from backend.job_api import JobContext, JobResult, checked_settings
from backend.job_cli import KindCli, Positional
from backend.optim_loop import run_steps
from shared.jobspec import Settings
from shared.sh import rgb_to_sh0
from shared.splats import Splats

DEFAULT_POINTS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)


def splats_at(points: np.ndarray, colors: np.ndarray | None = None) -> Splats:
    n = len(points)
    rgb = (colors.astype(np.float32) / 255.0 if colors is not None else np.full((n, 3), 0.5, np.float32))
    return Splats(means=points.astype(np.float32), quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
                  scales=np.full((n, 3), -3.0, np.float32), opacities=np.zeros(n, np.float32),
                  sh0=rgb_to_sh0(rgb))


def run_echo_job(params: Settings | dict, payload: dict, ctx: JobContext) -> JobResult:
    payload = payload or {}
    s = checked_settings("echo", params, payload)
    points = np.array(payload["points"] if payload.get("points") is not None else DEFAULT_POINTS, np.float32)
    colors = payload.get("colors")
    delta = np.float32([s.shift if s.mode == "shift" else 0.0, 0.0, 0.0])

    def step(i: int) -> dict[str, Any]:
        nonlocal points
        time.sleep(s.dt)
        points = points + delta
        return {"loss": 1.0 / (i + 1), "num_gaussians": len(points)}

    loop = run_steps(s.steps, step, ctx, snapshot=lambda: splats_at(points, colors),
                     preview_every=s.preview_every, auto_preview_s=1.0)
    return JobResult(splats_at(points, colors), {"steps_done": float(loop.steps_done)},
                     {"message": s.message, "cancelled": loop.cancelled, "steps_done": loop.steps_done,
                      "settings": s.to_meta()})


CLI = KindCli(positionals=(Positional("message", "text to echo back in the result's meta", setting="message"),))
