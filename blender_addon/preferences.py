"""SplatBridge's add-on preferences (the UI): where the backend is, and how to start a local one.

Other modules read the values with ``prefs.get_settings(context)`` (a leaf module, so reading them
makes no import circle). ``draw`` shows the live connection (``connection.status_summary``), the local
backend's state (``backend_process.status_text``) and the parts of the add-on that failed to load.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from . import ERRORS, backend_process, connection, install_ops
from .prefs import ADDON_PACKAGE, DEFAULTS, DefaultSettings, get_prefs, get_settings

__all__ = ["ADDON_PACKAGE", "DefaultSettings", "SplatBridgePreferences", "get_prefs", "get_settings"]


def _local_backend_update(self: "SplatBridgePreferences", context: bpy.types.Context) -> None:
    # Toggling the option starts/stops the local backend right away (the user expects it).
    try:
        if self.start_local_backend:
            backend_process.start_from_prefs(self)
        else:
            backend_process.stop_backend()
    except backend_process.BackendLaunchError as exc:
        print(f"SplatBridge: {exc}")


class SplatBridgePreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend_address: StringProperty(
        name="Backend Address",
        description="ZeroMQ address of the SplatBridge backend (tcp://HOST:PORT)",
        default=DEFAULTS.backend_address,
    )
    start_local_backend: BoolProperty(
        name="Start a Local Backend",
        description="Run the backend as a child process of Blender on this machine "
                    "(on 127.0.0.1 at the port below); it stops when Blender quits",
        default=False,
        update=_local_backend_update,
    )
    python_executable: StringProperty(
        name="Python",
        description="Python interpreter with torch (and gsplat) installed that runs the local backend. "
                    "Empty: the backend source's .venv, else python3 on PATH",
        subtype="FILE_PATH",
        default="",
    )
    backend_source: StringProperty(
        name="Backend Source",
        description="Folder holding the 'backend' and 'shared' packages (the SplatBridge repository). "
                    "Empty: the repository this add-on was built from",
        subtype="DIR_PATH",
        default="",
    )
    port: IntProperty(
        name="Port",
        description="TCP port the local backend binds on 127.0.0.1",
        default=DEFAULTS.port,
        min=1024,
        max=65535,
    )
    job_store: StringProperty(
        name="Job Store",
        description="Folder where the local backend keeps every job's inputs and results. "
                    "Empty: the backend's default (splatbridge-jobs in the backend source)",
        subtype="DIR_PATH",
        default="",
    )
    job_store_keep_days: FloatProperty(
        name="Keep Finished Jobs (days)",
        description="The local backend frees the inputs and result of jobs finished longer ago than this "
                    "(results already in your .blend are not affected). 0: keep forever",
        default=DEFAULTS.job_store_keep_days, min=0.0, soft_max=365.0,
    )
    job_store_max_gb: FloatProperty(
        name="Job Store Limit (GiB)",
        description="While the job store is larger, the local backend frees the oldest finished jobs "
                    "first; the newest finished job is always kept. 0: no limit",
        default=DEFAULTS.job_store_max_gb, min=0.0, soft_max=1000.0,
    )
    install_folder: StringProperty(
        name="Install Folder",
        description="Where Install Local Backend creates the backend's Python environment. Empty: this "
                    "extension's folder in your Blender user data",
        subtype="DIR_PATH", default="",
    )
    install_python: StringProperty(
        name="Python for Install",
        description="Python 3.11-3.13 to create the backend's environment with. Empty: Blender's own, else "
                    "one found on PATH or in the usual install folders",
        subtype="FILE_PATH", default="",
    )
    torch_index: StringProperty(
        name="PyTorch Wheel Index",
        description="Base address of PyTorch's wheel index (as its install selector shows it, without the "
                    "final cu128/cpu part: the installer appends the build for your GPU). Empty: PyPI's "
                    "torch (CUDA build on Linux, CPU build on Windows, MPS on Apple silicon)",
        default="",
    )
    curve_server_key: StringProperty(
        name="Server Public Key",
        description="CurveZMQ: the backend's public key certificate (server.key), needed for a "
                    "backend bound beyond loopback",
        subtype="FILE_PATH",
        default="",
    )
    curve_client_key: StringProperty(
        name="Client Secret Key",
        description="CurveZMQ: this client's secret key certificate (client.key_secret); its public "
                    "key must be in the backend's allow-list folder",
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Connection", icon="LINKED")
        box.prop(self, "backend_address")
        text, icon = connection.status_summary()
        box.label(text=text, icon=icon)

        box = layout.box()
        box.label(text="Local Backend", icon="CONSOLE")
        box.prop(self, "start_local_backend")
        col = box.column()
        col.prop(self, "python_executable")
        col.prop(self, "backend_source")
        col.prop(self, "port")
        col.prop(self, "job_store")
        row = col.row(align=True)
        row.prop(self, "job_store_keep_days")
        row.prop(self, "job_store_max_gb")
        row = box.row()
        row.label(text=backend_process.status_text())
        row.operator("splatbridge.backend_start", text="Start", icon="PLAY")
        row.operator("splatbridge.backend_stop", text="Stop", icon="CANCEL")
        row.operator("splatbridge.backend_show_log", text="Log", icon="TEXT")

        install_ops.draw_install(layout, self)

        box = layout.box()
        box.label(text="Security (CurveZMQ, for a backend beyond loopback)", icon="LOCKED")
        box.prop(self, "curve_server_key")
        box.prop(self, "curve_client_key")

        if ERRORS:
            box = layout.box()
            box.label(text="Parts that failed to load:", icon="ERROR")
            for name, message in ERRORS.items():
                box.label(text=f"{name}: {message}")


classes = (SplatBridgePreferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
