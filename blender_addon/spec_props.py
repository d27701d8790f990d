"""Blender properties and panel rows derived from a job kind's ``shared.jobspec.JobSpec``.

One settings ``PropertyGroup`` per job kind, built from the spec when the kind's module registers
(so a changed spec changes the property's range, default and tooltip), with one property per
``Setting`` under the setting's name:

===========  =====================================================================================
``int``      ``IntProperty`` (min/max from the spec, an exclusive bound moved one step inside)
``float``    ``FloatProperty`` (min/max; an exclusive bound is left to ``validate``; metres and
             seconds get Blender's length/time units)
``bool``     ``BoolProperty``
``str``      ``EnumProperty`` when the setting has ``choices`` (the add-on may give the items nicer
             names and tooltips, same identifiers), else ``StringProperty`` (``server_path``:
             a folder path)
``floats``   ``FloatVectorProperty`` of the setting's length
===========  =====================================================================================

An ``optional`` number (``None``: "derived by the job") gets a checkbox ``use_<name>``; unticked, the
job derives it. An optional text left empty is ``None`` too. A text starting with ``//`` is a path
relative to the .blend file (Blender's notation) and is sent as an absolute path.

``params(group, spec)`` turns the group back into the ``submit`` params: only the values that differ
from the spec's defaults (the backend fills in the rest from the same spec, and its result meta
records every setting), checked with ``spec.validate_params`` so a bad value is refused in Blender with
the backend's own message. ``draw(layout, group, spec)`` draws the basic settings and, in a collapsed
"Advanced" section, the ``advanced`` ones.

Add-on-only settings (capture options, output names: not job settings) are passed as ``extra``
annotations and live in the same group.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, FloatVectorProperty, IntProperty, StringProperty

from .shared.jobspec import JobSpec, Setting

INT_LIMIT = 2**31 - 1            # Blender's IntProperty is a C int
SHOW_ADVANCED = "show_advanced"  # the group's toggle of the "Advanced" section
UNIT_TO_BLENDER = {"m": "LENGTH", "s": "TIME_ABSOLUTE"}

EnumItems = Sequence[tuple[str, str, str]]


def use_name(setting: Setting) -> str:
    """The checkbox property of an optional number: ``use_<name>``."""
    return f"use_{setting.name}"


def description(setting: Setting) -> str:
    """The tooltip: the spec's one-line description, the unit and the allowed values."""
    text = setting.description.rstrip(".")
    if setting.unit:
        text += f" ({setting.unit})"
    if setting.type in ("int", "float", "floats") and (setting.min is not None or setting.max is not None):
        text += f". Allowed: {setting.range_text()}"
    return text


def _int_bounds(s: Setting) -> dict[str, int]:
    out: dict[str, int] = {}
    if s.min is not None:
        lo = math.floor(s.min) + 1 if s.min_exclusive or s.min != math.floor(s.min) else int(s.min)
        out["min"] = max(lo, -INT_LIMIT)
    if s.max is not None:
        hi = math.ceil(s.max) - 1 if s.max_exclusive or s.max != math.ceil(s.max) else int(s.max)
        out["max"] = min(hi, INT_LIMIT)
    return out


def _float_bounds(s: Setting) -> dict[str, float]:
    out: dict[str, float] = {}
    if s.min is not None:
        out["min"] = float(s.min)
    if s.max is not None:
        out["max"] = float(s.max)
    return out


def _placeholder(s: Setting) -> Any:
    """The value shown for an optional number while the job derives it (checkbox unticked)."""
    if s.type == "int":
        return _int_bounds(s).get("min", 0)
    if s.min is None:
        return 0.0
    if not s.min_exclusive:
        return float(s.min)
    return (s.min + s.max) / 2 if s.max is not None else s.min + 1.0


def _tick_use(setting: Setting) -> Any:
    """An update callback that ticks an optional number's ``use_<name>`` box when its value is set (a
    user who types a value, or a script that assigns one, means it: it is no longer derived)."""
    flag = use_name(setting)

    def update(group: Any, _context: Any) -> None:
        if not getattr(group, flag):
            setattr(group, flag, True)
    return update


def setting_property(setting: Setting, items: EnumItems | None = None) -> Any:
    """The Blender property (an annotation value) for ``setting``; ``items`` names a ``choices``
    setting's values (identifiers must be exactly the spec's choices). Setting an optional number's
    value ticks its ``use_<name>`` box."""
    s = setting
    common: dict[str, Any] = {"name": s.title, "description": description(s)}
    if s.optional and s.type in ("int", "float", "floats"):
        common["update"] = _tick_use(s)
    default = s.default if s.default is not None else _placeholder(s) if s.type in ("int", "float") else None
    if s.type == "bool":
        return BoolProperty(default=bool(default), **common)
    if s.type == "int":
        return IntProperty(default=int(default), **_int_bounds(s), **common)
    if s.type == "float":
        kwargs: dict[str, Any] = dict(_float_bounds(s))
        if s.unit in UNIT_TO_BLENDER:
            kwargs["unit"] = UNIT_TO_BLENDER[s.unit]
        # a range spanning decades: drag in sensible steps, show small values
        kwargs["precision"] = 3 if abs(float(default)) >= 0.01 or default == 0 else 6
        return FloatProperty(default=float(default), **kwargs, **common)
    if s.type == "floats":
        if s.default is None:
            raise ValueError(f"setting {s.name}: an optional number list needs a default (its length)")
        return FloatVectorProperty(default=tuple(s.default), size=s.length, **_float_bounds(s), **common)
    if s.choices:
        if items is None:
            items = [(c, c.replace("_", " ").replace("-", " ").title(), "") for c in s.choices]
        if tuple(i[0] for i in items) != tuple(s.choices):
            raise ValueError(f"setting {s.name}: the add-on's items {[i[0] for i in items]} are not the spec's "
                             f"choices {list(s.choices)}")
        return EnumProperty(items=list(items), default=s.default, **common)
    kwargs = {"subtype": "DIR_PATH"} if s.server_path else {}
    return StringProperty(default=default or "", **kwargs, **common)


