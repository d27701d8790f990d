"""Fuzz the backend server with hostile messages over several sockets (issue 10, item 1).

    python bench/fuzz_server.py [--messages 50000] [--sockets 8] [--seed 1]

Starts a real ``python -m backend serve`` (with the test plug-in job kinds of tests/test_server.py:
``sleep`` is the job that really runs), then sends a seeded stream of messages from ``--sockets``
DEALER sockets in lockstep (each socket sends one message and waits for its reply). The stream
mixes, by weight:

* ``zero_size``: array references with zero-size or overflowing shapes (``[0, 2**62]``,
  ``[2**64-1, 0]``, 33 dimensions, negative, float and bool dimensions, huge products);
* ``bad_array``: bad dtypes, frame indices (out of range, negative, reused, bool), frames of the
  wrong length, unreferenced frames;
* ``mutated``: a valid message (hello, status, fetch, cancel, submit with a payload) whose header
  bytes are flipped, cut, spliced or extended, or whose decoded header has a random node replaced;
* ``truncated``: frames cut short or dropped, extra frames, an empty header;
* ``wrong_type``: every header slot with values of the wrong type (ints beyond 64 bits, bytes,
  nested lists 100 deep, non-string map keys, msgpack ext types, NaN);
* ``valid``: well-formed requests (about 1 in 8 submits a short ``sleep`` job).

Every message must get a reply (a socket that waits ``--reply-timeout`` seconds for one is a hang
and ends the run), the server must stay up, every ``internal_error`` reply must come with a
traceback in the server log, and afterwards a valid job must run to its result. Prints messages per
second and the histogram of reply codes. ``run_fuzz`` is what tests/test_fuzz_server.py runs at 5,000
messages.
"""
from __future__ import annotations

import argparse
import collections
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from shared.protocol import PROTOCOL_VERSION, Message, decode, encode  # noqa: E402

KINDS = ("zero_size", "bad_array", "mutated", "truncated", "wrong_type", "valid")
WEIGHTS = (3, 2, 4, 2, 2, 2)


# ----------------------------------------------------------------------------------------------
# The message generator
# ----------------------------------------------------------------------------------------------

def _nd(dtype: Any, shape: Any, frame: Any) -> dict:
    return {"__nd__": [dtype, shape, frame]}


def _header(mtype: Any = "submit", job_id: Any = "fz", fields: Any = None, v: Any = PROTOCOL_VERSION,
            **extra: Any) -> bytes:
    h = {"type": mtype, "v": v, "job_id": job_id, "fields": {} if fields is None else fields}
    h.update(extra)
    return msgpack.packb(h, use_bin_type=True)


def _job_id(rng: random.Random) -> str:
    return uuid.UUID(int=rng.getrandbits(128)).hex


def _valid(rng: random.Random) -> tuple[list[bytes], str]:
    """A well-formed request; ``submit`` runs a short sleep job (2-5 steps of 1 ms)."""
    r = rng.random()
    if r < 0.125:
        pts = np.asarray([[rng.uniform(-1, 1) for _ in range(3)] for _ in range(rng.randint(0, 6))],
                         np.float32).reshape(-1, 3)
        msg = Message("submit", _job_id(rng), {"kind": "sleep",
                                               "params": {"steps": rng.randint(2, 5), "dt": 0.001},
                                               "payload": {"points": pts}})
    elif r < 0.35:
        msg = Message("hello", None, {"client": "fuzz", "protocol": PROTOCOL_VERSION})
    elif r < 0.6:
        msg = Message("status", rng.choice([None, _job_id(rng)]), {})
    elif r < 0.8:
        msg = Message("fetch", _job_id(rng), {})
    else:
        msg = Message("cancel", _job_id(rng), {})
    return [bytes(f) for f in encode(msg)], msg.type


