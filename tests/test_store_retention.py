"""Job store retention: finished jobs give back their disk by age and by a size limit, and a fetch of a
pruned job says why its result is gone. Real files in a temporary store; the runner in-process."""
from __future__ import annotations

import queue
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend.jobs import JobRunner, LazyJobKinds
from backend.store import JobStore, Retention, folder_bytes
from shared.protocol import decode
from shared.splats import Splats
from test_jobs import ok_job  # noqa: F401  (the runner below names it by module path)

DAY = 86400.0
NOW = 1_800_000_000.0


def finished_job(store: JobStore, job_id: str, days_ago: float, n: int = 2000, state: str = "done") -> None:
    store.create(job_id, "train", {"steps": 1})
    store.save_inputs(job_id, {"images": np.zeros((4, 32, 32, 3), np.uint8), "note": "x"})
    store.save_result(job_id, Splats.random(n, seed=1), {"loss": 0.1}, {"cancelled": False})
    store.update(job_id, state=state, started=NOW - days_ago * DAY - 10, finished=NOW - days_ago * DAY)


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs")
    for job_id, days in (("old1", 40), ("old2", 35), ("mid", 10), ("new", 1)):
        finished_job(s, job_id, days)
    s.create("live", "train", {})
    s.update("live", state="running", started=NOW)
    return s


def test_age_rule_frees_old_jobs_and_leaves_a_record(store):
    pruned = store.prune(Retention(max_age_days=30, max_bytes=0), now=NOW)
    assert [p[0] for p in pruned] == ["old1", "old2"]
    for job_id in ("old1", "old2"):
        assert not store.has_result(job_id)
        assert not (store.job_dir(job_id) / "inputs").exists()
        rec = store.read(job_id)
        assert rec["state"] == "done" and "30 days" in rec["pruned"]["reason"]
        assert sorted(p.name for p in store.job_dir(job_id).iterdir()) == ["job.json"]
    for job_id in ("mid", "new"):
        assert store.has_result(job_id) and "pruned" not in store.read(job_id)
    assert store.read("live")["state"] == "running"
    assert store.prune(Retention(max_age_days=30, max_bytes=0), now=NOW) == []     # idempotent


def test_size_rule_frees_oldest_first_until_under_the_limit(store):
    per_job = folder_bytes(store.job_dir("new"))
    limit = folder_bytes(store.root) - per_job - per_job // 2      # two jobs must go
    pruned = store.prune(Retention(max_age_days=0, max_bytes=limit), now=NOW)
    assert [p[0] for p in pruned] == ["old1", "old2"]
    assert folder_bytes(store.root) <= limit
    assert store.has_result("mid") and store.has_result("new")


def test_newest_finished_and_kept_jobs_survive_any_limit(store):
    pruned = store.prune(Retention(max_age_days=0.001, max_bytes=1), keep={"mid"}, now=NOW)
    assert sorted(p[0] for p in pruned) == ["old1", "old2"]
    assert store.has_result("mid")            # the runner's keep set
    assert store.has_result("new")            # newest finished: its client may not have it yet
    assert store.read("live")["state"] == "running"


def test_unreadable_folders_are_left_alone(store):
    junk = store.root / "broken"
    junk.mkdir()
    (junk / "job.json").write_text("{not json")
    (junk / "data.bin").write_bytes(b"\0" * 1000)
    store.prune(Retention(max_age_days=0.001, max_bytes=1), now=NOW)
    assert (junk / "data.bin").exists()


@pytest.mark.parametrize("kw", [{"max_age_days": -1}, {"max_bytes": float("nan")}, {"max_age_days": "7"}])
def test_bad_retention_is_refused(kw):
    with pytest.raises(ValueError, match="retention max_"):
        Retention(**kw)


# -- the runner ----------------------------------------------------------------------------------

def _runner(tmp_path, retention: Retention) -> JobRunner:
    inbox: queue.Queue = queue.Queue()
    r = JobRunner(JobStore(tmp_path / "jobs"), "cpu", lambda ident, frames: inbox.put(decode(frames)),
                  kinds=LazyJobKinds({"ok": "test_jobs:ok_job"}), retention=retention)
    r.inbox = inbox
    return r


