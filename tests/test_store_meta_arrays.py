"""The job store keeps a result's meta arrays (the segment job's ``labels``): a fetch after the
job ended gives them back bit for bit, and meta.json holds a note instead of the array."""
from __future__ import annotations

import json

import numpy as np

from backend.store import JobStore
from shared.splats import Splats


def test_meta_arrays_survive_the_store(tmp_path):
    store = JobStore(tmp_path)
    store.create("seg1", "segment", {})
    labels = np.array([-1, 0, 3, 1, 2], np.int32)
    store.save_result("seg1", Splats.random(0), {"seconds": 1.0},
                      {"labels": labels, "label_counts": {"1": 1}, "unseen": 0})
    res = store.load_result("seg1")
    assert res.meta["labels"].dtype == np.int32 and np.array_equal(res.meta["labels"], labels)
    assert res.meta["label_counts"] == {"1": 1} and res.meta["unseen"] == 0
    note = json.loads((tmp_path / "seg1" / "result" / "meta.json").read_text())["labels"]
    assert isinstance(note, str) and "int32" in note
    # a result without arrays has none
    store.create("t", "train", {})
    store.save_result("t", Splats.random(3), {}, {"steps": 2})
    assert store.load_result("t").meta == {"steps": 2}
