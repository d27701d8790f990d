"""One spec drives the add-on, the CLI and the backend's validation: change a setting's range in the
``generate`` spec (``dataclasses.replace`` of the Setting, registered again) and the Blender property's
min/max and default, the CLI's ``--help`` and its refusal, and ``validate()`` all follow, with no other
edit.

Two copies of ``shared`` live in this process: the repo's (backend, CLI) and the assembled add-on's
(``splatbridge.shared``, a copy of the same files, as in Blender). The changed spec is registered in
both, as a changed ``shared/jobkinds/generate.py`` would be in both."""
from __future__ import annotations

import dataclasses
import importlib

import pytest

from helpers import registered_addon

pytestmark = pytest.mark.blender


def _replaced(jobspec, spec, name: str, **changes):
    setting = dataclasses.replace(spec.setting(name), **changes)
    return dataclasses.replace(spec, settings=tuple(setting if s.name == name else s for s in spec.settings))


@pytest.fixture
def changed_steps(addon_dir, bpy_empty):
    """The generate spec with steps limited to [10, 50] (default 20) in both copies of shared; the original
    specs come back afterwards."""
    import shared.jobspec as repo_js
    from shared.jobkinds import load_builtin
    addon_js = importlib.import_module("splatbridge.shared.jobspec")
    importlib.import_module("splatbridge.shared.jobkinds").load_builtin()
    load_builtin()
    originals = [(js, js.get_spec("generate")) for js in (repo_js, addon_js)]

    def restore():
        for js, spec in originals:
            js.register(spec, replace=True)

    for js, spec in originals:
        js.register(_replaced(js, spec, "steps", min=10, max=50, default=20), replace=True)
    try:
        yield repo_js.get_spec("generate"), restore
    finally:
        restore()


def test_a_changed_range_reaches_property_cli_and_validation(changed_steps, bpy_empty, tmp_path, capsys):
    bpy = bpy_empty
    changed_steps, restore = changed_steps
    with registered_addon(("splat_object", "connection", "ops_generate")):
        prop = bpy.context.scene.splatbridge_generate.bl_rna.properties["steps"]
        assert (prop.hard_min, prop.hard_max, prop.default) == (10, 50, 20)
        assert prop.description.endswith("Allowed: [10, 50]")
        s = bpy.context.scene.splatbridge_generate
        s.steps = 500
        assert s.steps == 50                              # Blender clamps to the spec's new max
    # the command line: --help from the spec, and the CLI refuses 51 before any model is loaded
    from backend import job_cli
    help_text = job_cli.build_parser(changed_steps, job_cli.kind_cli_of(changed_steps)).format_help()
    block = help_text[help_text.index("\n  --steps "):]
    steps_help = " ".join(block[:block.index("\n  --", 1)].split())
    assert "range [10, 50]; unit steps; default 20" in steps_help, steps_help
    assert job_cli.main("generate", ["a teapot", "--out", str(tmp_path / "t.ply"), "--steps", "51"]) == 2
    assert "generate setting steps=51: out of range: allowed [10, 50]" in capsys.readouterr().err
    assert not (tmp_path / "t.ply").exists()
    # the backend's validation (what the server runs at submit)
    from shared.jobspec import JobError
    with pytest.raises(JobError, match=r"generate setting steps=51: out of range: allowed \[10, 50\]"):
        changed_steps.validate({"prompt": "a teapot", "steps": 51})
    assert changed_steps.validate({"prompt": "a teapot"}).steps == 20
    restore()             # and back: the add-on registered again has the original range
    with registered_addon(("splat_object", "connection", "ops_generate")):
        prop = bpy.context.scene.splatbridge_generate.bl_rna.properties["steps"]
        assert (prop.hard_min, prop.hard_max, prop.default) == (1, 100_000, 1200)
