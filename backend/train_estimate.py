"""Before a training run: how long it will take, and how many CPU threads it should use.

The estimate is a pure function (``estimate_seconds``) of the settings, the image size, the number
of views, the device and one measured figure, ``step_seconds``: the time of one training step
(forward, loss, backward, optimiser) at the initial number of Gaussians, which the trainer measures
in a tiny calibration on its own data before the first real step (``calibrate``: a few
forward + backward passes of a training view, without changing the Gaussians). The model on top of
the measurement:

- a step costs ``step_seconds * ((1 - GAUSSIAN_SHARE) + GAUSSIAN_SHARE * N / N0)`` with ``N`` the
  number of Gaussians at that step (fitted on this project's CPU rasterizer at 64 px: about half of
  a step's time grows with ``N``, the rest is per pixel and fixed overhead);
- ``N`` over the run: MCMC grows by 5 % at every refinement up to its cap (exact, from the
  schedule); the default strategy is taken to stay near ``N0`` (its clones and prunes balance on the
  scenes of ``bench/quality.py``, within 40 % either way);
- plus the end-of-run evaluation (one forward pass per held-out view and per scored train view).

The calibration also picks the thread count on the CPU: it times the probe with one thread and with
all of torch's, and keeps the faster (the machine may be shared: under load one thread was 3x
faster than the default). ``OMP_NUM_THREADS`` set by the user wins.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from shared.jobspec import Settings

GAUSSIAN_SHARE = 0.5       # the part of a step's time that grows with the number of Gaussians
STEP_OVERHEAD = 1.15       # a full step (optimiser, strategy, bookkeeping) over the probe's forward + backward
FORWARD_SHARE = 0.35       # an evaluation render over a training step
EVAL_TRAIN_VIEWS = 8       # train views the trainer scores at the end (``train_psnr``)


def gaussian_counts(settings: Settings, schedule: dict[str, int], n0: int) -> list[tuple[int, int]]:
    """The expected number of Gaussians over the run as (from_step, count) pieces."""
    if settings.strategy != "mcmc":
        return [(0, n0)]
    pieces = [(0, n0)]
    n = n0
    for step in range(schedule["refine_start"] + 1, min(schedule["refine_stop"], settings.steps)):
        if step % schedule["refine_every"] == 0:
            grown = min(settings.max_gaussians, int(1.05 * n))
            if grown != n:
                n = grown
                pieces.append((step, n))
    return pieces


def estimate_seconds(settings: Settings, schedule: dict[str, int], width: int, height: int, views: int,
                     holdout_views: int, device_type: str, step_seconds: float, n0: int) -> float:
    """Seconds the training loop and its final evaluation will take (``settings.steps`` resolved).

    ``step_seconds``: the measured time of one step at ``n0`` Gaussians at this image size on this
    device (``calibrate``). ``width``, ``height`` and ``device_type`` enter through that figure;
    they are arguments so that a caller that has no calibration yet can say what it is for.
    ``views`` counts all views; ``holdout_views`` those scored at the end.
    """
    del width, height, device_type      # in step_seconds (measured at this size on this device)
    pieces = gaussian_counts(settings, schedule, n0) + [(settings.steps, 0)]
    total = 0.0
    for (start, n), (stop, _) in zip(pieces, pieces[1:], strict=False):
        rel = (1.0 - GAUSSIAN_SHARE) + GAUSSIAN_SHARE * n / max(n0, 1)
        total += (stop - start) * step_seconds * rel
    n_end = pieces[-2][1]
    rel_end = (1.0 - GAUSSIAN_SHARE) + GAUSSIAN_SHARE * n_end / max(n0, 1)
    scored = holdout_views + min(EVAL_TRAIN_VIEWS, max(0, views - holdout_views))
    total += scored * FORWARD_SHARE * step_seconds * rel_end
    return total


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 4 min', 'about 2.5 h' (two significant figures at most)."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def _timed(probe: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        probe()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def user_threads() -> int | None:
    """The thread count the user asked for with ``OMP_NUM_THREADS``, if any."""
    v = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


def calibrate(probe: Callable[[], None], device_type: str, repeats: int = 3,
              choose_threads: bool = True) -> tuple[float, int, dict[int, float]]:
    """Time ``probe`` (one forward + backward that changes nothing); returns (seconds per probe at
    the chosen thread count, threads, {threads: seconds} measured).

    On the CPU, unless ``OMP_NUM_THREADS`` is set or ``choose_threads`` is false, tries one thread
    and torch's current count and leaves torch set to the faster. One untimed call first (Numba
    compiles or loads its kernels there)."""
    probe()
    if device_type == "cuda":
        torch.cuda.synchronize()
        def probe_synced() -> None:
            probe()
            torch.cuda.synchronize()

        t = _timed(probe_synced, repeats)
        return t, torch.get_num_threads(), {torch.get_num_threads(): t}
    current = torch.get_num_threads()
    candidates = [current]
    if choose_threads and user_threads() is None and current > 1:
        candidates = [1, current]
    measured: dict[int, float] = {}
    for n in candidates:
        torch.set_num_threads(n)
        if n > 1:
            probe()          # the parallel kernels compile (or load) separately
        measured[n] = _timed(probe, repeats)
    best = min(measured, key=measured.__getitem__)
    torch.set_num_threads(best)
    return measured[best], best, measured


def step_seconds_from_probe(probe_seconds: float) -> float:
    """A full training step's time from the probe's (see ``STEP_OVERHEAD``)."""
    return probe_seconds * STEP_OVERHEAD


__all__ = ["estimate_seconds", "calibrate", "format_duration", "gaussian_counts", "step_seconds_from_probe",
           "user_threads"]
