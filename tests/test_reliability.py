"""Reliability defects of issue 10, one test (or more) each; every test says which defect it pins.

Real parts throughout: a real server process on a real socket (``test_server.ServerProcess``), real
files in a temporary job store, the real trainer and dataset reader. Disk-full is produced two
ways: a real full file system (a small tmpfs, mounted when this runs as root and may mount) and,
everywhere, an ``OSError(ENOSPC)`` injected at one write (the error a full disk gives) or a
free-space threshold set above what is free.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq

from backend.job_api import JobError, JobResult
from backend.jobs import JobRunner, LazyJobKinds, SubmitError
from backend.store import JobStore, Retention, StoreError
from shared.client import LOCAL_BAD_REPLY_CODE, BackendClient
from shared.protocol import BadArray, BadField, Message, decode, encode
from shared.splats import Splats
from test_server import ServerProcess, free_port, header, nd, raw_request

CLIENT = b"client-1"
DAY = 86400.0


# ----------------------------------------------------------------------------------------------
# Job kinds for the in-process runner (named by module path)
# ----------------------------------------------------------------------------------------------

def ok_job(params: dict, payload: dict, ctx) -> JobResult:
    return JobResult(splats=Splats.random(int(params.get("n", 5)), seed=1), metrics={"loss": 0.5},
                     meta={"cancelled": False})


def setup_cancel_job(params: dict, payload: dict, ctx) -> JobResult:
    """Waits in its 'set-up' for a cancel, then stops the way the trainer's set-up stages do."""
    deadline = time.monotonic() + 10
    while not ctx.should_stop() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise JobError("cancelled", "cancelled while setting up; nothing was trained yet")


def _runner(root: Path, store: JobStore | None = None, **kw) -> JobRunner:
    inbox: queue.Queue = queue.Queue()
    r = JobRunner(store or JobStore(root), "cpu", lambda ident, frames: inbox.put(decode(frames)),
                  kinds=LazyJobKinds({"ok": f"{__name__}:ok_job",
                                      "setup_cancel": f"{__name__}:setup_cancel_job"}), **kw)
    r.inbox = inbox
    return r


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ----------------------------------------------------------------------------------------------
# 1. One message kills the server (zero-size shapes); the client's poll has the same gap
# ----------------------------------------------------------------------------------------------

ZERO_SIZE_SHAPES = [[0, 2 ** 62], [2 ** 64 - 1, 0], [0, 2 ** 40, 3], [2 ** 31, 0, 0]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("rel") / "store").start()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.mark.parametrize("shape", ZERO_SIZE_SHAPES, ids=str)
def test_zero_size_shape_with_a_huge_dimension_is_bad_array_and_the_server_lives(server, shape):
    """Defect 1: ``[0, 2**62]`` / ``[2**64-1, 0]`` passed the byte check (0 bytes), numpy's reshape
    raised ValueError outside the protocol errors and ``serve`` exited."""
    frames = [header(fields={"kind": "sleep", "params": {},
                             "payload": {"points": nd("f4", shape, 0)}}), b""]
    reply = raw_request(server.address, frames)
    assert reply.type == "error" and reply.fields["code"] == "bad_array", reply.fields
    assert "fields.payload.points" in reply.fields["message"]
    assert "empty arrays too" in reply.fields["message"]
    assert server.proc.poll() is None, server.log()
    assert raw_request(server.address, encode(Message("hello", None, {"protocol": 1}))).type == "hello"


def test_zero_size_rule_allows_empty_arrays_within_the_limits():
    """Defect 1 (the rule): empty arrays are fine as long as every dimension is bounded."""
    frames = encode(Message("submit", "j", {"kind": "k", "params": {},
                                             "payload": {"a": np.zeros((0, 3), np.float32),
                                                         "b": np.zeros((5, 0, 2), np.uint8)}}))
    msg = decode(frames)
    assert msg.fields["payload"]["a"].shape == (0, 3) and msg.fields["payload"]["b"].shape == (5, 0, 2)
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(0, 2 ** 40), strides=(4, 4))
    with pytest.raises(BadArray, match="dimension 1"):
        encode(Message("submit", "j", {"kind": "k", "params": {}, "payload": {"a": big}}))


