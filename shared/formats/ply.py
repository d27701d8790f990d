"""The 3D Gaussian Splatting reference PLY (graphdeco-inria/gaussian-splatting `save_ply`).

Layout written: ``binary_little_endian 1.0``, one ``element vertex N`` with float properties
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3`` (normals are zero).
Values are the raw parameters: log scales, logit opacity, quaternion w x y z (``rot_0`` = w), SH
coefficients with ``f_rest`` channel-major: ``f_rest[c*K + k] = shN[:, k, c]``.

Coordinates: written and read as they are (no axis change): the file holds our world (Blender,
Z up). A PLY trained by the reference code is in its COLMAP world (usually Y down); it is imported
unchanged and the user orients it in Blender.

Reading accepts any property order, extra properties (ignored), float or double properties,
missing normals, ascii / binary_little_endian / binary_big_endian, and other elements before or
after ``vertex`` (skipped). The round trip is exact (float32).

Non-finite values (the rule of every reader, ``_common.build_splats``): +-inf in ``opacity`` or
``scale_*`` clamps to the nearest finite float32 (splat-transform writes +inf opacity for fully
opaque splats); NaN anywhere, or inf in any other property, is an error naming the property.
SH degree 0 is written with 45 zero ``f_rest_*`` by default (some tools require them), marked
by the header comment ``splatbridge sh_degree 0`` so that it reads back as degree 0.
"""
from __future__ import annotations

import numpy as np

from ..sh import REST_COUNT
from ..splats import Splats
from ._common import (
    PathLike,
    SplatFormatError,
    build_splats,
    check_property,
    column,
    read_ply_elements,
    read_ply_header,
    write_binary_ply,
)

REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def property_names(k: int) -> list[str]:
    """Vertex property names in the order the reference implementation writes them, for K rest coeffs."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(path: PathLike, splats: Splats, zero_rest_for_degree0: bool = True) -> None:
    """Write `splats` as a 3DGS reference PLY (exact float32 values).

    ``zero_rest_for_degree0`` (default on): SH-degree-0 splats are written with 45 zero
    ``f_rest_*`` (the degree-3 layout the reference code writes), for tools that require them;
    a header comment lets our reader give back degree 0. Off: no ``f_rest_*`` at all.
    """
    comments: tuple[str, ...] = ()
    if zero_rest_for_degree0 and splats.shN.shape[1] == 0:
        splats = splats.with_sh_degree(3)
        comments = ("splatbridge sh_degree 0",)
    n, k = splats.means.shape[0], splats.shN.shape[1]
    names = property_names(k)
    table = np.empty((n, len(names)), dtype="<f4")
    table[:, 0:3] = splats.means
    table[:, 3:6] = 0.0
    table[:, 6:9] = splats.sh0
    rest_end = 9 + 3 * k
    # [N, K, 3] -> [N, 3, K] -> channel-major f_rest
    table[:, 9:rest_end].reshape(n, 3, k)[...] = splats.shN.transpose(0, 2, 1)  # a view: one strided copy
    table[:, rest_end] = splats.opacities
    table[:, rest_end + 1: rest_end + 4] = splats.scales
    table[:, rest_end + 4: rest_end + 8] = splats.quats
    write_binary_ply(path, [("vertex", [(p, "float") for p in names], table)], comments)


def _rest_count(path: PathLike, names: list[str]) -> int:
    rest = {n for n in names if n.startswith("f_rest_")}
    m = len(rest)
    for i in range(m):
        if f"f_rest_{i}" not in rest:
            raise SplatFormatError(path, "element 'vertex'",
                                   f"missing property 'f_rest_{i}' (found {m} f_rest properties, "
                                   f"expected f_rest_0..f_rest_{m - 1})")
    valid = {3 * kk: deg for deg, kk in REST_COUNT.items()}
    if m not in valid:
        raise SplatFormatError(path, "element 'vertex'",
                               f"{m} f_rest properties is not an SH degree 0-3 layout "
                               f"(expected 0, 9, 24 or 45)")
    return m // 3


def read_ply(path: PathLike) -> Splats:
    """Read a 3DGS PLY into Splats; raises SplatFormatError naming the file and property on bad input."""
    header = read_ply_header(path)
    vertex = header.element("vertex")
    if vertex is None:
        raise SplatFormatError(path, "header", "no 'vertex' element "
                               f"(elements: {', '.join(e.name for e in header.elements) or 'none'})")
    names = vertex.property_names()
    for name in REQUIRED:
        if name not in names:
            raise SplatFormatError(path, "element 'vertex'", f"missing property '{name}'")
    k = _rest_count(path, names)
    for name in REQUIRED + [f"f_rest_{i}" for i in range(3 * k)]:  # type errors before reading any data
        check_property(path, vertex, name)
    data = read_ply_elements(path, header, {"vertex"})["vertex"]
    n = vertex.count
    # index of each wanted value in the output layout: [N, 3 + 3 + 1 + 3 + 4 + 3K]
    rest = np.array([f"f_rest_{i}" for i in range(3 * k)]).reshape(3, k).T.reshape(-1)  # -> [K, 3] order
    fields = {"means": REQUIRED[0:3], "sh0": REQUIRED[3:6], "opacities": REQUIRED[6:7],
              "scales": REQUIRED[7:10], "quats": REQUIRED[10:14], "shN": list(rest)}
    shapes = {"means": (n, 3), "sh0": (n, 3), "opacities": (n,), "scales": (n, 3), "quats": (n, 4),
              "shN": (n, k, 3)}
    if header.format != "ascii" and all(p.code == "f4" for p in vertex.properties):
        # Fast path (every file we write, and the reference's): slices or gathers of a float32 matrix.
        flat = data.view(header.byte_order + "f4").reshape(n, len(names))
        arrays = {}
        for field, props in fields.items():
            idx = [names.index(p) for p in props]
            if idx and idx == list(range(idx[0], idx[0] + len(idx))):
                block = flat[:, idx[0]: idx[0] + len(idx)]
            else:
                block = flat[:, idx]
            arrays[field] = np.ascontiguousarray(block, dtype=np.float32).reshape(shapes[field])
    else:
        arrays = {field: np.stack([column(path, header, vertex, data, p) for p in props], axis=-1)
                  .reshape(shapes[field]) if props else np.zeros(shapes[field], np.float32)
                  for field, props in fields.items()}
    labels = {field: [f"element 'vertex' property '{p}'" for p in props] for field, props in fields.items()}
    splats = build_splats(path, arrays, labels)
    if k and "splatbridge sh_degree 0" in header.comments and not splats.shN.any():
        splats = splats.with_sh_degree(0)  # our own zero-padded degree-0 file: exact round trip
    return splats
