"""The job runner in-process (no sockets): what a client gets when the store fails under a job.

The job kinds here are plain functions of this module; the ``send`` callback collects the
decoded messages that the server would route to the submitting client. The store failures are
injected by replacing one ``JobStore`` method with one that raises the OSError a full disk or a
failing drive gives: a real full disk is not practical in a test, and a read-only folder does
not stop a root user (these tests run as root on the build machine).
"""
from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from backend.job_api import JobResult
from backend.jobs import JobRunner, LazyJobKinds
from backend.store import JobStore
from shared.protocol import decode
from shared.splats import Splats

CLIENT = b"client-1"


def ok_job(params: dict, payload: dict, ctx) -> JobResult:
    return JobResult(splats=Splats.random(5, seed=1), metrics={"loss": 0.5})


def late_cancel_job(params: dict, payload: dict, ctx) -> JobResult:
    """Finishes all its steps, then a cancel arrives before it returns."""
    ctx.report(3, 3, {"loss": 0.1})
    while not ctx.should_stop():
        time.sleep(0.01)
    return JobResult(splats=Splats.random(5, seed=1), meta={"cancelled": False, "steps_done": 3})


@pytest.fixture
def runner(tmp_path):
    inbox: queue.Queue = queue.Queue()
    store = JobStore(tmp_path / "jobs")
    r = JobRunner(store, "cpu", lambda ident, frames: inbox.put((ident, decode(frames))),
                  kinds=LazyJobKinds({"ok": f"{__name__}:ok_job",
                                      "late": f"{__name__}:late_cancel_job"}))
    r.inbox = inbox
    yield r
    r.shutdown(timeout_s=10)


def _next_message(runner, timeout: float = 10.0):
    identity, msg = runner.inbox.get(timeout=timeout)
    assert identity == CLIENT
    return msg


def test_result_reaches_the_client_when_the_store_cannot_save_it(runner, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runner.store, "save_result", disk_full)
    runner.submit("j1", "ok", {}, {}, CLIENT)
    msg = _next_message(runner)
    assert msg.type == "result", msg
    assert np.array_equal(msg.fields["splats"]["means"], Splats.random(5, seed=1).means)
    assert runner.status("j1")[0]["state"] == "done"
    again = runner.fetch("j1")
    assert again.type == "error" and again.fields["code"] == "no_result"
    assert "could not save it" in again.fields["message"], again.fields["message"]


def test_a_store_failure_at_job_start_fails_the_job_with_a_message(runner, monkeypatch):
    real_update = runner.store.update

    def update(job_id, **changes):
        if changes.get("state") == "running":
            raise OSError(5, "Input/output error")
        return real_update(job_id, **changes)
    monkeypatch.setattr(runner.store, "update", update)
    runner.submit("j2", "ok", {}, {}, CLIENT)
    msg = _next_message(runner)
    assert msg.type == "error" and msg.job_id == "j2"
    assert msg.fields["code"] == "job_failed"
    assert "Input/output error" in msg.fields["message"]
    assert runner.status("j2")[0]["state"] == "failed"
    # the worker is still alive: the next job runs
    monkeypatch.setattr(runner.store, "update", real_update)
    runner.submit("j3", "ok", {}, {}, CLIENT)
    assert _next_message(runner).type == "result"


def test_a_cancel_after_the_last_step_leaves_the_job_done(runner):
    runner.submit("j4", "late", {}, {}, CLIENT)
    assert _next_message(runner).type == "progress"
    runner.cancel("j4", CLIENT)
    msg = _next_message(runner)
    assert msg.type == "result" and msg.fields["meta"]["cancelled"] is False
    assert runner.status("j4")[0]["state"] == "done"