def test_client_poll_survives_a_reply_it_cannot_read():
    """Defect 1 (client): a reply with a zero-size huge shape made ``BackendClient.poll`` raise
    (inside Blender that stops the add-on's timer). Now it is a local ``bad_reply`` event and
    the client keeps working."""
    port = free_port()
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"tcp://127.0.0.1:{port}")
    try:
        with BackendClient(f"tcp://127.0.0.1:{port}", timeout_s=5) as c:
            c.send_hello()
            assert router.poll(5000)
            ident = router.recv_multipart()[0]
            bad = msgpack.packb({"type": "result", "v": 1, "job_id": "j1", "fields": {
                "splats": {k: nd("f4", [2 ** 64 - 1, 0], 0) for k in
                           ("means", "quats", "scales", "opacities", "sh0")}}})
            router.send_multipart([ident, bad, b""])
            router.send_multipart([ident, *encode(Message("hello", None, {"protocol": 1}))])
            seen: list[Message] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and c.server_info is None:
                seen += c.poll()
                time.sleep(0.01)
            codes = [m.fields.get("code") for m in seen if m.type == "error"]
            assert codes == [LOCAL_BAD_REPLY_CODE], seen
            assert c.server_info is not None          # the next reply was read normally
    finally:
        router.close()


def test_any_exception_while_decoding_is_internal_error_with_a_logged_traceback(tmp_path, monkeypatch,
                                                                                caplog):
    """Defect 1 (the general rule): ``_handle`` caught only protocol errors around ``decode``;
    any other exception ended ``serve_forever``. Now it is one ``internal_error`` reply, its
    traceback is logged, and the next message is answered."""
    import backend.server as server_mod
    real_decode = server_mod.decode
    calls = {"n": 0}

    def flaky_decode(frames, limits):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a decoder bug")
        return real_decode(frames, limits)
    monkeypatch.setattr(server_mod, "decode", flaky_decode)
    port = free_port()
    srv = server_mod.Server(f"tcp://127.0.0.1:{port}", tmp_path / "store", "cpu",
                            kinds=LazyJobKinds({}))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    caplog.set_level(logging.ERROR, logger="splatbridge.server")
    t.start()
    try:
        hello = encode(Message("hello", None, {"protocol": 1}))
        first = raw_request(f"tcp://127.0.0.1:{port}", hello)
        assert first.type == "error" and first.fields["code"] == "internal_error", first
        assert "a decoder bug" in first.fields["message"]
        assert "Traceback" in caplog.text and "a decoder bug" in caplog.text
        assert raw_request(f"tcp://127.0.0.1:{port}", hello).type == "hello"
        assert t.is_alive()
    finally:
        srv.request_stop()
        t.join(30)


# ----------------------------------------------------------------------------------------------
# 7. A job id "abc\n" passed the id pattern ($ matches before a final newline)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["abc\n", "a" * 64 + "\n", "\nabc"])
def test_job_id_with_a_newline_is_refused_everywhere(tmp_path, job_id):
    """Defect 7 (job id): ``^[A-Za-z0-9_-]{1,64}$`` with ``match`` accepted ``"abc\\n"``, which then
    named a folder in the job store."""
    from shared.protocol import valid_job_id
    assert not valid_job_id(job_id)
    with pytest.raises(BadField, match="job_id"):
        decode([header(mtype="fetch", job_id=job_id, fields={})])
    with pytest.raises(BadField, match="job_id"):
        encode(Message("fetch", job_id, {}))
    with pytest.raises(StoreError) as e:
        JobStore(tmp_path).job_dir(job_id)
    assert e.value.code == "bad_job_id"


def test_job_id_with_a_newline_over_the_wire(server):
    """Defect 7 (job id), end to end: the server refuses it and makes no folder."""
    reply = raw_request(server.address, [header(job_id="abc\n", fields={"kind": "sleep",
                                                                          "params": {}})])
    assert reply.type == "error" and reply.fields["code"] == "bad_field", reply.fields
    assert not any("\n" in p.name for p in server.store.iterdir())


