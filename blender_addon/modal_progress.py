"""The two halves of long work in Blender's UI, shared by capture, training, generation and final
renders: ``CountedWork`` (progress and ETA of work done one counted unit at a time: views, frames)
and ``ModalProgress`` (a modal operator's timer, progress bar and status-bar text)."""
from __future__ import annotations

import math


class CountedWork:
    """Mixin: ``total`` units (a property of the subclass), ``done`` of them finished, ``_render_s``
    seconds spent on them."""

    done: int = 0
    _render_s: float = 0.0

    @property
    def total(self) -> int:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def progress(self) -> float:
        """0..1."""
        return self.done / self.total

    @property
    def eta_s(self) -> float:
        """Estimated seconds left, from the mean time per unit so far (NaN before the first)."""
        if self.done == 0:
            return math.nan
        return self._render_s / self.done * (self.total - self.done)

    def eta_suffix(self) -> str:
        """', about 12 s left' for a status line ('' before the first unit)."""
        eta = self.eta_s
        return "" if math.isnan(eta) else f", about {eta:.0f} s left"


class ModalProgress:
    """Mixin for a modal operator: ``_begin`` adds the timer, the progress bar (0..1000) and the
    modal handler; ``_finish`` removes them and clears the status bar, returning ``result``."""

    _timer = None

    def _begin(self, context, interval_s: float) -> set:
        wm = context.window_manager
        self._timer = wm.event_timer_add(interval_s, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _set_interval(self, context, interval_s: float) -> None:
        """Re-add the modal's timer at a new interval (seconds)."""
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
        self._timer = wm.event_timer_add(interval_s, window=context.window)

    def _finish(self, context, result: set) -> set:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return result
