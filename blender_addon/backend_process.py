"""Run the SplatBridge backend as a child process of Blender (the "local backend").

The child is ``<python> -m backend serve --bind tcp://127.0.0.1:<port> [--store DIR]`` run in the
backend source folder (the SplatBridge repository: it holds the ``backend`` and ``shared``
packages), with that folder on PYTHONPATH. Its stdout and stderr go to a ring buffer of lines
(``read_log``), which ``sync_log_text`` copies into the text datablock "SplatBridge Backend Log".

The process is stopped by ``stop_backend``, by the add-on's ``unregister`` and, when Blender
quits, by an ``atexit`` hook (``bpy.app.handlers`` has no quit handler). start/stop/read_log are
plain functions: they work headless, where ``bpy.app.timers`` never fire.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .prefs import get_prefs, get_settings

LOG_TEXT_NAME = "SplatBridge Backend Log"
LOG_MAX_LINES = 2000
STOP_TIMEOUT_S = 5.0
_LOG_SYNC_INTERVAL_S = 1.0


class BackendLaunchError(Exception):
    """The local backend cannot be started; the message says what to fix."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to run: interpreter, source folder, port on 127.0.0.1, optional job store folder."""
    python: str
    source_dir: Path
    port: int
    job_store: str = ""
    extra_args: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "backend", "serve", "--bind", self.address]
        if self.job_store:
            cmd += ["--store", self.job_store]
        return cmd + list(self.extra_args)


@dataclass
class BackendProcess:
    """A running (or finished) backend child and its captured output."""
    spec: LaunchSpec
    popen: subprocess.Popen
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_MAX_LINES))
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0  # bumped on every appended line: lets the text sync skip unchanged logs
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def append(self, line: str) -> None:
        with self.lock:
            self.log.append(line.rstrip("\r\n"))
            self.version += 1

    def lines(self) -> list[str]:
        with self.lock:
            return list(self.log)


_current: BackendProcess | None = None


# ------------------------------------------------------------------------------------------
# locating the backend and its interpreter


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def build_info() -> dict:
    """build_info.json written into the extension by ``build.py addon`` ({} when absent)."""
    path = _package_dir() / "build_info.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_backend_source(path: Path) -> bool:
    return (path / "backend" / "__main__.py").is_file() and (path / "shared" / "__init__.py").is_file()


def default_backend_source() -> Path | None:
    """The repository the add-on was built from (recorded at build time), or, when the add-on
    runs from a checkout, the checkout it lives in. None when neither holds a backend."""
    recorded = build_info().get("source_root")
    if recorded and is_backend_source(Path(recorded)):
        return Path(recorded)
    for parent in _package_dir().parents:
        if is_backend_source(parent):
            return parent
    return None


def check_backend_source(setting: str) -> Path:
    """The backend source folder from a preference value ('' = default); raises if unusable."""
    if setting:
        path = Path(bpy.path.abspath(setting)).expanduser()
        if not is_backend_source(path):
            raise BackendLaunchError(
                f"backend source {path} has no backend/__main__.py and shared/__init__.py: set "
                f"Preferences > Add-ons > SplatBridge > Backend Source to the SplatBridge repository")
        return path
    found = default_backend_source()
    if found is None:
        raise BackendLaunchError(
            "no backend source folder known: set Preferences > Add-ons > SplatBridge > Backend Source "
            "to the SplatBridge repository (the folder with backend/ and shared/)")
    return found