# ----------------------------------------------------------------------------------------------
# 5. A full disk
# ----------------------------------------------------------------------------------------------

def test_a_jobs_client_is_told_when_the_disk_is_full_at_its_start(tmp_path, monkeypatch):
    """Defect 5a: with the disk full, the record update at the job's start and the one in the
    failure path both raised, so the client was never told (its job stayed "queued")."""
    r = _runner(tmp_path / "jobs")
    try:
        monkeypatch.setattr(r.store, "update", _disk_full)
        r.submit("j1", "ok", {}, {}, CLIENT)
        msg = r.inbox.get(timeout=10)
        assert msg.type == "error" and msg.job_id == "j1", msg
        assert msg.fields["code"] == "disk_full", msg.fields
        assert "No space left" in msg.fields["message"]
        assert r.status("j1")[0]["state"] == "failed"
    finally:
        monkeypatch.undo()
        r.shutdown(timeout_s=10)
    # the record that could not be written is repaired at the next start
    r2 = _runner(tmp_path / "jobs")
    try:
        assert r2.status("j1")[0]["state"] == "failed"
    finally:
        r2.shutdown(timeout_s=10)


def test_a_result_the_disk_cannot_hold_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Defect 5b: ENOSPC while writing the result left ``.result.tmp`` behind (and it survived
    restarts). Now it is removed, the record says why there is no result, and the client still
    gets its splats, told that the store did not keep them."""
    import backend.store as store_mod
    real_save = store_mod._save_npy
    written = []

    def save_then_fill(path, arr):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real_save(path, arr)
    r = _runner(tmp_path / "jobs")
    try:
        monkeypatch.setattr(store_mod, "_save_npy", save_then_fill)
        r.submit("j1", "ok", {"n": 50}, {}, CLIENT)
        msg = r.inbox.get(timeout=10)
        assert msg.type == "result", msg
        assert np.array_equal(msg.fields["splats"]["means"], Splats.random(50, seed=1).means)
        assert msg.fields["meta"]["stored"] is False and "disk is full" in msg.fields["meta"]["store_error"]
        d = r.store.job_dir("j1")
        assert written and not (d / ".result.tmp").exists() and not (d / "result").exists()
        rec = r.store.read("j1")
        assert rec["state"] == "done" and rec["result_error"]["code"] == "disk_full"
        again = r.fetch("j1")
        assert again.type == "error" and again.fields["code"] == "no_result"
        assert "could not save it" in again.fields["message"] and "disk is full" in again.fields["message"]
    finally:
        r.shutdown(timeout_s=10)


def test_stale_temporaries_are_removed_at_start(tmp_path):
    """Defect 5b (restart): temporary folders and files of a server that died mid-write are
    cleaned when the store recovers; finished files are not touched."""
    store = JobStore(tmp_path / "jobs")
    store.create("a", "train", {})
    store.save_result("a", Splats.random(4, seed=2), {}, {"cancelled": False})
    store.update("a", state="done", finished=time.time())
    d = store.job_dir("a")
    junk = [d / ".result.tmp", d / ".inputs.tmp", d / ".pruned-result", store.root / ".creating-b",
            store.root / ".compacting-c"]
    for p in junk:
        p.mkdir()
        (p / "x.npy").write_bytes(b"\0" * 100)
    (d / ".job.json.tmp").write_text("{")     # an atomic write cut short
    (d / "result" / ".meta.json.tmp").write_text("{")
    out = JobStore(tmp_path / "jobs").recover()
    assert not any(p.exists() for p in junk) and not (d / ".job.json.tmp").exists()
    assert not (d / "result" / ".meta.json.tmp").exists()
    assert len(out["cleaned"]) == 7, out
    assert store.load_result("a").splats.allclose(Splats.random(4, seed=2), atol=0)


def test_submit_on_a_full_disk_is_disk_full_and_leaves_no_folder(tmp_path, monkeypatch):
    """Defect 5c: a submit on a full disk got ``internal_error`` and left a stray job folder.
    Now: ``disk_full`` before anything is written (free-space threshold), and an ENOSPC at the
    record's write leaves nothing behind either."""
    free = JobStore(tmp_path / "probe").free_bytes()
    r = _runner(tmp_path / "jobs", store=JobStore(tmp_path / "jobs", min_free_bytes=free + 2 ** 30))
    try:
        with pytest.raises(SubmitError) as e:
            r.submit("j1", "ok", {}, {"points": np.zeros((10, 3), np.float32)}, CLIENT)
        assert e.value.code == "disk_full" and "free" in e.value.message
        assert sorted(p.name for p in r.store.root.iterdir()) == []
        r.store.min_free_bytes = 0
        import backend.store as store_mod
        monkeypatch.setattr(store_mod, "_write_atomic", _disk_full)
        with pytest.raises(SubmitError) as e:
            r.submit("j2", "ok", {}, {}, CLIENT)
        assert e.value.code == "disk_full"
        assert sorted(p.name for p in r.store.root.iterdir()) == []
        monkeypatch.undo()
        r.submit("j2", "ok", {}, {}, CLIENT)        # the id was not burned
        assert r.inbox.get(timeout=10).type == "result"
    finally:
        r.shutdown(timeout_s=10)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB file system (tmpfs); needs root and permission to mount."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-ENOSPC "
                    "tests cover the same paths")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk(tiny_disk):
    """Defect 5 on a real full file system (1 MiB tmpfs): a submit whose inputs cannot fit is
    ``disk_full`` with no folder left; a result too big for the disk leaves no temporary folder,
    its client gets the splats, and the store stays consistent across a restart."""
    store = JobStore(tiny_disk / "jobs", min_free_bytes=0)
    r = _runner(tiny_disk / "jobs", store=store)
    try:
        with pytest.raises(SubmitError) as e:
            r.submit("big", "ok", {}, {"points": np.zeros((200_000, 3), np.float32)}, CLIENT)
        assert e.value.code == "disk_full"
        assert not (tiny_disk / "jobs" / "big").exists()
        # fill the disk so that ~100 KiB are left, then make a 1.4 MB result
        filler = tiny_disk / "filler.bin"
        filler.write_bytes(b"\1" * max(0, store.free_bytes() - 100_000))
        r.submit("j1", "ok", {"n": 25_000}, {}, CLIENT)
        msg = r.inbox.get(timeout=30)
        assert msg.type == "result" and len(msg.fields["splats"]["means"]) == 25_000
        assert msg.fields["meta"]["stored"] is False
        d = store.job_dir("j1")
        assert not (d / ".result.tmp").exists() and not (d / "result").exists()
        assert store.read("j1")["result_error"]["code"] == "disk_full"
        # without the free-space check, the write itself meets ENOSPC: same outcome
        store.check_space = lambda needed, what: None
        r.submit("j3", "ok", {"n": 25_000}, {}, CLIENT)
        msg = r.inbox.get(timeout=30)
        assert msg.type == "result" and msg.fields["meta"]["stored"] is False
        assert "No space left" in store.read("j3")["result_error"]["message"] or \
            "disk is full" in store.read("j3")["result_error"]["message"]
        d3 = store.job_dir("j3")
        assert not (d3 / ".result.tmp").exists() and not (d3 / "result").exists()
        filler.unlink()
    finally:
        r.shutdown(timeout_s=10)
    r2 = _runner(tiny_disk / "jobs", store=JobStore(tiny_disk / "jobs", min_free_bytes=0))
    try:
        gone = r2.fetch("j1")
        assert gone.type == "error" and gone.fields["code"] == "no_result"
        r2.submit("j2", "ok", {}, {}, CLIENT)
        assert r2.inbox.get(timeout=10).type == "result" and r2.fetch("j2").type == "result"
    finally:
        r2.shutdown(timeout_s=10)


