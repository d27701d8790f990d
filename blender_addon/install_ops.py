"""Install Local Backend / Update Backend: the Blender side of ``installer.py`` (which does the work).

The operator runs the installer in a thread (pip in a subprocess, never on Blender's UI thread) and
follows it from a modal timer: the percentage and phase in the status bar and the preferences, the log in
the text "SplatBridge Install Log"; Esc cancels (pip's processes are terminated). Without a window
(background mode, scripts) ``execute`` runs the install in the calling thread. A finished install points
the preferences' Python and Backend Source at the new venv and the backend source bundled in the
extension, so Start a Local Backend needs no other setting.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty

from . import backend_process, installer
from .prefs import get_settings

LOG_TEXT_NAME = "SplatBridge Install Log"
BUNDLED_SOURCE = "backend_source"   # the backend source inside the extension (build.py addon puts it there)
_TIMER_S = 0.25

_job: installer.Installer | None = None
_synced = -1


def bundled_source() -> Path | None:
    """The backend source shipped in the extension, else (a checkout) the repository the add-on comes from."""
    here = Path(__file__).resolve().parent / BUNDLED_SOURCE
    if backend_process.is_backend_source(here) and (here / installer.REQUIREMENTS_NAME).is_file():
        return here
    found = backend_process.default_backend_source()
    return found if found is not None and (found / installer.REQUIREMENTS_NAME).is_file() else None


def install_folder(prefs) -> Path:
    """Where the backend's venv goes: the Install Folder preference, else the extension's user data folder
    (per Blender version), else SplatBridge's folder in Blender's user data files."""
    setting = getattr(prefs, "install_folder", "")
    if setting:
        return Path(bpy.path.abspath(setting)).expanduser()
    package = __package__ or "splatbridge"
    if package.startswith("bl_ext."):
        return Path(bpy.utils.extension_path_user(package, path="backend", create=True))
    return Path(bpy.utils.user_resource("DATAFILES", path="splatbridge", create=True)) / "backend"


def options_from_prefs(prefs, update: bool = False) -> installer.InstallOptions:
    source = bundled_source()
    if source is None:
        raise installer.InstallError("bad_source", "this SplatBridge build carries no backend source "
                                                   f"({BUNDLED_SOURCE}/): rebuild it with build.py addon")
    python = getattr(prefs, "install_python", "")
    return installer.InstallOptions(
        folder=install_folder(prefs), source_dir=source,
        python=bpy.path.abspath(python) if python else "", blender_python=sys.executable,
        torch_index=getattr(prefs, "torch_index", ""), update=update)


def current() -> installer.Installer | None:
    return _job


def sync_log_text() -> bpy.types.Text | None:
    """Copy the install log into the text LOG_TEXT_NAME (created if needed). Main thread only."""
    global _synced
    if _job is None:
        return bpy.data.texts.get(LOG_TEXT_NAME)
    text = bpy.data.texts.get(LOG_TEXT_NAME) or bpy.data.texts.new(LOG_TEXT_NAME)
    if _job.log_version != _synced or not text.as_string():
        text.from_string("\n".join(_job.lines()) + "\n")
        _synced = _job.log_version
    return text


def _apply(prefs, job: installer.Installer) -> None:
    """Point the preferences at the new install (when they are the registered ones, which persist)."""
    if job.python is not None:
        prefs.python_executable = str(job.python)
        prefs.backend_source = str(job.options.source_dir)


def status_lines(prefs) -> list[tuple[str, str]]:
    """(text, icon) lines for the preferences: the install's state, notes, and whether it is up to date."""
    job = _job
    if job is not None and job.state in ("running", "failed", "cancelled"):
        lines = [(job.status_text(), "ERROR" if job.state == "failed" else "INFO")]
        if job.plan is not None:
            lines += [(n, "INFO") for n in job.plan.notes]
        return lines
    try:
        folder = install_folder(prefs)
    except Exception as exc:  # no user folder to be had: say so, do not break the panel
        return [(f"No install folder: {exc}", "ERROR")]
    stamp = installer.read_stamp(folder)
    if stamp is None:
        return [(f"No local backend installed in {folder}", "INFO")]
    v = stamp.get("verified", {})
    plan = stamp.get("torch_plan", {})
    lines = [(f"Installed: torch {v.get('torch', '?')} ({plan.get('variant', '?')}), Python "
              f"{'.'.join(map(str, stamp.get('python', [])))}, in {folder}", "CHECKMARK")]
    lines += [(n, "INFO") for n in plan.get("notes", ())]
    source = bundled_source()
    if source is not None and installer.needs_update(folder, source):
        lines.append(("The backend's requirements changed: Update Backend", "ERROR"))
    return lines


