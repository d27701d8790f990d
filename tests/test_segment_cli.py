"""``python -m backend segment SPLATS MASKS.npz --out FILE``: the segment job from the command line (a
real subprocess); the labels land in ``FILE.labels.npy`` (int32[N], input order); a masks file without
the needed arrays is a usage error (exit 2) naming what is missing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edit_scenes import label_images, orbit_rig, three_objects
from shared.formats import write_splats

pytestmark = [pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "backend", "segment", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_segment_cli_writes_labels(tmp_path):
    truth, objects = three_objects(n=150)
    viewmats, Ks = orbit_rig(8, 48)
    labels = label_images(truth, objects, viewmats, Ks, 48)
    write_splats(tmp_path / "scene.ply", truth)
    np.savez(tmp_path / "masks.npz", labels=labels, viewmats=viewmats, Ks=Ks)
    out = tmp_path / "out.ply"
    proc = _run(str(tmp_path / "scene.ply"), str(tmp_path / "masks.npz"), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out.ply.labels.npy")
    assert got.dtype == np.int32 and got.shape == (len(truth),)
    assert (got == objects).mean() >= 0.97, np.bincount(got + 1)
    assert (tmp_path / "out.ply.json").is_file()

    np.savez(tmp_path / "bad.npz", labels=labels, viewmats=viewmats)
    proc = _run(str(tmp_path / "scene.ply"), str(tmp_path / "bad.npz"), "--out", str(out), "--device", "cpu")
    assert proc.returncode == 2 and "has no array 'Ks'" in proc.stderr, proc.stderr