# ----------------------------------------------------------------------------------------------
# 6. kill -9 between writing the result and updating the record
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_record", [True, False], ids=["record-in-result", "older-result"])
def test_a_result_written_before_its_record_is_adopted_at_start(tmp_path, with_record):
    """Defect 6: the result was on disk and bit-exact, but the record still said "running"; the
    next start marked the job failed and fetch refused the result. Now recovery adopts it (from
    the record update saved inside the result, or, for an older result, from its meta)."""
    store = JobStore(tmp_path / "jobs")
    store.create("j1", "train", {"steps": 3})
    store.update("j1", state="running", started=time.time())
    splats = Splats.random(30, seed=7)
    meta = {"cancelled": False, "steps_done": 3}
    if with_record:
        store.save_result("j1", splats, {"loss": 0.25}, meta,
                          record={"state": "done", "finished": 1234.5, "metrics": {"loss": 0.25},
                                  "step": 3, "total": 3})
    else:
        store.save_result("j1", splats, {"loss": 0.25}, meta)
    # -- the server is killed here: job.json still says "running" --
    r = _runner(tmp_path / "jobs")
    try:
        assert r.status("j1")[0]["state"] == "done"
        msg = r.fetch("j1")
        assert msg.type == "result", msg.fields
        for k, v in splats.to_arrays().items():
            assert np.array_equal(msg.fields["splats"][k], v), k
        rec = r.store.read("j1")
        assert rec["metrics"] == {"loss": 0.25} and "recovered" in rec
        if with_record:
            assert rec["finished"] == 1234.5 and rec["step"] == 3
    finally:
        r.shutdown(timeout_s=10)


