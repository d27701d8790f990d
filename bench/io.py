"""I/O benchmark: the wire protocol against a plain numpy copy, and the splat file formats.

    python bench/io.py [--n 1000000] [--degree 3] [--repeat 5]

Part 1 sends a ``result`` message holding N random splats of the given SH degree:

* ``encode+decode``: shared.protocol (zero copy both ways) with all validation;
* ``encode+decode+Splats``: the same plus ``splats_from_fields`` (shape/dtype/finiteness checks);
* ``encode+zmq inproc+decode``: the frames really go through a ZeroMQ PAIR socket
  (``send_multipart(copy=False)`` / ``recv_multipart(copy=False)``); ``zmq tcp loopback`` likewise
  over 127.0.0.1 (the kernel copies the bytes, as it will between the add-on and the backend);
* the baseline ``tobytes+frombuffer``: one copy of every array into bytes and back to arrays,
  the cheapest serialisation there is without zero copy.

Times are the median of ``--repeat`` runs. Part 2 writes and reads every format in
``shared.formats`` once and prints the times and the file size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.protocol import Message, decode, encode, splats_from_fields, splats_to_fields  # noqa: E402
from shared.splats import Splats  # noqa: E402

# format label -> (format, extension, writer options)
FORMATS = {"ply": ("ply", ".ply", {}), "compressed_ply": ("compressed_ply", ".compressed.ply", {}),
           "splat": ("splat", ".splat", {}), "spz v4": ("spz", ".spz", {}), "spz v3": ("spz", ".spz", {"version": 3}),
           "sog": ("sog", ".sog", {})}
JOB = "0" * 32


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` in seconds (one untimed warm-up run first)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def bench_protocol(splats: Splats, repeat: int) -> None:
    fields = splats_to_fields(splats)
    msg = Message("result", JOB, {"splats": fields, "metrics": {"psnr": 30.0}, "meta": {}})
    nbytes = sum(a.nbytes for a in fields.values())

    def baseline() -> dict[str, np.ndarray]:
        blobs = {k: a.tobytes() for k, a in fields.items()}
        return {k: np.frombuffer(b, fields[k].dtype).reshape(fields[k].shape) for k, b in blobs.items()}

    def round_trip() -> Message:
        return decode(encode(msg))

    def round_trip_splats() -> Splats:
        return splats_from_fields(decode(encode(msg)).fields["splats"])

    ctx = zmq.Context()
    pairs = {}
    for name, addr in (("inproc", "inproc://bench-io"), ("tcp", "tcp://127.0.0.1")):
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        if name == "tcp":
            port = a.bind_to_random_port(addr)
            b.connect(f"{addr}:{port}")
        else:
            a.bind(addr)
            b.connect(addr)
        pairs[name] = (a, b)

    def over(name: str) -> Callable[[], Message]:
        a, b = pairs[name]

        def run() -> Message:
            a.send_multipart(encode(msg), copy=False)
            return decode(b.recv_multipart(copy=False))
        return run

    # correctness of what is timed
    got = over("tcp")().fields["splats"]
    assert all(np.array_equal(got[k], fields[k]) for k in fields)

    base = median_time(baseline, repeat)
    rows = []
    for label, fn in (("tobytes+frombuffer (baseline)", baseline),
                      ("encode+decode", round_trip),
                      ("encode+decode+Splats", round_trip_splats),
                      ("encode+zmq inproc+decode", over("inproc")),
                      ("encode+zmq tcp loopback+decode", over("tcp"))):
        t = base if fn is baseline else median_time(fn, repeat)
        rows.append([label, f"{t * 1e3:.3f}", f"{nbytes / t / 1e9:.2f}", f"{t / base:.3g}"])
    for a, b in pairs.values():
        a.close(0)
        b.close(0)
    ctx.term()
    print_table(f"Protocol: result message, {len(splats):,} splats, SH degree {splats.sh_degree}, "
                f"{nbytes / 1e6:.1f} MB of arrays (median of {repeat})",
                ["path", "ms", "GB/s", "x baseline"], rows)


def bench_formats(splats: Splats) -> None:
    try:
        from shared.formats import read_splats, write_splats
    except ImportError as exc:
        print(f"\nFormats: shared.formats is not available ({exc})")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (fmt, ext, options) in FORMATS.items():
            path = os.path.join(tmp, "bench" + ext)
            try:
                t = time.perf_counter()
                write_splats(path, splats, format=fmt, **options)
                t_write = time.perf_counter() - t
                t = time.perf_counter()
                back = read_splats(path)
                t_read = time.perf_counter() - t
            except Exception as exc:  # report and go on with the next format
                rows.append([label, "-", "-", "-", "-", f"{type(exc).__name__}: {exc}"[:60]])
                continue
            size = os.path.getsize(path)
            rows.append([label, f"{t_write:.3f}", f"{t_read:.3f}", f"{size / 1e6:.1f}",
                         f"{size / len(splats):.1f}", f"n={len(back):,} deg={back.sh_degree}"])
            os.remove(path)
    print_table(f"Formats: {len(splats):,} splats, SH degree {splats.sh_degree} (one run each)",
                ["format", "write s", "read s", "MB", "bytes/splat", "read back"], rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of splats")
    ap.add_argument("--degree", type=int, default=3, choices=range(4), help="SH degree")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per protocol path")
    ap.add_argument("--skip-formats", action="store_true")
    args = ap.parse_args(argv)
    splats = Splats.random(args.n, sh_degree=args.degree, seed=0)
    bench_protocol(splats, args.repeat)
    if not args.skip_formats:
        bench_formats(splats)


if __name__ == "__main__":
    main()
