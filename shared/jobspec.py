"""Job kinds declared once: one ``JobSpec`` per kind (its settings and its payload schema).

Everything else is derived from the specs: the server validates a ``submit`` with
``spec.validate(params, payload)`` before queueing it, the job function receives the checked
``Settings``, ``python -m backend <kind> --help`` lists the settings, and the Blender add-on builds
its properties (min/max, defaults, descriptions) and its panels' "advanced" sections from them.

A spec module lives in ``shared/jobkinds/<kind>.py`` and registers itself with ``register``;
``shared.jobkinds.load_builtin()`` imports every module of that package, so adding a kind adds
files and edits none.

Pure Python (no numpy needed for the settings; payload arrays are checked by duck typing on
``dtype`` and ``shape`` so that the module runs inside Blender without importing the backend).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SETTING_TYPES = ("int", "float", "bool", "str", "floats")


class JobError(Exception):
    """An error a user can act on, with a stable short ``code`` for ``error`` replies
    (``bad_params``, ``bad_input``, ``unknown_job_kind``, ...). The one error class of jobs: the
    backend's job functions, the runner and the store raise it too."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _type_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, tuple):
        return "floats"
    raise TypeError(f"cannot infer a setting type from default {default!r}")


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Setting:
    """One setting of a job kind.

    ``type`` is one of ``SETTING_TYPES`` (inferred from ``default`` when left empty; ``floats`` is a
    fixed-length tuple of floats, e.g. an elevation range). ``min``/``max`` bound numbers (and each
    element of ``floats``), inclusive unless ``min_exclusive``/``max_exclusive``. ``choices`` limits
    a ``str``. ``optional`` admits ``None`` ("derived from other settings"; the description says
    how). ``advanced`` settings sit in a collapsed section of the Blender panel and are marked in
    the CLI's help. ``unit`` is for people ("px", "steps", "m", "s"). ``server_path`` marks a path
    on the backend's disk, which the server checks against the roots the operator allows
    (``backend.access``); ``path_or_id="hub"``: such a value may instead be a Hugging Face model id
    ``org/name``. ``job_ref`` marks the id of an earlier job, which the server accepts only from the
    client that owns that job.
    """

    name: str
    default: Any
    description: str
    type: str = ""
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple[str, ...] = ()
    unit: str = ""
    advanced: bool = False
    optional: bool = False
    label: str = ""
    server_path: bool = False
    path_or_id: str = ""
    job_ref: bool = False

    def __post_init__(self) -> None:
        if not self.type:
            if self.default is None:
                raise TypeError(f"setting {self.name}: a None default needs an explicit type")
            object.__setattr__(self, "type", _type_of(self.default))
        if self.type not in SETTING_TYPES:
            raise TypeError(f"setting {self.name}: type {self.type!r} is not one of {SETTING_TYPES}")
        if self.default is None and not self.optional:
            raise TypeError(f"setting {self.name}: default None needs optional=True")
        if self.path_or_id not in ("", "hub") or (self.path_or_id and not self.server_path):
            raise TypeError(f"setting {self.name}: path_or_id is '' or 'hub' (with server_path)")
        if self.default is not None:
            object.__setattr__(self, "default", self.coerce(self.default, "<spec>"))

    @property
    def title(self) -> str:
        """The label people see: ``label`` or the name in words ("Max Gaussians")."""
        return self.label or self.name.replace("_", " ").title().replace("Sh ", "SH ").replace("Lr ", "LR ")

    @property
    def length(self) -> int:
        """Element count of a ``floats`` setting (0 for the others)."""
        return len(self.default) if self.type == "floats" and self.default is not None else 0

    def range_text(self) -> str:
        """The allowed values in words: ``[1, 1000000]``, ``(0, 1)``, ``one of 'a', 'b'``, ..."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type in ("int", "float", "floats") and (self.min is not None or self.max is not None):
            lo = "-inf" if self.min is None else _fmt(self.min)
            hi = "inf" if self.max is None else _fmt(self.max)
            text = f"{'(' if self.min_exclusive or self.min is None else '['}{lo}, {hi}" \
                   f"{')' if self.max_exclusive or self.max is None else ']'}"
            if self.type == "floats":
                text = f"{self.length} numbers in {text}"
        elif self.type == "bool":
            text = "true or false"
        elif self.type == "floats":
            text = f"{self.length} finite numbers"
        elif self.type == "str":
            text = "text"
        else:
            text = "a finite number" if self.type == "float" else "a whole number"
        return text + (" or null" if self.optional else "")

    def _in_range(self, v: float) -> bool:
        if self.min is not None and (v < self.min or (self.min_exclusive and v == self.min)):
            return False
        if self.max is not None and (v > self.max or (self.max_exclusive and v == self.max)):
            return False
        return True

    def coerce(self, value: Any, kind: str) -> Any:
        """``value`` (a plain msgpack value) as this setting's type, range-checked; raises
        ``JobError("bad_params", "<kind> setting <name>=<value>: expected ...")``."""
        original = value

        def bad(why: str) -> JobError:
            shown = repr(original)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            return JobError("bad_params", f"{kind} setting {self.name}={shown}: {why}")

        if value is None:
            if self.optional:
                return None
            raise bad(f"expected {self.range_text()}")
        t = self.type
        if t == "bool":
            if not isinstance(value, bool):
                raise bad("expected true or false")
            return value
        if t == "str":
            if not isinstance(value, str):
                raise bad("expected text")
            if self.choices and value not in self.choices:
                raise bad(f"expected {self.range_text()}")
            return value
        if t == "floats":
            if not isinstance(value, (list, tuple)) or len(value) != self.length:
                raise bad(f"expected {self.length} numbers")
            out = []
            for v in value:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise bad(f"expected {self.range_text()}")
                if not self._in_range(float(v)):
                    raise bad(f"out of range: allowed {self.range_text()}")
                out.append(float(v))
            return tuple(out)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"expected {'a whole number' if t == 'int' else 'a number'}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad("not a finite number")
        if t == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad("expected a whole number")
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):     # a huge int as float overflows to inf
                raise bad("not a finite number")
        if not self._in_range(value):
            raise bad(f"out of range: allowed {self.range_text()}")
        return value


@dataclass(frozen=True)
class PayloadItem:
    """One entry of a job's ``payload`` map.

    ``kind`` ``"array"``: ``dtypes`` lists the numpy dtype names allowed (``"uint8"``, ``"float32"``);
    ``shape`` gives each dimension: an int (fixed), a tuple of ints (one of), or a name (``"C"``):
    every item using the same name must agree, and ``dims`` caps named dims. ``kind`` ``"splats"``:
    a splat map (``Splats.to_arrays()``), checked by the job. ``kind`` ``"value"``: a plain msgpack
    value (a short string or number), checked by the job.
    """

    name: str
    description: str
    kind: str = "array"
    dtypes: tuple[str, ...] = ()
    shape: tuple[Any, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class JobSpec:
    """A job kind: its name, its settings, its payload schema and the backend function that runs it.

    ``runner`` is ``"package.module:function"`` (imported by the backend on first use; the add-on
    never imports it). ``check`` (optional, pure) refuses combinations of settings that each pass
    alone, raising ``JobError("bad_params")``; ``check_payload`` (optional, pure) does the same for
    relations between settings and payload (e.g. "init 'mesh' needs points").
    """

    kind: str
    title: str
    description: str
    settings: tuple[Setting, ...]
    payload: tuple[PayloadItem, ...] = ()
    runner: str = ""
    check: Callable[[Settings], None] | None = None
    check_payload: Callable[[Settings, Mapping[str, Any]], None] | None = None
    payload_open: bool = False        # True: payload keys beyond ``payload`` are passed on unchecked
    params_open: bool = False         # True: params beyond ``settings`` are passed on unchecked (a plug-in
                                      # job function registered without declared settings)

    def __post_init__(self) -> None:
        names = [s.name for s in self.settings]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise TypeError(f"job kind {self.kind}: settings defined twice: {dupes}")

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"job kind {self.kind!r} has no setting {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)

    def defaults(self) -> Settings:
        """Every setting at its default (not passed through ``check``)."""
        return Settings(self.kind, {s.name: s.default for s in self.settings})

    def validate_params(self, params: Any) -> Settings:
        """``params`` (the ``submit`` map of plain msgpack values) as checked ``Settings``.

        Unknown names, wrong types and values out of range raise ``JobError("bad_params")`` naming
        the field and what it allows; absent names take their defaults.
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise JobError("bad_params", f"{self.kind} params must be a map, got {type(params).__name__}")
        known = self.names
        extra: dict[str, Any] = {}
        for key in params:
            if key not in known:
                if not self.params_open:
                    raise JobError("bad_params", f"unknown {self.kind} setting {key!r}; known: {sorted(known)}")
                extra[str(key)] = params[key]
        values = {s.name: (s.coerce(params[s.name], self.kind) if s.name in params else s.default)
                  for s in self.settings}
        values.update(extra)
        settings = Settings(self.kind, values)
        if self.check is not None:
            self.check(settings)
        return settings

    def make(self, **values: Any) -> Settings:
        """Checked settings from keyword values (library callers and tests): ``validate_params(values)``."""
        return self.validate_params(values)

    def validate_payload(self, payload: Any, settings: Settings | None = None) -> None:
        """Check ``payload`` against the schema: known names, required items present, array dtypes
        and shapes (named dims agree); raises ``JobError("bad_input")`` naming the item."""
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise JobError("bad_input", f"{self.kind} payload must be a map, got {type(payload).__name__}")
        items = {p.name: p for p in self.payload}
        if not self.payload_open:
            for key in payload:
                if key not in items:
                    raise JobError("bad_input", f"unknown {self.kind} payload item {key!r}; "
                                                f"known: {sorted(items)}")
        dims: dict[str, tuple[int, str]] = {}
        for item in self.payload:
            if item.name not in payload or payload[item.name] is None:
                if item.required:
                    raise JobError("bad_input", f"{self.kind} payload needs {item.name!r}: {item.description}")
                continue
            value = payload[item.name]
            if item.kind == "array":
                _check_array(self.kind, item, value, dims)
            elif item.kind == "splats":
                if not isinstance(value, Mapping):
                    raise JobError("bad_input", f"{self.kind} payload {item.name!r} must be a splat map")
            elif item.kind == "value":
                if isinstance(value, (Mapping, list, tuple)) or hasattr(value, "shape"):
                    raise JobError("bad_input", f"{self.kind} payload {item.name!r} must be a plain value")
        if self.check_payload is not None:
            self.check_payload(settings if settings is not None else self.defaults(), payload)

    def validate(self, params: Any, payload: Any = None) -> Settings:
        """``validate_params`` then ``validate_payload``: what the server runs at ``submit``."""
        settings = self.validate_params(params)
        self.validate_payload(payload, settings)
        return settings


