"""The splat object (headless bpy), in both representations: a vertices-only mesh with point
attributes (any Blender) and Blender's own Gaussian-splat point cloud (5.3+, the default there)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from shared.splats import Splats

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]


@pytest.fixture
def so(addon_dir, bpy_empty):
    """The add-on's splat_object module (imported from the assembled add-on)."""
    return importlib.import_module("splatbridge.splat_object")


@pytest.fixture(params=[False, True], ids=["mesh", "native"])
def native(request, addon_dir):
    """The representation under test; native point clouds exist from Blender 5.3 on only."""
    so = importlib.import_module("splatbridge.splat_object")
    if request.param and not so.NATIVE_SUPPORTED:
        pytest.skip("this bpy has no Gaussian-splat point clouds (Blender 5.3+); build.py compat runs it")
    return request.param


def _make(so, bpy, name, splats, native):
    return so.create_splat_object(bpy.context, name, splats, native=native)


def test_default_representation_follows_the_blender_version(so, bpy_empty):
    obj = so.create_splat_object(bpy_empty.context, "d", Splats.random(3))
    expected = "POINTCLOUD" if bpy_empty.app.version >= (5, 3, 0) else "MESH"
    assert so.NATIVE_SUPPORTED == (bpy_empty.app.version >= (5, 3, 0))
    assert obj.type == expected and so.is_splat_object(obj)


def test_create_then_read_back_equal(so, bpy_empty, native):
    bpy = bpy_empty
    splats = Splats.random(500, sh_degree=3, seed=1)
    splats.opacities[:4] = [25.0, -25.0, 17.5, 40.0]      # sigmoid is exactly 0 or 1 in float32
    obj = _make(so, bpy, "Splats", splats, native)
    assert obj.type == ("POINTCLOUD" if native else "MESH") and so.is_splat_object(obj)
    assert so.is_native_splat_object(obj) == native and so.is_mesh_splat_object(obj) != native
    assert obj.name in bpy.context.scene.collection.all_objects
    assert obj[so.PROP_SH_DEGREE] == 3 and so.splat_sh_degree(obj) == 3 and so.splat_count(obj) == 500
    assert obj.data.attributes["rotation"].data_type == "QUATERNION"
    if native:
        assert obj.data.type == "GAUSSIAN_SPLAT"
    else:
        assert len(obj.data.vertices) == 500 and len(obj.data.edges) == 0
    back = so.read_splats_from_object(obj)
    # identity transform: exactly the same floats (the quaternions are not normalised on the way)
    for field in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        np.testing.assert_array_equal(getattr(back, field), getattr(splats, field), err_msg=field)


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_lower_sh_degrees_round_trip(so, bpy_empty, degree, native):
    splats = Splats.random(64, sh_degree=degree, seed=degree)
    obj = _make(so, bpy_empty, f"d{degree}", splats, native)
    back = so.read_splats_from_object(obj)
    assert back.sh_degree == degree and back.allclose(splats, atol=0)


def test_not_a_splat_object_is_refused(so, bpy_empty):
    bpy = bpy_empty
    mesh = bpy.data.meshes.new("plain")
    obj = bpy.data.objects.new("plain", mesh)
    assert not so.is_splat_object(obj)
    with pytest.raises(so.SplatObjectError, match="'plain' is not a splat object"):
        so.read_splats_from_object(obj)
    with pytest.raises(so.SplatObjectError, match="not a splat object"):
        so.update_splat_object(obj, Splats.random(3))


def test_missing_attribute_is_named(so, bpy_empty):
    obj = so.create_splat_object(bpy_empty.context, "broken", Splats.random(10, sh_degree=1), native=False)
    obj.data.attributes.remove(obj.data.attributes[so.ATTR_OPACITY])
    with pytest.raises(so.SplatObjectError, match="no 'opacity_logit' attribute"):
        so.read_splats_from_object(obj)


def test_native_without_splat_attributes_is_not_a_splat_object(so, bpy_empty):
    """A point cloud is a splat object by its attributes: without ``radiance:base`` it is plain points."""
    if not so.NATIVE_SUPPORTED:
        pytest.skip("this bpy has no Gaussian-splat point clouds (Blender 5.3+); build.py compat runs it")
    obj = _make(so, bpy_empty, "broken", Splats.random(10, sh_degree=1), True)
    obj.data.attributes.remove(obj.data.attributes["radiance:base"])
    assert not so.is_splat_object(obj)
    with pytest.raises(so.SplatObjectError, match="'broken' is not a splat object .*radiance:base"):
        so.read_splats_from_object(obj)
    plain = bpy_empty.data.objects.new("points", bpy_empty.data.pointclouds.new("points"))
    assert not so.is_splat_object(plain)


