"""The splat object: Gaussian splats stored in the .blend, in one of two representations.

**Native** (Blender 5.3+, the default there; :data:`NATIVE_SUPPORTED`): a ``POINTCLOUD`` object of
type ``GAUSSIAN_SPLAT`` with Blender's own splat attributes (``position``, ``scale``, ``rotation``,
``radiance:base``, ``radiance:sh_k``; their meaning and the lossless conversion are in
``shared.native_splats``), so that F12, ``blender -b -a`` and render farms render it with Blender's
own splat renderer. Any point cloud with those attributes is a splat object, including the ones
Blender's PLY and SPZ importers make (they carry no SplatBridge property).

**Mesh** (Blender 4.2-5.2, and objects saved by them): a MESH object whose vertices are the splat
centres (object local space, metres) and whose point-domain attributes hold the rest, raw (as in
``shared.splats.Splats``):

============================  ===============  ====================================================
attribute                     type             meaning
============================  ===============  ====================================================
``position`` (the vertices)   FLOAT_VECTOR     ``means``, local space
``rotation``                  QUATERNION       ``quats`` w, x, y, z (not necessarily normalised)
``log_scale``                 FLOAT_VECTOR     ``scales``: log standard deviations, local axes
``opacity_logit``             FLOAT            ``opacities`` (logit)
``sh0``                       FLOAT_VECTOR     DC SH coefficient per RGB channel
``sh_rest_0`` .. ``_{K-1}``   FLOAT_VECTOR     ``shN[:, k, :]``: RGB of SH coefficient k (K = 3/8/15)
============================  ===============  ====================================================

A mesh splat object carries the custom property ``splatbridge_sh_degree`` (0-3), which marks it.
On 5.3+ such objects (from older files) keep working, and "Convert to Native Splats"
(:class:`SPLATBRIDGE_OT_convert_to_native`) turns them into native ones. Every reader in the add-on
goes through this module (:func:`read_splats_from_object`, :func:`splat_count`,
:func:`splat_sh_degree`, :func:`selected_splats`), so each tool accepts both.

Because everything is ordinary object data, saving, undo, duplication, parenting, transforms and
deleting points in edit mode all behave as Blender users expect. All transfers go through
``foreach_set`` / ``foreach_get`` on flat float32 arrays (no Python loops): 1M degree-3 splats take
well under a second.
"""
from __future__ import annotations

import numpy as np

from .shared import native_splats as nat
from .shared.native_splats import transpose01
from .shared.sh import REST_COUNT, degree_from_rest_count
from .shared.splats import Splats

try:  # runs inside Blender; importing without bpy only gives the constants
    import bpy
except ImportError:  # pragma: no cover
    bpy = None


def _native_supported() -> bool:
    """True when this Blender has Gaussian-splat point clouds (5.3+)."""
    if bpy is None or not hasattr(bpy.types, "PointCloud"):
        return False
    prop = bpy.types.PointCloud.bl_rna.properties.get("type")
    return prop is not None and "GAUSSIAN_SPLAT" in prop.enum_items.keys()


#: this Blender renders splat point clouds itself: new splat objects are native
NATIVE_SUPPORTED = _native_supported()

PROP_SH_DEGREE = "splatbridge_sh_degree"   # object custom property: marks a (mesh) splat object
PROP_REVISION = "splatbridge_revision"     # data custom property: bumped on every data write

ATTR_ROTATION = "rotation"
ATTR_LOG_SCALE = "log_scale"
ATTR_OPACITY = "opacity_logit"
ATTR_SH0 = "sh0"
ATTR_SH_REST = "sh_rest_{}"

# name -> (Blender attribute type, foreach property, floats per splat)
_VALUE_ATTRS = {
    ATTR_ROTATION: ("QUATERNION", "value", 4),
    ATTR_LOG_SCALE: ("FLOAT_VECTOR", "vector", 3),
    ATTR_OPACITY: ("FLOAT", "value", 1),
    ATTR_SH0: ("FLOAT_VECTOR", "vector", 3),
}
_MAX_REST = max(REST_COUNT.values())
# Blender attribute type -> foreach property
_FOREACH = {"FLOAT": "value", "FLOAT_VECTOR": "vector", "FLOAT4": "vector", "QUATERNION": "value"}


class SplatObjectError(ValueError):
    """An object that is not a splat object, or whose splat attributes are missing or damaged."""


def is_mesh_splat_object(obj: object) -> bool:
    """True for a mesh object that carries the splat marker property."""
    return (bpy is not None and isinstance(obj, bpy.types.Object) and obj.type == "MESH"
            and PROP_SH_DEGREE in obj.keys())


