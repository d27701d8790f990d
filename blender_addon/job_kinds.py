"""A job kind in the add-on: its spec (``shared/jobkinds/<kind>.py``) plus an optional ``KindUI``.

``kind_registration(KindUI(kind, ...))`` gives the ``(register, unregister)`` pair of the kind's add-on
module. ``register`` builds, from the spec registered at that moment:

* ``Scene.splatbridge_<kind>``: the settings ``PropertyGroup`` (``spec_props``: one property per setting,
  plus the kind's add-on-only ``extra`` properties);
* the operator ``splatbridge.job_<kind>`` (or ``KindUI.operator_idname``): a ``job_objects.SubmitJobModal``
  whose submit is ``submit(context, ui)``: params from the settings, the payload from ``KindUI.payload``,
  the job tracked in the scene;
* a cancel operator, a sidebar panel (settings, Advanced section, the operator, the kind's running
  jobs) unless ``KindUI.panel`` is False, and the kind's ``connection`` job handlers (default: live
  previews and the result into a splat object, ``job_objects.apply_preview``/``apply_result``).

A kind needs no add-on module at all for that default: ``kind_registration(KindUI("mykind"))``.

Per-job state of a kind (what it must remember between submit and result, across a restart of
Blender) lives in the kind's own scene property ``splatbridge_<kind>_jobs`` (``job_data``,
``set_job_data``, ``pop_job_data``), not in the shared job record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import bpy
from bpy.props import PointerProperty, StringProperty

from . import connection, job_objects, spec_props
from .shared.jobkinds import load_builtin
from .shared.jobspec import JobSpec, Settings, get_spec

CATEGORY = "SplatBridge"

load_builtin()      # the built-in kinds' specs (shared/jobkinds); other kinds register their own

@dataclass
class Submission:
    """One submit in the making, handed to a kind's hooks: ``group`` (its settings in Blender), ``params``
    (what is sent: the settings that differ from the defaults), ``settings`` (every setting, checked by the
    spec; set after ``prepare``), ``source`` (what the job is about, e.g. the object to edit; None: the
    hooks find it, e.g. the active object)."""

    context: Any
    ui: "KindUI"
    group: Any
    params: dict
    source: Any = None
    settings: Settings | None = None


# (submission) -> None: the add-on's own checks before the spec's (raise with a message the user can act on)
PrepareFn = Callable[[Submission], None]
# (submission) -> payload map; may raise with a message the user can act on
PayloadFn = Callable[[Submission], dict]
# (submission) -> base name of the result object
TargetFn = Callable[[Submission], str]
# (submission, result object name) -> the record's label ("Edit Statue")
LabelFn = Callable[[Submission, str], str]
# (submission, record) -> None: keep what the result needs (``set_job_data``)
SubmittedFn = Callable[[Submission, Any], None]
# (context, record, job)
HandlerFn = Callable[[Any, Any, Any], None]


@dataclass
class KindUI:
    """What a job kind adds in Blender beyond its spec; every field is optional."""

    kind: str
    label: str = ""                          # panel label, job label prefix (default: the spec's title)
    operator_label: str = ""                 # the operator's button (default: the label)
    operator_idname: str = ""                # default "splatbridge.job_<kind>"
    description: str = ""                    # operator tooltip (default: the spec's description)
    icon: str = "PLAY"
    extra: Mapping[str, Any] = field(default_factory=dict)    # add-on-only properties of the settings group
    items: Mapping[str, Any] = field(default_factory=dict)    # names/tooltips of a choice setting's values
    prepare: PrepareFn | None = None
    payload: PayloadFn | None = None         # default: no payload
    target: TargetFn | None = None           # default: the label
    record_label: LabelFn | None = None      # default: "<label> <result object>" (or the object's name)
    submitted: SubmittedFn | None = None
    on_update: HandlerFn | None = None       # default: live preview into the target object
    on_finished: HandlerFn | None = None     # default: the result into the target object
    poll: Callable[[Any], bool] | None = None
    operator: bool = True                    # the generic submit and cancel operators
    panel: bool = True                       # a sidebar panel drawn from the spec (needs ``operator``)
    panel_order: int = 10
    draw_top: Callable[[Any, Any, Any], None] | None = None   # (layout, context, group) above the settings
    drawn: tuple[str, ...] = ()              # settings draw_top (or another panel) already draws
    classes: tuple[type, ...] = ()           # the kind's own extra classes, registered after the group

    @property
    def settings_name(self) -> str:
        return f"splatbridge_{self.kind}"

    @property
    def idname(self) -> str:
        return self.operator_idname or f"splatbridge.job_{self.kind}"

    @property
    def cancel_idname(self) -> str:
        return f"splatbridge.cancel_{self.kind}"

    def spec(self) -> JobSpec:
        """The kind's spec as registered now."""
        return get_spec(self.kind)

    def title(self) -> str:
        return self.label or self.spec().title