def draw_install(layout: bpy.types.UILayout, prefs) -> None:
    """The preferences' install box (called from ``preferences.py``)."""
    box = layout.box()
    box.label(text="Install Local Backend", icon="IMPORT")
    col = box.column()
    col.prop(prefs, "install_folder")
    col.prop(prefs, "install_python")
    col.prop(prefs, "torch_index")
    job = _job
    row = box.row()
    if job is not None and job.running:
        if hasattr(row, "progress"):
            row.progress(factor=job.percent / 100.0, type="BAR", text=f"{job.percent:.0f}% {job.phase}"[:80])
        else:
            row.label(text=f"{job.percent:.0f}% {job.phase}"[:80])
        row.label(text="Esc to cancel")
    else:
        row.operator("splatbridge.backend_install", text="Install Local Backend", icon="IMPORT").update = False
        row.operator("splatbridge.backend_install", text="Update Backend", icon="FILE_REFRESH").update = True
    row.operator("splatbridge.backend_install_log", text="Log", icon="TEXT")
    for text, icon in status_lines(prefs):
        box.label(text=text, icon=icon)


def _redraw(context) -> None:
    for window in getattr(context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "STATUSBAR", "VIEW_3D"):
                area.tag_redraw()


class SPLATBRIDGE_OT_backend_install(bpy.types.Operator):
    """Create a Python environment for the backend in your user folder and install its requirements (torch's
    CUDA build on NVIDIA GPUs, the CPU build elsewhere); Update Backend reinstalls only when they changed"""
    bl_idname = "splatbridge.backend_install"
    bl_label = "Install Local Backend"

    update: BoolProperty(name="Update", description="Only when the pinned requirements changed", default=False,
                         options={"SKIP_SAVE"})

    def _prefs(self, context):
        return get_settings(context)

    def _new_job(self, context) -> installer.Installer | None:
        global _job, _synced
        if _job is not None and _job.running:
            self.report({"WARNING"}, "The backend is being installed already")
            return None
        try:
            options = options_from_prefs(self._prefs(context), self.update)
        except installer.InstallError as exc:
            self.report({"ERROR"}, str(exc))
            return None
        _job, _synced = installer.Installer(options), -1
        return _job

    def _end(self, context, job: installer.Installer) -> set[str]:
        sync_log_text()
        if job.state in ("done", "up_to_date"):
            _apply(self._prefs(context), job)
            if job.state == "up_to_date":
                self.report({"INFO"}, "The local backend is up to date: nothing to install")
            else:
                self.report({"INFO"}, f"Local backend installed: torch {job.verified['torch']} "
                                      f"({job.plan.variant}) in {job.python}")
            return {"FINISHED"}
        self.report({"WARNING" if job.state == "cancelled" else "ERROR"}, str(job.error))
        return {"CANCELLED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = self._new_job(context)
        if job is None:
            return {"CANCELLED"}
        try:
            job.run()          # no window: in this thread (pip still runs in a subprocess)
        except installer.InstallError:
            pass
        return self._end(context, job)

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if context.window is None:
            return self.execute(context)
        job = self._new_job(context)
        if job is None:
            return {"CANCELLED"}
        job.start()
        wm = context.window_manager
        self._timer = wm.event_timer_add(_TIMER_S, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _finish(self, context, result: set[str] | None = None) -> set[str]:
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        _redraw(context)
        return self._end(context, _job)

    def modal(self, context: bpy.types.Context, event) -> set[str]:
        job = _job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            return self._finish(context)
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.running:
            return self._finish(context)
        context.window_manager.progress_update(int(job.percent))
        if context.workspace is not None:
            context.workspace.status_text_set(f"{job.status_text()}  (Esc: cancel)")
        sync_log_text()
        _redraw(context)
        return {"PASS_THROUGH"}


class SPLATBRIDGE_OT_backend_install_log(bpy.types.Operator):
    """Copy the backend install's output into the text "SplatBridge Install Log" (Text Editor)"""
    bl_idname = "splatbridge.backend_install_log"
    bl_label = "Show Install Log"

    def execute(self, context: bpy.types.Context) -> set[str]:
        return backend_process.show_log_text(self, context, sync_log_text(),
                                             "No backend install has run in this session")


classes = (SPLATBRIDGE_OT_backend_install, SPLATBRIDGE_OT_backend_install_log)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if _job is not None and _job.running:
        _job.cancel()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