def test_transform_applied_on_read_rotates_sh(so, bpy_empty, native):
    from mathutils import Euler, Matrix

    splats = Splats.random(200, sh_degree=2, seed=3)
    obj = _make(so, bpy_empty, "moved", splats, native)
    obj.matrix_world = Matrix.Translation((1.0, -2.0, 0.5)) @ Euler((0.3, -0.7, 1.1)).to_matrix().to_4x4() \
        @ Matrix.Scale(2.0, 4)
    world = so.read_splats_from_object(obj)
    expected = splats.transform(np.array(obj.matrix_world))
    assert world.allclose(expected, atol=1e-5)
    # the SH really changed (rotated), and the DC did not
    assert not np.allclose(world.shN, splats.shN, atol=1e-3)
    np.testing.assert_allclose(world.sh0, splats.sh0)
    np.testing.assert_allclose(world.scales, splats.scales + np.log(2.0), atol=1e-5)
    local = so.read_splats_from_object(obj, apply_transform=False)
    assert local.allclose(splats, atol=0)


def test_non_uniform_scale_is_refused_on_read(so, bpy_empty):
    obj = so.create_splat_object(bpy_empty.context, "squashed", Splats.random(5))
    obj.scale = (1.0, 2.0, 1.0)
    bpy_empty.context.view_layer.update()
    with pytest.raises(ValueError, match="transform: .*non-uniform scale"):   # the add-on's SplatError
        so.read_splats_from_object(obj)


def test_save_reload_keeps_data(so, bpy_empty, tmp_path, native):
    bpy = bpy_empty
    splats = Splats.random(300, sh_degree=3, seed=4)
    obj = _make(so, bpy, "saved", splats, native)
    obj.location = (0.0, 0.0, 1.0)
    path = tmp_path / "splats.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert "saved" not in bpy.data.objects
    bpy.ops.wm.open_mainfile(filepath=str(path))
    loaded = bpy.data.objects["saved"]
    assert so.is_splat_object(loaded)
    assert so.read_splats_from_object(loaded, apply_transform=False).allclose(splats, atol=0)
    np.testing.assert_allclose(so.read_splats_from_object(loaded).means, splats.means + [0, 0, 1], atol=1e-6)


def test_duplicate_is_independent(so, bpy_empty, native):
    bpy = bpy_empty
    splats = Splats.random(50, sh_degree=1, seed=5)
    obj = _make(so, bpy, "orig", splats, native)
    dup = obj.copy()
    dup.data = obj.data.copy()
    bpy.context.scene.collection.objects.link(dup)
    assert so.is_splat_object(dup) and dup.data != obj.data
    so.update_splat_object(dup, Splats.random(20, sh_degree=0, seed=6))
    assert len(so.read_splats_from_object(dup)) == 20
    assert so.read_splats_from_object(obj).allclose(splats, atol=0)


def test_duplicate_operator(so, bpy_empty, native):
    bpy = bpy_empty
    splats = Splats.random(40, sh_degree=2, seed=8)
    obj = _make(so, bpy, "opdup", splats, native)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.duplicate()
    dup = bpy.context.view_layer.objects.active
    assert dup is not None and dup != obj and so.is_splat_object(dup)
    assert so.read_splats_from_object(dup).allclose(splats, atol=0)


def test_update_in_place(so, bpy_empty, native):
    bpy = bpy_empty
    obj = _make(so, bpy, "live", Splats.random(100, sh_degree=3, seed=7), native)
    mesh = obj.data
    rev = mesh[so.PROP_REVISION]
    new = Splats.random(37, sh_degree=1, seed=9)
    so.update_splat_object(obj, new)
    assert obj.data == mesh and mesh[so.PROP_REVISION] == rev + 1
    assert obj[so.PROP_SH_DEGREE] == 1
    rest = "radiance:sh_{}" if native else so.ATTR_SH_REST
    assert mesh.attributes.get(rest.format(3)) is None and mesh.attributes.get(rest.format(2))  # leftovers removed
    assert so.read_splats_from_object(obj).allclose(new, atol=0)
    same_count = Splats.random(37, sh_degree=1, seed=10)
    so.update_splat_object(obj, same_count)
    assert so.read_splats_from_object(obj).allclose(same_count, atol=0)


def test_empty_splats_round_trip_and_update(so, bpy_empty, native):
    """A job can return no splats (every Gaussian pruned); Blender drops the 'position' attribute of a
    mesh without vertices, which used to raise KeyError on create and on read."""
    bpy = bpy_empty
    obj = _make(so, bpy, "empty", Splats.random(0, sh_degree=1), native)
    back = so.read_splats_from_object(obj)
    assert len(back) == 0 and back.sh_degree == 1
    filled = Splats.random(12, sh_degree=1, seed=3)
    so.update_splat_object(obj, filled)
    assert so.read_splats_from_object(obj).allclose(filled, atol=0)
    so.update_splat_object(obj, Splats.random(0, sh_degree=1))
    assert len(so.read_splats_from_object(obj)) == 0
