"""Tracked job -> splat object: the plumbing the job kinds' operators share (``job_kinds`` builds them).

A job's record (``connection.track_job``) names its target object. Progress previews and the end
result go into that object: created on first use (under a free name), updated in place after.
``JobModal`` is the modal-operator half: a timer, the progress bar and the status-bar text while one
tracked job runs.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import bpy

from . import connection, splat_object
from .modal_progress import ModalProgress

CANCEL_CONFIRM_S = 60.0        # after this, a cancel the backend never confirmed ends the operator

_preview_applied: dict[str, int] = {}   # job id -> id() of the last preview map applied


def unique_object_name(base: str) -> str:
    """``base`` if no object has it, else ``base.001``, ``base.002``..."""
    if base not in bpy.data.objects:
        return base
    i = 1
    while f"{base}.{i:03d}" in bpy.data.objects:
        i += 1
    return f"{base}.{i:03d}"


def cancel(context, job_id: str) -> None:
    """Ask the backend to stop the job; its partial result arrives as a ``cancelled`` result."""
    connection.cancel_job(job_id)
    rec = connection.find_record(context.scene, job_id)
    if rec is not None:
        rec.message = "cancelling..."


def put_splats(context, rec, splats, location: Sequence[float] | None = None):
    """Create or update the record's splat object with ``splats`` (object space).

    A new object gets a free name based on ``rec.target`` (stored back in the record) and, when
    given, ``location`` (world space, metres); an existing one keeps its name and placement."""
    obj = bpy.data.objects.get(rec.target)
    if obj is not None and splat_object.is_splat_object(obj):
        splat_object.update_splat_object(obj, splats)
        return obj
    obj = splat_object.create_splat_object(context, unique_object_name(rec.target), splats)
    if location is not None:
        obj.location = location
    rec.target = obj.name
    return obj


def apply_preview(context, rec, job, location: Sequence[float] | None = None,
                  put: Callable | None = None) -> None:
    """Progress handler body: a new preview replaces the object's contents (live preview).
    ``put(splats)`` stores them (default: ``put_splats`` at ``location``)."""
    if job.preview is not None and _preview_applied.get(rec.job_id) != id(job.preview):
        _preview_applied[rec.job_id] = id(job.preview)
        (put or (lambda splats: put_splats(context, rec, splats, location)))(job.preview_splats())


def apply_result(context, rec, job, location: Sequence[float] | None = None, put: Callable | None = None):
    """End handler body: the final (or partial, if cancelled) splats into the object, or the error.
    ``put(splats)`` stores them and returns the object (default: ``put_splats`` at ``location``).

    Returns the object (tagged ``sb_job_id``; ``rec.message`` "done" or "cancelled: partial
    result"), or None when the job ended without splats (``rec.message`` names the error)."""
    _preview_applied.pop(rec.job_id, None)
    if job.result is not None:
        obj = (put or (lambda splats: put_splats(context, rec, splats, location)))(job.result_splats())
        obj["sb_job_id"] = rec.job_id
        rec.message = "cancelled: partial result" if job.state == "cancelled" else "done"
        return obj
    if job.error is not None:
        rec.message = f"{job.error[0]}: {job.error[1]}"
    return None


def tag_seed_and_prompt(obj, meta: dict | None) -> None:
    """Keep what reproduces a generated or edited object on it: ``sb_seed`` and ``sb_prompt`` from the
    result's meta (when present)."""
    meta = meta or {}
    if "seed" in meta:
        obj["sb_seed"] = int(meta["seed"])
    prompt = (meta.get("settings") or {}).get("prompt")
    if prompt:
        obj["sb_prompt"] = str(prompt)


def format_duration(seconds: float) -> str:
    """'1m 20s' or '45s' (rounded to whole seconds, never negative)."""
    s = max(0, int(round(seconds)))
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def status_text(rec) -> str:
    """'Train Splats: step 1200/3000, PSNR 27.1 dB, 154k Gaussians, 1m 20s left' (PSNR only when
    the job reports it); before the steps start, what the job says it is doing ('Generate Teapot:
    loading the guidance model (...)')."""
    if rec.stage:           # a stage before the steps: alone, or with its own count ("matching 3/12")
        return f"{rec.label}: {rec.stage}" + (f" {rec.step}/{rec.total}" if rec.total else "")
    parts = [f"step {rec.step}/{rec.total}" if rec.total else rec.state]
    if not math.isnan(rec.psnr):
        parts.append(f"PSNR {rec.psnr:.1f} dB")
    if rec.num_gaussians:
        parts.append(f"{rec.num_gaussians / 1000:.0f}k Gaussians" if rec.num_gaussians >= 1000
                     else f"{rec.num_gaussians:.0f} Gaussians")
    if not math.isnan(rec.eta_s) and rec.total and rec.step < rec.total:
        parts.append(f"{format_duration(rec.eta_s)} left")
    return f"{rec.label}: " + ", ".join(parts)


FOLLOW_INTERVAL_S = 0.1        # modal timer while following a job on the backend


class JobModal(ModalProgress):
    """Mixin for a modal operator that follows one tracked job (``self._job_id``).

    ``_begin`` adds the timer and the progress bar; ``_follow_job`` is one TIMER step;
    ``_finish`` removes what ``_begin`` added. ``_cancel_at`` (``time.monotonic()``, 0: not
    cancelling) is set by the operator when it asks the backend to cancel."""

    _job_id: str = ""
    _cancel_at: float = 0.0

    def cancel(self, context) -> None:
        """Blender ends the modal itself (a file is opened, the window closes): remove what
        ``_begin`` added. The job goes on and stays tracked in the scene."""
        self._finish(context, {"CANCELLED"})

    def _request_cancel(self, context, label: str) -> set | None:
        """Esc while following the job: ask the backend once to stop it. None while waiting for
        the confirmation; the operator's result when the request itself failed (reported)."""
        if self._cancel_at:
            return None
        try:
            cancel(context, self._job_id)
        except Exception as exc:
            self.report({"ERROR"}, f"{label}: {exc}")
            return self._finish(context, {"CANCELLED"})
        self._cancel_at = time.monotonic()
        return None

    def _follow_job(self, context) -> set | None:
        """Poll, show progress; the operator's result once the job is handled (or gone, or the
        cancel went unconfirmed for ``CANCEL_CONFIRM_S``), else None."""
        connection.poll_once(context)
        rec = connection.find_record(context.scene, self._job_id)
        if rec is None:
            return self._finish(context, {"CANCELLED"})
        if rec.total:
            context.window_manager.progress_update(int(1000 * rec.step / rec.total))
        tail = " (cancelling...)" if self._cancel_at else " (Esc to cancel)"
        context.workspace.status_text_set(status_text(rec) + tail)
        if rec.handled:
            level = {"ERROR"} if rec.state == "failed" else {"INFO"}
            self.report(level, f"{rec.label}: {rec.message or rec.state}")
            return self._finish(context, {"FINISHED"})
        if self._cancel_at and time.monotonic() - self._cancel_at > CANCEL_CONFIRM_S:
            self.report({"WARNING"}, "The backend did not confirm the cancel within a minute; "
                                     "the job stays in the job list")
            return self._finish(context, {"CANCELLED"})
        return None


class SubmitJobModal(JobModal):
    """Mixin for an operator that submits one backend job and follows it: subclasses set
    ``job_label`` ("Generate") and implement ``_submit_job(context)`` (returns the job's record; raises
    with a message the user can act on). ``execute`` (no window: headless Blender, scripts) submits and
    returns; ``invoke`` follows the job with the progress bar and the status bar; Esc cancels it."""

    job_label = "Job"

    def _submit_job(self, context):
        raise NotImplementedError

    def _submit(self, context):
        try:
            return self._submit_job(context)
        except Exception as exc:
            self.report({"ERROR"}, f"{self.job_label}: {exc}")
            return None

    def execute(self, context):
        """Headless path: submit and return (the result arrives through ``connection.poll_once``)."""
        rec = self._submit(context)
        if rec is None:
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted {rec.kind} job {rec.job_id} ({rec.target})")
        return {"FINISHED"}

    def invoke(self, context, event):
        rec = self._submit(context)
        if rec is None:
            return {"CANCELLED"}
        self._job_id, self._cancel_at = rec.job_id, 0.0
        return self._begin(context, FOLLOW_INTERVAL_S)

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            return self._request_cancel(context, self.job_label) or {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            result = self._follow_job(context)
        except Exception as exc:
            self.report({"ERROR"}, f"{self.job_label}: {exc}")
            return self._finish(context, {"CANCELLED"})
        return result or {"RUNNING_MODAL"}


def draw_job_rows(layout, scene, kind: str, cancel_idname: str) -> None:
    """One row per unfinished job of ``kind``: its status text and a cancel button."""
    for rec in connection.active_records(scene):
        if rec.kind != kind:
            continue
        row = layout.row(align=True)
        row.label(text=status_text(rec), icon="TIME")
        op = row.operator(cancel_idname, text="", icon="CANCEL")
        op.job_id = rec.job_id


class CancelJob:
    """Mixin for an operator with a ``job_id`` property: ``execute`` cancels that job."""

    @classmethod
    def poll(cls, context) -> bool:
        if connection.STATE.client is None:
            cls.poll_message_set("Not connected to a backend")
            return False
        return True

    def execute(self, context):
        try:
            cancel(context, self.job_id)
        except Exception as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}
