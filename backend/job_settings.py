"""Job settings as dataclasses: the one place that turns a job's ``params`` map (plain msgpack values)
into a validated settings object, and back into plain values for a result's ``meta``.

A settings class is a dataclass whose fields all have defaults; the type of each default says what a
param may be: ``bool`` (true/false only), ``int`` (a whole number, also given as 3.0), ``float`` (a
finite number), ``str`` (``None`` means the default), ``tuple`` of floats (the same count of finite
numbers, e.g. an elevation range). The class's own ``validate()`` then checks ranges and relations.
"""
from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, TypeVar

from backend.job_api import JobError

T = TypeVar("T")


def _coerce(default: Any, value: Any) -> Any:
    if isinstance(default, tuple):
        vals = tuple(float(v) for v in value)
        if len(vals) != len(default) or not all(math.isfinite(v) for v in vals):
            raise ValueError(f"expected {len(default)} finite numbers")
        return vals
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or int(value) != value:
            raise TypeError("expected a whole number")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise TypeError("expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value
    if isinstance(default, str):
        if value is None:
            return default
        if not isinstance(value, str):
            raise TypeError("expected a string")
    return value


def settings_from_params(cls: type[T], params: Any, job_kind: str) -> T:
    """``cls`` filled from ``params`` and validated; raises ``JobError("bad_params")`` naming the first
    unknown or bad field (``"unknown <job_kind> parameter 'x'; known: [...]"``, ``"<job_kind> parameter
    x=...: expected a whole number"``) or what ``cls.validate()`` refuses."""
    if not isinstance(params, dict):
        raise JobError("bad_params", "params must be a map")
    known = {f.name for f in fields(cls)}
    out = cls()
    for key, value in params.items():
        if key not in known:
            raise JobError("bad_params", f"unknown {job_kind} parameter {key!r}; known: {sorted(known)}")
        try:
            value = _coerce(getattr(out, key), value)
        except (TypeError, ValueError, OverflowError) as exc:    # OverflowError: int(inf)
            raise JobError("bad_params", f"{job_kind} parameter {key}={value!r}: {exc}") from None
        setattr(out, key, value)
    out.validate()
    return out


def settings_to_meta(settings: Any) -> dict[str, Any]:
    """All settings as plain values (msgpack/JSON-ready: tuples as lists), enough to reproduce a run."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}


def check_ranges(settings: Any, specs: Any) -> None:
    """``JobError("bad_params", "name=v is out of range [lo, hi]")`` for the first field outside its
    range; ``specs``: (name, lo, hi) triples, bounds inclusive."""
    for name, lo, hi in specs:
        if not lo <= getattr(settings, name) <= hi:
            raise JobError("bad_params", f"{name}={getattr(settings, name)} is out of range [{lo}, {hi}]")


def check_non_negative(settings: Any, names: Any) -> None:
    """``JobError("bad_params", "name=v must be >= 0")`` for the first negative field of ``names``."""
    for name in names:
        if getattr(settings, name) < 0:
            raise JobError("bad_params", f"{name}={getattr(settings, name)} must be >= 0")


class JobSettings:
    """Base of a job's settings dataclass: ``from_params`` (validated, ``JobError("bad_params")``) and
    ``to_meta``; a subclass sets ``JOB_KIND`` (named in errors) and defines ``validate()``."""

    JOB_KIND = "job"

    @classmethod
    def from_params(cls: type[T], params: Any) -> T:
        """Validate the job's params; raises ``JobError("bad_params")`` naming the first bad field."""
        return settings_from_params(cls, params, cls.JOB_KIND)

    def to_meta(self) -> dict[str, Any]:
        """All settings as plain values (msgpack/JSON-ready), enough to reproduce the run."""
        return settings_to_meta(self)

    def validate(self) -> None:
        """Ranges and relations of the fields; raises ``JobError("bad_params")``."""
