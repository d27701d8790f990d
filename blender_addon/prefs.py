"""The add-on preferences' values, for the modules that need them (``connection``, ``backend_process``).

``get_settings(context)`` is the one way to read them: the registered preferences, or
``DefaultSettings`` (same attribute names) when they are not registered (the add-on imported as a
package by tests or a script). ``DEFAULTS`` is the one place of the default values; the preferences'
properties (``preferences.py``, the UI) take theirs from it.

A leaf module: it imports no other module of the add-on, so ``connection`` and ``backend_process`` can
read the preferences while ``preferences`` shows their state, without an import circle.
"""
from __future__ import annotations

from dataclasses import dataclass

import bpy

from .shared.defaults import DEFAULT_ADDRESS, DEFAULT_KEEP_DAYS, DEFAULT_MAX_STORE_GB, DEFAULT_PORT

ADDON_PACKAGE = __package__  # "bl_ext.<repo>.splatbridge" when installed as an extension


@dataclass
class DefaultSettings:
    """The preference values as plain data (the defaults unless given)."""
    backend_address: str = DEFAULT_ADDRESS
    start_local_backend: bool = False
    python_executable: str = ""
    backend_source: str = ""
    port: int = DEFAULT_PORT
    job_store: str = ""
    job_store_keep_days: float = DEFAULT_KEEP_DAYS
    job_store_max_gb: float = DEFAULT_MAX_STORE_GB
    install_folder: str = ""
    install_python: str = ""
    torch_index: str = ""
    curve_server_key: str = ""
    curve_client_key: str = ""


DEFAULTS = DefaultSettings()


def get_prefs(context: bpy.types.Context | None = None):
    """The add-on's registered preferences, or None when the add-on is not enabled (a bare import)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


def get_settings(context: bpy.types.Context | None = None):
    """The preferences if registered, else ``DefaultSettings()`` (same attribute names)."""
    return get_prefs(context) or DefaultSettings()
