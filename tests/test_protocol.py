"""shared/protocol.py: framing round trips, zero copy, and the exact error for each bad input."""
from __future__ import annotations

import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq

from shared import protocol as P
from shared.protocol import (BadArray, BadField, Limits, MalformedHeader, Message, MissingField,
                             ProtocolError, SizeLimitExceeded, UnknownMessageType,
                             VersionMismatch, decode, encode)

pytestmark = pytest.mark.bpy_only

JOB = "0123456789abcdef0123456789abcdef"


def splat_map(n: int = 5, k: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": rng.normal(size=(n, 3)).astype(np.float32),
        "opacities": rng.normal(size=(n,)).astype(np.float32),
        "sh0": rng.normal(size=(n, 3)).astype(np.float32),
        "shN": rng.normal(size=(n, k, 3)).astype(np.float32),
    }


def one_of_each() -> list[Message]:
    rng = np.random.default_rng(1)
    return [
        Message("hello", None, {"client": "blender-5.0", "protocol": 1}),
        Message("hello", None, {"protocol": 1, "server_version": "0.1.0", "device": "cpu",
                                "cuda": False, "gsplat_cuda": False, "gpu_name": None,
                                "gpu_memory_bytes": None, "job_kinds": ["train", "generate"],
                                "models": {"sd21": False}}),
        Message("submit", JOB, {"kind": "train", "params": {"steps": 100, "strategy": "mcmc"},
                                "payload": {
                                    "images": rng.integers(0, 255, (2, 4, 5, 4), dtype=np.uint8),
                                    "viewmats": np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
                                    "Ks": rng.random((2, 3, 3)).astype(np.float32)}}),
        Message("accepted", JOB, {"queue_position": 0}),
        Message("progress", JOB, {"step": 10, "total": 100,
                                  "metrics": {"loss": 0.5, "psnr": 21.0, "num_gaussians": 1000},
                                  "preview": splat_map(4)}),
        Message("result", JOB, {"splats": splat_map(6), "metrics": {"eval_psnr": 30.5},
                                "meta": {"seed": 0, "cancelled": False}}),
        Message("error", JOB, {"code": "not_finished", "message": "job is still running"}),
        Message("error", None, {"code": "bad_field", "message": "x"}),
        Message("cancel", JOB, {}),
        Message("status", None, {}),
        Message("status", None, {"jobs": [{"job_id": JOB, "kind": "train", "state": "running",
                                           "step": 3, "total": 10, "queue_position": 0}]}),
        Message("fetch", JOB, {}),
    ]


