"""File > Import / Export operators of the add-on (headless bpy), for every format in shared.formats."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.formats import read_splats, write_splats
from shared.splats import Splats

from helpers import registered

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

EXT = {"ply": ".ply", "compressed_ply": ".compressed.ply", "splat": ".splat", "spz": ".spz"}
# .splat keeps colour without view dependence only (SH degree 0); the others keep degree 3.
DEGREE = {"ply": 3, "compressed_ply": 3, "splat": 0, "spz": 3}


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
    assert set(handler.bl_file_extensions.split(";")) == {".ply", ".splat", ".spz"}
    write_splats(tmp_path / "one.ply", Splats.random(20, sh_degree=0, seed=1), format="ply")
    write_splats(tmp_path / "two.spz", Splats.random(30, sh_degree=0, seed=2), format="spz")
    result = bpy.ops.import_scene.splatbridge_splats(
        "INVOKE_DEFAULT", directory=str(tmp_path), files=[{"name": "one.ply"}, {"name": "two.spz"}])
    assert result == {"FINISHED"}
    made = {o.name: len(o.data.vertices) for o in bpy.data.objects if so.is_splat_object(o)}
    assert made == {"one": 20, "two": 30}


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