def test_a_half_written_result_is_not_adopted(tmp_path):
    """Defect 6 (the other side): a result folder that never got its final rename is not a
    result; the job is interrupted and the temporary folder removed."""
    store = JobStore(tmp_path / "jobs")
    store.create("j1", "train", {})
    store.update("j1", state="running", started=time.time())
    tmp = store.job_dir("j1") / ".result.tmp"
    tmp.mkdir()
    np.save(tmp / "means.npy", np.zeros((3, 3), np.float32))
    r = _runner(tmp_path / "jobs")
    try:
        entry = r.status("j1")[0]
        assert entry["state"] == "failed" and entry["error"]["code"] == "interrupted"
        assert not tmp.exists()
    finally:
        r.shutdown(timeout_s=10)


# ----------------------------------------------------------------------------------------------
# 9. Orphaned ids, retention cost, compaction
# ----------------------------------------------------------------------------------------------

def test_an_orphaned_job_folder_gets_a_failed_record(tmp_path):
    """Defect 9 (ids): a kill inside job creation (folder made, record not yet written) left an
    id that was neither fetchable (unknown_job) nor reusable (duplicate_job). Now the folder
    gets a failed record saying why, so status, fetch and submit agree."""
    root = tmp_path / "jobs"
    (root / "orphan").mkdir(parents=True)
    r = _runner(root)
    try:
        entry = r.status("orphan")[0]
        assert entry["state"] == "failed" and entry["error"]["code"] == "interrupted"
        assert "creating" in entry["error"]["message"]
        msg = r.fetch("orphan")
        assert msg.type == "error" and msg.fields["code"] == "interrupted"
        with pytest.raises(SubmitError) as e:
            r.submit("orphan", "ok", {}, {}, CLIENT)
        assert e.value.code == "duplicate_job"
    finally:
        r.shutdown(timeout_s=10)