def settings(context: Any, ui: KindUI) -> Any:
    """The kind's settings group in the scene."""
    return getattr(context.scene, ui.settings_name)


def submit(context: Any, ui: KindUI, group: Any = None, params: Mapping[str, Any] | None = None,
           name: str = "", source: Any = None) -> Any:
    """Submit a job of ``ui.kind`` from ``group`` (default: the scene's settings); returns its record in
    ``scene.splatbridge_jobs``. ``params`` overrides single settings; ``source`` is what the job is about
    (handed to the hooks). The kind's ``prepare`` runs first, then the spec checks the params (a
    ``JobError`` naming the setting and its range) before anything is sent."""
    spec = ui.spec()
    group = group if group is not None else settings(context, ui)
    p = spec_props.params(group, spec, validate=False)
    p.update(params or {})
    sub = Submission(context, ui, group, p, source)
    if ui.prepare is not None:
        ui.prepare(sub)
    sub.settings = spec.validate_params(sub.params)
    payload = ui.payload(sub) if ui.payload is not None else {}
    client = connection.get_client(context)
    target = job_objects.unique_object_name(name or (ui.target(sub) if ui.target is not None else ui.title()))
    job_id = client.submit(ui.kind, sub.params, payload)
    if ui.record_label is not None:
        label = ui.record_label(sub, target)
    else:       # "Generate a teapot"; a result object named after the kind is label enough ("Echo.001")
        label = target if target.startswith(ui.title()) else f"{ui.title()} {target}"
    rec = connection.track_job(context.scene, job_id, ui.kind, target, label=label)
    if ui.submitted is not None:
        ui.submitted(sub, rec)
    return rec


# --------------------------------------------------------------------------- per-job state of a kind

def _jobs_prop(kind: str) -> str:
    return f"splatbridge_{kind}_jobs"


def job_data(scene: Any, kind: str, job_id: str) -> dict | None:
    """What a kind kept for one of its jobs at submit (plain values; saved with the .blend), or None."""
    data = (scene.get(_jobs_prop(kind)) or {}).get(job_id)
    return None if data is None else data.to_dict() if hasattr(data, "to_dict") else dict(data)


def set_job_data(scene: Any, kind: str, job_id: str, data: Mapping[str, Any]) -> None:
    jobs = dict(scene.get(_jobs_prop(kind)) or {})
    jobs[job_id] = dict(data)
    scene[_jobs_prop(kind)] = jobs


def pop_job_data(scene: Any, kind: str, job_id: str) -> None:
    """Forget a job's state once its result is applied."""
    if _jobs_prop(kind) in scene:
        jobs = dict(scene[_jobs_prop(kind)])
        jobs.pop(job_id, None)
        scene[_jobs_prop(kind)] = jobs


# --------------------------------------------------------------------------- classes from a spec

