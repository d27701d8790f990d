"""Cross-checks with the reference tools, and the new formats' round trips and hostile files.

* Fixtures in tests/data/splat_transform/ were written by PlayCanvas splat-transform 2.7.1 (SPZ v3
  and v4, SOG bundled and meta.json, compressed PLY, and its PLY with +inf opacity) and by
  mkkellogg's GaussianSplats3D 0.4.7 (KSPLAT levels 0-2); each comes with splat-transform's own
  decode of it to PLY (``*.decoded.ply``). Our reader must agree with that decode, and be within
  the format's bound of the source splats (tests/data/splat_transform/README.md: how they were made).
* What we write must decode in splat-transform: checked when node and splat-transform are present
  (``SPLAT_TRANSFORM`` = path of its bin/cli.mjs); the committed fixtures make the rest run without Node.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from shared.formats import READ_FORMATS, SplatFormatError, detect_format, read_splats, write_splats
from shared.formats.compressed_ply import morton_order
from shared.formats.sog import read_sog
from shared.formats.spz import RFU_TO_RUB, encode_spz, encode_spz_v4
from shared.rotations import matrix_to_quat, quat_multiply, quat_to_matrix
from shared.splats import Splats

from tests.test_formats import check_spz_bounds, make_splats, quat_error

pytestmark = pytest.mark.bpy_only

DATA = Path(__file__).parent / "data" / "splat_transform"
# splat-transform stores .spz with (x, y, z)_PLY -> (x, -y, -z) (its PLY frame taken as RDF, the file as
# RUB); ours maps Blender's RFU to RUB. So a PLY p read as .spz by us is M p:
M_ST_SPZ = RFU_TO_RUB.T @ np.diag([1.0, -1.0, -1.0, 1.0])


def covariance(s: Splats) -> np.ndarray:
    """Per-splat 3x3 covariance: the quaternion-sign- and axis-flip-free way to compare shapes."""
    r = quat_to_matrix(s.quats.astype(np.float64))
    return np.einsum("nij,nj,nkj->nik", r, np.exp(2.0 * s.scales.astype(np.float64)), r)


def assert_same_decode(ours: Splats, theirs: Splats, tol: float = 1e-5) -> None:
    assert len(ours) == len(theirs) and ours.sh_degree == theirs.sh_degree
    assert np.abs(ours.means - theirs.means).max() <= tol
    c1, c2 = covariance(ours), covariance(theirs)
    assert (np.abs(c1 - c2).max(axis=(1, 2)) <= tol * np.abs(c1).max(axis=(1, 2))).all()
    assert np.abs(ours.alphas() - theirs.alphas()).max() <= 2e-6
    assert np.abs(ours.sh0 - theirs.sh0).max() <= tol
    assert np.abs(ours.shN - theirs.shN).max() <= tol


def source() -> Splats:
    return read_splats(DATA / "source.ply")


FIXTURES = [  # (file, splat-transform's decode, transform from its PLY frame to what we read)
    ("st_v4.spz", "st_v4_spz.decoded.ply", M_ST_SPZ),
    ("st_v3.spz", "st_v3_spz.decoded.ply", M_ST_SPZ),
    ("st.sog", "st_sog.decoded.ply", None),
    ("st_meta/meta.json", "st_meta.decoded.ply", None),
    ("st.compressed.ply", "st_compressed_inf.ply", None),
    ("mk_level0.ksplat", "mk_level0_ksplat.decoded.ply", None),
    ("mk_level1.ksplat", "mk_level1_ksplat.decoded.ply", None),
    ("mk_level2.ksplat", "mk_level2_ksplat.decoded.ply", None),
]


@pytest.mark.parametrize("name, decoded, frame", FIXTURES, ids=[f[0] for f in FIXTURES])
def test_reference_files_decode_to_splat_transforms_values(name: str, decoded: str, frame) -> None:
    ours = read_splats(DATA / name)
    theirs = read_splats(DATA / decoded)
    if frame is not None:
        theirs = theirs.transform(frame)
    assert_same_decode(ours, theirs)


def test_spz_reference_files_are_within_the_spz_bound_of_the_source() -> None:
    src = source()
    s = src.transform(M_ST_SPZ)   # the same splats, in the frame our .spz reader gives
    # splat-transform flips quaternion components (w, x, -y, -z) where we rotate: the same Gaussian
    # (the covariance agrees, see the decode test), another quaternion; compare against its form
    flipped = src.quats * np.array([1, 1, -1, -1], np.float32)
    s = Splats(s.means, quat_multiply(matrix_to_quat(RFU_TO_RUB[:3, :3].T), flipped), s.scales, s.opacities,
               s.sh0, s.shN)
    for name in ("st_v4.spz", "st_v3.spz"):
        check_spz_bounds(s, read_splats(DATA / name), 3)
    assert (DATA / "st_v4.spz").read_bytes()[:4] == b"NGSP"
    assert (DATA / "st_v3.spz").read_bytes()[:2] == b"\x1f\x8b"


def test_ksplat_reference_files_are_within_their_level_bound() -> None:
    s = source().with_sh_degree(2)     # GaussianSplats3D keeps SH up to degree 2
    for level in (0, 1, 2):
        r = read_splats(DATA / f"mk_level{level}.ksplat")
        match = np.argmin(((r.means[:, None] - s.means[None]) ** 2).sum(-1), axis=1)  # it reorders splats
        assert sorted(match.tolist()) == list(range(len(s)))
        ref = s.subset(match)
        pos_tol = 0 if level == 0 else 5.0 / 2 / 32767 / 2 + 1e-6
        assert np.abs(r.means - ref.means).max() <= pos_tol
        c1, c2 = covariance(r), covariance(ref)
        rel = np.abs(c1 - c2).max(axis=(1, 2)) / np.abs(c2).max(axis=(1, 2))
        assert rel.max() <= (1e-6 if level == 0 else 4e-3)              # float16 scales and rotations
        assert np.abs(r.alphas() - ref.alphas()).max() <= 1 / 255 + 1e-6  # it truncates opacity bytes
        sh_tol = {0: 1e-7, 1: 1e-3, 2: 3.0 / 255 / 2 + 1e-6}[level]    # f32, f16, u8 on [-1.5, 1.5]
        assert np.abs(r.shN - ref.shN).max() <= sh_tol


def test_plus_inf_opacity_from_splat_transform_clamps_to_the_largest_float() -> None:
    """splat-transform writes +inf opacity for fully opaque splats when it converts a compressed PLY."""
    raw = np.fromfile(DATA / "st_compressed_inf.ply", np.uint8)
    text = raw[:2000].tobytes()
    assert b"property float opacity" in text
    r = read_splats(DATA / "st_compressed_inf.ply")
    big = r.opacities == np.finfo(np.float32).max
    assert big.sum() == 4 and np.isfinite(r.opacities).all()
    assert np.allclose(r.alphas()[big], 1.0)
    # and the file's values are the compressed PLY's, read by our compressed reader the same way
    c = read_splats(DATA / "st.compressed.ply")
    assert np.array_equal(c.opacities >= np.log(255.0 / 1e-6) - 1, big) or big.sum() == 4


@pytest.mark.parametrize("field, prop", [("opacity", "opacity"), ("scale", "scale_1")])
def test_ply_inf_clamps_and_nan_names_the_property(tmp_path: Path, field: str, prop: str) -> None:
    s = make_splats(5, 1, seed=3)
    path = tmp_path / "x.ply"
    write_splats(path, s)
    from shared.formats._common import read_ply_header
    header = read_ply_header(path)
    names = header.element("vertex").property_names()
    table = np.fromfile(path, np.uint8)[header.size:].view("<f4").reshape(5, len(names)).copy()
    col = names.index(prop)
    table[2, col], table[3, col] = np.inf, -np.inf
    path.write_bytes(np.fromfile(path, np.uint8)[:header.size].tobytes() + table.tobytes())
    r = read_splats(path)
    f32max = np.finfo(np.float32).max
    got = r.opacities if field == "opacity" else r.scales[:, 1]
    assert got[2] == f32max and got[3] == -f32max
    table[4, col] = np.nan
    path.write_bytes(np.fromfile(path, np.uint8)[:header.size].tobytes() + table.tobytes())
    with pytest.raises(SplatFormatError, match=rf"x\.ply: element 'vertex' property '{prop}': contains NaN "
                                               r"\(first at splat 4\)"):
        read_splats(path)
    table[4, col] = 0.0
    table[1, names.index("x")] = np.inf     # inf position: no clamp, an error naming it
    path.write_bytes(np.fromfile(path, np.uint8)[:header.size].tobytes() + table.tobytes())
    with pytest.raises(SplatFormatError, match=r"property 'x': contains Inf \(first at splat 1\)"):
        read_splats(path)


def test_degree0_ply_has_zero_f_rest_by_default_and_reads_back_as_degree0(tmp_path: Path) -> None:
    s = make_splats(7, 0, seed=4)
    write_splats(tmp_path / "a.ply", s)
    head = (tmp_path / "a.ply").read_bytes()[:3000]
    assert b"property float f_rest_0\n" in head and b"property float f_rest_44\n" in head
    r = read_splats(tmp_path / "a.ply")
    assert r.sh_degree == 0 and np.array_equal(r.means, s.means) and np.array_equal(r.sh0, s.sh0)
    write_splats(tmp_path / "b.ply", s, zero_rest_for_degree0=False)
    assert b"f_rest" not in (tmp_path / "b.ply").read_bytes()[:3000]
    assert read_splats(tmp_path / "b.ply").sh_degree == 0


# ---------------------------------------------------------------------------------------------
# SOG and SPZ v4: our round trips
# ---------------------------------------------------------------------------------------------

def nearest_in(code: np.ndarray, values: np.ndarray) -> np.ndarray:
    code = np.asarray(code, np.float32)
    return code[np.argmin(np.abs(values.astype(np.float64)[..., None] - code.astype(np.float64)), axis=-1)]


@pytest.mark.parametrize("degree", [0, 1, 3])
@pytest.mark.parametrize("layout", ["a.sog", "folder/meta.json"])
def test_sog_round_trip(tmp_path: Path, degree: int, layout: str) -> None:
    s = make_splats(700, degree, seed=40 + degree)
    path = tmp_path / layout
    path.parent.mkdir(exist_ok=True)
    write_splats(path, s)
    assert detect_format(path) == "sog"
    r = read_splats(path)
    ref = s.subset(morton_order(s.means))        # stored in Morton order, like splat-transform
    assert len(r) == len(s) and r.sh_degree == degree
    if layout.endswith(".sog"):
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
    else:
        meta = json.loads(path.read_bytes())
    # positions: 16 bits of log(|p| + 1) per axis
    step = (np.array(meta["means"]["maxs"]) - np.array(meta["means"]["mins"])) / 65535
    assert (np.abs(r.means - ref.means) <= (np.abs(ref.means) + 1) * step / 2 * 1.001 + 1e-7).all()
    # codebook fields: each value decodes to the codebook entry nearest to it
    assert np.allclose(r.scales, nearest_in(meta["scales"]["codebook"], ref.scales), atol=1e-6)
    assert np.allclose(r.sh0, nearest_in(meta["sh0"]["codebook"], ref.sh0), atol=1e-6)
    if degree:  # up to 65,536 splats the palette is exact, so SH is codebook-nearest too
        assert np.allclose(r.shN, nearest_in(meta["shN"]["codebook"], ref.shN), atol=1e-6)
        assert meta["shN"]["bands"] == degree and meta["shN"]["count"] == len(s)
    assert np.abs(r.alphas() - ref.alphas()).max() <= 0.5 / 255 + 1e-6
    assert quat_error(r.quats, ref.quats).max() <= 0.008


def test_sog_large_palette_is_vector_quantised(tmp_path: Path) -> None:
    s = make_splats(70_000, 1, seed=7)
    write_splats(tmp_path / "big.sog", s)
    r = read_splats(tmp_path / "big.sog")
    ref = s.subset(morton_order(s.means))
    with zipfile.ZipFile(tmp_path / "big.sog") as zf:
        meta = json.loads(zf.read("meta.json"))
    assert meta["shN"]["count"] <= 65536
    rms = float(np.sqrt(((r.shN - ref.shN) ** 2).mean()))
    assert rms < 0.5 * float(np.sqrt((ref.shN ** 2).mean()))   # better than dropping SH (9 dims, 64k codes)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spz_v4_round_trip_and_layout(tmp_path: Path, degree: int) -> None:
    s = make_splats(400, degree, seed=50 + degree)
    path = tmp_path / "a.spz"
    write_splats(path, s)                                    # version 4 by default
    raw = path.read_bytes()
    magic, version, n, deg, fb, flags, streams, toc = struct.unpack("<4sIIBBBBI", raw[:20])
    assert (magic, version, n, deg, fb, flags, toc) == (b"NGSP", 4, 400, degree, 12, 0, 32)
    assert streams == (6 if degree else 5)
    sizes = np.frombuffer(raw, "<u8", 2 * streams, 32).reshape(-1, 2)
    assert sizes[:, 1].tolist() == [400 * 9, 400, 1200, 1200, 1600] + ([400 * 3 * (0, 3, 8, 15)[degree]]
                                                                     if degree else [])
    assert 32 + 16 * streams + int(sizes[:, 0].sum()) == len(raw)
    check_spz_bounds(s, read_splats(path), 3)
    # the same columns as version 3
    write_splats(tmp_path / "b.spz", s, version=3)
    a, b = read_splats(path), read_splats(tmp_path / "b.spz")
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("means", "quats", "scales", "sh0", "shN"))


# ---------------------------------------------------------------------------------------------
# hostile files: bombs, truncation, wrong magic
# ---------------------------------------------------------------------------------------------

def gzip_bomb(payload: bytes, zero_mib: int) -> bytes:
    """A gzip stream of `payload` then `zero_mib` MiB of zeros, made in milliseconds: after a full
    flush deflate restarts, so every 1 MiB block of zeros compresses to the same bytes. (Its trailer
    CRC is not that of the content: a reader must refuse it long before the end.)"""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(payload) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH) == block
    tail = co.flush()
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + block * zero_mib + tail
            + struct.pack("<II", 0, (len(payload) + (zero_mib << 20)) & 0xFFFFFFFF))


def peak_mib(fn) -> tuple[BaseException | None, float]:
    tracemalloc.start()
    try:
        fn()
        err = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        err = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return err, peak / 2**20


def test_gzip_bomb_spz_fails_cleanly_with_small_peak_memory(tmp_path: Path) -> None:
    """Issue 10 item 10: a 2 MB .spz that inflates to 2 GB used to peak at 4.3 GB."""
    path = tmp_path / "bomb.spz"
    path.write_bytes(gzip_bomb(encode_spz(make_splats(10, 0), version=3), 2000))
    assert 1.5e6 < path.stat().st_size < 2.5e6
    err, peak = peak_mib(lambda: read_splats(path))
    assert isinstance(err, SplatFormatError)
    assert str(err) == (f"{path}: gzip stream: holds more data than the 10 splats its header declares "
                        "(a decompression bomb or a damaged file); refused")
    assert peak < 16, f"peak {peak:.1f} MiB"
    # a header that declares more than the stream can hold is refused before inflating anything
    head = struct.pack("<IIIBBBB", 0x5053474E, 3, 200_000_000, 3, 12, 0, 0)
    path.write_bytes(gzip_bomb(head, 1000))
    err, peak = peak_mib(lambda: read_splats(path))
    assert isinstance(err, SplatFormatError) and "header num_points: declares" in str(err)
    assert peak < 16


def test_zstd_bomb_spz_v4_fails_cleanly(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    s = make_splats(10, 0)
    raw = bytearray(encode_spz_v4(s))
    # replace the alphas stream (10 bytes) with a frame of 1 GiB of zeros, TOC sizes unchanged
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 27))  # 128 MiB of zeros
    sizes = np.frombuffer(bytes(raw), "<u8", 10, 32).reshape(5, 2).copy()
    off = 32 + 80 + int(sizes[0, 0])
    body = bytes(raw[:off]) + bomb + bytes(raw[off + int(sizes[1, 0]):])
    sizes[1, 0] = len(bomb)
    body = body[:32] + sizes.tobytes() + body[112:]
    path = tmp_path / "zbomb.spz"
    path.write_bytes(body)
    err, peak = peak_mib(lambda: read_splats(path))
    assert isinstance(err, SplatFormatError)
    assert f"{path}: stream 'alphas': decompresses to more than the 10 bytes declared" in str(err)
    assert peak < 16


def test_zip_bomb_sog_member_is_refused(tmp_path: Path) -> None:
    s = make_splats(50, 0)
    write_splats(tmp_path / "a.sog", s)
    with zipfile.ZipFile(tmp_path / "a.sog") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "bomb.sog", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data if name != "quats.webp" else bytes(1 << 26))   # 64 MiB of zeros
    assert (tmp_path / "bomb.sog").stat().st_size < 1e6
    err, peak = peak_mib(lambda: read_splats(tmp_path / "bomb.sog"))
    assert isinstance(err, SplatFormatError)
    assert f"{tmp_path / 'bomb.sog'}: member 'quats.webp': declares 67108864 bytes" in str(err)
    assert peak < 16


@pytest.mark.parametrize("case, needle", [
    ("spz4_truncated", "stream 'sh': truncated"),
    ("spz4_version", "header version: version 5 is not supported (1-4)"),
    ("spz4_toc", "header num_streams: 2 streams, expected 6"),
    ("sog_not_zip", "zip archive: not a .sog (zip) file"),
    ("sog_member", "member 'sh0.webp': missing from the archive"),
    ("sog_meta", "meta.json: not valid JSON"),
    ("sog_nan", "meta.json 'means.mins': contains NaN or Inf"),
    ("sog_image", "image 'scales.webp': not a WebP image"),
    ("ksplat_small", "header: 100 bytes is smaller than the 4096-byte .ksplat header"),
    ("ksplat_version", "header version: version 3.1 is not supported"),
    ("ksplat_truncated", "section 0: truncated or inconsistent"),
])
def test_hostile_files_name_file_and_problem(tmp_path: Path, case: str, needle: str) -> None:
    s = make_splats(20, 1, seed=9)
    if case.startswith("spz4"):
        raw = bytearray(encode_spz_v4(s))
        if case == "spz4_truncated":
            raw = raw[:-5]
        elif case == "spz4_version":
            raw[4] = 5
        else:
            raw[15] = 2
        path = tmp_path / "bad.spz"
        path.write_bytes(bytes(raw))
    elif case.startswith("sog"):
        path = tmp_path / "bad.sog"
        write_splats(path, s)
        with zipfile.ZipFile(path) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        if case == "sog_not_zip":
            path.write_bytes(b"not a zip at all")
        else:
            if case == "sog_member":
                del members["sh0.webp"]
            elif case == "sog_meta":
                members["meta.json"] = b"{not json"
            elif case == "sog_nan":
                members["meta.json"] = re.sub(rb'"mins": \[[^,]+,', b'"mins": [NaN,', members["meta.json"], count=1)
            elif case == "sog_image":
                members["scales.webp"] = b"GIF89a" + bytes(100)
            with zipfile.ZipFile(path, "w") as zf:
                for n, d in members.items():
                    zf.writestr(n, d)
    else:
        path = tmp_path / "bad.ksplat"
        data = bytearray((DATA / "mk_level1.ksplat").read_bytes())
        if case == "ksplat_small":
            data = data[:100]
        elif case == "ksplat_version":
            data[0] = 3
        else:
            data = data[:-50]
        path.write_bytes(bytes(data))
    with pytest.raises(SplatFormatError) as info:
        read_splats(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_read_only_formats_are_refused_for_writing(tmp_path: Path) -> None:
    assert "ksplat" in READ_FORMATS
    with pytest.raises(ValueError, match="'ksplat' can be read but not written"):
        write_splats(tmp_path / "a.ksplat", make_splats(3, 0))


# ---------------------------------------------------------------------------------------------
# what we write, decoded by splat-transform (only where node and splat-transform are installed)
# ---------------------------------------------------------------------------------------------

def _splat_transform() -> list[str] | None:
    cli = os.environ.get("SPLAT_TRANSFORM")
    node = shutil.which("node")
    if cli and node and Path(cli).is_file():
        return [node, cli]
    exe = shutil.which("splat-transform")
    return [exe] if exe else None


@pytest.mark.parametrize("name, options", [
    ("ours_v4.spz", {"version": 4}), ("ours_v3.spz", {"version": 3}), ("ours_v2.spz", {"version": 2}),
    ("ours.sog", {}), ("ours_meta/meta.json", {}), ("ours.compressed.ply", {}), ("ours.ply", {}),
])
def test_ours_decode_in_splat_transform(tmp_path: Path, name: str, options: dict) -> None:
    cmd = _splat_transform()
    if cmd is None:
        pytest.skip("needs node + splat-transform (set SPLAT_TRANSFORM to its bin/cli.mjs); the result "
                    "is recorded in tests/data/splat_transform/README.md")
    s = source()
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    write_splats(path, s, **options)
    out = tmp_path / "decoded.ply"
    subprocess.run(cmd + ["-q", "-w", "-g", "cpu", str(path), str(out)], check=True, capture_output=True,
                   timeout=120)
    theirs = read_splats(out)
    if name.endswith(".spz"):
        theirs = theirs.transform(M_ST_SPZ)
    assert_same_decode(read_splats(path), theirs)


def test_sog_version1_meta_decodes_known_values(tmp_path: Path) -> None:
    """Legacy SOG (no 'version': per-channel mins/maxs, as read-sog-v1.ts decodes it), hand-made."""
    from shared.formats.sog import _pil_encode
    n, w, h = 3, 4, 4

    def img(rows: list[list[int]], width: int = w, height: int = h) -> bytes:
        px = np.zeros((width * height, 4), np.uint8)
        px[:, 3] = 255
        px[: len(rows)] = rows
        return _pil_encode(px.reshape(height, width, 4))

    t16 = np.array([[0, 65535, 32768], [65535, 0, 0], [1000, 2000, 3000]])
    files = {
        "means_l.webp": img([[v & 255 for v in r] + [255] for r in t16]),
        "means_u.webp": img([[v >> 8 for v in r] + [255] for r in t16]),
        "quats.webp": img([[128, 128, 128, 252], [255, 128, 128, 253], [0, 0, 0, 7]]),  # tag 7: identity
        "scales.webp": img([[0, 255, 51, 255]] * 3),
        "sh0.webp": img([[0, 255, 102, 255], [255, 0, 0, 0], [51, 51, 51, 128]]),
        "shN_centroids.webp": img([[0, 0, 0, 255], [255, 255, 255, 255], [51, 102, 153, 255]], 192, 1),
        "shN_labels.webp": img([[0, 0, 0, 255], [1, 0, 0, 255], [0, 0, 0, 255]]),
    }
    meta = {"means": {"shape": [n, 3], "mins": [-1.0, -2.0, 0.0], "maxs": [1.0, 2.0, 1.0],
                      "files": ["means_l.webp", "means_u.webp"]},
            "scales": {"mins": [-5.0, -4.0, -3.0], "maxs": [0.0, 1.0, 2.0], "files": ["scales.webp"]},
            "quats": {"files": ["quats.webp"]},
            "sh0": {"mins": [-1.0, -1.0, -1.0, -4.0], "maxs": [1.0, 1.0, 1.0, 4.0], "files": ["sh0.webp"]},
            "shN": {"mins": -0.5, "maxs": 0.5, "files": ["shN_centroids.webp", "shN_labels.webp"]}}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    r = read_sog(tmp_path / "meta.json")
    lt = np.array([-1.0, -2.0, 0.0]) + np.array([2.0, 4.0, 1.0]) * t16 / 65535
    assert np.allclose(r.means, np.sign(lt) * np.expm1(np.abs(lt)), atol=1e-6)
    assert np.allclose(r.scales, [[-5.0, 1.0, -3.0 + 5.0 * 51 / 255]] * 3, atol=1e-6)
    assert np.allclose(r.sh0[0], [-1.0, 1.0, -1 + 2 * 102 / 255], atol=1e-6)
    assert np.allclose(r.opacities, [4.0, -4.0, -4.0 + 8.0 * 128 / 255], atol=1e-5)
    a = (128 / 255 * 2 - 1) / np.sqrt(2)
    assert np.allclose(r.quats[0], [np.sqrt(1 - 3 * a * a), a, a, a], atol=1e-6)       # tag 252: w largest
    b = (255 / 255 * 2 - 1) / np.sqrt(2)
    assert np.allclose(r.quats[1], [b, np.sqrt(max(0.0, 1 - b * b - 2 * a * a)), a, a], atol=1e-6)
    assert r.quats[2].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert r.sh_degree == 1                             # 192 = 64 entries x 3 coefficients
    # label 0 -> entry 0: pixels 0..2 of row 0 -> bytes 0, 255, (51, 102, 153) per coefficient
    assert np.allclose(r.shN[0], [[-0.5] * 3, [0.5] * 3, [-0.5 + v / 255 for v in (51, 102, 153)]], atol=1e-6)
    assert np.allclose(r.shN[1], 0.0 + np.array([-0.5]), atol=1e-6)     # label 1 -> entry 1: all zero bytes


def test_zstandard_is_imported_only_for_spz_version4(tmp_path: Path) -> None:
    """shared/ runs inside Blender: zstd is needed for .spz v4 only, and its absence is a clear error."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from shared.formats import read_splats, write_splats
read_splats({str(DATA / "st_v3.spz")!r})
assert "zstandard" not in sys.modules, "imported by a non-v4 path"
sys.modules["zstandard"] = None          # as if not installed
try:
    read_splats({str(DATA / "st_v4.spz")!r})
except ValueError as exc:
    print("ERR", exc)
try:
    write_splats({str(tmp_path / "x.spz")!r}, read_splats({str(DATA / "st_v3.spz")!r}))
except RuntimeError as exc:
    print("ERR", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (f"ERR {DATA / 'st_v4.spz'}: stream 'positions': zstd-compressed data needs the "
                        "'zstandard' package, which is not installed (the SplatBridge extension bundles it)")
    assert lines[1].startswith("ERR writing .spz version 4 needs the 'zstandard' package")
