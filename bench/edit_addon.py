"""The add-on's editing operations at 1M splats in headless Blender: what a click costs, including the
transfers between Blender's data and numpy (read the splats, read/write the selection and state).

    python bench/edit_addon.py [--n 1000000] [--degree 3] [--repeat 3] [--native]

Each line is the median of ``--repeat`` runs (one warm-up first) and its ratio to ``read`` (reading the
splats out of the object, the floor of any operation that looks at them) in the same run; the pure-numpy
maths alone is ``bench/edit_ops.py``. ``--native``: a Gaussian-splat point cloud (Blender 5.3+), else
the mesh representation. The scene is ``bench/edit_ops.scene``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.edit_ops import scene  # noqa: E402
from bench.io import median_time, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--degree", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--native", action="store_true")
    args = p.parse_args(argv)

    import bpy
    from build import assemble_addon
    base = Path(tempfile.mkdtemp(prefix="sb_bench_addon_"))
    assemble_addon(base)
    sys.path.insert(0, str(base))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    import importlib
    mods = {m: importlib.import_module(f"splatbridge.{m}")
            for m in ("splat_object", "splat_state", "ops_select", "ops_splat_edit")}
    for m in ("ops_select", "ops_splat_edit"):
        mods[m].register()
    so, st, sel, ed = (mods[m] for m in ("splat_object", "splat_state", "ops_select", "ops_splat_edit"))
    from splatbridge.shared.splats import Splats
    src = Splats.from_arrays(scene(args.n, args.degree).to_arrays())
    obj = so.create_splat_object(bpy.context, "Bench", src, native=args.native)
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    half = np.arange(args.n) % 2 == 0

    def fresh():
        so.update_splat_object(obj, src)
        st.set_selected(obj, np.zeros(args.n, bool))

    ops = {
        "read (splats, object space)": lambda: so.read_splats_from_object(obj, apply_transform=False),
        "read without higher SH (selection input)": lambda: so.read_splats_from_object(obj, False, sh=False),
        "read state": lambda: st.read_state(obj),
        "write selection": lambda: st.set_selected(obj, half),
        "select inside mesh (cube)": lambda: sel.select_inside(obj, cube),
        "select by opacity": lambda: sel.select_by_opacity(obj, 0.0, 0.3),
        "select by size": lambda: sel.select_by_size(obj, 0.003, None),
        "select by colour": lambda: sel.select_by_color(obj, 0, 0.2),
        "select floaters (0.5)": lambda: sel.select_floaters(obj, 0.5),
        "invert": lambda: sel.select_invert(obj),
        "hide selected": lambda: (st.set_selected(obj, half), ed.hide_selected(obj), st.set_hidden(obj, ~half & False)),
        "delete half (then restore)": lambda: (st.set_selected(obj, half), ed.delete_selected(obj), fresh()),
        "restore (write splats)": fresh,
    }
    times = {}
    for name, fn in ops.items():
        fresh()
        times[name] = median_time(fn, args.repeat)
    ref = times["read (splats, object space)"]
    rows = [[name, f"{1000 * t:.0f} ms", f"{t / ref:.2f}"] for name, t in times.items()]
    kind = "native point cloud" if args.native else "mesh"
    print_table(f"add-on editing at {args.n} splats, SH degree {args.degree}, {kind} (bpy {bpy.app.version_string})",
                ["operation", "time", "x read"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