def _default_update(context: Any, rec: Any, job: Any) -> None:
    job_objects.apply_preview(context, rec, job)


def _default_finished(context: Any, rec: Any, job: Any) -> None:
    job_objects.apply_result(context, rec, job)


def _class_name(ui: KindUI, suffix: str) -> str:
    return f"SPLATBRIDGE_{suffix}_{ui.kind}"


def make_settings_group(ui: KindUI) -> type:
    return spec_props.property_group(ui.spec(), f"SplatBridge{ui.kind.title().replace('_', '')}Settings",
                                     ui.extra, ui.items)


def make_operator(ui: KindUI) -> type:
    """The kind's submit operator: ``execute`` submits (headless), ``invoke`` follows the job."""
    spec = ui.spec()

    def _submit_job(self, context):
        return submit(context, ui)

    def poll(cls, context):
        if ui.poll is not None:
            return ui.poll(context)
        return True

    return type(_class_name(ui, "OT"), (job_objects.SubmitJobModal, bpy.types.Operator), {
        "__doc__": ui.description or spec.description, "bl_idname": ui.idname, "bl_label": ui.operator_label or ui.title(),
        "job_label": ui.title(), "_submit_job": _submit_job, "poll": classmethod(poll)})


def make_cancel_operator(ui: KindUI) -> type:
    return type(_class_name(ui, "OT_cancel"), (job_objects.CancelJob, bpy.types.Operator), {
        "__doc__": f"Stop a {ui.title()} job; its partial result is kept", "bl_idname": ui.cancel_idname,
        "bl_label": f"Cancel {ui.title()}", "__annotations__": {"job_id": StringProperty()}})


def draw_panel(layout: Any, context: Any, ui: KindUI) -> None:
    """The kind's panel body: ``draw_top``, the spec's settings (Advanced collapsed), the operator and
    the kind's running jobs."""
    group = settings(context, ui)
    if ui.draw_top is not None:
        ui.draw_top(layout, context, group)
    spec_props.draw(layout, group, ui.spec(), skip=ui.drawn)
    layout.operator(ui.idname, icon=ui.icon)
    job_objects.draw_job_rows(layout, context.scene, ui.kind, ui.cancel_idname)


def make_panel(ui: KindUI) -> type:
    def draw(self, context):
        draw_panel(self.layout, context, ui)

    return type(_class_name(ui, "PT"), (bpy.types.Panel,), {
        "bl_idname": _class_name(ui, "PT"), "bl_label": ui.title(), "bl_space_type": "VIEW_3D",
        "bl_region_type": "UI", "bl_category": CATEGORY, "bl_order": ui.panel_order, "draw": draw})


def kind_registration(ui: KindUI) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(register, unregister)`` for the add-on module of ``ui.kind``. ``register`` builds the settings
    group, operators and panel from the spec registered at that moment (so registering again after the
    spec changed picks the change up)."""
    registered: list[type] = []

    def register() -> None:
        group = make_settings_group(ui)
        classes = [group, *ui.classes]
        if ui.operator:
            classes += [make_operator(ui), make_cancel_operator(ui)]
            if ui.panel:
                classes.append(make_panel(ui))
        for cls in classes:
            bpy.utils.register_class(cls)
            registered.append(cls)
        setattr(bpy.types.Scene, ui.settings_name, PointerProperty(type=group))
        connection.register_job_handler(ui.kind, ui.on_update or _default_update,
                                        ui.on_finished or _default_finished)

    def unregister() -> None:
        connection.unregister_job_handler(ui.kind)
        if hasattr(bpy.types.Scene, ui.settings_name):
            delattr(bpy.types.Scene, ui.settings_name)
        while registered:
            bpy.utils.unregister_class(registered.pop())

    return register, unregister


__all__ = ["KindUI", "Submission", "job_data", "kind_registration", "make_operator", "make_panel", "make_settings_group",
           "pop_job_data", "set_job_data", "settings", "submit"]