def test_job_creation_is_one_step(tmp_path, monkeypatch):
    """Defect 9 (ids): creation builds ``.creating-<id>`` and renames it, so a crash inside it
    leaves no job folder: the id was never accepted and stays free."""
    import backend.store as store_mod
    store = JobStore(tmp_path / "jobs")

    def killed(src, dst):
        raise KeyboardInterrupt("killed between writing the record and the rename")
    monkeypatch.setattr(store_mod.os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        store.create("j1", "train", {})
    monkeypatch.undo()
    assert not (store.root / "j1").exists()
    JobStore(store.root).recover()
    assert sorted(p.name for p in store.root.iterdir()) == []
    store2 = JobStore(store.root)
    store2.create("j1", "train", {})
    assert store2.read("j1")["state"] == "queued"


def _many_records(root: Path, n: int, now: float) -> None:
    """``n`` finished records without data, written directly (as a long history would be)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = root / f"old{i:05d}"
        d.mkdir()
        (d / "job.json").write_text(json.dumps({
            "job_id": d.name, "kind": "train", "params": {}, "state": "done", "step": 1, "total": 1,
            "created": now - 60 * DAY + i, "started": now - 60 * DAY + i,
            "finished": now - 2 * DAY + i, "metrics": {}, "error": None}))


def test_retention_after_a_job_does_not_read_the_whole_history(tmp_path, monkeypatch):
    """Defect 9 (cost): the retention scan after each job read every record and walked the whole
    store (0.3/1.2/4.0 s at 1k/5k/20k records). Now an index built once answers it: pruning after
    a job reads a bounded number of records and never walks the store, whatever its history."""
    now = time.time()
    root = tmp_path / "jobs"
    _many_records(root, 1500, now)
    store = JobStore(root)
    for j in ("a", "b", "c"):
        store.create(j, "train", {})
        store.save_result(j, Splats.random(10, seed=1), {}, {"cancelled": False})
        store.update(j, state="done", finished=now - (40 if j != "c" else 0) * DAY)
    reads, walks = [], []
    real_read, real_walk = Path.read_text, os.walk
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or real_read(self, *a, **k))
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: walks.append(top) or real_walk(top, *a, **k))
    pruned = store.prune(Retention(max_age_days=30, max_bytes=10 * 2 ** 30, compact_after_days=0),
                         now=now)
    assert [p[0] for p in pruned] == ["a", "b"]
    assert len(reads) <= 10, f"prune read {len(reads)} files"
    assert Path(root) not in [Path(w) for w in walks], "prune walked the whole store"
    assert len(walks) <= 10


def test_old_records_compact_and_stay_readable(tmp_path):
    """Defect 9 (growth): records with no data left move into one archive file once they are
    older than ``compact_after_days``; their ids stay readable and taken, across restarts."""
    now = time.time()
    root = tmp_path / "jobs"
    _many_records(root, 300, now)
    store = JobStore(root)
    store.prune(Retention(max_age_days=30, max_bytes=0, compact_after_days=1), now=now)
    assert sorted(p.name for p in root.iterdir()) == [".records.jsonl"]
    store2 = JobStore(root)
    store2.recover()
    assert store2.read("old00042")["state"] == "done" and store2.exists("old00299")
    with pytest.raises(StoreError) as e:
        store2.create("old00007", "train", {})
    assert e.value.code == "duplicate_job"
    r = _runner(root, store=store2)
    try:
        assert r.status("old00001")[0]["state"] == "done"
        msg = r.fetch("old00001")
        assert msg.type == "error" and msg.fields["code"] == "no_result"
    finally:
        r.shutdown(timeout_s=10)


# ----------------------------------------------------------------------------------------------
# 8. Cancel during set-up; the nearest-neighbour init
# ----------------------------------------------------------------------------------------------

def test_knn_scales_match_brute_force():
    """Defect 8 (correctness of the O(N log N) replacement): the KD-tree gives the same RMS
    distance to the 3 nearest other points as brute force, duplicates included."""
    from backend.params import knn_mean_distance
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(1500, 3)).astype(np.float32)
    pts[10] = pts[11]                                     # a duplicate point
    got = knn_mean_distance(torch.from_numpy(pts)).numpy()
    d2 = ((pts[:, None, :].astype(np.float64) - pts[None].astype(np.float64)) ** 2).sum(-1)
    want = np.sqrt(np.sort(d2, axis=1)[:, 1:4].mean(1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got[10] < want[12] and knn_mean_distance(torch.zeros(1, 3)).tolist() == [1.0]


class _StopAfter:
    """A job context whose cancel arrives after ``polls`` polls; records when it stopped."""

    device = "cpu"
    job_dir = Path("/tmp")

    def __init__(self, polls: int):
        self.polls, self.left = 0, polls

    def report(self, *a, **k):
        pass

    def should_stop(self) -> bool:
        self.polls += 1
        return self.polls > self.left


def test_cancel_during_nearest_neighbour_init_is_prompt():
    """Defect 8: the trainer's O(N^2) nearest-neighbour init never polled cancel (25k/50k/100k
    points: 9/34/139 s). Now it is a KD-tree polled between chunks: a cancel during it ends the
    job at once with ``cancelled``."""
    from backend.trainer import train
    from shared.jobkinds.train import SPEC as TRAIN
    rng = np.random.default_rng(0)
    n = 100_000
    points = rng.normal(size=(n, 3)).astype(np.float32)
    images = np.zeros((2, 8, 8, 4), np.uint8)
    viewmats = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    viewmats[:, 2, 3] = 5.0
    Ks = np.tile(np.float32([[8, 0, 4], [0, 8, 4], [0, 0, 1]]), (2, 1, 1))
    ctx = _StopAfter(polls=3)        # past the first set-up stages, inside the KD-tree queries
    t0 = time.perf_counter()
    with pytest.raises(JobError) as e:
        train(images, viewmats, Ks, points, None,
              TRAIN.make(steps=5, max_gaussians=n, holdout_every=0), ctx)
    elapsed = time.perf_counter() - t0
    assert e.value.code == "cancelled" and "nearest-neighbour" in e.value.message, e.value.message
    assert elapsed < 10, f"cancel took {elapsed:.1f} s"


def test_cancel_while_reading_a_dataset(tmp_path):
    """Defect 8 (datasets reading): the dataset reader polls cancel before each image."""
    from PIL import Image
    from backend.datasets import DatasetCancelled, load_dataset
    from backend.trainer import train_from_dataset
    from shared.jobkinds.train import SPEC as TRAIN
    frames = []
    for i in range(6):
        Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(tmp_path / f"f{i}.png")
        c2w = np.eye(4)
        c2w[0, 3] = i * 0.1
        c2w[2, 3] = 4.0
        frames.append({"file_path": f"f{i}.png", "transform_matrix": c2w.tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    ctx = _StopAfter(polls=2)
    with pytest.raises(DatasetCancelled):
        load_dataset(tmp_path, should_stop=ctx.should_stop)
    assert ctx.polls == 3                       # stopped at the third image, not after all six
    with pytest.raises(JobError) as e:
        train_from_dataset(str(tmp_path), TRAIN.make(steps=5), _StopAfter(polls=1))
    assert e.value.code == "cancelled" and "dataset" in e.value.message


def test_generate_and_edit_set_up_stages_poll_cancel():
    """Defect 8 (generate/edit set-up): every set-up stage starts with a cancel check, so a
    cancel during model loading ends the job before the next stage (here: before the model
    loads, which in the product takes minutes)."""
    from backend.edit import run_edit_job
    from backend.generate import run_generate_job
    ctx = _StopAfter(polls=0)
    with pytest.raises(JobError) as e:
        run_generate_job({"prompt": "a cup", "init": "shap-e", "steps": 2}, {}, ctx)
    assert e.value.code == "cancelled" and "Shap-E" in e.value.message
    splats = Splats.random(20, seed=1).to_arrays()
    with pytest.raises(JobError) as e:
        run_edit_job({"prompt": "bronze", "steps": 2}, {"splats": splats}, _StopAfter(polls=0))
    assert e.value.code == "cancelled" and "edit model" in e.value.message


def test_a_job_cancelled_in_set_up_ends_cancelled_without_a_result(tmp_path):
    """Defect 8 (the runner's side): a job that stops in set-up (``JobError('cancelled')``) ends
    in state ``cancelled``; its client is told, and fetch explains there is no result."""
    r = _runner(tmp_path / "jobs")
    try:
        r.submit("j1", "setup_cancel", {}, {}, CLIENT)
        deadline = time.monotonic() + 10
        while r.status("j1")[0]["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        r.cancel("j1", CLIENT)
        msg = r.inbox.get(timeout=10)
        assert msg.type == "error" and msg.fields["code"] == "cancelled", msg
        assert r.status("j1")[0]["state"] == "cancelled"
        gone = r.fetch("j1")
        assert gone.type == "error" and "nothing was trained" in gone.fields["message"], gone.fields
    finally:
        r.shutdown(timeout_s=10)