def _zero_size(rng: random.Random) -> list[bytes]:
    huge = [2 ** 62, 2 ** 63, 2 ** 64 - 1, 2 ** 31, 2 ** 40, 10 ** 30, 2 ** 100]
    kind = rng.randrange(6)
    if kind == 0:
        shape = [0, rng.choice(huge)]
    elif kind == 1:
        shape = [rng.choice(huge), 0]
    elif kind == 2:
        shape = [rng.choice([0, 1, rng.choice(huge)]) for _ in range(rng.randint(1, 40))]
        shape[rng.randrange(len(shape))] = 0
    elif kind == 3:
        shape = [rng.choice(huge), rng.choice(huge)]
    elif kind == 4:
        shape = [rng.choice([-1, 1.5, True, None, "3", [2], -2 ** 63])]
    else:
        shape = [0] * rng.randint(1, 3)
    dtype = rng.choice(["f4", "u1", "bool", "f8", "i8", "f2"])
    frame = b"" if rng.random() < 0.8 else bytes(rng.randrange(64))
    where = rng.randrange(3)
    ref = _nd(dtype, shape, 0)
    if where == 0:
        fields = {"kind": "sleep", "params": {}, "payload": {"points": ref}}
        return [_header("submit", "fz", fields), frame]
    if where == 1:
        splats = {k: ref if i == 0 else _nd("f4", [0, 3], i) for i, k in
                  enumerate(("means", "quats", "scales", "opacities", "sh0"))}
        return [_header("result", "fz", {"splats": splats}), frame, b"", b"", b"", b""]
    return [_header("submit", "fz", {"kind": "sleep", "params": {"deep": [[ref]]}}), frame]