def is_native_splat_object(obj: object) -> bool:
    """True for a point cloud object with Blender's splat attributes (``scale``, ``rotation``,
    ``radiance:base`` on points), whoever made it: no marker property is needed."""
    if bpy is None or not isinstance(obj, bpy.types.Object) or obj.type != "POINTCLOUD" or obj.data is None:
        return False
    attrs = obj.data.attributes
    for name in nat.REQUIRED:
        attr = attrs.get(name)
        if attr is None or attr.domain != "POINT" or attr.data_type != nat.TYPES[name][0]:
            return False
    return True


def is_splat_object(obj: object) -> bool:
    """True for a splat object in either representation."""
    return is_native_splat_object(obj) or is_mesh_splat_object(obj)


def splat_count(obj) -> int:
    """Number of splats of splat object ``obj`` (points or vertices)."""
    return len(obj.data.points) if obj.type == "POINTCLOUD" else len(obj.data.vertices)


def _set_attribute(data, name: str, data_type: str, prop: str, values: np.ndarray) -> None:
    attr = data.attributes.get(name)
    if attr is not None and (attr.data_type != data_type or attr.domain != "POINT"):
        data.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = data.attributes.new(name, data_type, "POINT")
    attr.data.foreach_set(prop, np.ascontiguousarray(values, dtype=np.float32).reshape(-1))


def _write_mesh(mesh, splats: Splats) -> None:
    n = len(splats)
    if len(mesh.vertices) != n or len(mesh.edges) or len(mesh.polygons):
        mesh.clear_geometry()
        mesh.vertices.add(n)
    # the "position" attribute takes a raw copy; vertices.foreach_set("co") is ~100x slower.
    # Blender has no "position" attribute on a mesh without vertices (an empty result).
    if n:
        mesh.attributes["position"].data.foreach_set("vector", splats.means.reshape(-1))
    fields = {ATTR_ROTATION: splats.quats, ATTR_LOG_SCALE: splats.scales,
              ATTR_OPACITY: splats.opacities, ATTR_SH0: splats.sh0}
    for name, (data_type, prop, _) in _VALUE_ATTRS.items():
        _set_attribute(mesh, name, data_type, prop, fields[name])
    k_count = splats.shN.shape[1]
    if k_count:
        rest = transpose01(splats.shN)                                   # [K, N, 3]: slices contiguous
        for k in range(k_count):
            _set_attribute(mesh, ATTR_SH_REST.format(k), "FLOAT_VECTOR", "vector", rest[k])
    for k in range(k_count, _MAX_REST):
        stale = mesh.attributes.get(ATTR_SH_REST.format(k))
        if stale is not None:
            mesh.attributes.remove(stale)
    mesh[PROP_REVISION] = int(mesh.get(PROP_REVISION, 0)) + 1
    mesh.update()


def _write_pointcloud(cloud, splats: Splats) -> None:
    if len(cloud.points) != len(splats):
        cloud.resize(len(splats))
    for name, values in nat.to_native(splats).items():
        data_type = nat.TYPES.get(name, nat.SH_TYPE)[0]
        _set_attribute(cloud, name, data_type, _FOREACH[data_type], values)
    k = splats.shN.shape[1]
    while (stale := cloud.attributes.get(nat.ATTR_SH.format(k))) is not None:
        cloud.attributes.remove(stale)       # Blender reads sh_0, sh_1, ... until one is missing
        k += 1
    cloud.type = "GAUSSIAN_SPLAT"
    cloud[PROP_REVISION] = int(cloud.get(PROP_REVISION, 0)) + 1
    cloud.update_tag()


def _write(data, splats: Splats) -> None:
    if isinstance(data, bpy.types.PointCloud):
        _write_pointcloud(data, splats)
    else:
        _write_mesh(data, splats)


def create_splat_object(context, name: str, splats: Splats, collection=None, native: bool | None = None):
    """A new splat object named ``name`` holding ``splats`` (taken as object-local coordinates;
    the object starts with an identity transform, so local = world).

    ``native`` chooses the representation: a Gaussian-splat point cloud (default where
    :data:`NATIVE_SUPPORTED`: Blender 5.3+) or a vertices-only mesh (the default before 5.3).
    Native objects show as bounds in the viewport (``display_type``; renders are unaffected), where
    the add-on's drawer draws them exactly.
    It is linked into ``collection`` (default: the context's active collection, else the scene's
    master collection) and returned; it is not selected or made active.
    """
    splats = _as_splats(splats)
    native = NATIVE_SUPPORTED if native is None else bool(native)
    if native and not NATIVE_SUPPORTED:
        raise SplatObjectError(f"Blender {bpy.app.version_string} has no native splat point clouds "
                               "(they are new in Blender 5.3)")
    data = bpy.data.pointclouds.new(name) if native else bpy.data.meshes.new(name)
    _write(data, splats)
    obj = bpy.data.objects.new(name, data)
    obj[PROP_SH_DEGREE] = splats.sh_degree
    if native:
        obj.display_type = "BOUNDS"
    if collection is None:
        collection = getattr(context, "collection", None) or context.scene.collection
    collection.objects.link(obj)
    return obj


