"""The ``echo`` job kind's spec: moves points along +X, one step at a time (a test-only kind).

``register_in(jobspec)`` builds and registers the spec with a given ``jobspec`` module (the add-on
has its own copy of ``shared``); importing this module registers it with ``shared.jobspec``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

import shared.jobspec


def register_in(jobspec: ModuleType) -> Any:
    """Build the echo ``JobSpec`` from ``jobspec``'s classes and register it there (returns it)."""
    Setting, PayloadItem = jobspec.Setting, jobspec.PayloadItem

    def check(s: Any) -> None:
        if s.mode == "shift" and s.shift == 0.0:
            raise jobspec.JobError("bad_params", "echo setting mode 'shift' needs a shift other than 0")

    def check_payload(s: Any, payload: Mapping[str, Any]) -> None:
        if payload.get("colors") is not None and payload.get("points") is None:
            raise jobspec.JobError("bad_input", "echo payload 'colors' given without 'points'")

    return jobspec.register(jobspec.JobSpec(
        "echo", "Echo", "Test kind: moves the points along +X by `shift` per step and echoes the message",
        (Setting("message", "hello", "Text returned in the result's meta"),
         Setting("steps", 5, "Steps to run", min=1, max=10_000, unit="steps"),
         Setting("dt", 0.01, "Seconds each step sleeps", min=0.0, max=10.0, unit="s"),
         Setting("mode", "shift", "'shift' moves the points, 'copy' returns them as they are",
                 choices=("shift", "copy")),
         Setting("shift", 0.1, "Distance moved per step", min=-10.0, max=10.0, unit="m", advanced=True),
         Setting("preview_every", 1, "Steps between previews (0: about one per second)", min=0, max=10_000,
                 unit="steps", advanced=True)),
        (PayloadItem("points", "points to move, world space", dtypes=("float32",), shape=("P", 3)),
         PayloadItem("colors", "their colours", dtypes=("uint8",), shape=("P", 3))),
        runner="jobkinds_echo.backend:run_echo_job", check=check, check_payload=check_payload), replace=True)


SPEC = register_in(shared.jobspec)