def resolve_python(setting: str, source_dir: Path) -> str:
    """The interpreter for the backend: the preference, else the source's .venv, else python3."""
    if setting:
        path = Path(bpy.path.abspath(setting)).expanduser()
        if path.is_file():
            return str(path)
        found = shutil.which(setting)
        if found:
            return found
        raise BackendLaunchError(f"Python executable {setting!r} does not exist")
    for candidate in (source_dir / ".venv" / "bin" / "python", source_dir / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found:
            return found
    raise BackendLaunchError("no Python for the backend: set Preferences > Add-ons > SplatBridge > Python "
                             "to an interpreter with torch installed")


# ------------------------------------------------------------------------------------------
# start / stop / log


def _reader(proc: BackendProcess) -> None:
    stream = proc.popen.stdout
    assert stream is not None
    for line in stream:
        proc.append(line)
    code = proc.popen.wait()
    proc.append(f"[SplatBridge] backend exited with code {code}")


def start_backend(python: str, source_dir: Path, port: int, job_store: str = "",
                  extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> BackendProcess:
    """Start ``python -m backend serve`` on 127.0.0.1:port in source_dir; returns at once.

    Idempotent: if the same backend is already running it is returned. A different running one
    must be stopped first (BackendLaunchError). Readiness is the client's business (hello).
    """
    global _current
    spec = LaunchSpec(str(python), Path(source_dir), int(port), job_store or "", tuple(extra_args))
    if _current is not None and _current.running():
        if _current.spec == spec:
            return _current
        raise BackendLaunchError(f"a local backend is already running (pid {_current.pid}, "
                                 f"{_current.spec.address}): stop it first")
    if not is_backend_source(spec.source_dir):
        raise BackendLaunchError(f"{spec.source_dir} is not a SplatBridge backend source folder")
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(spec.source_dir)] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else []))
    child_env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written
    # Blender's own Python settings must not leak into the child's interpreter.
    for key in ("PYTHONHOME", "PYTHONNOUSERSITE"):
        child_env.pop(key, None)
    kwargs: dict = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    else:
        kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal does not hit the child
    try:
        popen = subprocess.Popen(spec.command(), cwd=spec.source_dir, env=child_env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 encoding="utf-8", errors="replace", bufsize=1, **kwargs)
    except OSError as exc:
        raise BackendLaunchError(f"cannot run {spec.python}: {exc}") from None
    proc = BackendProcess(spec, popen)
    proc.append("[SplatBridge] " + " ".join(spec.command()))
    proc.reader = threading.Thread(target=_reader, args=(proc,), name="splatbridge-backend-log", daemon=True)
    proc.reader.start()
    _current = proc
    _ensure_log_timer()
    return proc


def retention_args(prefs) -> tuple[str, ...]:
    """The serve options for the preferences' job store retention (days, GiB; 0 = no limit)."""
    return ("--keep-days", f"{max(0.0, float(prefs.job_store_keep_days)):g}",
            "--max-store-gb", f"{max(0.0, float(prefs.job_store_max_gb)):g}")


def start_from_prefs(prefs) -> BackendProcess:
    """Start the local backend as the preferences (or DefaultSettings) describe."""
    source = check_backend_source(prefs.backend_source)
    python = resolve_python(prefs.python_executable, source)
    job_store = bpy.path.abspath(prefs.job_store) if prefs.job_store else ""
    return start_backend(python, source, prefs.port, job_store, retention_args(prefs))


def ensure_local_backend(prefs) -> BackendProcess | None:
    """Start the local backend if the preferences ask for one and it is not running (e.g. when
    the client connects). Returns the running process, or None when no local backend is wanted."""
    if not prefs.start_local_backend:
        return None
    return _current if is_running() else start_from_prefs(prefs)