def update_splat_object(obj, splats: Splats) -> None:
    """Replace the splats of ``obj`` in place (live preview): same object and data block, new
    count, values and SH degree, same representation. Objects sharing the data (linked
    duplicates) change too."""
    if not is_splat_object(obj):
        raise SplatObjectError(f"object {getattr(obj, 'name', obj)!r} is not a splat object")
    splats = _as_splats(splats)
    if obj.mode == "EDIT":
        raise SplatObjectError(f"object {obj.name!r} is in edit mode; leave edit mode before updating it")
    _write(obj.data, splats)
    obj[PROP_SH_DEGREE] = splats.sh_degree


def _as_splats(splats: object) -> Splats:
    """``splats`` as this package's Splats (a Splats from another import of ``shared``, such as
    the repository's own in tests, is re-wrapped without copying its arrays)."""
    if isinstance(splats, Splats):
        return splats
    if hasattr(splats, "to_arrays"):
        return Splats.from_arrays(splats.to_arrays())
    raise TypeError(f"splats must be a shared.splats.Splats, got {type(splats).__name__}")


def _get_attribute(data, name: str, data_type: str, prop: str, width: int, n: int, owner: str,
                   out: np.ndarray | None = None) -> np.ndarray:
    attr = data.attributes.get(name)
    if attr is None:
        raise SplatObjectError(f"splat object {owner!r} has no '{name}' attribute")
    if attr.data_type != data_type or attr.domain != "POINT":
        raise SplatObjectError(f"splat object {owner!r}: attribute '{name}' is {attr.data_type} on "
                               f"{attr.domain}, expected {data_type} on POINT")
    if out is None:
        out = np.empty((n, width) if width > 1 else (n,), np.float32)
    attr.data.foreach_get(prop, out.reshape(-1))
    return out


def mesh_sh_degree(mesh) -> int:
    """SH degree stored in ``mesh``: the number of consecutive ``sh_rest_k`` attributes."""
    k = 0
    while k < _MAX_REST and mesh.attributes.get(ATTR_SH_REST.format(k)) is not None:
        k += 1
    try:
        return degree_from_rest_count(k)
    except ValueError:
        raise SplatObjectError(f"mesh {mesh.name!r} has {k} sh_rest attributes; expected 0, 3, 8 or 15") from None


def _native_sh_present(cloud) -> int:
    k = 0
    while k < nat.MAX_NATIVE_SH and cloud.attributes.get(nat.ATTR_SH.format(k)) is not None:
        k += 1
    return k


def splat_sh_degree(obj) -> int:
    """SH degree of the splats of ``obj`` as SplatBridge reads them (0-3; a native degree 4 reads as 3)."""
    if obj.type == "POINTCLOUD":
        try:
            return degree_from_rest_count(nat.native_rest_count(_native_sh_present(obj.data)))
        except ValueError as exc:
            raise SplatObjectError(f"splat object {obj.name!r}: {exc}") from None
    return mesh_sh_degree(obj.data)


def _read_native(obj, sh: bool = True) -> Splats:
    cloud = obj.data
    n = len(cloud.points)
    try:
        k_count = nat.native_rest_count(_native_sh_present(cloud)) if sh else 0
    except ValueError as exc:
        raise SplatObjectError(f"splat object {obj.name!r}: {exc}") from None
    attrs = {}
    for name, (data_type, width) in nat.TYPES.items():
        if name.startswith("splatbridge:") and cloud.attributes.get(name) is None:
            continue                                     # exact values are optional
        attrs[name] = _get_attribute(cloud, name, data_type, _FOREACH[data_type], width, n, obj.name)
    rest = np.empty((k_count, n, 3), np.float32)
    for k in range(k_count):
        _get_attribute(cloud, nat.ATTR_SH.format(k), "FLOAT_VECTOR", "vector", 3, n, obj.name, out=rest[k])
        attrs[nat.ATTR_SH.format(k)] = rest[k]
    return nat.from_native(attrs, sh_planes=rest)


