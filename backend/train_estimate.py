"""How long a training run will take: before it starts, and again while it runs; and how many CPU
threads it should use.

**Cost of a step.** A step costs ``fixed + per_gaussian * N`` seconds with ``N`` the number of
Gaussians at that step. Both parts are measured on the run's own data before the first step
(``measure_cost``): real training steps (render, loss, backward, Adam, the strategy; outside the
refinement window, so nothing grows) on throwaway copies of the initial Gaussians shrunk to a
trained scene's size (``PROBE_SHRINK``: the initial ones are far larger, and their cost falls
within the first few hundred steps as they shrink), once with ``N0`` and once with each doubled.
In units of that step: ``units(N) = (1 - share) + share * N / N0``, ``share`` from the CPU-time
ratio of the two (a busy machine slows both alike; observed 0.3-0.4 at 64 px with 2,000
Gaussians). No seconds are written here, only ratios: a real step over the probe step
(``STEP_OVERHEAD`` = 1.2: with 1.0, real / estimated CPU time was 1.19 on the alpha scene, 1.11
with MCMC, 1.36 on the opaque scene, 1.15 / 1.16 on the tests' torus at 2000 steps, all at 3000
steps unless said and with the fast rasterizer of 2026-11-29; their geometric mean) and an
evaluation render over a step (``FORWARD_SHARE``).

**Gaussians over the run** (``gaussian_counts``), from the trainer's own schedule
(``shared.jobkinds.train.schedule``: refinements at the steps ``refine_start < t < refine_stop``,
``t % refine_every == 0``) and the cap ``max_gaussians``:

- MCMC adds 5 % at every refinement up to the cap (exact).
- The default strategy (clone / split / prune) is fitted (``GROWTH``): the first refinement keeps
  ``survival`` of the initial Gaussians (random initial points in the view volume mostly die where
  the images are transparent; given points mostly live); every later one multiplies ``N`` by
  ``1 + rate * (1 - N / capacity)`` (logistic growth towards the scene's capacity). ``survival``,
  ``rate`` and ``capacity`` depend on the share of the training pixels the subject covers
  (``coverage``: alpha > 0; 1 for images without alpha). Fitted on ``bench/quality.py``'s two
  bpy scenes (``alpha``: coverage 0.18; ``opaque``: 1.0), 40 views, the CPU default of 3000 steps
  (9 refinements) at 64 px with 500, 2000 and 8000 random initial points, at 256 px with 2000, and
  with 2000 points on the mesh surface: end counts 4,337 / 6,215 / 8,698 (alpha, random),
  6,668 (alpha, 256 px), 9,922 (alpha, surface points), 23,595 (opaque). The growth does not
  depend on the image size (gsplat normalises the 2D gradient by it). Other scenes fall where
  their coverage puts them: that is a guess, which the estimate made during the run corrects.

**During the run** (``LiveEta``): the seconds per unit are measured from the steps done, and the
units left come from the same model started again from the step and the ``N`` the run is at: the
ETA shown during training converges to the real time as the run goes (exact in ``N`` once the
refinements are over).

**Threads.** The calibration also picks the thread count on the CPU: it times the probe with one
thread and with all of torch's, and keeps the faster (on a shared machine one thread was 3x faster
than the default). ``OMP_NUM_THREADS`` set by the user wins.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.jobspec import Settings

GAUSSIAN_SHARE = 0.5       # the share when it was not measured (a caller without a calibration)
STEP_OVERHEAD = 1.2        # a training step over the probe step at the same N (fitted: see the module docstring)
PROBE_SHRINK = 10.0        # the probes' Gaussians: the initial ones with their scales / this (a trained size)
FORWARD_SHARE = 0.35       # an evaluation render over a training step
EVAL_TRAIN_VIEWS = 8       # train views the trainer scores at the end (``train_psnr``)
THREADS_MARGIN = 1.25     # more threads only when the probe is this much faster: on the shared 2-core machine two
                           # threads made the README example's steps cost 2x the CPU time for no gain in wall time
MCMC_GROWTH = 1.05         # MCMCStrategy adds 5 % per refinement (backend/strategies.py)


@dataclass(frozen=True)
class Growth:
    """The default strategy's fitted growth (see the module docstring); ``c`` is the coverage."""

    survival_random: float = 1.2       # * c ** survival_exp: share of random initial points kept
    survival_exp: float = 1.6
    survival_given: float = 1.15       # given points (mesh surface samples, a dataset's points)
    rate: float = 0.43                 # * c ** rate_exp: growth per refinement while far from capacity
    rate_exp: float = -0.35
    capacity: float = 34_000.0         # * c ** capacity_exp * (N0 / 2000) ** capacity_n0_exp
    capacity_exp: float = 0.9
    capacity_n0_exp: float = 0.2

    def first(self, n0: int, c: float, given_points: bool) -> float:
        """Gaussians after the first refinement."""
        keep = self.survival_given if given_points else min(self.survival_random,
                                                            self.survival_random * c ** self.survival_exp)
        return n0 * keep

    def next(self, n: float, n0: int, c: float) -> float:
        """Gaussians after a later refinement that starts from ``n``."""
        r = self.rate * c ** self.rate_exp
        cap = self.capacity * c ** self.capacity_exp * (max(n0, 1) / 2000) ** self.capacity_n0_exp
        return n * (1.0 + r * max(0.0, 1.0 - n / cap))


