"""The add-on's one connection to the backend: client, poll step, indicator, tracked jobs.

* One ``shared.client.BackendClient`` per Blender session (``connect`` / ``disconnect`` /
  ``get_client``), addressed by the add-on preferences (or an explicit address).
* ``poll_once(context)`` is the whole poll step: it drains the socket without blocking, updates
  the indicator state (``STATE``) and hands every tracked job's news to the handler registered
  for its kind (``register_job_handler``; ops_train registers "train"). A ``bpy.app.timers``
  callback calls it in the UI; headless tests and the demo call it directly (or ``wait_for``).
* Tracked jobs are persisted in the scene (``scene.splatbridge_jobs``: job id, kind, target
  object, state, last step and metrics), so after a disconnect, a lost backend or a restart of
  Blender the add-on asks the backend's job store for them again (status, then ``fetch``) and
  applies results that finished while it was away.
* Lost backend: a request unanswered within ``REQUEST_TIMEOUT_S`` (heartbeats every
  ``HEARTBEAT_S`` while connected) turns the indicator to "not responding" with the client's
  message; the first reply after that turns it back and resumes the tracked jobs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy
from bpy.props import BoolProperty, CollectionProperty, FloatProperty, IntProperty, StringProperty

from .prefs import get_settings
from .shared.client import LOCAL_TIMEOUT_CODE, TERMINAL_STATES, BackendClient, JobState

REQUEST_TIMEOUT_S = 15.0
HEARTBEAT_S = 2.0
STATUS_EVERY_S = 2.0          # ask about a tracked job this often when no news of it arrives
TIMER_ACTIVE_S = 0.1          # poll interval while jobs run
TIMER_IDLE_S = 0.5


@dataclass
class ConnectionState:
    """What the UI shows about the connection (not saved in the .blend)."""

    address: str = ""
    client: BackendClient | None = None
    server_info: dict[str, Any] | None = None     # fields of the last hello reply
    connected: bool = False
    lost: bool = False                            # was connected (or trying) and stopped answering
    last_error: str = ""
    last_error_at: float = 0.0
    _status_sent: dict[str, float] = field(default_factory=dict)
    _fetch_sent: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, tuple] = field(default_factory=dict)   # job id -> what was last handed over


STATE = ConnectionState()

# kind -> (on_update(context, record, job), on_finished(context, record, job))
_HANDLERS: dict[str, tuple[Callable, Callable]] = {}


def register_job_handler(kind: str, on_update: Callable, on_finished: Callable) -> None:
    """``on_update`` gets each new progress/preview of a tracked job of ``kind``;
    ``on_finished`` its terminal state once (result in ``job.result`` or ``job.error``)."""
    _HANDLERS[kind] = (on_update, on_finished)


def unregister_job_handler(kind: str) -> None:
    _HANDLERS.pop(kind, None)


# --------------------------------------------------------------------------- connecting

def connect(context=None, address: str | None = None) -> BackendClient:
    """Open the session's client to ``address`` (default: the preferences' backend address) and
    say hello. An existing client to another address is closed first; to the same one it is kept."""
    context = context or bpy.context
    prefs = get_settings(context)
    address = address or prefs.backend_address
    if STATE.client is not None and STATE.address == address:
        return STATE.client
    disconnect()
    kwargs: dict[str, Any] = {}
    if prefs.curve_server_key:
        kwargs["server_public_key"] = bpy.path.abspath(prefs.curve_server_key)
        kwargs["secret_key"] = bpy.path.abspath(prefs.curve_client_key) or None
    client = BackendClient(address, timeout_s=REQUEST_TIMEOUT_S, heartbeat_s=HEARTBEAT_S,
                           client_name=f"splatbridge-blender-{bpy.app.version_string}", **kwargs)
    STATE.address, STATE.client = address, client
    STATE.connected = STATE.lost = False
    STATE.server_info, STATE.last_error = None, ""
    client.send_hello()
    _ensure_timer()
    return client


def disconnect() -> None:
    """Close the client (tracked jobs stay in the scene and resume on the next connect)."""
    if STATE.client is not None:
        STATE.client.close()
    STATE.client = None
    STATE.connected = STATE.lost = False
    STATE.server_info = None
    STATE._status_sent.clear()
    STATE._fetch_sent.clear()
    STATE._seen.clear()


def get_client(context=None, connect_if_needed: bool = True) -> BackendClient | None:
    if STATE.client is None and connect_if_needed:
        connect(context)
    return STATE.client


# --------------------------------------------------------------------------- tracked jobs

def job_records(scene) -> list:
    return list(scene.splatbridge_jobs)


def find_record(scene, job_id: str):
    for rec in scene.splatbridge_jobs:
        if rec.job_id == job_id:
            return rec
    return None


def track_job(scene, job_id: str, kind: str, target: str = "", label: str = ""):
    """Remember a submitted job in the scene (so it survives a restart)."""
    rec = scene.splatbridge_jobs.add()
    rec.job_id, rec.kind, rec.target, rec.label = job_id, kind, target, label or kind
    rec.state = "submitted"
    rec.submitted_at = time.time()
    # its own undo step: else undoing the user's next action would forget the job (and its result)
    _push_undo(bpy.context, f"SplatBridge: submit {rec.label}")
    return rec


def active_records(scene) -> list:
    """Tracked jobs whose outcome has not been applied yet."""
    return [r for r in scene.splatbridge_jobs if not r.handled]


def _job_key(job: JobState) -> tuple:
    return (job.state, job.step, id(job.preview), id(job.result), job.error)


def _sync_record(rec, job: JobState) -> None:
    rec.state = job.state
    rec.step, rec.total = int(job.step), int(job.total)
    m = job.metrics or {}
    for key in ("psnr", "loss", "num_gaussians", "eta_s", "steps_per_s"):
        v = m.get(key)
        if isinstance(v, (int, float)):
            setattr(rec, key, float(v))
    rec.stage = str(m.get("stage") or "")      # each progress message says it again, or clears it
    if job.error is not None and job.error[0] not in ("not_finished",):
        rec.message = f"{job.error[0]}: {job.error[1]}"


def _resume(client: BackendClient, scene) -> None:
    """Ask about tracked jobs this client does not know (a restart, a new client)."""
    for rec in active_records(scene):
        if rec.job_id not in client.jobs:
            client.fetch(rec.job_id)        # a result if finished; else `not_finished`
            STATE._fetch_sent[rec.job_id] = STATE._status_sent[rec.job_id] = time.monotonic()


def _follow_up(client: BackendClient, rec, job: JobState) -> None:
    """Status requests for jobs with no recent news; fetch once the store says finished."""
    now = time.monotonic()
    jid = rec.job_id
    if job.error is not None and job.error[0] == "not_finished":
        job.error = None                       # an answer to an early fetch: the job just runs
    if job.state in TERMINAL_STATES:
        if job.result is None and (job.state != "failed" or job.error is None) \
                and now - STATE._fetch_sent.get(jid, -1e9) > STATUS_EVERY_S:
            client.fetch(jid)
            STATE._fetch_sent[jid] = now
        return
    if now - job.updated_at > STATUS_EVERY_S and client.connected \
            and now - STATE._status_sent.get(jid, -1e9) > STATUS_EVERY_S:
        client.status(jid)
        STATE._status_sent[jid] = now


def poll_once(context=None) -> list:
    """One poll step (never blocks): drain replies, update the indicator, apply job news.

    Returns the messages that arrived (local timeout events included)."""
    context = context or bpy.context
    client = STATE.client
    if client is None:
        return []
    was_connected = STATE.connected
    msgs = client.poll()
    for msg in msgs:
        if msg.type == "hello":
            STATE.server_info = dict(msg.fields)
        elif msg.type == "error" and (msg.job_id is None or msg.fields.get("local")):
            STATE.last_error = msg.fields.get("message", "")
            STATE.last_error_at = time.time()
            if msg.fields.get("code") == LOCAL_TIMEOUT_CODE:
                STATE.lost = True
    STATE.connected = client.connected
    if STATE.connected:
        STATE.lost = False
        if not was_connected:
            if STATE.server_info is None:
                client.send_hello()
            STATE._fetch_sent.clear()
    scene = getattr(context, "scene", None)
    if scene is not None and hasattr(scene, "splatbridge_jobs"):
        if STATE.connected and not was_connected:
            _resume(client, scene)
        for rec in active_records(scene):
            job = client.jobs.get(rec.job_id)
            if job is None:
                continue
            _follow_up(client, rec, job)
            key = _job_key(job)
            if STATE._seen.get(rec.job_id) == key:
                continue
            STATE._seen[rec.job_id] = key
            _sync_record(rec, job)
            on_update, on_finished = _HANDLERS.get(rec.kind, (None, None))
            try:
                if on_update is not None:
                    on_update(context, rec, job)
                # cancelled with an error: stopped before it had anything to return (no result will come)
                if job.finished and (job.result is not None
                                     or (job.state in ("failed", "cancelled") and job.error is not None)):
                    if on_finished is not None:
                        on_finished(context, rec, job)
                    rec.handled = True      # only once applied: a result is never dropped
                    _push_undo(context, f"SplatBridge: {rec.label}")
            except Exception as exc:
                # e.g. the target object is in edit mode: say why and try again on the next poll
                STATE._seen.pop(rec.job_id, None)
                rec.message = f"cannot apply yet: {exc}"
    if msgs:
        _tag_redraw(context)
    return msgs


def _push_undo(context, message: str) -> None:
    """Make what a finished job changed its own undo step. The change comes from a timer, outside
    any operator, so it is in no step: undoing the user's next action would take it away too.
    A timer's context has no window, which ``ed.undo_push`` needs: the first one is lent."""
    wm = getattr(context, "window_manager", None)
    window = getattr(context, "window", None) or (wm.windows[0] if wm is not None and wm.windows else None)
    if window is None:
        return
    with context.temp_override(window=window, screen=window.screen):
        if bpy.ops.ed.undo_push.poll():
            bpy.ops.ed.undo_push(message=message)