def _check_array(kind: str, item: PayloadItem, value: Any, dims: dict[str, tuple[int, str]]) -> None:
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape is None:
        raise JobError("bad_input", f"{kind} payload {item.name!r} must be an array, got {type(value).__name__}")
    want = "[" + ",".join(str(d) if not isinstance(d, tuple) else "|".join(map(str, d)) for d in item.shape) + "]"
    if item.dtypes and str(dtype) not in item.dtypes:
        raise JobError("bad_input", f"{kind} payload {item.name!r} must be {'/'.join(item.dtypes)}{want}, "
                                    f"got {dtype}")
    if item.shape:
        if len(shape) != len(item.shape):
            raise JobError("bad_input", f"{kind} payload {item.name!r} must have shape {want}, got {list(shape)}")
        for n, d in zip(shape, item.shape, strict=True):
            if isinstance(d, int) and n != d or isinstance(d, tuple) and n not in d:
                raise JobError("bad_input", f"{kind} payload {item.name!r} must have shape {want}, "
                                            f"got {list(shape)}")
            if isinstance(d, str):
                seen = dims.get(d)
                if seen is not None and seen[0] != n:
                    raise JobError("bad_input", f"{kind} payload {item.name!r} has {d}={n} but "
                                                f"{seen[1]!r} has {d}={seen[0]}")
                dims.setdefault(d, (int(n), item.name))