GROWTH = Growth()


def coverage(images: np.ndarray, ids: Sequence[int] | None = None,
             sizes: Sequence[tuple[int, int]] | None = None) -> float:
    """The share of pixels the subject covers: alpha > 0 of u8 RGBA images [C,H,W,4] (1.0 for RGB),
    over the views ``ids`` (default all), each within its own (width, height) of ``sizes`` when the
    views differ in size (``trainer.view_sizes``; the canvas's padding is not part of any view).
    One view at a time: no copy of the images."""
    if images.ndim != 4 or images.shape[-1] != 4:
        return 1.0
    ids = range(len(images)) if ids is None else ids
    covered = total = 0
    for i in ids:
        w, h = sizes[i] if sizes is not None else images.shape[2:0:-1]
        covered += int(np.count_nonzero(images[i, :h, :w, 3]))
        total += w * h
    return max(covered / max(total, 1), 1e-3)


def refinement_steps(settings: Settings, schedule: dict[str, int]) -> list[int]:
    """The steps (0-based) after which the strategy refines: ``refine_start < t < refine_stop``,
    ``t % refine_every == 0``, inside the run (gsplat's rule, shared by both strategies here)."""
    stop = min(schedule["refine_stop"], settings.steps)
    every = max(1, schedule["refine_every"])
    first = (schedule["refine_start"] // every + 1) * every
    return list(range(first, stop, every))


def gaussian_counts(settings: Settings, schedule: dict[str, int], n0: int, *, coverage: float = 1.0,
                    given_points: bool = False, from_step: int = 0, n_now: int | None = None,
                    growth: Growth = GROWTH) -> list[tuple[int, int]]:
    """The expected number of Gaussians as (from_step, count) pieces, from ``from_step`` (where the
    run has ``n_now``, default ``n0``) to the end; a refinement after step ``t`` changes the count
    from step ``t + 1``. ``n0``: the initial count (the default strategy's growth scales with it)."""
    n = float(n0 if n_now is None else n_now)
    pieces = [(from_step, int(round(n)))]
    refinements = refinement_steps(settings, schedule)
    for i, t in enumerate(refinements):
        if t < from_step:
            continue
        if settings.strategy == "mcmc":
            grown = float(int(MCMC_GROWTH * n))
        elif i == 0:
            grown = growth.first(n0, coverage, given_points)
        else:
            grown = growth.next(n, n0, coverage)
        n = min(float(settings.max_gaussians), max(1.0, grown))
        if int(round(n)) != pieces[-1][1]:
            pieces.append((t + 1, int(round(n))))
    return pieces


def units(n: float, n0: int, share: float) -> float:
    """A step's cost with ``n`` Gaussians in units of the initial step (``n0`` Gaussians)."""
    return (1.0 - share) + share * n / max(n0, 1)


def remaining_units(settings: Settings, schedule: dict[str, int], n0: int, share: float, scored_views: int,
                    **counts) -> float:
    """Cost units of the steps from ``counts['from_step']`` (default 0) to the end, plus the final
    evaluation (``scored_views`` renders at the last count); ``counts``: ``gaussian_counts``'s options."""
    pieces = gaussian_counts(settings, schedule, n0, **counts) + [(settings.steps, 0)]
    total = 0.0
    for (start, n), (stop, _) in zip(pieces, pieces[1:], strict=False):
        total += max(0, stop - start) * units(n, n0, share)
    return total + scored_views * FORWARD_SHARE * units(pieces[-2][1], n0, share)


def scored_views(views: int, holdout_views: int) -> int:
    """Renders of the final evaluation: the held-out views and up to ``EVAL_TRAIN_VIEWS`` train views."""
    return holdout_views + min(EVAL_TRAIN_VIEWS, max(0, views - holdout_views))


def estimate_seconds(settings: Settings, schedule: dict[str, int], width: int, height: int, views: int,
                     holdout_views: int, device_type: str, step_seconds: float, n0: int, *,
                     share: float = GAUSSIAN_SHARE, coverage: float = 1.0, given_points: bool = False) -> float:
    """Seconds the training loop and its final evaluation will take (``settings.steps`` resolved).

    ``step_seconds``: the measured time of one step at ``n0`` Gaussians at this image size on this
    device (``calibrate``; wall time for the user's estimate, CPU time for a load-free one), of
    which ``share`` grows with the number of Gaussians (``measure_cost``). ``width``, ``height`` and
    ``device_type`` enter through those figures. ``views`` counts all views; ``holdout_views``
    those scored at the end. ``coverage`` and ``given_points``: see ``gaussian_counts``.
    """
    del width, height, device_type      # in step_seconds (measured at this size on this device)
    return step_seconds * remaining_units(settings, schedule, n0, share, scored_views(views, holdout_views),
                                          coverage=coverage, given_points=given_points)


class LiveEta:
    """The time left during a run: seconds per cost unit measured from the steps done (an
    exponential moving average over windows of at least ``window_s``, like ``progress.StepRate``),
    times the units left from the model started again at the current step and count.

    Call ``step_done(n)`` after every step with the count it ended with, ``eta_s(done, n)`` when
    reporting. Before the first window closes, ``seconds_per_unit`` (the calibration's) is used."""

    def __init__(self, settings: Settings, schedule: dict[str, int], n0: int, share: float,
                 seconds_per_unit: float, scored_views: int, *, coverage: float = 1.0,
                 given_points: bool = False, smoothing: float = 0.25, window_s: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter):
        self.settings, self.schedule, self.n0, self.share = settings, schedule, n0, share
        self.scored, self.coverage, self.given_points = scored_views, coverage, given_points
        self.seconds_per_unit = seconds_per_unit
        self.measured = False
        self.smoothing, self.window_s, self.clock = smoothing, window_s, clock
        self._t = clock()
        self._units = 0.0
        self._window_units = 0.0

    def step_done(self, n: int) -> None:
        """A step finished with ``n`` Gaussians (its cost counted at ``n``)."""
        self._window_units += units(n, self.n0, self.share)
        now = self.clock()
        if now - self._t >= self.window_s and self._window_units > 0:
            measured = (now - self._t) / self._window_units
            self.seconds_per_unit = measured if not self.measured else \
                (1 - self.smoothing) * self.seconds_per_unit + self.smoothing * measured
            self.measured = True
            self._t, self._window_units = now, 0.0

    def eta_s(self, done: int, n: int) -> float:
        """Seconds left after ``done`` steps with ``n`` Gaussians now (loop and final evaluation)."""
        left = remaining_units(self.settings, self.schedule, self.n0, self.share, self.scored,
                               coverage=self.coverage, given_points=self.given_points,
                               from_step=done, n_now=n)
        return self.seconds_per_unit * left


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
    and torch's current count and leaves torch set to the faster (more threads only when
    ``THREADS_MARGIN`` times faster). One untimed call first (Numba
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
    if best > 1 and 1 in measured and measured[best] * THREADS_MARGIN > measured[1]:
        best = 1             # several threads only when clearly faster (see THREADS_MARGIN)
    torch.set_num_threads(best)
    return measured[best], best, measured


@dataclass(frozen=True)
class StepCost:
    """The probe step at ``n0`` Gaussians: CPU seconds (median), wall seconds (on the CPU: the CPU
    median times the machine's slowdown over the measurement), and the ``share`` of it that grows
    with the number of Gaussians (see ``measure_cost``)."""

    wall_s: float
    cpu_s: float
    share: float
    pairs: int


def measure_cost(probe: Callable[[int], None], probe_doubled: Callable[[int], None], device_type: str,
                 min_pairs: int = 7, max_pairs: int = 31, budget_s: float = 0.5) -> StepCost:
    """Time ``probe(i)`` (a training step on ``n0`` Gaussians that are thrown away) and
    ``probe_doubled(i)`` (the same, each Gaussian twice) in pairs on the same view ``i``, at least
    ``min_pairs`` times and until ``budget_s`` (at most ``max_pairs``). Meant for Gaussians of a
    trained scene's size (a few pixels): the initial ones are far larger, and their cost falls
    within the first few hundred steps as they shrink.

    ``share = (t(2 n0) - t(n0)) / t(n0)`` from the CPU-time medians (the process's own time: a
    busy machine slows both alike), clamped to 0.02..1; on CUDA from synchronised wall time. Call
    after ``calibrate`` (kernels compiled, threads set)."""
    cuda = device_type == "cuda"

    def clocks() -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    walls: list[float] = []
    cpus: list[float] = []
    walls2: list[float] = []
    cpus2: list[float] = []
    probe(0)                      # first calls at these sizes (allocations)
    probe_doubled(0)
    t_start = time.perf_counter()
    while len(walls) < max_pairs and (len(walls) < min_pairs or time.perf_counter() - t_start < budget_s):
        i = len(walls)
        for fn, w, c in ((probe, walls, cpus), (probe_doubled, walls2, cpus2)):
            w0, c0 = clocks()
            fn(i)
            w1, c1 = clocks()
            w.append(w1 - w0)
            c.append(c1 - c0)
    base, doubled = (np.median(walls), np.median(walls2)) if cuda else (np.median(cpus), np.median(cpus2))
    share = min(1.0, max(0.02, float(doubled - base) / max(float(base), 1e-12)))
    if cuda:
        wall = float(np.median(walls))
    else:
        # the CPU time times wall / CPU over the whole measurement: on a busy machine a probe shorter
        # than the scheduler's slice often runs uninterrupted, so the median wall time of the probes
        # would miss the slowdown that the run will see (with several threads the ratio is below 1)
        wall_per_cpu = (sum(walls) + sum(walls2)) / max(sum(cpus) + sum(cpus2), 1e-12)
        wall = float(np.median(cpus)) * wall_per_cpu
    return StepCost(wall_s=wall, cpu_s=float(np.median(cpus)), share=share, pairs=len(walls))


def step_seconds_from_probe(probe_seconds: float) -> float:
    """A full training step's time from the probe's (see ``STEP_OVERHEAD``)."""
    return probe_seconds * STEP_OVERHEAD


__all__ = ["GROWTH", "Growth", "LiveEta", "StepCost", "calibrate", "coverage", "estimate_seconds", "format_duration",
           "gaussian_counts", "measure_cost", "refinement_steps", "remaining_units", "scored_views",
           "step_seconds_from_probe", "units", "user_threads"]