def _read_mesh(obj, sh: bool = True) -> Splats:
    if obj.mode == "EDIT":
        # in Edit Mode the attributes live in a BMesh (the mesh's own attribute data is empty):
        # read a copy of the edit state
        try:
            return _read_mesh_data(obj.to_mesh(preserve_all_data_layers=True), obj.name, sh)
        finally:
            obj.to_mesh_clear()
    return _read_mesh_data(obj.data, obj.name, sh)


def _read_mesh_data(mesh, owner: str, sh: bool = True) -> Splats:
    n = len(mesh.vertices)
    means = _get_attribute(mesh, "position", "FLOAT_VECTOR", "vector", 3, n, owner) if n \
        else np.zeros((0, 3), np.float32)           # no vertices: Blender drops "position"
    values = {name: _get_attribute(mesh, name, t, prop, w, n, owner)
              for name, (t, prop, w) in _VALUE_ATTRS.items()}
    degree = mesh_sh_degree(mesh) if sh else 0
    k_count = REST_COUNT[degree]
    rest = np.empty((k_count, n, 3), np.float32)
    for k in range(k_count):
        _get_attribute(mesh, ATTR_SH_REST.format(k), "FLOAT_VECTOR", "vector", 3, n, owner, out=rest[k])
    shN = transpose01(rest) if n and k_count else np.zeros((n, k_count, 3), np.float32)
    return Splats(means, values[ATTR_ROTATION], values[ATTR_LOG_SCALE], values[ATTR_OPACITY],
                  values[ATTR_SH0], shN)


def read_splats_from_object(obj, apply_transform: bool = True, sh: bool = True) -> Splats:
    """The splats of ``obj`` (either representation); with ``apply_transform`` in world space
    (``obj.matrix_world`` applied through ``Splats.transform``, which also rotates the SH), else in
    object local space. ``sh=False`` leaves out the higher SH bands (degree 0: the base colour only),
    for tools that need no view-dependent colour (selections): at degree 3 that is most of the data.

    Raises ``SplatObjectError`` for a non-splat object or missing attributes, and
    ``shared.splats.SplatError`` (field ``transform``) when the object's world matrix has
    non-uniform scale, shear or mirroring, which splats cannot represent (or a field named for
    NaN values in the attributes).
    """
    if not is_splat_object(obj):
        raise SplatObjectError(f"object {getattr(obj, 'name', obj)!r} is not a splat object "
                               f"(neither a point cloud with Blender's splat attributes "
                               f"{', '.join(nat.REQUIRED)} nor a mesh with the '{PROP_SH_DEGREE}' property)")
    splats = _read_native(obj, sh) if obj.type == "POINTCLOUD" else _read_mesh(obj, sh)
    if apply_transform:
        splats = splats.transform(np.array(obj.matrix_world, dtype=np.float64))
    return splats


def selected_splats(obj) -> np.ndarray:
    """bool[N]: which splats of splat object ``obj`` are selected in Edit Mode (mesh: vertex
    selection; point cloud: its ``.selection`` attribute, all selected when it has none, as in
    Blender)."""
    if obj.type == "POINTCLOUD":
        n = len(obj.data.points)
        attr = obj.data.attributes.get(".selection")
        if attr is None:
            return np.ones(n, dtype=bool)
        if attr.data_type == "BOOLEAN":
            sel = np.zeros(n, dtype=bool)
            attr.data.foreach_get("value", sel)
            return sel
        sel = np.zeros(n, dtype=np.float32)
        attr.data.foreach_get("value", sel)
        return sel > 0
    if obj.mode == "EDIT":
        obj.update_from_editmode()
    sel = np.zeros(len(obj.data.vertices), dtype=bool)
    obj.data.vertices.foreach_get("select", sel)
    return sel


# ------------------------------------------------------------------------------------------------
# conversion between the representations
# ------------------------------------------------------------------------------------------------

def _copy_group(src, dst) -> None:
    for prop in src.bl_rna.properties:
        if prop.identifier != "rna_type" and not prop.is_readonly:
            setattr(dst, prop.identifier, getattr(src, prop.identifier))


