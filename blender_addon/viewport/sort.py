"""Back-to-front ordering of splats for alpha blending (numpy only, no bpy or gpu).

Splats are drawn in order of decreasing view depth (the camera-space z of their centre, as the
reference rasterizer and gsplat sort). For a view matrix ``V`` and object matrix ``M`` the depth of
a local-space centre ``p`` is ``-(row2(V @ M) . (p, 1))``; only the direction of row 2's first three
entries (the *sort axis* in object space) changes the order, so camera translation never needs a
re-sort and a re-sort is due only when that axis turns by more than ``resort_angle``.

Keys are quantised to 16 bits over the data's bounding sphere along the axis and ordered by
numpy's stable sort, which is an LSD radix sort for 16-bit integers (two counting-sort passes).

``SplatSorter`` runs sorts on a worker thread so that a draw callback only ever picks up the
latest finished order; ``sort_now`` runs one synchronously (headless tests, first draw).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np

QUANT_LEVELS = 65535
DEFAULT_RESORT_ANGLE = np.radians(0.05)     # radians the sort axis may turn before a re-sort


def sort_axis(model_view: np.ndarray) -> np.ndarray:
    """Unit sort axis (object space, f64[3]) of a 4x4 OpenGL model-view matrix: the direction in
    which the view depth *decreases* (away from the camera is negative), i.e. row 2 of the
    rotation part, normalised. Raises ValueError for a degenerate matrix."""
    mv = np.asarray(model_view, dtype=np.float64)
    if mv.shape != (4, 4):
        raise ValueError(f"model_view must be 4x4, got shape {mv.shape}")
    axis = mv[2, :3]
    norm = np.linalg.norm(axis)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("model_view has a degenerate depth row (zero or non-finite)")
    return axis / norm


def bounding_sphere(means: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre f64[3], radius) enclosing all centres; the centre is the box centre."""
    means = np.asarray(means)
    if len(means) == 0:
        return np.zeros(3), 0.0
    lo = means.min(axis=0).astype(np.float64)
    hi = means.max(axis=0).astype(np.float64)
    centre = 0.5 * (lo + hi)
    return centre, float(0.5 * np.linalg.norm(hi - lo))


def depth_keys(means: np.ndarray, axis: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """u16[N] keys: 0 for the farthest splat along ``axis``, 65535 for the nearest.

    ``means`` f32[N,3] (object space); ``axis`` from :func:`sort_axis`; ``centre``/``radius`` from
    :func:`bounding_sphere` (fixed per data set, so no min/max pass per sort).
    """
    proj = means @ np.asarray(axis, dtype=np.float32)                # f32[N]; larger = nearer
    offset = np.float32(np.dot(centre, axis) - radius)
    scale = np.float32(QUANT_LEVELS / (2.0 * radius)) if radius > 0 else np.float32(0.0)
    proj -= offset
    proj *= scale
    np.clip(proj, 0, QUANT_LEVELS, out=proj)
    return proj.astype(np.uint16)


def back_to_front(means: np.ndarray, model_view: np.ndarray,
                  sphere: Optional[tuple[np.ndarray, float]] = None) -> np.ndarray:
    """Indices u32[N] of ``means`` (object space) from the farthest to the nearest for the OpenGL
    model-view ``model_view`` (view @ object matrix); ties keep index order (stable)."""
    centre, radius = bounding_sphere(means) if sphere is None else sphere
    keys = depth_keys(means, sort_axis(model_view), centre, radius)
    return np.argsort(keys, kind="stable").astype(np.uint32)


class SplatSorter:
    """Keeps a back-to-front order for one splat set; sorts on a worker thread.

    ``request(model_view)`` is cheap and non-blocking: it returns False when the current (or
    pending) order is still good for that view, else it queues a sort. ``latest()`` gives the
    newest finished order (as float32, ready for an R32F texture) and its serial number.
    ``on_done`` is called from the worker thread after each sort (e.g. to schedule a redraw).
    """

    def __init__(self, means: np.ndarray, resort_angle: float = DEFAULT_RESORT_ANGLE,
                 threaded: bool = True, on_done: Optional[Callable[[], None]] = None):
        self.means = np.ascontiguousarray(means, dtype=np.float32)
        self.sphere = bounding_sphere(self.means)
        self.cos_limit = float(np.cos(resort_angle))
        self.threaded = threaded
        self.on_done = on_done
        self.sort_count = 0
        self.last_sort_seconds = 0.0
        self._lock = threading.Lock()
        self._pending: Optional[np.ndarray] = None     # axis waiting for the worker
        self._wanted: Optional[np.ndarray] = None      # axis of the newest request (sorted or queued)
        self._order: Optional[np.ndarray] = None
        self._serial = 0
        self._worker: Optional[threading.Thread] = None

    def __len__(self) -> int:
        return len(self.means)

    def needs_sort(self, model_view: np.ndarray) -> bool:
        """True when no order exists or is queued for a view within ``resort_angle`` of this one."""
        axis = sort_axis(model_view)
        with self._lock:
            wanted = self._wanted
        return wanted is None or float(np.dot(axis, wanted)) < self.cos_limit

    def _sort(self, axis: np.ndarray) -> np.ndarray:
        import time
        t0 = time.perf_counter()
        keys = depth_keys(self.means, axis, *self.sphere)
        order = np.argsort(keys, kind="stable").astype(np.float32)
        self.last_sort_seconds = time.perf_counter() - t0
        return order

    def _publish(self, order: np.ndarray) -> None:
        with self._lock:
            self._order = order
            self._serial += 1
            self.sort_count += 1
        if self.on_done is not None:
            self.on_done()

    def sort_now(self, model_view: np.ndarray) -> np.ndarray:
        """Sort for this view on the calling thread and publish the result; returns it (f32[N])."""
        axis = sort_axis(model_view)
        with self._lock:
            self._wanted = axis
        order = self._sort(axis)
        self._publish(order)
        return order

    def request(self, model_view: np.ndarray) -> bool:
        """Queue a sort for this view if the view moved enough; True when one was queued."""
        if not self.needs_sort(model_view):
            return False
        axis = sort_axis(model_view)
        if not self.threaded:
            self.sort_now(model_view)
            return True
        with self._lock:
            self._wanted = axis
            self._pending = axis
            start = self._worker is None or not self._worker.is_alive()
            if start:
                self._worker = threading.Thread(target=self._run, name="splat-sort", daemon=True)
        if start:
            self._worker.start()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                axis, self._pending = self._pending, None
                if axis is None:
                    self._worker = None
                    return
            self._publish(self._sort(axis))

    def wait(self, timeout: float = 5.0) -> bool:
        """Block until the worker is idle (tests); True if it finished in time."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def latest(self) -> tuple[Optional[np.ndarray], int]:
        """(newest finished order f32[N] or None, its serial number; 0 = none yet)."""
        with self._lock:
            return self._order, self._serial