def assert_same(a, b) -> None:
    """Deep equality of decoded fields, arrays by dtype, shape and value."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def raw(header: dict, *frames: bytes) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *frames]


def hdr(fields: dict, mtype: str = "result", job_id: str | None = JOB, v: int = 1) -> dict:
    return {"type": mtype, "v": v, "job_id": job_id, "fields": fields}


def nd(dtype: str, shape: list, frame: int) -> dict:
    return {"__nd__": [dtype, shape, frame]}


def raw_result(ref: dict, *frames: bytes) -> list[bytes]:
    """A result message whose splats.means is ``ref`` and the other splat arrays are fine."""
    good = splat_map(1)
    fields = {"splats": {"means": ref}}
    data = list(frames)
    for k in P.SPLAT_KEYS[1:]:
        fields["splats"][k] = nd("f4", list(good[k].shape), len(data))
        data.append(good[k].tobytes())
    return raw(hdr(fields), *data)


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("msg", one_of_each(), ids=lambda m: m.type)
def test_round_trip_every_type(msg):
    frames = encode(msg)
    out = decode(frames)
    assert (out.type, out.job_id) == (msg.type, msg.job_id)
    assert_same(msg.fields, out.fields)
    # bytes on the wire decode the same as the memoryviews
    assert_same(msg.fields, decode([bytes(f) for f in frames]).fields)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.uint32, np.int64,
                                   np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (7,), (2, 3, 4)])
def test_all_dtypes_and_shapes(dtype, shape):
    rng = np.random.default_rng(2)
    arr = np.asarray(rng.random(shape) * 100).astype(dtype)
    out = decode(encode(Message("result", JOB, {"splats": splat_map(2), "meta": {"a": arr}})))
    got = out.fields["meta"]["a"]
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got, arr)


def test_nested_arrays_and_values():
    a, b, c = np.arange(6, dtype=np.int64).reshape(2, 3), np.ones(2, np.float16), np.zeros(0)
    meta = {"list": [a, {"deep": [b, 1, "x", None, True, 2.5, b"raw"]}], "c": c, "s": "text",
            "np_scalar": np.float32(1.5), "tuple": (1, 2)}
    out = decode(encode(Message("result", JOB, {"splats": splat_map(1), "meta": meta})))
    m = out.fields["meta"]
    np.testing.assert_array_equal(m["list"][0], a)
    np.testing.assert_array_equal(m["list"][1]["deep"][0], b)
    assert m["list"][1]["deep"][1:] == [1, "x", None, True, 2.5, b"raw"]
    assert m["c"].shape == (0,) and m["s"] == "text"
    assert m["np_scalar"] == 1.5 and m["tuple"] == [1, 2]


def test_non_contiguous_and_big_endian_inputs_are_sent_correctly():
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    views = {"T": base.T, "step": base[:, ::2, 1:4], "neg": base[::-1],
             "big": np.arange(5, dtype=">f4"), "big_i": np.arange(3, dtype=">i8").reshape(3, 1)}
    out = decode(encode(Message("result", JOB, {"splats": splat_map(1), "meta": views})))
    for k, v in views.items():
        got = out.fields["meta"][k]
        np.testing.assert_array_equal(got, v)
        assert got.dtype.str[0] in "<|"


def test_encode_makes_no_copy_of_contiguous_arrays():
    arr = np.arange(1000, dtype=np.float32)
    frames = encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"a": arr}}))
    assert any(np.shares_memory(arr, np.frombuffer(f, np.uint8)) for f in frames[1:])


def test_decode_is_zero_copy():
    arr = np.arange(1000, dtype=np.float32)
    frames = [bytes(f) for f in encode(Message("result", JOB,
                                               {"splats": splat_map(1), "meta": {"a": arr}}))]
    out = decode(frames)
    got = out.fields["meta"]["a"]
    frame = next(f for f in frames[1:] if len(f) == arr.nbytes)
    assert np.shares_memory(got, np.frombuffer(frame, np.uint8))
    assert not got.flags.writeable


def test_decode_accepts_bytearray_and_memoryview_frames():
    frames = encode(one_of_each()[2])
    out = decode([bytearray(f) for f in frames])
    assert out.fields["payload"]["images"].shape == (2, 4, 5, 4)
    out = decode(tuple(memoryview(bytes(f)) for f in frames))
    assert out.fields["kind"] == "train"


# --- over a real ZeroMQ socket pair ---------------------------------------------------------------

def test_over_real_zmq_dealer_router_tcp():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        router.setsockopt(zmq.MAXMSGSIZE, P.DEFAULT_LIMITS.max_total_bytes)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        big = np.random.default_rng(3).random((200_000, 3)).astype(np.float32)  # > zmq's copy threshold
        msg = Message("submit", JOB, {"kind": "train", "params": {"steps": 5},
                                      "payload": {"points": big, "colors": np.zeros((0, 3), np.uint8)}})
        dealer.send_multipart(encode(msg), copy=False)
        assert router.poll(5000), "no message arrived"
        identity, *frames = router.recv_multipart(copy=False)
        assert isinstance(frames[0], zmq.Frame)
        out = decode(frames)
        pts = out.fields["payload"]["points"]
        np.testing.assert_array_equal(pts, big)
        frame = next(f for f in frames[1:] if len(f.buffer) == big.nbytes)
        assert np.shares_memory(pts, np.frombuffer(frame.buffer, np.uint8))
        # and an error reply back the other way
        router.send_multipart([identity, *encode(P.make_error("unknown_job", "no such job", JOB))],
                              copy=False)
        assert dealer.poll(5000)
        reply = decode(dealer.recv_multipart(copy=False))
        assert reply.type == "error" and reply.fields == {"code": "unknown_job",
                                                          "message": "no such job"}
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


# --- malformed headers ----------------------------------------------------------------------------

@pytest.mark.parametrize("frames, text", [
    ([], "at least the header"),
    ([b"\xc1"], "not valid msgpack"),                     # reserved msgpack byte
    ([msgpack.packb(hdr({"splats": {}}))[:-3]], "not valid msgpack"),   # truncated
    ([msgpack.packb(hdr({})) + b"\x00"], "not valid msgpack"),         # trailing bytes
    ([msgpack.packb([1, 2, 3])], "must be a msgpack map"),
    ([msgpack.packb("result")], "must be a msgpack map"),
    ([msgpack.packb({1: 2})], "not valid msgpack"),        # non-string map key
    (raw({"type": "cancel", "v": 1, "job_id": JOB}), "missing ['fields']"),
    (raw({**hdr({}, "cancel"), "extra": 1}), "unexpected ['extra']"),
    (raw(hdr([], "cancel")), "fields must be a map"),
    (raw(hdr({}, 5)), "type must be a string"),
    (raw(hdr({"a": msgpack.ExtType(1, b"x")}, "result")), "ExtType"),
])
def test_malformed_header(frames, text):
    with pytest.raises(MalformedHeader, match=text.replace("[", r"\[").replace("]", r"\]")) as e:
        decode(frames)
    assert e.value.code == "malformed_header"


def test_session_token_in_the_header():
    """The optional ``session`` header key: sent only when set (older messages stay as they
    were), round-trips, and must be 16-64 characters of [A-Za-z0-9_-]."""
    tok = "a1B2-c3_d4" * 3
    frames = encode(Message("status", None, {}, session=tok))
    assert msgpack.unpackb(frames[0])["session"] == tok and decode(frames).session == tok
    plain = encode(Message("status", None, {}))
    assert "session" not in msgpack.unpackb(plain[0]) and decode(plain).session is None
    for bad in ("short", "x" * 65, "has space in it!!", 12345678901234567, "tok\n" * 5):
        with pytest.raises(BadField, match="session: expected 16-64 characters"):
            decode(raw({**hdr({}, "status", None), "session": bad}))
        if isinstance(bad, str):
            with pytest.raises(BadField, match="session"):
                encode(Message("status", None, {}, session=bad))
    with pytest.raises(MalformedHeader, match=r"unexpected \['sessions'\]"):
        decode(raw({**hdr({}, "status", None), "sessions": tok}))


def test_frame_without_buffer():
    with pytest.raises(MalformedHeader, match="frame 0: str has no buffer"):
        decode(["not bytes"])


def test_unknown_type():
    with pytest.raises(UnknownMessageType, match="'explode'") as e:
        decode(raw(hdr({}, "explode")))
    assert e.value.code == "unknown_type" and e.value.job_id == JOB


@pytest.mark.parametrize("v", [0, 2, "1", None, True, 1.0])
def test_wrong_version(v):
    with pytest.raises(VersionMismatch, match="protocol version") as e:
        decode(raw(hdr({}, "cancel", v=v)))
    assert e.value.code == "version_mismatch"
    assert e.value.job_id == JOB   # so the error reply can name the job


def test_missing_version():
    h = hdr({}, "cancel")
    del h["v"]
    with pytest.raises(MalformedHeader, match=r"missing \['v'\]"):
        decode(raw(h))


@pytest.mark.parametrize("job_id, err, text", [
    (5, BadField, "job_id: 5"),
    (b"abc", BadField, r"job_id: b'abc' is not 1-64 characters"),
    ("../../etc", BadField, "job_id: '../../etc'"),
    ("", BadField, "job_id: '' is not 1-64 characters"),
    ("x" * 65, BadField, "job_id: 'xxx.* is not 1-64 characters"),
    (None, MissingField, "cancel message needs a job_id"),
])
def test_bad_job_id(job_id, err, text):
    with pytest.raises(err, match=text):
        decode(raw(hdr({}, "cancel", job_id=job_id)))


# --- arrays -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref, frames, text", [
    (nd(">f4", [1, 3], 0), [b"\0" * 12], "big-endian"),
    (nd("<f4", [1, 3], 0), [b"\0" * 12], "dtype '<f4' is not allowed"),
    (nd("f16", [1], 0), [b"\0" * 16], "dtype 'f16'"),
    (nd("O", [1], 0), [b"\0" * 8], "dtype 'O'"),
    (nd(4, [1], 0), [b"\0" * 4], "dtype 4"),
    (nd("f4", [-1, 3], 0), [b"\0" * 12], r"shape \[-1, 3\] must be a list of at most 32 non-negative"),
    (nd("f4", [1.0, 3], 0), [b"\0" * 12], r"shape \[1\.0, 3\] must be a list of at most 32 non-negative"),
    (nd("f4", [True, 3], 0), [b"\0" * 12], r"shape \[True, 3\] must be a list of at most 32 non-negative"),
    (nd("f4", "13", 0), [b"\0" * 12], "shape '13' must be a list of at most 32 non-negative"),
    (nd("f4", [1] * 33, 0), [b"\0" * 4], r"shape \[1, 1, .*\] must be a list of at most 32 non-negative"),
    (nd("f4", [1, 3], 0), [b"\0" * 11], "frame 0 has 11 bytes but shape \\(1, 3\\) f4 needs 12"),
    (nd("f4", [1, 3], 0), [b"\0" * 16], "has 16 bytes"),
    (nd("f4", [1, 3], 7), [b"\0" * 12], "frame index 7 out of range"),
    (nd("f4", [1, 3], -1), [b"\0" * 12], "frame index -1"),
    (nd("f4", [1, 3], "0"), [b"\0" * 12], "frame index '0'"),
    ({"__nd__": ["f4", [1, 3]]}, [b"\0" * 12], "must be \\[dtype, shape, frame_index\\]"),
    ({"__nd__": ["f4", [1, 3], 0], "x": 1}, [b"\0" * 12], "only the key"),
    (nd("f4", [1, 3], 0), [b"\0" * 12, b"\0" * 4], "array frames \\[1\\] are not referenced"),
])
def test_bad_array_reference(ref, frames, text):
    with pytest.raises(BadArray, match=text) as e:
        decode(raw_result(ref, *frames))
    assert e.value.code == "bad_array"
    assert e.value.job_id == JOB


def test_bad_array_names_the_field():
    with pytest.raises(BadArray, match=r"^bad_array: fields\.splats\.means: dtype"):
        decode(raw_result(nd(">f4", [1, 3], 0), b"\0" * 12))


def test_frame_referenced_twice():
    ref = nd("f4", [1, 3], 0)
    frames = raw_result(ref, b"\0" * 12)
    header = msgpack.unpackb(frames[0])
    header["fields"]["meta"] = {"again": nd("f4", [1, 3], 0)}
    with pytest.raises(BadArray, match="frame 0 is referenced twice"):
        decode([msgpack.packb(header), *frames[1:]])


def test_bool_array_with_bytes_other_than_0_1():
    frames = raw(hdr({"splats": {}, "meta": {"mask": nd("bool", [3], 0)}}), b"\x00\x01\x02")
    with pytest.raises(BadArray, match="fields.meta.mask: bool array"):
        decode(frames)


def test_encode_rejects_disallowed_dtypes():
    for bad in (np.zeros(3, np.int16), np.zeros(3, np.complex64), np.zeros(3, object),
                np.zeros(2, [("a", "f4")]), np.array(["a"])):
        with pytest.raises(BadArray, match="fields.meta.x: dtype"):
            encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"x": bad}}))


def test_encode_rejects_reserved_key_and_unsendable_values():
    with pytest.raises(BadField, match="fields.meta: the key '__nd__' is reserved for arrays"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"__nd__": 1}}))
    with pytest.raises(BadField, match="fields.meta.f: value of type builtin_function_or_method"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"f": print}}))
    with pytest.raises(BadField, match="fields.meta.c: value of type complex"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"c": np.complex64(1)}}))
    with pytest.raises(BadField, match="cannot be packed"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"big": 2**70}}))
    with pytest.raises(BadField, match="map key 3"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {3: 1}}))


# --- size limits ------------------------------------------------------------------------------------

def test_huge_declared_shape_fails_fast_without_allocating():
    # Peak traced memory, not wall time: deterministic on a busy CI box (numpy reports its array
    # buffers to tracemalloc, so allocating even a fraction of the declared 12 TB would show).
    tracemalloc.start()
    try:
        with pytest.raises(SizeLimitExceeded, match=r"fields\.splats\.means: declared shape "
                                                    r"\(1000000000000, 3\)") as e:
            decode(raw_result(nd("f4", [10**12, 3], 0), b"\0" * 12))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"decoding a refused message allocated {peak} bytes"
    assert e.value.code == "too_large"
    # The byte count overflows int64: still caught, and reported exactly (2**189), not wrapped.
    with pytest.raises(SizeLimitExceeded,
                       match=r"fields\.splats\.means: declared shape \(4611686018427387904, "
                             rf"4611686018427387904, 4611686018427387904\) f8 is {2**189} bytes, "
                             r"over the 2147483648-byte limit"):
        decode(raw_result(nd("f8", [2**62, 2**62, 2**62], 0), b"\0" * 12))


def test_array_limit():
    lim = Limits(max_array_bytes=100)
    with pytest.raises(SizeLimitExceeded, match=r"fields\.splats\.means: declared shape \(101,\) u1 is 101 bytes, over the 100-byte limit"):
        decode(raw_result(nd("u1", [101], 0), b"\0" * 101), lim)
    decode(raw_result(nd("u1", [100], 0), b"\0" * 100), lim)   # exactly at the limit: fine
    with pytest.raises(SizeLimitExceeded, match=r"fields\.meta\.a: array of 101 bytes exceeds the 100-byte limit"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": {"a": np.zeros(101, "u1")}}),
               lim)


def test_too_many_frames():
    frames = raw(hdr({}, "cancel")) + [b""] * 64
    with pytest.raises(SizeLimitExceeded, match="65 frames exceed the limit of 64"):
        decode(frames)
    msg = Message("result", JOB, {"splats": splat_map(1),
                                  "meta": {"a": [np.zeros(1)] * 70}})
    with pytest.raises(SizeLimitExceeded, match="frames exceed"):
        encode(msg)


def test_total_and_header_limits():
    with pytest.raises(SizeLimitExceeded, match="message of"):
        decode(raw_result(nd("u1", [1000], 0), b"\0" * 1000), Limits(max_total_bytes=1000))
    big_header = raw(hdr({"code": "x", "message": "m" * 2000}, "error"))
    with pytest.raises(SizeLimitExceeded, match="header of"):
        decode(big_header, Limits(max_header_bytes=1000))
    with pytest.raises(SizeLimitExceeded, match="header of"):
        encode(P.make_error("x", "m" * 2000), Limits(max_header_bytes=1000))


def test_nesting_depth():
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(SizeLimitExceeded, match="nested deeper than 32"):
        decode(raw(hdr({"splats": {}, "meta": deep})))
    with pytest.raises(SizeLimitExceeded, match="nested deeper than 32"):
        encode(Message("result", JOB, {"splats": splat_map(1), "meta": deep}))


# --- per-type schemas ------------------------------------------------------------------------------

@pytest.mark.parametrize("mtype, job_id, fields, err, text", [
    ("hello", None, {}, MissingField, r"fields\.protocol: required"),
    ("hello", None, {"protocol": "1"}, BadField, r"fields\.protocol: expected an integer"),
    ("hello", None, {"protocol": True}, BadField, "expected an integer"),
    ("hello", None, {"protocol": 1, "cuda": "yes"}, BadField, r"fields\.cuda: expected a bool"),
    ("hello", None, {"protocol": 1, "job_kinds": ["train", 3]}, BadField, "fields.job_kinds"),
    ("hello", None, {"protocol": 1, "shoe_size": 9}, BadField, r"unexpected field\(s\) \['shoe_size'\]"),
    ("submit", JOB, {"params": {}}, MissingField, r"fields\.kind: required"),
    ("submit", JOB, {"kind": 3, "params": {}}, BadField, r"fields\.kind: expected a string"),
    ("submit", JOB, {"kind": "train"}, MissingField, r"fields\.params: required"),
    ("submit", JOB, {"kind": "train", "params": [1]}, BadField, r"fields\.params: expected a map"),
    ("submit", JOB, {"kind": "train", "params": {}, "payload": 1}, BadField, "fields.payload"),
    ("submit", None, {"kind": "train", "params": {}}, MissingField, "job_id"),
    ("accepted", JOB, {}, MissingField, "fields.queue_position"),
    ("accepted", JOB, {"queue_position": -1}, BadField, "non-negative integer"),
    ("progress", JOB, {"step": 1, "total": 2}, MissingField, "fields.metrics"),
    ("progress", JOB, {"step": 3, "total": 2, "metrics": {}}, BadField, "past total"),
    ("progress", JOB, {"step": 1, "total": 2, "metrics": {}, "preview": {}}, MissingField,
     r"fields\.preview\.means"),
    ("result", JOB, {"metrics": {}}, MissingField, "fields.splats"),
    ("error", None, {"message": "x"}, MissingField, "fields.code"),
    ("error", None, {"code": "x"}, MissingField, "fields.message"),
    ("error", None, {"code": "Bad Code!", "message": "x"}, BadField, "short lowercase tag"),
    ("cancel", None, {}, MissingField, "job_id"),
    ("cancel", JOB, {"now": True}, BadField, "unexpected"),
    ("fetch", None, {}, MissingField, "job_id"),
    ("status", None, {"jobs": {}}, BadField, r"fields\.jobs: expected a list"),
    ("status", None, {"jobs": [{"job_id": JOB}]}, MissingField, r"fields\.jobs\[0\]\.state"),
    ("status", None, {"jobs": [{"job_id": JOB, "state": "exploded"}]}, BadField,
     r"fields\.jobs\[0\]\.state: 'exploded'"),
])
def test_field_schema(mtype, job_id, fields, err, text):
    with pytest.raises(err, match=text):                     # receiving side
        decode(raw(hdr(fields, mtype, job_id)))
    with pytest.raises(err, match=text):                     # sending side
        encode(Message(mtype, job_id, fields))


def test_result_splat_arrays_must_be_arrays():
    fields = {"splats": {**splat_map(1), "sh0": [[0.0, 0.0, 0.0]]}}
    with pytest.raises(BadField, match=r"fields\.splats\.sh0: expected an array"):
        encode(Message("result", JOB, fields))


def test_error_replies():
    m = P.make_error("unknown_job", "no job 'x'", JOB)
    assert (m.type, m.job_id, m.fields) == ("error", JOB, {"code": "unknown_job",
                                                          "message": "no job 'x'"})
    try:
        decode(raw(hdr({}, "explode")))
    except ProtocolError as exc:
        reply = decode(encode(P.error_from_exception(exc)))
    assert reply.job_id == JOB and reply.fields["code"] == "unknown_type"
    assert "explode" in reply.fields["message"]


def test_error_codes_are_stable():
    assert {c.code for c in (MalformedHeader, UnknownMessageType, VersionMismatch, BadArray,
                             SizeLimitExceeded, MissingField, BadField)} == {
        "malformed_header", "unknown_type", "version_mismatch", "bad_array", "too_large",
        "missing_field", "bad_field"}
    e = ProtocolError("custom", "text")
    assert (e.code, e.message, str(e)) == ("custom", "text", "custom: text")
    assert issubclass(BadField, ProtocolError)


# --- finiteness and splat maps -------------------------------------------------------------------

def test_validate_finite():
    P.validate_finite("ok", np.ones((3, 3), np.float32))
    P.validate_finite("ints", np.array([1, 2], np.int32))
    P.validate_finite("empty", np.zeros((0, 3), np.float32))
    a = np.zeros((4, 3), np.float16)
    a[2, 1] = np.inf
    a[3, 0] = np.nan
    with pytest.raises(BadField, match=r"^bad_field: payload\.viewmats: 2 non-finite value\(s\) "
                                       r"\(NaN/Inf\), first at index \(2, 1\)"):
        P.validate_finite("payload.viewmats", a)
    with pytest.raises(BadField, match="expected an array"):
        P.validate_finite("x", [1.0])


def test_splats_round_trip_zero_copy():
    from shared.splats import Splats
    s = Splats.random(50, sh_degree=3, seed=4)
    frames = [bytes(f) for f in encode(Message("result", JOB, {"splats": P.splats_to_fields(s)}))]
    msg = decode(frames)
    back = P.splats_from_fields(msg.fields["splats"], "fields.splats")
    assert back.allclose(s, atol=0) and back.sh_degree == 3
    frame = next(f for f in frames[1:] if len(f) == s.shN.nbytes)
    assert np.shares_memory(back.shN, np.frombuffer(frame, np.uint8))


def test_splats_without_shN_is_degree_0():
    fields = splat_map(3)
    del fields["shN"]
    msg = decode(encode(Message("result", JOB, {"splats": fields})))
    assert P.splats_from_fields(msg.fields["splats"]).sh_degree == 0


@pytest.mark.parametrize("field, bad, text", [
    ("sh0", "nan", r"fields\.splats\.sh0: contains NaN or Inf \(first at splat 2\)"),
    ("means", "inf", r"fields\.splats\.means: contains NaN or Inf"),
    ("quats", "shape", r"fields\.splats\.quats: shape \(5, 3\)"),
    ("opacities", "int", r"fields\.splats\.opacities: dtype int32"),
    ("shN", "k", r"fields\.splats\.shN: K=5"),
])
def test_bad_splat_map_names_the_field(field, bad, text):
    fields = splat_map(5)
    arr = fields[field]
    if bad == "nan":
        arr[2, 1] = np.nan
    elif bad == "inf":
        arr[4, 0] = -np.inf
    elif bad == "shape":
        fields[field] = arr[:, :3]
    elif bad == "int":
        fields[field] = arr.astype(np.int32)
    elif bad == "k":
        fields[field] = np.zeros((5, 5, 3), np.float32)
    msg = decode(encode(Message("result", JOB, {"splats": fields})))  # the wire does not judge values
    with pytest.raises(BadField, match=text) as e:
        P.splats_from_fields(msg.fields["splats"], "fields.splats")
    assert e.value.code == "bad_field"


def test_splat_map_shape_errors():
    with pytest.raises(BadField, match=r"fields\.splats: unexpected key\(s\) \['colour'\]"):
        encode(Message("result", JOB, {"splats": {**splat_map(1), "colour": np.zeros(3)}}))
    with pytest.raises(MissingField, match=r"splats\.sh0: missing"):
        P.splats_from_fields({k: v for k, v in splat_map(1).items() if k != "sh0"})
    with pytest.raises(BadField, match="splats: expected a map"):
        P.splats_from_fields([1, 2])
