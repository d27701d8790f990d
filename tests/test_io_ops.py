"""File > Import / Export operators of the add-on (headless bpy), for every format in shared.formats."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.formats import read_splats, write_splats
from shared.splats import Splats

from helpers import registered

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

DATA = Path(__file__).parent / "data" / "splat_transform"


def _splats_of(so, obj) -> Splats:
    return so.read_splats_from_object(obj, apply_transform=False)

EXT = {"ply": ".ply", "compressed_ply": ".compressed.ply", "splat": ".splat", "spz": ".spz", "sog": ".sog"}
# .splat keeps colour without view dependence only (SH degree 0); the others keep degree 3.
DEGREE = {"ply": 3, "compressed_ply": 3, "splat": 0, "spz": 3, "sog": 3}


@pytest.fixture
def io_ops(addon_dir, bpy_empty):
    """The add-on's io_ops module, registered for the test and unregistered after it."""
    with registered("io_ops") as mod:
        yield mod


def _translation(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


@pytest.mark.parametrize("fmt", list(EXT))
def test_import_export_round_trip(io_ops, so, bpy_empty, tmp_path, fmt):
    bpy = bpy_empty
    src = tmp_path / f"garden{EXT[fmt]}"
    write_splats(src, Splats.random(300, sh_degree=DEGREE[fmt], seed=7), format=fmt)
    in_file = read_splats(src)  # what the file holds, after the format's own quantisation

    assert bpy.ops.import_scene.splatbridge_splats(filepath=str(src)) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    assert obj is not None and obj.name == "garden" and so.is_splat_object(obj)
    assert obj.select_get()
    imported = so.read_splats_from_object(obj, apply_transform=False)
    assert imported.allclose(in_file, atol=0), "import must keep the file's values exactly"

    # Export with the object moved: the file holds the splats in world space.
    obj.location = (1.0, -2.0, 0.5)
    bpy.context.view_layer.update()
    out = tmp_path / f"out{EXT[fmt]}"
    assert bpy.ops.export_scene.splatbridge_splats(filepath=str(out), format=fmt) == {"FINISHED"}
    assert not Path(str(out) + ".partial").exists()
    exported = read_splats(out)
    # Same as writing the moved splats directly with the format's writer.
    ref = tmp_path / f"ref{EXT[fmt]}"
    write_splats(ref, in_file.transform(_translation(1.0, -2.0, 0.5)), format=fmt)
    assert exported.allclose(read_splats(ref), atol=1e-6)
    assert exported.sh_degree == DEGREE[fmt]
    _assert_same_points(exported.means, in_file.means + [1.0, -2.0, 0.5], atol=2e-3)

    # Local space when asked.
    local = tmp_path / f"local{EXT[fmt]}"
    assert bpy.ops.export_scene.splatbridge_splats(filepath=str(local), format=fmt,
                                                   apply_transform=False) == {"FINISHED"}
    _assert_same_points(read_splats(local).means, in_file.means, atol=2e-3)


def _assert_same_points(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    """Same point sets up to order (compressed PLY reorders splats spatially) within atol."""
    assert got.shape == want.shape
    dist = np.linalg.norm(got[:, None, :] - want[None, :, :], axis=2)
    assert dist.min(axis=1).max() <= atol and dist.min(axis=0).max() <= atol


def _scene_state(bpy) -> tuple:
    return (sorted(o.name for o in bpy.data.objects), len(bpy.data.meshes),
            sorted(o.name for o in bpy.context.scene.collection.all_objects))


def test_truncated_ply_reports_error_and_leaves_scene_untouched(io_ops, bpy_empty, tmp_path):
    bpy = bpy_empty
    good = tmp_path / "good.ply"
    write_splats(good, Splats.random(200, sh_degree=1, seed=3), format="ply")
    data = good.read_bytes()
    bad = tmp_path / "cut.ply"
    bad.write_bytes(data[: len(data) // 2])
    before = _scene_state(bpy)
    # In background mode an operator's ERROR report surfaces as RuntimeError carrying the text.
    with pytest.raises(RuntimeError) as info:
        bpy.ops.import_scene.splatbridge_splats(filepath=str(bad))
    message = str(info.value)
    assert "cut.ply" in message and "truncated" in message, message
    assert "element 'vertex'" in message, message
    assert "Traceback" not in message
    assert _scene_state(bpy) == before


def test_one_bad_file_among_several_imports_nothing(io_ops, bpy_empty, tmp_path):
    bpy = bpy_empty
    write_splats(tmp_path / "a.splat", Splats.random(10, seed=1), format="splat")
    (tmp_path / "b.spz").write_bytes(b"this is not gzip data")
    before = _scene_state(bpy)
    with pytest.raises(RuntimeError, match=r"b\.spz: header magic: .* not a \.spz file"):
        bpy.ops.import_scene.splatbridge_splats(directory=str(tmp_path), files=[{"name": "a.splat"},
                                                                                 {"name": "b.spz"}])
    assert _scene_state(bpy) == before


def test_missing_and_unknown_files_name_the_problem(io_ops, bpy_empty, tmp_path):
    bpy = bpy_empty
    with pytest.raises(RuntimeError, match=r"nothere\.ply: no such file"):
        bpy.ops.import_scene.splatbridge_splats(filepath=str(tmp_path / "nothere.ply"))
    other = tmp_path / "mesh.obj"
    other.write_text("v 0 0 0\n")
    with pytest.raises(RuntimeError, match=r"mesh\.obj: file name: unknown extension"):
        bpy.ops.import_scene.splatbridge_splats(filepath=str(other))


def test_drop_path_imports_several_files_without_a_browser(io_ops, so, bpy_empty, tmp_path):
    """The FileHandler calls the import operator with directory + files (INVOKE): no file browser."""
    bpy = bpy_empty
    handler = bpy.types.FileHandler.bl_rna_get_subclass_py("SPLATBRIDGE_FH_splats")
    assert handler is not None and handler.bl_import_operator == "import_scene.splatbridge_splats"
    assert set(handler.bl_file_extensions.split(";")) == {".ply", ".splat", ".spz", ".sog", ".ksplat", ".json"}
    write_splats(tmp_path / "one.ply", Splats.random(20, sh_degree=0, seed=1), format="ply")
    write_splats(tmp_path / "two.spz", Splats.random(30, sh_degree=0, seed=2), format="spz")
    write_splats(tmp_path / "three.sog", Splats.random(40, sh_degree=1, seed=3))
    shutil.copy(DATA / "mk_level1.ksplat", tmp_path / "four.ksplat")
    (tmp_path / "five").mkdir()
    write_splats(tmp_path / "five" / "meta.json", Splats.random(50, sh_degree=0, seed=5))
    names = ["one.ply", "two.spz", "three.sog", "four.ksplat", "five/meta.json"]
    result = bpy.ops.import_scene.splatbridge_splats(
        "INVOKE_DEFAULT", directory=str(tmp_path), files=[{"name": n} for n in names])
    assert result == {"FINISHED"}
    made = {o.name: so.splat_count(o) for o in bpy.data.objects if so.is_splat_object(o)}
    assert made == {"one": 20, "two": 30, "three": 40, "four": 32, "five": 50}


def test_export_refuses_a_non_splat_object(io_ops, bpy_empty, tmp_path):
    bpy = bpy_empty
    mesh = bpy.data.meshes.new("cube")
    obj = bpy.data.objects.new("cube", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    out = tmp_path / "x.ply"
    with pytest.raises(RuntimeError, match="poll"):
        bpy.ops.export_scene.splatbridge_splats(filepath=str(out))
    assert not out.exists()


def test_export_extension_follows_format(io_ops, bpy_empty):
    check = io_ops.EXPORT_SCENE_OT_splatbridge_splats.check

    # A stand-in for the operator: Blender calls check() only from the file browser, which
    # headless bpy cannot open, so the method runs on a plain object with the two properties.
    class Fake:
        filepath = "/tmp/scene.ply"
        format = "compressed_ply"

    fake = Fake()
    assert check(fake, None) is True and fake.filepath == "/tmp/scene.compressed.ply"
    fake.format = "spz"
    assert check(fake, None) is True and fake.filepath == "/tmp/scene.spz"
    assert check(fake, None) is False
    assert io_ops.object_name_for(os.path.join("x", "garden.compressed.ply")) == "garden"


def test_big_imports_show_progress_and_small_ones_do_not(io_ops, so, bpy_empty, tmp_path):
    bpy = bpy_empty
    big, small = tmp_path / "big.splat", tmp_path / "small.spz"
    write_splats(big, Splats.random(120_000, sh_degree=0, seed=1), format="splat")
    write_splats(small, Splats.random(500, sh_degree=2, seed=2))
    assert io_ops.wants_progress([str(big)]) and not io_ops.wants_progress([str(small)])
    seen: list[float] = []
    made = io_ops.import_files(bpy.context, [str(small), str(big)], progress=seen.append)
    assert [n for _, n in made] == [500, 120_000]
    # weighted by declared splats: reading small, reading big, making small, making big
    total = 2 * 120_500
    assert seen == pytest.approx([500 / total, 120_500 / total, 121_000 / total, 1.0])
    # the operator runs the same path with the window manager's bar (a no-op headless)
    assert bpy.ops.import_scene.splatbridge_splats(filepath=str(big)) == {"FINISHED"}


def _rotation_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = t
    return m


def test_export_merges_selected_splat_objects_in_world_space(io_ops, so, bpy_empty, tmp_path):
    bpy = bpy_empty
    a, b = Splats.random(50, sh_degree=1, seed=11), Splats.random(70, sh_degree=2, seed=12)
    oa = so.create_splat_object(bpy.context, "A", a)
    ob = so.create_splat_object(bpy.context, "B", b)
    mesh = bpy.data.objects.new("plain", bpy.data.meshes.new("plain"))   # not a splat object: skipped
    bpy.context.scene.collection.objects.link(mesh)
    ma, mb = _rotation_z(30, (1, 2, 3)), _rotation_z(-75, (-1, 0, 0.5)) @ np.diag([2.0, 2.0, 2.0, 1.0])
    from mathutils import Matrix
    oa.matrix_world, ob.matrix_world = Matrix(ma.tolist()), Matrix(mb.tolist())
    for o in (oa, ob, mesh):
        o.select_set(True)
    bpy.context.view_layer.objects.active = ob
    bpy.context.view_layer.update()
    out = tmp_path / "merged.ply"
    # apply_transform=False is overridden: merged objects are always written in world space
    assert bpy.ops.export_scene.splatbridge_splats(filepath=str(out), apply_transform=False) == {"FINISHED"}
    got = read_splats(out)
    want = Splats.concatenate([b.transform(mb), a.transform(ma)])   # the active object first
    assert got.sh_degree == 2 and len(got) == 120
    assert got.allclose(want, atol=2e-5)
    # one object alone still honours apply_transform=False
    oa.select_set(False)
    assert bpy.ops.export_scene.splatbridge_splats(filepath=str(out), apply_transform=False) == {"FINISHED"}
    assert read_splats(out).allclose(b, atol=0)


def test_blender_webp_codec_reads_sog_like_pillow_and_writes_it(addon_dir, so, bpy_empty, tmp_path):
    """SOG inside Blender: its WebP images decoded by Blender's image loader (bench/webp_decode.py
    measures it against Pillow) give exactly Pillow's bytes, and Blender's writer round-trips."""
    from shared.formats import sog
    with registered("webp_codec") as codec:
        theirs = read_splats(DATA / "st.sog")            # shared's default codec here: Pillow
        mod_sog = sys.modules[codec.__name__.rsplit(".", 1)[0] + ".shared.formats.sog"]
        assert mod_sog._codec["decode"] is codec.decode_webp
        ours = mod_sog.read_sog(DATA / "st.sog")        # the add-on's copy of shared: Blender's loader
        assert all(np.array_equal(getattr(ours, f), getattr(theirs, f)) for f in
                   ("means", "quats", "scales", "opacities", "sh0", "shN"))
        rng = np.random.default_rng(3)
        px = rng.integers(0, 256, (12, 20, 4), dtype=np.uint8)
        px[::2, :, 3] = 0
        data = codec.encode_webp(px)
        back = sog._pil_decode(data)
        assert np.array_equal(back[px[..., 3] > 0], px[px[..., 3] > 0])   # exact where alpha > 0
        assert np.array_equal(codec.decode_webp(sog._pil_encode(px)), px)  # exact everywhere
        # the whole SOG through Blender's writer: opacity bytes of 0 become 1, colours survive
        mod_sog.set_webp_codec(decode=codec.decode_webp, encode=codec.encode_webp)
        s = Splats.random(300, sh_degree=1, seed=4)
        s = Splats(s.means, s.quats, s.scales, np.full(300, -20.0, np.float32), s.sh0, s.shN)
        mod_sog.write_sog(tmp_path / "b.sog", s)
        r = read_splats(tmp_path / "b.sog")
        sog.write_sog(tmp_path / "pil.sog", s)                 # the same splats through Pillow
        ref = read_splats(tmp_path / "pil.sog")
        assert np.allclose(r.alphas(), 1 / 255, atol=1e-6) and np.allclose(ref.alphas(), 0.0, atol=1e-5)
        assert all(np.array_equal(getattr(r, f), getattr(ref, f)) for f in ("means", "quats", "scales", "sh0", "shN"))
    assert mod_sog._codec["decode"] is None                      # unregistered: back to Pillow