def annotations(spec: JobSpec, items: Mapping[str, EnumItems] | None = None) -> dict[str, Any]:
    """Property annotations for every setting of ``spec`` (plus ``use_<name>`` checkboxes of optional
    numbers and the ``show_advanced`` toggle)."""
    items = items or {}
    unknown = sorted(set(items) - set(spec.names))
    if unknown:
        raise ValueError(f"enum items given for settings {unknown} that job kind {spec.kind!r} does not have")
    out: dict[str, Any] = {}
    for s in spec.settings:
        if s.optional and s.type in ("int", "float", "floats"):
            out[use_name(s)] = BoolProperty(name=f"Set {s.title}", default=s.default is not None,
                                            description=f"Set {s.title} yourself (unticked: {s.description})")
        out[s.name] = setting_property(s, items.get(s.name))
    out[SHOW_ADVANCED] = BoolProperty(name="Advanced", default=False, description="Show the advanced settings")
    return out


def property_group(spec: JobSpec, name: str, extra: Mapping[str, Any] | None = None,
                   items: Mapping[str, EnumItems] | None = None) -> type:
    """A new ``bpy.types.PropertyGroup`` subclass ``name`` holding ``spec``'s settings and the add-on-only
    ``extra`` annotations (register it yourself; build it again after the spec changed)."""
    props = annotations(spec, items)
    clash = sorted(set(props) & set(extra or {}))
    if clash:
        raise ValueError(f"add-on settings {clash} clash with job kind {spec.kind!r}'s settings")
    props.update(extra or {})
    return type(name, (bpy.types.PropertyGroup,), {"__annotations__": props, "__doc__": spec.description,
                                                   "spec_kind": spec.kind})


def value(group: Any, setting: Setting) -> Any:
    """The group's value of ``setting`` as a plain msgpack value (``None``: left to the job)."""
    s = setting
    if s.optional and s.type in ("int", "float", "floats") and not getattr(group, use_name(s)):
        return None
    v = getattr(group, s.name)
    if s.type == "bool":
        return bool(v)
    if s.type == "int":
        return int(v)
    if s.type == "float":
        return float(v)
    if s.type == "floats":
        return [float(x) for x in v]
    v = str(v)
    if s.optional and not v.strip():
        return None
    if not s.choices and v.startswith("//"):
        v = bpy.path.abspath(v)          # Blender's "relative to the .blend file" (a path, a model folder)
    return v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        # Blender stores floats as float32: a default of 0.1 reads back as 0.10000000149
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def params(group: Any, spec: JobSpec, changed_only: bool = True, validate: bool = True) -> dict[str, Any]:
    """The ``submit`` params from ``group``: the settings that differ from ``spec``'s defaults (all
    of them with ``changed_only=False``), checked with ``spec.validate_params`` unless ``validate`` is
    False (raises ``JobError("bad_params")`` naming the setting and its range)."""
    out: dict[str, Any] = {}
    for s in spec.settings:
        v = value(group, s)
        if not changed_only or not _same(v, s.default):
            out[s.name] = v
    if validate:
        spec.validate_params(out)
    return out


def set_values(group: Any, spec: JobSpec, values: Mapping[str, Any]) -> None:
    """Put ``values`` (setting name -> plain value, e.g. a result's settings meta) into ``group``."""
    for name, v in values.items():
        s = spec.setting(name)
        if s.optional and s.type in ("int", "float", "floats"):
            setattr(group, use_name(s), v is not None)
            if v is None:
                continue
        setattr(group, name, "" if v is None else v)


def draw_setting(layout: Any, group: Any, setting: Setting, **kwargs: Any) -> None:
    """One setting's row (an optional number: its checkbox, then the value, greyed while unticked)."""
    if setting.optional and setting.type in ("int", "float", "floats"):
        row = layout.row(align=True)
        row.prop(group, use_name(setting), text="")
        sub = row.row(align=True)
        sub.active = bool(getattr(group, use_name(setting)))
        sub.prop(group, setting.name, **kwargs)
        return
    layout.prop(group, setting.name, **kwargs)


def draw(layout: Any, group: Any, spec: JobSpec, skip: Iterable[str] = (),
         custom: Mapping[str, Callable[[Any], None]] | None = None) -> None:
    """The basic settings of ``spec`` (in spec order), then the advanced ones in a collapsed section.

    ``skip`` leaves settings out (the panel drew them itself, e.g. a prompt field without a label);
    ``custom[name](layout)`` draws one setting its own way."""
    skip, custom = set(skip), dict(custom or {})

    def rows(col: Any, advanced: bool) -> None:
        for s in spec.settings:
            if s.advanced == advanced and s.name not in skip:
                if s.name in custom:
                    custom[s.name](col)
                else:
                    draw_setting(col, group, s)

    rows(layout.column(align=True), False)
    if any(s.advanced and s.name not in skip for s in spec.settings):
        shown = bool(getattr(group, SHOW_ADVANCED))
        layout.prop(group, SHOW_ADVANCED, icon="TRIA_DOWN" if shown else "TRIA_RIGHT", emboss=False)
        if shown:
            rows(layout.box().column(align=True), True)


__all__ = ["SHOW_ADVANCED", "annotations", "description", "draw", "draw_setting", "params", "property_group",
           "set_values", "setting_property", "use_name", "value"]
