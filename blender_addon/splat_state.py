"""Per-splat editing state of a splat object: selection, hidden, locked, segment label.

Stored as point attributes of the object data, so it is saved with the .blend, undone with Blender's
undo and copied with the object:

==================  ====================================  ==========================================
state               mesh splat object                     native (point cloud) splat object
==================  ====================================  ==========================================
selected            vertex selection (``.select_vert``)   ``.selection`` (BOOLEAN; absent = all)
hidden              Blender's vertex hide (``.hide_vert``)  ``splatbridge:hidden`` (BOOLEAN)
locked              ``splatbridge:locked`` (BOOLEAN)      ``splatbridge:locked`` (BOOLEAN)
label               ``splatbridge:label`` (INT)           ``splatbridge:label`` (INT)
==================  ====================================  ==========================================

Hidden splats are not drawn and no selection tool selects them; locked splats are drawn (greyed) but
no selection tool selects them, so no operation changes them. On a mesh, Edit Mode's own Hide (H) and
Reveal (Alt H) are our hide and unhide. ``label`` is the segment job's result (-1 unlabelled, 0
background, 1..L); the object property ``splatbridge_label_names`` (a ``{label: name}`` map as JSON
text) names the labels after their source objects.

A mesh in Edit Mode keeps its edits in a BMesh: :func:`object_mode` leaves Edit Mode around a write and
enters it again, so the operators work from either mode.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .splat_object import PROP_REVISION, is_splat_object, splat_count

try:
    import bpy
except ImportError:  # pragma: no cover
    bpy = None

ATTR_SELECTION = ".selection"
MESH_SELECTION = ".select_vert"     # Blender's own vertex selection and hide flags of a mesh
MESH_HIDDEN = ".hide_vert"
ATTR_HIDDEN = "splatbridge:hidden"
ATTR_LOCKED = "splatbridge:locked"
ATTR_LABEL = "splatbridge:label"
PROP_LABEL_NAMES = "splatbridge_label_names"

#: the GPU draw flag of a splat (``viewport.gpu_data``): 0 plain, 1 selected, 2 locked
FLAG_SELECTED = 1.0
FLAG_LOCKED = 2.0


@dataclass
class SplatState:
    """The state arrays of ``n`` splats (see the module docstring)."""

    selected: np.ndarray
    hidden: np.ndarray
    locked: np.ndarray
    labels: np.ndarray | None = None          # int32[N] or None when the object has no labels
    label_names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> "SplatState":
        z = np.zeros(n, bool)
        return cls(z, z.copy(), z.copy())

    def __len__(self) -> int:
        return len(self.selected)

    def subset(self, mask: np.ndarray) -> "SplatState":
        return SplatState(self.selected[mask], self.hidden[mask], self.locked[mask],
                          None if self.labels is None else self.labels[mask], dict(self.label_names))

    @staticmethod
    def concatenate(states: list["SplatState"]) -> "SplatState":
        labelled = any(s.labels is not None for s in states)
        names: dict[int, str] = {}
        for s in states:
            names.update(s.label_names)
        return SplatState(
            np.concatenate([s.selected for s in states]), np.concatenate([s.hidden for s in states]),
            np.concatenate([s.locked for s in states]),
            np.concatenate([s.labels if s.labels is not None else np.full(len(s), -1, np.int32)
                            for s in states]) if labelled else None, names)

    @property
    def editable(self) -> np.ndarray:
        """Splats a tool may select or change: neither hidden nor locked."""
        return ~(self.hidden | self.locked)

    def draw_flags(self) -> np.ndarray:
        """f32[N] draw flag per splat for the viewport (locked wins over selected)."""
        f = np.where(self.selected, FLAG_SELECTED, 0.0).astype(np.float32)
        f[self.locked] = FLAG_LOCKED
        return f


def _is_mesh(obj) -> bool:
    return obj.type == "MESH"


@contextmanager
def object_mode(obj) -> Iterator[None]:
    """Leave Edit Mode for the block when ``obj`` is in it (its edits flushed to the data), then enter
    it again. Needs ``obj`` in the view layer (it becomes the active object meanwhile)."""
    if obj.mode != "EDIT":
        yield
        return
    layer = bpy.context.view_layer
    active = layer.objects.active
    layer.objects.active = obj
    bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield
    finally:
        layer.objects.active = obj
        bpy.ops.object.mode_set(mode="EDIT")
        if active is not None and active.name in layer.objects:
            layer.objects.active = active


def _read_bool(data, name: str, n: int, default: bool) -> np.ndarray:
    attr = data.attributes.get(name)
    if attr is None or attr.domain != "POINT":
        return np.full(n, default, bool)
    if attr.data_type == "BOOLEAN":
        out = np.zeros(n, bool)
        attr.data.foreach_get("value", out)
        return out
    out = np.zeros(n, np.float32)
    attr.data.foreach_get("value", out)
    return out > 0


def _write_bool(data, name: str, mask: np.ndarray, drop_if_false: bool = True) -> None:
    attr = data.attributes.get(name)
    if drop_if_false and not mask.any():
        if attr is not None:
            data.attributes.remove(attr)
        return
    if attr is not None and (attr.data_type != "BOOLEAN" or attr.domain != "POINT"):
        data.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = data.attributes.new(name, "BOOLEAN", "POINT")
    attr.data.foreach_set("value", np.ascontiguousarray(mask, dtype=bool))


@contextmanager
def _source(obj) -> Iterator[object]:
    """The data to read the state from: the object data, or in a mesh's Edit Mode a copy of the edit
    state (there the mesh's own attribute data is empty: it lives in a BMesh)."""
    if obj.mode == "EDIT" and _is_mesh(obj):
        try:
            yield obj.to_mesh(preserve_all_data_layers=True)
        finally:
            obj.to_mesh_clear()
    else:
        yield obj.data


def _count(obj, data) -> int:
    return len(data.vertices) if _is_mesh(obj) else len(data.points)


def _read_flag(obj, mesh_attr: str, attr_name: str, default: bool) -> np.ndarray:
    """A mesh's vertex flag (Blender's own ``.select_vert``/``.hide_vert`` BOOLEAN attributes, absent =
    all False; ~1000x faster than ``vertices.foreach_get``) or a point cloud's BOOLEAN attribute."""
    if _is_mesh(obj) and obj.mode == "EDIT":
        # the edit state's flags: flushed to the mesh, read through its vertices (a to_mesh copy drops
        # them; the attribute API shows the BMesh, whose data is not readable from Python)
        obj.update_from_editmode()
        out = np.zeros(len(obj.data.vertices), bool)
        obj.data.vertices.foreach_get("select" if mesh_attr == MESH_SELECTION else "hide", out)
        return out
    with _source(obj) as data:
        n = _count(obj, data)
        if _is_mesh(obj):
            return _read_bool(data, mesh_attr, n, False)
        return _read_bool(data, attr_name, n, default)


def get_selected(obj) -> np.ndarray:
    """bool[N]: the selected splats (Edit Mode's selection; read live in Edit Mode)."""
    return _read_flag(obj, MESH_SELECTION, ATTR_SELECTION, True)


def get_hidden(obj) -> np.ndarray:
    return _read_flag(obj, MESH_HIDDEN, ATTR_HIDDEN, False)


def get_locked(obj) -> np.ndarray:
    with _source(obj) as data:
        return _read_bool(data, ATTR_LOCKED, _count(obj, data), False)


def get_labels(obj) -> np.ndarray | None:
    """int32[N] segment labels, or None when the object has none."""
    with _source(obj) as data:
        attr = data.attributes.get(ATTR_LABEL)
        if attr is None or attr.domain != "POINT" or attr.data_type != "INT":
            return None
        out = np.zeros(_count(obj, data), np.int32)
        attr.data.foreach_get("value", out)
        return out


def get_label_names(obj) -> dict[int, str]:
    text = obj.get(PROP_LABEL_NAMES)
    if not text:
        return {}
    try:
        return {int(k): str(v) for k, v in json.loads(str(text)).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def active_splat(context):
    """The context's active object when it is a splat object, else None."""
    obj = getattr(context, "active_object", None)
    return obj if obj is not None and is_splat_object(obj) else None


def read_state(obj) -> SplatState:
    """All state arrays of splat object ``obj``."""
    return SplatState(get_selected(obj), get_hidden(obj), get_locked(obj), get_labels(obj), get_label_names(obj))


def _touch(obj) -> None:
    data = obj.data
    data[PROP_REVISION] = int(data.get(PROP_REVISION, 0)) + 1
    data.update_tag()


def _check(obj, mask: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (splat_count(obj),):
        raise ValueError(f"{what} of {obj.name!r} must be bool[{splat_count(obj)}], got {m.dtype}{list(m.shape)}")
    return m


def _write_selection(obj, mask: np.ndarray) -> None:
    """Store ``mask`` as the selection: Blender's own select flags on a mesh, ``.selection`` on a
    point cloud (kept even when all false, so Blender does not fall back to 'all selected')."""
    if _is_mesh(obj):
        _write_bool(obj.data, MESH_SELECTION, mask)
    else:
        _write_bool(obj.data, ATTR_SELECTION, mask, drop_if_false=False)


def set_selected(obj, mask: np.ndarray) -> None:
    """Select exactly ``mask`` (hidden and locked splats stay unselected); works in either mode."""
    mask = _check(obj, mask, "selection")
    with object_mode(obj):
        _write_selection(obj, mask & ~get_hidden(obj) & ~get_locked(obj))
        _touch(obj)


def _deselect(obj, mask: np.ndarray) -> None:
    """Clear the selection of the splats in ``mask`` (hidden and locked splats are never selected);
    writes nothing when none of them is selected. Call in Object Mode."""
    if not mask.any():
        return
    sel = get_selected(obj)
    if (sel & mask).any():
        _write_selection(obj, sel & ~mask)


def set_hidden(obj, mask: np.ndarray) -> None:
    """Hide exactly ``mask`` (hidden splats are deselected)."""
    mask = _check(obj, mask, "hidden")
    with object_mode(obj):
        _write_bool(obj.data, MESH_HIDDEN if _is_mesh(obj) else ATTR_HIDDEN, mask)
        _deselect(obj, mask)
        _touch(obj)


def set_locked(obj, mask: np.ndarray) -> None:
    """Lock exactly ``mask`` (locked splats are deselected)."""
    mask = _check(obj, mask, "locked")
    with object_mode(obj):
        _write_bool(obj.data, ATTR_LOCKED, mask)
        _deselect(obj, mask)
        _touch(obj)


def set_labels(obj, labels: np.ndarray | None, names: dict[int, str] | None = None) -> None:
    """Store segment labels (int[N]; None removes them) and optionally their names."""
    data = obj.data
    attr = data.attributes.get(ATTR_LABEL)
    if labels is None:
        if attr is not None:
            data.attributes.remove(attr)
        if PROP_LABEL_NAMES in obj:
            del obj[PROP_LABEL_NAMES]
        return
    labels = np.asarray(labels)
    if labels.shape != (splat_count(obj),) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels of {obj.name!r} must be int[{splat_count(obj)}], got {labels.dtype}{list(labels.shape)}")
    if attr is not None and (attr.data_type != "INT" or attr.domain != "POINT"):
        data.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = data.attributes.new(ATTR_LABEL, "INT", "POINT")
    attr.data.foreach_set("value", labels.astype(np.int32))
    if names is not None:
        obj[PROP_LABEL_NAMES] = json.dumps({str(k): v for k, v in sorted(names.items())})


def write_state(obj, state: SplatState) -> None:
    """Write every state array of ``state`` (same count as the object) onto ``obj``."""
    with object_mode(obj):
        _write_bool(obj.data, MESH_HIDDEN if _is_mesh(obj) else ATTR_HIDDEN, state.hidden)
        _write_bool(obj.data, ATTR_LOCKED, state.locked)
        _write_selection(obj, state.selected & ~state.hidden & ~state.locked)
        set_labels(obj, state.labels, state.label_names if state.labels is not None else None)
        _touch(obj)


__all__ = ["ATTR_HIDDEN", "ATTR_LABEL", "ATTR_LOCKED", "PROP_LABEL_NAMES", "SplatState", "get_hidden",
           "get_label_names", "get_labels", "get_locked", "get_selected", "object_mode", "read_state",
           "set_hidden", "set_labels", "set_locked", "set_selected", "write_state"]
