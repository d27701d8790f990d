"""The add-on's job kinds come from their specs (headless bpy): every setting of train, generate and
edit is a property with the spec's default and range, and the panels show by default what they showed
before the specs (the rest sits in a collapsed "Advanced" section)."""
from __future__ import annotations

import types

import pytest

from helpers import RecordingLayout, registered_addon

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

MODULES = ("splat_object", "connection", "rig", "ops_train", "ops_generate", "ops_edit", "ui_panel")


@pytest.fixture
def addon(addon_dir, bpy_empty):
    with registered_addon(MODULES) as mods:
        yield mods


@pytest.mark.parametrize("module, kind", [("ops_train", "train"), ("ops_generate", "generate"), ("ops_edit", "edit")])
def test_every_setting_is_a_property_at_the_spec_default(addon, bpy_empty, module, kind):
    bpy = bpy_empty
    sp = addon["ops_train"].job_kinds.spec_props
    ui = addon[module].UI
    spec = ui.spec()
    group = getattr(bpy.context.scene, f"splatbridge_{kind}")
    rna = group.bl_rna.properties
    for s in spec.settings:
        assert s.name in rna, s.name
        assert rna[s.name].description.startswith(s.description.rstrip(".")), s.name
        if s.type == "int":
            assert (rna[s.name].hard_min, rna[s.name].hard_max) == (s.min, s.max), s.name
    # a fresh scene holds exactly the spec's defaults: nothing to send
    assert sp.params(group, spec, validate=False) == {}


def _generate_panel(addon, bpy):
    layout = RecordingLayout()
    jk = addon["ops_generate"].job_kinds
    jk.draw_panel(layout, bpy.context, addon["ops_generate"].UI)
    return layout


def test_generate_and_edit_panels_show_what_they_showed(addon, bpy_empty):
    bpy = bpy_empty
    layout = _generate_panel(addon, bpy)
    assert layout.props() == ["prompt", "negative_prompt", "init", "seed", "steps", "guidance_scale", "show_advanced"]
    assert ("main", "operator", "splatbridge.generate") in layout.log
    s = bpy.context.scene.splatbridge_generate
    s.init, s.show_advanced = "mesh", True
    layout = _generate_panel(addon, bpy)
    assert layout.props("main")[:4] == ["prompt", "negative_prompt", "init", "mesh_samples"]
    assert {"resolution", "batch_size", "num_points", "sh_degree", "preview_every", "low_memory",
            "guidance_model", "prior_model", "lr_means"} <= set(layout.props("box"))

    layout = RecordingLayout()
    addon["ops_edit"].job_kinds.draw_panel(layout, bpy.context, addon["ops_edit"].UI)
    assert layout.props() == ["prompt", "only_selected", "seed", "steps", "text_guidance", "image_guidance",
                              "show_advanced"]
    assert ("main", "label", "Select a splat object to edit") in layout.log


def test_train_panel_shows_what_it_showed(addon, bpy_empty):
    bpy = bpy_empty
    panel = types.SimpleNamespace(layout=RecordingLayout())
    addon["ui_panel"].SPLATBRIDGE_PT_train.draw(panel, bpy.context)
    assert panel.layout.props() == [
        "engine", "samples", "num_points", "standard_view", "object_index",              # capture (add-on's own)
        "use_steps", "steps", "strategy", "sh_degree", "max_gaussians", "holdout_every", "seed", "preview_every",
        "show_advanced", "output_name", "dataset_path"]
    bpy.context.scene.splatbridge_train.show_advanced = True
    panel = types.SimpleNamespace(layout=RecordingLayout())
    addon["ui_panel"].SPLATBRIDGE_PT_train.draw(panel, bpy.context)
    advanced = panel.layout.props("box")
    assert {"init_opacity", "use_init_opacity", "lr_means", "refine_every", "backend"} <= set(advanced)
    assert advanced.index("use_init_opacity") == advanced.index("init_opacity") - 1    # checkbox, then value


def test_train_params_are_what_changed_and_the_dataset_settings_stay_out_of_a_capture(addon, bpy_empty):
    bpy = bpy_empty
    jk, ops_train = addon["ops_train"].job_kinds, addon["ops_train"]
    s = bpy.context.scene.splatbridge_train
    s.use_steps, s.steps, s.holdout_every, s.use_init_opacity, s.init_opacity = True, 150, 0, True, 0.3
    s.dataset_path, s.downscale = "/data/set", 2
    sub = jk.Submission(bpy.context, ops_train.UI, s, jk.spec_props.params(s, ops_train.UI.spec(), validate=False),
                        source=ops_train.CaptureResult.__new__(ops_train.CaptureResult))
    ops_train._prepare(sub)
    assert sub.params == {"steps": 150, "holdout_every": 0, "init_opacity": pytest.approx(0.3)}
