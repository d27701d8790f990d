"""Issue 10, item 1: a seeded, bounded fuzz run against a real server process.

5,000 hostile messages (zero-size and overflowing shapes, bad array references, mutated valid
messages, truncated frames, wrong types, and valid requests that run real ``sleep`` jobs) from 6
DEALER sockets; the server must answer every one, stay up, log a traceback for every
``internal_error`` it sends, and then run a valid job to its result. The generator and the longer
run (50,000 messages, figures) are bench/fuzz_server.py.
"""
from __future__ import annotations

from bench.fuzz_server import finish_with_a_valid_job, run_fuzz
from test_server import ServerProcess


def test_five_thousand_hostile_messages(tmp_path):
    srv = ServerProcess(tmp_path / "store").start()
    try:
        stats = run_fuzz(srv.address, 5000, seed=10, sockets=6)
        print(stats.report())
        assert stats.messages == 5000 and sum(stats.replies.values()) == 5000
        assert srv.proc.poll() is None, srv.log()
        # every family was exercised, and the zero-size shapes got their precise code
        assert set(stats.families) == {"zero_size", "bad_array", "mutated", "truncated",
                                       "wrong_type", "valid"}
        assert stats.replies["bad_array"] > 300 and stats.replies["malformed_header"] > 100
        assert stats.replies["hello"] > 50 and len(stats.accepted) > 20
        internal = stats.replies.get("internal_error", 0)
        assert internal <= srv.log().count("Traceback (most recent call last)"), srv.log()[-5000:]
        result = finish_with_a_valid_job(srv.address, stats.accepted)
        assert result["means"].shape == (2, 3)
    finally:
        rc = srv.stop()
    assert rc == 0, srv.log()[-5000:]