def convert_splat_object(obj, native: bool = True):
    """Replace splat object ``obj`` with one in the other representation (``native``: a
    Gaussian-splat point cloud; else a mesh) holding the same splats bit for bit; returns the new
    object (``obj`` itself when it already is one).

    The new object takes the old one's name, collections, parent and children, local transform,
    visibility, custom properties, display settings and selection; the old object is removed
    (and its data, when nothing else uses it). Modifiers are not carried over (the "Native Render"
    Geometry Nodes modifier is for meshes: a native object renders itself).
    """
    if not is_splat_object(obj):
        raise SplatObjectError(f"object {getattr(obj, 'name', obj)!r} is not a splat object")
    if (obj.type == "POINTCLOUD") == bool(native):
        return obj
    if native and not NATIVE_SUPPORTED:
        raise SplatObjectError(f"Blender {bpy.app.version_string} has no native splat point clouds "
                               "(they are new in Blender 5.3)")
    if obj.mode == "EDIT":
        raise SplatObjectError(f"object {obj.name!r} is in edit mode; leave edit mode before converting it")
    splats = read_splats_from_object(obj, apply_transform=False)
    name, old_data = obj.name, obj.data
    data = bpy.data.pointclouds.new(old_data.name) if native else bpy.data.meshes.new(old_data.name)
    _write(data, splats)
    new = bpy.data.objects.new(name + ".converting", data)
    for key in obj.keys():
        if key not in ("splatbridge_display",):
            new[key] = obj[key]
    new[PROP_SH_DEGREE] = splats.sh_degree
    for coll in obj.users_collection:
        coll.objects.link(new)
    new.parent, new.parent_type = obj.parent, obj.parent_type
    new.matrix_parent_inverse = obj.matrix_parent_inverse.copy()
    new.rotation_mode = obj.rotation_mode
    new.matrix_basis = obj.matrix_basis.copy()
    for attr in ("hide_viewport", "hide_render", "hide_select"):
        setattr(new, attr, getattr(obj, attr))
    new.display_type = "BOUNDS" if native else "TEXTURED"
    if obj.animation_data is not None and obj.animation_data.action is not None:
        new.animation_data_create().action = obj.animation_data.action
    display = getattr(obj, "splatbridge_display", None)
    if display is not None:
        _copy_group(display, new.splatbridge_display)
    for child in obj.children:
        inverse = child.matrix_parent_inverse.copy()
        child.parent = new
        child.matrix_parent_inverse = inverse
    for layer in (vl for scene in bpy.data.scenes for vl in scene.view_layers):
        if layer.objects.get(name) == obj:
            selected = obj.select_get(view_layer=layer)
            hidden = obj.hide_get(view_layer=layer)
            active = layer.objects.active == obj
            new.select_set(selected, view_layer=layer)
            new.hide_set(hidden, view_layer=layer)
            if active:
                layer.objects.active = new
    bpy.data.objects.remove(obj)
    if old_data.users == 0:
        (bpy.data.meshes if isinstance(old_data, bpy.types.Mesh) else bpy.data.pointclouds).remove(old_data)
    new.name = name
    data.name = name
    return new


if bpy is not None:
    class SPLATBRIDGE_OT_convert_to_native(bpy.types.Operator):
        """Turn the selected mesh-based splat objects (made before Blender 5.3) into Blender's own
        Gaussian-splat point clouds, which F12 and command-line renders draw natively; the splats
        are kept bit for bit"""
        bl_idname = "splatbridge.convert_to_native"
        bl_label = "Convert to Native Splats"
        bl_options = {"REGISTER", "UNDO"}

        @classmethod
        def poll(cls, context):
            if not NATIVE_SUPPORTED:
                cls.poll_message_set("Native splats need Blender 5.3 or newer")
                return False
            return any(is_mesh_splat_object(o) for o in _targets(context))

        def execute(self, context):
            objects = [o for o in _targets(context) if is_mesh_splat_object(o)]
            done = []
            for obj in objects:
                try:
                    done.append(convert_splat_object(obj, native=True).name)
                except (SplatObjectError, ValueError) as exc:
                    self.report({"ERROR"}, f"{obj.name}: {exc}")
                    return {"CANCELLED"}
            self.report({"INFO"}, f"Converted {len(done)} splat object(s) to native splats: {', '.join(done)}")
            return {"FINISHED"}


def _targets(context) -> list:
    """Selected objects plus the active one (without duplicates)."""
    objects = list(getattr(context, "selected_objects", None) or [])
    active = getattr(context, "active_object", None)
    if active is not None and active not in objects:
        objects.append(active)
    return objects


def register() -> None:
    bpy.utils.register_class(SPLATBRIDGE_OT_convert_to_native)


def unregister() -> None:
    if getattr(SPLATBRIDGE_OT_convert_to_native, "is_registered", False):
        bpy.utils.unregister_class(SPLATBRIDGE_OT_convert_to_native)