def _bad_array(rng: random.Random) -> list[bytes]:
    choice = rng.randrange(7)
    good = np.arange(12, dtype=np.float32).tobytes()
    if choice == 0:
        ref, frames = _nd(rng.choice([">f4", "f16", "O", 5, None, "", "V8", "<U4"]), [4, 3], 0), [good]
    elif choice == 1:
        ref, frames = _nd("f4", [4, 3], rng.choice([1, -1, 2 ** 64, True, "0", None, 1.0])), [good]
    elif choice == 2:
        ref, frames = _nd("f4", [4, 3], 0), [good[: rng.randrange(len(good))]]
    elif choice == 3:
        ref, frames = _nd("f4", [4, 3], 0), [good + bytes(rng.randint(1, 9))]
    elif choice == 4:
        return [_header("submit", "fz", {"kind": "sleep", "params": {},
                                         "payload": {"a": _nd("f4", [4, 3], 0),
                                                     "b": _nd("f4", [4, 3], 0)}}), good]
    elif choice == 5:
        ref, frames = _nd("f4", [4, 3], 0), [good, good]        # frame 1 unreferenced
    else:
        ref, frames = {"__nd__": ["f4", [4, 3], 0], "x": 1}, [good]
    return [_header("submit", "fz", {"kind": "sleep", "params": {}, "payload": {"points": ref}}),
            *frames]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(14)
    if r == 0:
        return rng.choice([2 ** 64 - 1, -2 ** 63, 2 ** 63 - 1, 0, -1])
    if r == 1:
        return rng.choice([float("nan"), float("inf"), -0.0, 1e308, 5e-324])
    if r == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(16)))
    if r == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(20)))
    if r == 4:
        return None
    if r == 5:
        return rng.choice([True, False])
    if r == 6 and depth < 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if r == 7 and depth < 4:
        return {rng.choice(["kind", "params", "payload", "__nd__", "x", "", "jobs"]):
                _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if r == 8:
        return _nd(rng.choice(["f4", "u1"]), [rng.choice([0, 1, 2 ** 62])], rng.choice([0, 1]))
    if r == 9:
        return msgpack.ExtType(rng.randrange(128), b"\x00\x01")
    if r == 10:
        return "abc\n" if rng.random() < 0.5 else "../../etc"
    return rng.choice(["hello", "submit", "status", "fetch", "cancel", "result", "error", 1, "fz"])


def _mutate_structure(rng: random.Random, obj: Any) -> Any:
    """Replace one random node of a decoded header by a random value (or delete a key)."""
    if isinstance(obj, dict) and obj and rng.random() < 0.7:
        key = rng.choice(list(obj))
        if rng.random() < 0.15:
            obj = dict(obj)
            del obj[key]
            return obj
        obj = dict(obj)
        obj[key] = _mutate_structure(rng, obj[key])
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.7:
        obj = list(obj)
        i = rng.randrange(len(obj))
        obj[i] = _mutate_structure(rng, obj[i])
        return obj
    return _random_value(rng)


def _mutated(rng: random.Random) -> list[bytes]:
    frames, _ = _valid(rng)
    if rng.random() < 0.5:
        head = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(4)
            if op == 0 and head:
                head[rng.randrange(len(head))] ^= 1 << rng.randrange(8)
            elif op == 1 and head:
                del head[rng.randrange(len(head)):]
            elif op == 2:
                i = rng.randrange(len(head) + 1)
                head[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif head:
                head[rng.randrange(len(head))] = rng.choice([0xc1, 0xdf, 0xdd, 0xc7, 0xff, 0x00])
        frames[0] = bytes(head)
    else:
        header = msgpack.unpackb(frames[0], raw=False)
        for _ in range(rng.randint(1, 3)):
            header = _mutate_structure(rng, header)
        try:
            frames[0] = msgpack.packb(header, use_bin_type=True)
        except (OverflowError, TypeError, ValueError):
            frames[0] = frames[0][:-1]
    return frames


def _truncated(rng: random.Random) -> list[bytes]:
    frames, _ = _valid(rng)
    op = rng.randrange(5)
    if op == 0:
        frames[0] = frames[0][: rng.randrange(len(frames[0]))]
    elif op == 1 and len(frames) > 1:
        frames[1] = frames[1][: rng.randrange(max(1, len(frames[1])))]
    elif op == 2 and len(frames) > 1:
        frames = frames[:1]
    elif op == 3:
        frames = frames + [bytes(rng.randrange(40)) for _ in range(rng.randint(1, 70))]
    else:
        frames = [b""]
    return frames


def _wrong_type(rng: random.Random) -> list[bytes]:
    slot = rng.choice(["type", "v", "job_id", "fields", "extra", "root", "deep", "keys"])
    h: Any = {"type": "status", "v": PROTOCOL_VERSION, "job_id": None, "fields": {}}
    if slot in ("type", "v", "job_id", "fields"):
        h[slot] = _random_value(rng)
    elif slot == "extra":
        h[_random_value(rng) if rng.random() < 0.5 else "x"] = 1
    elif slot == "root":
        h = _random_value(rng)
    elif slot == "deep":
        v: Any = 1
        for _ in range(rng.choice([40, 100, 500])):
            v = [v]
        h = {"type": "submit", "v": 1, "job_id": "fz", "fields": {"kind": "x", "params": {"a": v}}}
    else:
        h = {"type": "submit", "v": 1, "job_id": "fz",
             "fields": {"kind": "sleep", "params": {rng.choice([1, b"k", 2.5]): 1}}}
    try:
        return [msgpack.packb(h, use_bin_type=True, strict_types=False)]
    except (OverflowError, TypeError, ValueError):
        return [b"\x81\xa4type"]


def hostile_message(rng: random.Random) -> tuple[list[bytes], str]:
    """One message (frames) and the family it came from."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    make = {"zero_size": _zero_size, "bad_array": _bad_array, "mutated": _mutated,
            "truncated": _truncated, "wrong_type": _wrong_type,
            "valid": lambda r: _valid(r)[0]}[kind]
    while True:
        try:
            return make(rng), kind
        except (OverflowError, TypeError, ValueError):   # not expressible in msgpack (ints over
            continue                                      # 64 bits): draw another one


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

@dataclass
class FuzzStats:
    messages: int = 0
    seconds: float = 0.0
    replies: collections.Counter = field(default_factory=collections.Counter)   # code or type
    families: collections.Counter = field(default_factory=collections.Counter)
    async_messages: int = 0         # progress/results of accepted jobs, not replies
    accepted: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else math.nan

    def report(self) -> str:
        lines = [f"{self.messages} messages in {self.seconds:.1f} s: {self.rate:.0f} messages/s "
                 f"({self.async_messages} job messages besides the replies; "
                 f"{len(self.accepted)} jobs accepted)",
                 "families: " + ", ".join(f"{k} {v}" for k, v in sorted(self.families.items())),
                 "replies (error code, or message type):"]
        for key, n in self.replies.most_common():
            lines.append(f"  {key:24s} {n:7d}")
        return "\n".join(lines)


class FuzzHang(AssertionError):
    pass


def run_fuzz(address: str, messages: int, seed: int = 1, sockets: int = 6,
             reply_timeout_s: float = 10.0) -> FuzzStats:
    """Send ``messages`` hostile messages from ``sockets`` DEALERs in lockstep; raise
    ``FuzzHang`` when a message gets no reply within ``reply_timeout_s``."""
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    socks = []
    for i in range(sockets):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.routing_id = f"fuzz-{seed}-{i}".encode()
        s.connect(address)
        socks.append(s)
    stats = FuzzStats()
    mine: list[set[str]] = [set() for _ in socks]     # accepted job ids per socket
    t0 = time.perf_counter()
    try:
        sent = 0
        while sent < messages:
            batch = []
            for i, s in enumerate(socks):
                if sent >= messages:
                    break
                frames, family = hostile_message(rng)
                stats.families[family] += 1
                s.send_multipart(frames)
                batch.append(i)
                sent += 1
            for i in batch:
                _await_reply(socks[i], mine[i], stats, reply_timeout_s)
        stats.messages = sent
    finally:
        stats.seconds = time.perf_counter() - t0
        for s in socks:
            s.close()
    return stats


def _await_reply(sock: zmq.Socket, mine: set[str], stats: FuzzStats, timeout_s: float) -> None:
    """Read until the reply to the last request; job messages of accepted jobs are counted apart."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(left * 1000):
            raise FuzzHang(f"no reply within {timeout_s} s (after {sum(stats.replies.values())} "
                           "replies)")
        msg = decode(sock.recv_multipart())
        job_message = msg.type == "progress" or (msg.job_id in mine and (
            msg.type == "result" or (msg.type == "error"
                                     and msg.fields["code"] not in _REQUEST_ERRORS)))
        if job_message:
            stats.async_messages += 1
            if msg.type in ("result", "error"):
                mine.discard(msg.job_id)
            continue
        if msg.type == "accepted":
            mine.add(msg.job_id)
            stats.accepted.append(msg.job_id)
        key = msg.fields["code"] if msg.type == "error" else msg.type
        stats.replies[key] += 1
        return


# Error codes that answer a request (never a job's own end)
_REQUEST_ERRORS = {"malformed_header", "unknown_type", "version_mismatch", "bad_array", "too_large",
                   "missing_field", "bad_field", "unexpected_type", "unknown_job_kind",
                   "duplicate_job", "unknown_job", "not_finished", "no_result", "internal_error",
                   "disk_full", "shutting_down"}


def finish_with_a_valid_job(address: str, accepted: list[str], timeout_s: float = 60.0) -> dict:
    """Cancel what the fuzz left queued or running, then run one valid job to its result;
    returns its result fields."""
    from shared.client import BackendClient
    with BackendClient(address, timeout_s=timeout_s) as c:
        for job_id in accepted:
            c.cancel(job_id)
        c.wait_for(lambda: c.pending == 0, timeout_s)
        pts = np.float32([[0, 0, 0], [1, 2, 3]])
        job = c.submit("sleep", {"steps": 3, "dt": 0.01}, {"points": pts})
        assert c.wait_for(lambda: c.jobs[job].finished, timeout_s), c.jobs[job]
        state = c.jobs[job]
        assert state.state == "done" and state.error is None, (state.state, state.error)
        assert np.array_equal(state.result["means"], pts)
        return state.result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--sockets", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reply-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    from test_server import ServerProcess
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(tmp) / "store").start()
        try:
            stats = run_fuzz(srv.address, args.messages, args.seed, args.sockets, args.reply_timeout)
            print(stats.report())
            alive = srv.proc.poll() is None
            finish_with_a_valid_job(srv.address, stats.accepted)
            log = srv.log()
            internal = stats.replies.get("internal_error", 0)
            tracebacks = log.count("Traceback (most recent call last)")
            print(f"server alive: {alive}; internal_error replies: {internal}; tracebacks in the "
                  f"log: {tracebacks}; a valid job afterwards: done")
            lines = log.splitlines()
            for i, line in enumerate(lines):      # what each logged traceback was about
                if line.startswith("Traceback (most recent call last)") and i > 0:
                    last = next((ln for ln in lines[i + 1:] if ln and not ln.startswith(" ")), "")
                    print(f"  traceback after: {lines[i - 1][:110]}\n    ending: {last[:110]}")
        finally:
            rc = srv.stop()
        print(f"server exit code after SIGTERM: {rc}")
        ok = alive and rc == 0 and internal <= tracebacks
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