def wait_for(predicate: Callable[[], bool], timeout: float, context=None,
             interval: float = 0.05) -> bool:
    """Call ``poll_once`` until ``predicate()`` holds or ``timeout`` seconds pass (headless use:
    scripts, tests, the demo). Returns the predicate's last value."""
    deadline = time.monotonic() + timeout
    while True:
        poll_once(context)
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def cancel_job(job_id: str) -> None:
    if STATE.client is None:
        raise RuntimeError("not connected to a backend")
    STATE.client.cancel(job_id)


# --------------------------------------------------------------------------- indicator

def status_summary() -> tuple[str, str]:
    """(text, icon) for the connection indicator."""
    if STATE.client is None:
        return "Not connected", "UNLINKED"
    if STATE.lost or (not STATE.connected and STATE.last_error):
        return f"Backend not responding at {STATE.address}", "ERROR"
    if not STATE.connected or STATE.server_info is None:
        return f"Connecting to {STATE.address}...", "SORTTIME"
    return device_text(STATE.server_info), "LINKED"


def device_text(info: dict[str, Any]) -> str:
    """'CUDA: <gpu> (<mem> GiB), gsplat CUDA' or 'CPU only (no CUDA): training is slow'."""
    if info.get("cuda"):
        mem = info.get("gpu_memory_bytes") or 0
        gpu = info.get("gpu_name") or "GPU"
        mem_txt = f", {mem / 2**30:.0f} GiB" if mem else ""
        gs = "gsplat CUDA" if info.get("gsplat_cuda") else "no gsplat CUDA: reference rasterizer"
        return f"Connected: CUDA {gpu}{mem_txt}; {gs}"
    return f"Connected: CPU only ({info.get('device', 'cpu')}, no CUDA): training is slow"