def stop_backend(timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the local backend (SIGTERM, then kill after `timeout` s). Returns its exit code, or
    None when none was running. The log stays readable until the next start."""
    proc = _current
    if proc is None:
        return None
    if proc.running():
        try:
            if os.name == "nt":
                proc.popen.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                proc.popen.terminate()
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.append(f"[SplatBridge] backend did not stop within {timeout:g} s: killed")
            proc.popen.kill()
            proc.popen.wait()
        except OSError:
            pass
    if proc.reader is not None:
        proc.reader.join(timeout=2.0)
    if proc.popen.stdout is not None:
        proc.popen.stdout.close()
    return proc.popen.returncode


def current() -> BackendProcess | None:
    """The last started backend (running or finished), or None."""
    return _current


def is_running() -> bool:
    return _current is not None and _current.running()


def read_log(max_lines: int | None = None) -> list[str]:
    """The captured output lines of the current/last backend, oldest first (the last max_lines)."""
    if _current is None:
        return []
    lines = _current.lines()
    return lines[-max_lines:] if max_lines else lines


def status_text() -> str:
    if _current is None:
        return "Local backend: not started"
    if _current.running():
        return f"Local backend: running (pid {_current.pid}, {_current.spec.address})"
    return f"Local backend: exited (code {_current.popen.returncode})"


_synced_version = -1


def sync_log_text() -> bpy.types.Text | None:
    """Copy the log into the text datablock LOG_TEXT_NAME (created if needed). Main thread only."""
    global _synced_version
    if _current is None:
        return bpy.data.texts.get(LOG_TEXT_NAME)
    text = bpy.data.texts.get(LOG_TEXT_NAME) or bpy.data.texts.new(LOG_TEXT_NAME)
    with _current.lock:
        version, lines = _current.version, list(_current.log)
    if version != _synced_version or not text.as_string():
        text.from_string("\n".join(lines) + "\n")
        _synced_version = version
    return text


# ------------------------------------------------------------------------------------------
# Blender glue: timers, quit hook, operators


def _log_timer() -> float | None:
    try:
        sync_log_text()
    except Exception:  # e.g. no bpy.data during shutdown: try again next time
        pass
    return _LOG_SYNC_INTERVAL_S if is_running() else None


def _ensure_log_timer() -> None:
    if not bpy.app.timers.is_registered(_log_timer):
        # persistent: the child outlives File > Open, so must the copy of its log
        bpy.app.timers.register(_log_timer, first_interval=_LOG_SYNC_INTERVAL_S, persistent=True)


def _autostart() -> None:
    prefs = get_prefs()
    if prefs is not None and prefs.start_local_backend and not is_running():
        try:
            start_from_prefs(prefs)
        except BackendLaunchError as exc:
            print(f"SplatBridge: local backend not started: {exc}")
    return None


def _atexit_stop() -> None:
    if is_running():
        stop_backend(timeout=2.0)


class SPLATBRIDGE_OT_backend_start(bpy.types.Operator):
    """Start the local SplatBridge backend (a child process of Blender)"""
    bl_idname = "splatbridge.backend_start"
    bl_label = "Start Local Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            proc = start_from_prefs(get_settings(context))
        except BackendLaunchError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Local backend started (pid {proc.pid}) on {proc.spec.address}")
        return {"FINISHED"}


class SPLATBRIDGE_OT_backend_stop(bpy.types.Operator):
    """Stop the local SplatBridge backend"""
    bl_idname = "splatbridge.backend_stop"
    bl_label = "Stop Local Backend"

    def execute(self, context: bpy.types.Context) -> set[str]:
        code = stop_backend()
        sync_log_text()
        self.report({"INFO"}, "No local backend running" if code is None else f"Local backend stopped (code {code})")
        return {"FINISHED"}


class SPLATBRIDGE_OT_backend_show_log(bpy.types.Operator):
    """Copy the local backend's output into the text "SplatBridge Backend Log" (Text Editor)"""
    bl_idname = "splatbridge.backend_show_log"
    bl_label = "Show Backend Log"

    def execute(self, context: bpy.types.Context) -> set[str]:
        return show_log_text(self, context, sync_log_text(), "The local backend has not been started")


def show_log_text(operator: bpy.types.Operator, context: bpy.types.Context, text: bpy.types.Text | None,
                  missing: str) -> set[str]:
    """A log operator's end: ``text`` shown in the Text Editor it ran from (if so) and its name reported, or
    the warning ``missing`` when there is no log yet."""
    if text is None:
        operator.report({"WARNING"}, missing)
        return {"CANCELLED"}
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "TEXT_EDITOR":
        space.text = text
    operator.report({"INFO"}, f"The log is in the text \"{text.name}\" (Text Editor)")
    return {"FINISHED"}


classes = (SPLATBRIDGE_OT_backend_start, SPLATBRIDGE_OT_backend_stop, SPLATBRIDGE_OT_backend_show_log)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    atexit.register(_atexit_stop)
    prefs = get_prefs()
    if prefs is not None and prefs.start_local_backend:
        # Deferred: preferences and windows are not fully there while add-ons register.
        # persistent: a .blend opened from the command line loads before the timer fires
        bpy.app.timers.register(_autostart, first_interval=0.5, persistent=True)


def unregister() -> None:
    for fn in (_autostart, _log_timer):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    atexit.unregister(_atexit_stop)
    stop_backend()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
