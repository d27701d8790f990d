"""Resumable uploads (the ``upload`` message; backend/uploads.py, shared/client.py) over a real
socket to a real ``python -m backend serve``: an upload interrupted halfway (client process killed
with SIGKILL; socket closed and the server restarted) resumes and completes without sending again
any chunk the server already stored; hostile chunks and opens get their exact errors and the server
keeps serving; a reconstruct job can only name a complete upload of its own client."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from shared.client import BackendClient
from shared.protocol import BadField, Message, decode, encode
from test_server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64 << 10


def _file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path / "store", plugins=[]).start()
    yield srv
    srv.stop()


def _stored(store: Path, uid: str, name: str) -> bytes:
    return (store / ".uploads" / uid / "files" / name).read_bytes()


_CHILD = r"""
import os, signal, sys
from shared.client import BackendClient
addr, uid, chunk, *paths = sys.argv[1:]
c = BackendClient(addr, timeout_s=10)
c.upload(paths, upload_id=uid, chunk_size=int(chunk), window=2)
up = c.uploads[uid]
while not up.finished:
    c.wait_for(lambda: False, 0.01)
    if up.state == "sending" and up.received * 2 >= up.total:
        print(up.received, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)     # the client dies halfway, mid-stream
print("finished", up.state, up.error, flush=True)
"""


def test_upload_killed_halfway_resumes_without_resending(server, tmp_path):
    video = _file(tmp_path / "clip.mp4", 40 * CHUNK + 1234, 1)         # 41 chunks, the last short
    photo = _file(tmp_path / "a.jpg", 3 * CHUNK, 2)
    empty = _file(tmp_path / "empty.png", 0, 3)
    uid = "resume-test-1"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CHILD, server.address, uid, str(CHUNK), str(video), str(photo),
                           str(empty)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, (proc.returncode, proc.stdout, proc.stderr)
    at_kill = int(proc.stdout.split()[0])
    total = video.stat().st_size + photo.stat().st_size
    assert total / 2 <= at_kill < total

    with BackendClient(server.address, timeout_s=10) as c:
        c.upload([video, photo, empty], upload_id=uid, chunk_size=CHUNK)
        up = c.uploads[uid]
        assert c.wait_for(lambda: up.finished, 30), up
        assert up.state == "complete", up.error
        # what was stored before the kill (at least what the dead client had seen acknowledged,
        # perhaps one chunk more in flight) is not sent again: the bytes sent are exactly the rest
        assert up.skipped_bytes >= at_kill
        assert up.sent_bytes == total - up.skipped_bytes
        assert up.received == up.total == total
    assert _stored(server.store, uid, "clip.mp4") == video.read_bytes()
    assert _stored(server.store, uid, "a.jpg") == photo.read_bytes()
    assert _stored(server.store, uid, "empty.png") == b""
    assert not list((server.store / ".uploads" / uid / "chunks").iterdir())   # chunks freed once assembled


def test_upload_survives_closed_socket_and_server_restart(tmp_path):
    store = tmp_path / "store"
    srv = ServerProcess(store, plugins=[]).start()
    video = _file(tmp_path / "orbit.mp4", 20 * CHUNK, 4)
    try:
        with BackendClient(srv.address, timeout_s=10) as c:
            uid = c.upload([video], chunk_size=CHUNK, window=1)
            up = c.uploads[uid]
            assert c.wait_for(lambda: up.received >= 8 * CHUNK, 30), up
        # the socket is closed with chunks in flight; the server goes away and comes back
        srv.stop()
        srv = ServerProcess(store, plugins=[], port=srv.port).start()
        with BackendClient(srv.address, timeout_s=10) as c:
            c.upload([video], upload_id=uid, chunk_size=CHUNK)
            up2 = c.uploads[uid]
            assert c.wait_for(lambda: up2.finished, 30) and up2.state == "complete", up2.error
            assert up2.skipped_bytes >= 8 * CHUNK and up2.sent_bytes == 20 * CHUNK - up2.skipped_bytes
        assert _stored(store, uid, "orbit.mp4") == video.read_bytes()
    finally:
        srv.stop()


def _ask(c: BackendClient, uid: str, fields: dict) -> Message:
    c._send(Message("upload", uid, fields))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = [m for m in c.poll() if m.job_id == uid]
        if got:
            return got[0]
        time.sleep(0.01)
    raise AssertionError(f"no reply to an upload message for {uid}")


def _chunk(data: bytes, file: int = 0, offset: int = 0, sha: str | None = None) -> dict:
    return {"file": file, "offset": offset, "sha256": sha or hashlib.sha256(data).hexdigest(),
            "data": np.frombuffer(data, np.uint8)}


def test_hostile_chunks_get_clear_errors_and_the_server_keeps_serving(server, tmp_path):
    blob = _file(tmp_path / "v.mp4", 2 * CHUNK + 10, 5).read_bytes()
    files = [{"name": "v.mp4", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]
    with BackendClient(server.address, timeout_s=10) as c:
        r = _ask(c, "hostile", {"files": files, "chunk_size": CHUNK})
        assert r.type == "upload" and r.fields["have"] == [[]] and r.fields["total"] == len(blob)

        def err(uid, fields):
            m = _ask(c, uid, fields)
            assert m.type == "error", m
            return m.fields["code"], m.fields["message"]

        first = blob[:CHUNK]
        code, text = err("hostile", _chunk(first, sha="0" * 64))
        assert code == "bad_chunk" and "does not match its sha256" in text and "send it again" in text
        code, text = err("hostile", _chunk(blob[:CHUNK + 1]))
        assert (code, text) == ("bad_chunk", f"upload hostile: the chunk at offset 0 of 'v.mp4' has "
                                             f"{CHUNK + 1} bytes; expected {CHUNK}")
        code, text = err("no-such-upload", _chunk(first))
        assert code == "unknown_upload" and "no upload no-such-upload on this backend" in text
        code, text = err("hostile", _chunk(first, offset=3 * CHUNK))
        assert (code, text) == ("bad_chunk", f"upload hostile: offset {3 * CHUNK} is out of range for "
                                             f"'v.mp4' ({len(blob)} bytes)")
        code, text = err("hostile", _chunk(first, offset=100))
        assert code == "bad_chunk" and "not on a chunk boundary" in text
        code, text = err("hostile", _chunk(first, file=7))
        assert code == "bad_chunk" and "file index 7 out of range" in text
        code, text = err("hostile", {"file": 0, "offset": 0})
        assert code == "bad_chunk" and "missing sha256, data" in text
        code, text = err("evil", {"files": [{**files[0], "name": "../../etc/passwd"}], "chunk_size": CHUNK})
        assert code == "bad_upload" and "'../../etc/passwd' is not allowed" in text
        code, text = err("evil", {"files": files, "chunk_size": 1 << 40})
        assert code == "bad_upload" and "chunk_size" in text
        code, text = err("hostile", {"files": [{**files[0], "size": 5}], "chunk_size": CHUNK})
        assert code == "bad_upload" and "already exists with other files" in text
        # data that is not a flat byte array: refused by the sender, and by the server from a raw socket
        with pytest.raises(BadField, match=r"fields.data: expected a u1 array of one dimension"):
            c._send(Message("upload", "hostile", {**_chunk(first), "data": np.zeros((2, 2), np.uint8)}))
        frames = encode(Message("upload", "hostile", _chunk(first[:4])))
        header = msgpack.unpackb(frames[0])
        header["fields"]["data"]["__nd__"][1] = [2, 2]
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(server.address)
        raw.send_multipart([msgpack.packb(header), bytes(frames[1])])
        assert raw.poll(10000)
        reply = decode(raw.recv_multipart())
        raw.close()
        assert reply.fields["code"] == "bad_field" and "fields.data: expected a u1 array" in reply.fields["message"]
        assert not (server.store / ".uploads" / "evil").exists()

        # a reconstruct job may not name an upload that is incomplete or unknown
        jid = c.submit("reconstruct", {"upload": "hostile", "steps": 0})
        assert c.wait_for(lambda: c.jobs[jid].finished, 10)
        assert c.jobs[jid].error[0] == "bad_params" and "is not complete (0 of" in c.jobs[jid].error[1]
        jid = c.submit("reconstruct", {"upload": "nope", "steps": 0})
        assert c.wait_for(lambda: c.jobs[jid].finished, 10)
        assert c.jobs[jid].error == ("bad_params", "upload 'nope': no such upload of this client on this backend")

        # the server still serves, and the same upload completes with good chunks
        c.upload([tmp_path / "v.mp4"], upload_id="hostile", chunk_size=CHUNK)
        assert c.wait_for(lambda: c.uploads["hostile"].finished, 10)
        assert c.uploads["hostile"].state == "complete", c.uploads["hostile"].error
    assert _stored(server.store, "hostile", "v.mp4") == blob
    assert server.proc.poll() is None


def test_a_file_whose_chunks_disagree_with_its_hash_is_dropped(server, tmp_path):
    """Every chunk matches its own hash, but the file's sha256 in the open was another file's: the
    chunks are dropped (named error) and the upload can be sent again."""
    blob = b"x" * (CHUNK + 5)
    files = [{"name": "p.png", "size": len(blob), "sha256": hashlib.sha256(b"other").hexdigest()}]
    with BackendClient(server.address, timeout_s=10) as c:
        assert _ask(c, "mismatch", {"files": files, "chunk_size": CHUNK}).type == "upload"
        assert _ask(c, "mismatch", _chunk(blob[:CHUNK])).fields["received"] == CHUNK
        m = _ask(c, "mismatch", _chunk(blob[CHUNK:], offset=CHUNK))
        assert m.type == "error" and m.fields["code"] == "bad_upload"
        assert "'p.png' assembled from its chunks does not match its sha256" in m.fields["message"]
        assert _ask(c, "mismatch", {"files": files, "chunk_size": CHUNK}).fields["have"] == [[]]


def test_a_client_over_its_uploads_limit_gets_too_large(tmp_path):
    """``serve --max-uploads-gb``: the uploads one client holds are capped by their declared sizes;
    an open beyond the cap is refused before anything is stored, and the server keeps serving."""
    srv = ServerProcess(tmp_path / "store", plugins=[], extra=["--max-uploads-gb", str(150_000 / 2 ** 30)]).start()
    try:
        blob = b"y" * 100_000
        files = [{"name": "a.jpg", "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]
        with BackendClient(srv.address, timeout_s=10) as c:
            assert _ask(c, "first", {"files": files, "chunk_size": CHUNK}).type == "upload"
            m = _ask(c, "second", {"files": files, "chunk_size": CHUNK})
            assert m.type == "error" and m.fields["code"] == "too_large", m
            assert "over the backend's limit of 0.00 GiB per client (serve --max-uploads-gb)" in m.fields["message"]
            assert not (srv.store / ".uploads" / "second").exists()
            # resuming the first is no new space: still answered
            assert _ask(c, "first", {"files": files, "chunk_size": CHUNK}).fields["have"] == [[]]
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def _open_one(store, uid: str, owner: str, data: bytes) -> None:
    sha = hashlib.sha256(data).hexdigest()
    store.open(uid, [{"name": "v.mp4", "size": len(data), "sha256": sha}], CHUNK, owner)
    store.put_chunk(uid, 0, 0, sha, np.frombuffer(data, np.uint8), owner)


def test_uploads_untouched_for_keep_days_are_removed_unless_a_job_reads_them(tmp_path):
    from backend.uploads import PRUNE_EVERY_S, UploadStore, uploads_root
    now = [1e9]
    in_use: set[str] = set()
    store = UploadStore(tmp_path, keep_days=2.0, in_use=lambda: set(in_use), clock=lambda: now[0])
    for uid in ("old", "used", "fresh"):
        _open_one(store, uid, "local:a", uid.encode() * 10)
    root = uploads_root(tmp_path)
    old = now[0] - 3 * 86400
    for uid in ("old", "used"):
        os.utime(root / uid, (old, old))
    in_use.add("used")
    assert store.prune(now[0]) == ["old"]
    assert sorted(p.name for p in root.iterdir()) == ["fresh", "used"]
    # a chunk (or a resume, or a submit naming it) counts as a touch
    os.utime(root / "fresh", (old, old))
    store.check_use("fresh", "local:a")
    in_use.clear()
    assert store.prune(now[0]) == ["used"]
    assert (root / "fresh").is_dir()
    # opening a new upload prunes, at most every PRUNE_EVERY_S
    os.utime(root / "fresh", (old, old))
    _open_one(store, "new1", "local:a", b"n")
    assert (root / "fresh").is_dir()                 # pruned less than PRUNE_EVERY_S ago: skipped
    now[0] += PRUNE_EVERY_S + 1
    _open_one(store, "new2", "local:a", b"m")
    assert not (root / "fresh").exists() and (root / "new1").is_dir() and (root / "new2").is_dir()


def test_upload_limit_is_per_client_and_half_created_folders_go_at_start(tmp_path):
    from backend.uploads import UploadStore, uploads_root
    store = UploadStore(tmp_path, max_client_bytes=25)
    _open_one(store, "a1", "curve:A", b"a" * 20)
    with pytest.raises(Exception) as err:
        _open_one(store, "a2", "curve:A", b"a" * 6)
    assert getattr(err.value, "code", None) == "too_large"
    _open_one(store, "b1", "curve:B", b"b" * 20)      # another client's uploads do not count
    assert store.client_bytes("curve:A") == 20 and store.client_bytes("curve:B") == 20
    root = uploads_root(tmp_path)
    (root / ".creating-x" / "chunks").mkdir(parents=True)
    (root / ".removing-y").mkdir()
    UploadStore(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["a1", "b1"]