def _tag_redraw(context) -> None:
    wm = getattr(context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "STATUSBAR", "PROPERTIES"}:
                area.tag_redraw()


# --------------------------------------------------------------------------- timer, handlers

def _timer() -> float | None:
    if STATE.client is None:
        return None
    try:
        poll_once(bpy.context)
    except Exception as exc:  # never let the timer die silently: show it and keep polling
        STATE.last_error = f"poll failed: {exc}"
        print(f"SplatBridge: {STATE.last_error}")
    scene = getattr(bpy.context, "scene", None)
    busy = scene is not None and hasattr(scene, "splatbridge_jobs") and active_records(scene)
    return TIMER_ACTIVE_S if busy else TIMER_IDLE_S


def _ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_ACTIVE_S, persistent=True)


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    """A .blend with unfinished jobs: connect and ask the backend for them."""
    scene = bpy.context.scene
    if scene is not None and hasattr(scene, "splatbridge_jobs") and active_records(scene):
        STATE._fetch_sent.clear()
        STATE._seen.clear()
        client = get_client(bpy.context)
        if client is not None and STATE.connected:
            _resume(client, scene)


class SplatBridgeJobRecord(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job ID")
    kind: StringProperty(name="Kind")
    label: StringProperty(name="Label")
    target: StringProperty(name="Target Object", description="Object the result goes to")
    state: StringProperty(name="State", default="submitted")
    handled: BoolProperty(name="Handled", default=False,
                          description="The outcome was applied (result object made or error shown)")
    step: IntProperty(name="Step")
    total: IntProperty(name="Total")
    psnr: FloatProperty(name="PSNR", default=float("nan"))
    loss: FloatProperty(name="Loss", default=float("nan"))
    num_gaussians: FloatProperty(name="Gaussians", default=0.0)
    eta_s: FloatProperty(name="ETA", default=float("nan"))
    steps_per_s: FloatProperty(name="Steps/s", default=float("nan"))
    stage: StringProperty(name="Stage", description="What the job is doing before its steps start "
                          "(e.g. loading a model)")
    message: StringProperty(name="Message")
    submitted_at: FloatProperty(name="Submitted At")


class SPLATBRIDGE_OT_connect(bpy.types.Operator):
    """Connect to the SplatBridge backend at the address in the add-on preferences"""
    bl_idname = "splatbridge.connect"
    bl_label = "Connect"

    address: StringProperty(name="Address", default="",
                            description="Override the preferences' backend address")

    def execute(self, context):
        try:
            if STATE.client is not None and (not self.address or self.address == STATE.address):
                disconnect()
            connect(context, self.address or None)
        except Exception as exc:
            self.report({"ERROR"}, f"Cannot connect: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Connecting to {STATE.address}")
        return {"FINISHED"}


class SPLATBRIDGE_OT_disconnect(bpy.types.Operator):
    """Close the connection to the backend (running jobs go on and are fetched later)"""
    bl_idname = "splatbridge.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        disconnect()
        return {"FINISHED"}


class SPLATBRIDGE_OT_clear_jobs(bpy.types.Operator):
    """Forget finished jobs in this scene's job list"""
    bl_idname = "splatbridge.clear_jobs"
    bl_label = "Clear Finished Jobs"

    def execute(self, context):
        jobs = context.scene.splatbridge_jobs
        for i in reversed(range(len(jobs))):
            if jobs[i].handled:
                jobs.remove(i)
        return {"FINISHED"}


CLASSES = (SplatBridgeJobRecord, SPLATBRIDGE_OT_connect, SPLATBRIDGE_OT_disconnect,
           SPLATBRIDGE_OT_clear_jobs)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.splatbridge_jobs = CollectionProperty(type=SplatBridgeJobRecord)
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    disconnect()
    del bpy.types.Scene.splatbridge_jobs
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
