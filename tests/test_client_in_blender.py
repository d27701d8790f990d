"""The backend client inside Blender's process: submits and undo steps together must not crash it.

Found while testing final renders: with zero-copy sends, pyzmq starts a garbage-collector thread that
releases the sent buffers later, and that thread running while ``bpy.ops.ed.undo_push`` runs crashes
Blender (SIGSEGV in the thread or in the undo push; bpy 5.0.1, pyzmq 27.3: a loop of 20 zero-copy
sends + undo pushes after ``read_factory_settings`` crashed within 30 rounds every time, the same loop
with copying sends never did). The add-on pushes an undo step after every applied result, so the client
copies its sends. The script runs in a fresh interpreter: a garbage-collector thread left by another
test in this process would hide the first check.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import bpy
    import zmq
    from zmq.utils.garbage import gc
    from shared.client import BackendClient

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = BackendClient(f"tcp://127.0.0.1:{port}")
    images = np.random.default_rng(0).integers(0, 255, (8, 128, 128, 4), dtype=np.uint8)   # 512 KiB
    for round in range(ROUNDS):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        win = bpy.context.window_manager.windows[0]
        for k in range(10):
            client.submit("train", {"steps": 1}, {"images": images})
            router.recv_multipart()
            with bpy.context.temp_override(window=win, screen=win.screen):
                bpy.ops.ed.undo_push(message=f"step {k}")
        if gc.is_alive():
            print("pyzmq's garbage-collector thread is running: a send was zero-copy", flush=True)
            sys.exit(3)
    client.close()
    print("ok", flush=True)
""")


def test_submits_and_undo_pushes_in_blender_do_not_crash(tmp_path):
    script = tmp_path / "client_in_blender.py"
    script.write_text(SCRIPT.replace("ROUNDS", "15"))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, f"exit {proc.returncode} (-11 / 139: segfault):\n{out}"
    assert "ok" in proc.stdout