def test_runner_prunes_after_each_job_and_fetch_explains(tmp_path):
    r = _runner(tmp_path, Retention(max_age_days=0, max_bytes=1))
    try:
        for job_id in ("a", "b"):
            r.submit(job_id, "ok", {}, {}, b"client")
            assert r.inbox.get(timeout=10).type == "result"
        deadline = time.monotonic() + 10
        while r.store.has_result("a") and time.monotonic() < deadline:
            time.sleep(0.02)                 # pruning runs on the worker right after "b"
        gone = r.fetch("a")
        assert gone.type == "error" and gone.fields["code"] == "no_result"
        assert "removed from the job store" in gone.fields["message"]
        assert "--max-store-gb" in gone.fields["message"]
        assert r.fetch("b").type == "result"          # the newest finished job is kept
    finally:
        r.shutdown(timeout_s=10)


def test_runner_prunes_at_start(tmp_path):
    store = JobStore(tmp_path / "jobs")
    now = time.time()
    for job_id, days in (("x", 60), ("y", 50), ("z", 0.1)):
        finished_job(store, job_id, 0)
        store.update(job_id, finished=now - days * DAY)
    r = _runner(tmp_path, Retention(max_age_days=30, max_bytes=0))
    try:
        assert not store.has_result("x") and not store.has_result("y") and store.has_result("z")
    finally:
        r.shutdown(timeout_s=10)


def test_a_result_pruned_during_fetch_is_no_result_not_a_crash(tmp_path, monkeypatch):
    r = _runner(tmp_path, None)
    try:
        r.submit("a", "ok", {}, {}, b"client")
        assert r.inbox.get(timeout=10).type == "result"
        r.submit("b", "ok", {}, {}, b"client")
        assert r.inbox.get(timeout=10).type == "result"
        real_load = r.store.load_result

        def pruned_meanwhile(job_id):
            r.store.prune(Retention(max_age_days=0, max_bytes=1))    # "a" goes; "b" is the newest
            return real_load(job_id)
        monkeypatch.setattr(r.store, "load_result", pruned_meanwhile)
        msg = r.fetch("a")
        assert msg.type == "error" and msg.fields["code"] == "no_result", msg
    finally:
        r.shutdown(timeout_s=10)


def test_serve_refuses_a_negative_limit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backend", "serve", "--store", str(tmp_path / "s"),
                           "--keep-days", "-1"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "--keep-days must be a number >= 0" in proc.stderr


def test_a_job_that_never_had_data_is_not_marked_pruned(tmp_path):
    """A job cancelled while queued has no inputs and no result: retention has nothing to free,
    so a fetch must still say it was cancelled before it started, not that its result was
    removed from the store."""
    store = JobStore(tmp_path / "jobs")
    now = time.time()
    store.create("q", "train", {})
    store.update("q", state="cancelled", finished=now - 40 * DAY,
                 error={"code": "cancelled", "message": "cancelled before it started"})
    finished_job(store, "new", 0)
    store.update("new", finished=now)
    assert store.prune(Retention(max_age_days=30, max_bytes=1), now=now) == []
    assert "pruned" not in store.read("q")
    r = _runner(tmp_path, None)
    try:
        msg = r.fetch("q")
        assert msg.type == "error" and "cancelled before it started" in msg.fields["message"], msg
    finally:
        r.shutdown(timeout_s=10)


def test_reconstruct_solve_folder_is_freed_with_the_result(tmp_path):
    """A reconstruct job's solve (``reconstruct/``: images, COLMAP database and models) is job data
    too: retention frees it with the result."""
    s = JobStore(tmp_path / "jobs")
    finished_job(s, "rc", 40)
    finished_job(s, "newer", 1)            # the newest finished job is always kept
    solve = s.job_dir("rc") / "reconstruct" / "colmap"
    solve.mkdir(parents=True)
    (solve / "database.db").write_bytes(b"x" * 5000)
    pruned = s.prune(Retention(max_age_days=30, max_bytes=0), now=NOW)
    assert [p[0] for p in pruned] == ["rc"]
    assert sorted(p.name for p in s.job_dir("rc").iterdir()) == ["job.json"]