class Settings(Mapping[str, Any]):
    """Checked settings of one job: read-only, by attribute (``s.steps``) or key (``s["steps"]``)."""

    __slots__ = ("_kind", "_values")

    def __init__(self, kind: str, values: Mapping[str, Any]):
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_values", dict(values))

    @property
    def kind(self) -> str:
        return self._kind

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._kind} settings have no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are read-only: use replace()")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._kind!r}, {self._values!r})"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (not re-validated: for derived values inside a job)."""
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise AttributeError(f"{self._kind} settings have no {unknown}")
        return Settings(self._kind, {**self._values, **changes})

    def to_meta(self) -> dict[str, Any]:
        """All settings as plain values (msgpack/JSON-ready: tuples as lists), enough to reproduce a run."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._values.items()}


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, JobSpec] = {}


def register(spec: JobSpec, replace: bool = False) -> JobSpec:
    """Add ``spec`` to the registry (returns it, so a module can write ``SPEC = register(...)``).
    Registering another spec under a taken kind needs ``replace=True``; the same spec again is a no-op."""
    old = _REGISTRY.get(spec.kind)
    if old is not None and old is not spec and not replace:
        raise ValueError(f"job kind {spec.kind!r} is already registered")
    _REGISTRY[spec.kind] = spec
    return spec


def unregister(kind: str) -> None:
    _REGISTRY.pop(kind, None)


def get_spec(kind: str) -> JobSpec:
    """The spec of ``kind``; ``JobError("unknown_job_kind")`` naming the known kinds."""
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise JobError("unknown_job_kind", f"unknown job kind {kind!r}; known: {sorted(_REGISTRY)}") from None


def all_specs() -> list[JobSpec]:
    """Every registered spec, in registration order."""
    return list(_REGISTRY.values())


def settings_table(spec: JobSpec, advanced: bool | None = None) -> Sequence[Setting]:
    """``spec``'s settings, optionally only the basic (``advanced=False``) or advanced ones."""
    return [s for s in spec.settings if advanced is None or s.advanced == advanced]


__all__ = ["JobError", "JobSpec", "PayloadItem", "Setting", "Settings", "SETTING_TYPES", "all_specs",
           "get_spec", "register", "settings_table", "unregister"]
