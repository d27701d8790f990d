"""The ``echo`` job kind's add-on module: what Blender adds beyond the spec, written as any kind's add-on
module is (docs/ADDING_A_JOB_KIND.md). Everything else (the settings group ``scene.splatbridge_echo``,
the operator ``splatbridge.job_echo``, its cancel operator, the sidebar panel with an Advanced section,
previews and the result as a splat object) comes from the spec through ``job_kinds``.

Here the kind sends the active mesh's vertices (world space) as ``points`` and keeps the echoed message
on the result object (``sb_echo_message``). Needs the assembled add-on (``splatbridge``) importable.
"""
from __future__ import annotations

import numpy as np

from splatbridge import job_kinds, job_objects
from splatbridge.shared import jobspec as addon_jobspec

from jobkinds_echo.spec import register_in

SPEC = register_in(addon_jobspec)      # the spec in the add-on's own copy of shared, as inside Blender


def _payload(sub: job_kinds.Submission) -> dict:
    obj = sub.source if sub.source is not None else getattr(sub.context, "active_object", None)
    if obj is None or obj.type != "MESH" or len(obj.data.vertices) == 0:
        return {}                       # the job's own default points
    local = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", local)
    m = np.array(obj.matrix_world, np.float64)
    points = local.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    return {"points": points.astype(np.float32)}


def _finished(context, rec, job) -> None:
    obj = job_objects.apply_result(context, rec, job)
    if obj is not None:
        obj["sb_echo_message"] = str((job.meta or {}).get("message", ""))


UI = job_kinds.KindUI("echo", payload=_payload, on_finished=_finished, icon="RECOVER_LAST")

register, unregister = job_kinds.kind_registration(UI)
