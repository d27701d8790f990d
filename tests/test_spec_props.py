"""spec_props: Blender properties, params and panel rows derived from a JobSpec (headless bpy).

The spec here is a test spec with one setting of every type; the built-in kinds' groups are checked
in test_spec_drives_all.py."""
from __future__ import annotations

import importlib

import pytest

from helpers import RecordingLayout

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]


@pytest.fixture
def sp(addon_dir, bpy_empty):
    return importlib.import_module("splatbridge.spec_props")


@pytest.fixture
def js(addon_dir):
    return importlib.import_module("splatbridge.shared.jobspec")


def _spec(js):
    S = js.Setting
    return js.JobSpec("props_test", "Props Test", "settings of every type", (
        S("steps", 100, "Optimisation steps", min=1, max=1000, unit="steps"),
        S("lr", 0.01, "Learning rate", min=0, max=1, min_exclusive=True),
        S("count", 10, "Items", min=0, max=20, min_exclusive=True, max_exclusive=True),
        S("mode", "fast", "How", choices=("fast", "best-quality")),
        S("flag", False, "A switch"),
        S("name", "", "A text"),
        S("folder", "", "A dataset folder on the backend", server_path=True, advanced=True),
        S("elev", (-10.0, 30.0), "Elevation range", min=-90, max=90, unit="deg", advanced=True),
        S("scale", None, "Derived from steps when unset", type="float", optional=True, min=0, min_exclusive=True,
          advanced=True),
        S("radius", 2.0, "Orbit radius", min=0.1, unit="m", advanced=True),
        S("model", None, "Model id (empty: the default)", type="str", optional=True, advanced=True),
    ))


@pytest.fixture
def group(sp, js, bpy_empty):
    bpy = bpy_empty
    spec = _spec(js)
    cls = sp.property_group(spec, "PropsTestSettings",
                            extra={"output_name": bpy.props.StringProperty(name="Output")},
                            items={"mode": [("fast", "Fast", "quick"), ("best-quality", "Best", "slow")]})
    bpy.utils.register_class(cls)
    bpy.types.Scene.props_test = bpy.props.PointerProperty(type=cls)
    try:
        yield spec, bpy.context.scene.props_test
    finally:
        del bpy.types.Scene.props_test
        bpy.utils.unregister_class(cls)


def test_properties_follow_the_spec(group):
    spec, g = group
    rna = g.bl_rna.properties
    steps = rna["steps"]
    assert (steps.type, steps.default, steps.hard_min, steps.hard_max) == ("INT", 100, 1, 1000)
    assert steps.name == "Steps" and steps.description == "Optimisation steps (steps). Allowed: [1, 1000]"
    assert (rna["count"].hard_min, rna["count"].hard_max) == (1, 19)          # (0, 20) exclusive, whole numbers
    assert rna["lr"].type == "FLOAT" and rna["lr"].hard_max == 1.0 and rna["lr"].default == pytest.approx(0.01)
    assert [i.identifier for i in rna["mode"].enum_items] == ["fast", "best-quality"]
    assert rna["mode"].enum_items["best-quality"].name == "Best" and rna["mode"].default == "fast"
    assert rna["flag"].type == "BOOLEAN" and rna["name"].type == "STRING"
    assert rna["folder"].subtype == "DIR_PATH"
    assert rna["elev"].array_length == 2 and tuple(rna["elev"].default_array) == (-10.0, 30.0)
    assert (rna["elev"].hard_min, rna["elev"].hard_max) == (-90.0, 90.0)
    assert rna["radius"].unit == "LENGTH"
    assert rna["use_scale"].type == "BOOLEAN" and rna["use_scale"].default is False
    assert rna["output_name"].name == "Output"                                 # the add-on-only extra
    # Blender clamps a value outside the spec's range, as the backend would refuse it
    g.steps = 5000
    assert g.steps == 1000


def test_params_are_the_changed_settings_checked_by_the_spec(group, js):
    spec, g = group
    sp = importlib.import_module("splatbridge.spec_props")
    assert sp.params(g, spec) == {}                                            # all defaults: nothing sent
    assert sp.params(g, spec, changed_only=False) == {
        "steps": 100, "lr": pytest.approx(0.01), "count": 10, "mode": "fast", "flag": False, "name": "",
        "folder": "", "elev": [-10.0, 30.0], "scale": None, "radius": 2.0, "model": None}
    g.steps, g.mode, g.flag, g.elev = 7, "best-quality", True, (0.0, 45.0)
    g.use_scale, g.scale = True, 0.5
    g.model = "  "                                                             # blank optional text: None
    assert sp.params(g, spec) == {"steps": 7, "mode": "best-quality", "flag": True, "elev": [0.0, 45.0],
                                  "scale": 0.5}
    g.scale = 0.0                                                              # the spec's (0, inf) refuses 0
    with pytest.raises(js.JobError, match=r"props_test setting scale=0.0: out of range: allowed \(0, inf\)"):
        sp.params(g, spec)
    g.use_scale = False
    assert "scale" not in sp.params(g, spec)


def test_setting_an_optional_number_ticks_its_use_box(group):
    """A value typed (or assigned by a script) for an optional number is meant: it is sent, not derived."""
    spec, g = group
    sp = importlib.import_module("splatbridge.spec_props")
    assert g.use_scale is False and "scale" not in sp.params(g, spec)
    g.scale = 0.75
    assert g.use_scale is True and sp.params(g, spec)["scale"] == pytest.approx(0.75)
    g.use_scale = False                                                        # unticking still derives it
    assert "scale" not in sp.params(g, spec)


def test_set_values_round_trip(group):
    spec, g = group
    sp = importlib.import_module("splatbridge.spec_props")
    values = {"steps": 33, "lr": 0.25, "mode": "best-quality", "elev": [5.0, 6.0], "scale": 1.5, "model": "m"}
    sp.set_values(g, spec, values)
    assert sp.params(g, spec) == values


def test_enum_items_must_match_the_choices(sp, js):
    with pytest.raises(ValueError, match=r"add-on's items \['fast', 'slow'\] are not the spec's choices"):
        sp.property_group(_spec(js), "Bad", items={"mode": [("fast", "F", ""), ("slow", "S", "")]})
    with pytest.raises(ValueError, match="clash with job kind 'props_test'"):
        sp.property_group(_spec(js), "Bad", extra={"steps": None})


def test_draw_shows_basic_settings_and_a_collapsed_advanced_section(group):
    spec, g = group
    sp = importlib.import_module("splatbridge.spec_props")
    layout = RecordingLayout()
    sp.draw(layout, g, spec, skip=("name",))
    assert layout.props() == ["steps", "lr", "count", "mode", "flag", "show_advanced"]
    g.show_advanced = True
    layout = RecordingLayout()
    sp.draw(layout, g, spec, skip=("name",))
    assert layout.props("main") == ["steps", "lr", "count", "mode", "flag", "show_advanced"]
    assert layout.props("box") == ["folder", "elev", "use_scale", "scale", "radius", "model"]
