"""Selecting splats: pure functions that return boolean masks ``bool[N]`` (True = selected).

Everything works on numpy arrays (``points`` f32/f64[N, 3] in one space, normally world space) or on
``shared.splats.Splats``; nothing here knows Blender. Volumes are given the way Blender holds them: a
mesh as its vertices and triangles in object space plus its ``matrix_world``, a sphere or box as the
object's ``matrix_world`` applied to the unit sphere / the cube [-1, 1]^3 (Blender's default cube and
the sphere and cube empties).

* :func:`inside_mesh`: inside a closed triangle mesh (ray parity along the mesh's local +Z with an exact
  tie rule, accelerated by a voxel grid: only points in voxels the surface touches get the per-point
  ray test); :func:`inside_sphere`, :func:`inside_box`.
* :func:`by_opacity`, :func:`by_size`, :func:`by_color` (similarity to a picked splat's colour).
* :func:`floaters`: small disconnected clusters (connected components of a voxel grid), low-opacity and
  huge splats, under one ``strength`` in 0..1.
* :func:`invert`, :func:`grow`, :func:`shrink` (26-neighbourhood on a voxel grid).

Combine masks with numpy (``a | b``, ``a & ~b``). Spaces: points and volumes must be in one space. For a
splat object's own (object-space) means, pass the volume's matrix relative to it:
``inverse(splat_object.matrix_world) @ volume_object.matrix_world``.
"""
from __future__ import annotations

import math

import numpy as np

from .splats import Splats

#: largest dense voxel grid the neighbourhood functions allocate (cells); coarser cells beyond it
MAX_DENSE_CELLS = 1 << 22
#: points per block in :func:`inside_mesh`'s pass over the points (float64 temporaries stay in cache)
_BLOCK = 16384


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _points(points: np.ndarray | Splats) -> np.ndarray:
    p = points.means if isinstance(points, Splats) else np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {p.shape}")
    return p


def _col_reduce(a: np.ndarray, op) -> np.ndarray:
    """``op`` (np.min/np.max) of each column of [N, 3]: column by column, because numpy 1.x reduces
    along a short last axis about 20x slower than along one contiguous column."""
    return np.array([op(a[:, i]) for i in range(a.shape[1])])


def _row_max3(a: np.ndarray) -> np.ndarray:
    """Largest of the 3 entries of each row of [N, 3] (see ``_col_reduce`` for why not ``max(axis=1)``)."""
    return np.maximum(np.maximum(a[:, 0], a[:, 1]), a[:, 2])


def _matrix(matrix: np.ndarray | None) -> np.ndarray:
    if matrix is None:
        return np.eye(4)
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"matrix_world must be a finite 4x4 matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("matrix_world is singular (a zero scale): the volume has no inside")
    return m


def _to_local(points: np.ndarray, matrix: np.ndarray, lo_world: np.ndarray, hi_world: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the points inside the world box [lo, hi], those points in the volume's local space f64)."""
    p = points
    keep = ((p[:, 0] >= lo_world[0]) & (p[:, 0] <= hi_world[0]) & (p[:, 1] >= lo_world[1])
            & (p[:, 1] <= hi_world[1]) & (p[:, 2] >= lo_world[2]) & (p[:, 2] <= hi_world[2]))
    idx = np.flatnonzero(keep)
    inv = np.linalg.inv(matrix)
    local = p[idx].astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
    return idx, local


def _world_box(local_lo: np.ndarray, local_hi: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[x, y, z] for x in (local_lo[0], local_hi[0]) for y in (local_lo[1], local_hi[1])
                        for z in (local_lo[2], local_hi[2])])
    w = corners @ matrix[:3, :3].T + matrix[:3, 3]
    pad = 1e-6 * max(1.0, float(np.abs(w).max()))
    return w.min(axis=0) - pad, w.max(axis=0) + pad


# ----------------------------------------------------------------------------------------------
# volumes
# ----------------------------------------------------------------------------------------------

def inside_sphere(points: np.ndarray | Splats, matrix_world: np.ndarray | None = None) -> np.ndarray:
    """Points inside (or on) the unit sphere mapped by ``matrix_world`` (an ellipsoid under non-uniform
    scale): Blender's sphere empty or a UV sphere of radius 1. Centre + radius r: ``matrix_world`` =
    translation(centre) @ diag(r, r, r, 1)."""
    p = _points(points)
    m = _matrix(matrix_world)
    out = np.zeros(len(p), bool)
    idx, local = _to_local(p, m, *_world_box(-np.ones(3), np.ones(3), m))
    out[idx] = np.einsum("ij,ij->i", local, local) <= 1.0
    return out


def inside_box(points: np.ndarray | Splats, matrix_world: np.ndarray | None = None) -> np.ndarray:
    """Points inside (or on) the cube [-1, 1]^3 mapped by ``matrix_world`` (Blender's default cube,
    the cube empty; any rotation, scale or shear)."""
    p = _points(points)
    m = _matrix(matrix_world)
    out = np.zeros(len(p), bool)
    idx, local = _to_local(p, m, *_world_box(-np.ones(3), np.ones(3), m))
    out[idx] = (np.abs(local[:, 0]) <= 1.0) & (np.abs(local[:, 1]) <= 1.0) & (np.abs(local[:, 2]) <= 1.0)
    return out


class _Mesh:
    """A closed triangle mesh prepared for ray-parity queries along +Z (local space, float64)."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray):
        v = np.asarray(vertices, dtype=np.float64)
        t = np.asarray(triangles)
        if v.ndim != 2 or v.shape[1] != 3 or not np.isfinite(v).all():
            raise ValueError(f"mesh vertices must be finite [V, 3], got shape {v.shape}")
        if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
            raise ValueError(f"mesh triangles must be integer [T, 3] vertex indices, got {t.dtype}{list(t.shape)}")
        if len(t) == 0:
            raise ValueError("the mesh has no faces: a volume needs a closed mesh")
        if t.min() < 0 or t.max() >= len(v):
            raise ValueError(f"mesh triangles index vertices 0..{len(v) - 1}, found {int(t.min())}..{int(t.max())}")
        # weld coincident vertices so that a shared edge is evaluated bit for bit alike on both sides
        v, inverse = np.unique(v, axis=0, return_inverse=True)
        t = inverse.reshape(-1)[t]
        t = t[(t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 2] != t[:, 0])]
        edges = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        if (counts % 2).any():
            raise ValueError(f"the mesh is not closed: {int((counts % 2).sum())} edges have an odd number of "
                             "faces (holes). Inside/outside needs a watertight mesh")
        self.v, self.t = v, t
        self.lo, self.hi = v.min(axis=0), v.max(axis=0)
        # canonical edges (lower vertex index first) per edge slot j = 0, 1, 2 of each triangle (edges
        # v0v1, v1v2, v2v0): start point, direction, the tie sign of the symbolic perturbation and
        # whether the triangle runs along the canonical direction
        cols_f, cols_b = [], []
        for i, j in ((0, 1), (1, 2), (2, 0)):
            lo_, hi_ = np.minimum(t[:, i], t[:, j]), np.maximum(t[:, i], t[:, j])
            a, b = v[lo_], v[hi_]
            dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
            cols_f += [a[:, 0], a[:, 1], dx, dy]
            cols_b += [np.where(dy != 0, -dy, dx) > 0, t[:, i] < t[:, j]]
        # one row per quantity, so that a gather by triangle gives contiguous rows for the edge tests
        self.edge_f = np.stack(cols_f)                  # [12, T]: ax, ay, dx, dy per edge slot
        self.edge_b = np.stack(cols_b)                  # [6, T]: tie sign positive, forward per slot
        # xy column grid over the mesh's shadow: triangle lists per cell (CSR)
        ext = np.maximum(self.hi - self.lo, 1e-12)
        g = int(np.clip(4 * math.sqrt(len(t)), 1, 512))
        self.h2 = max(ext[0], ext[1]) / g
        self.gx = max(1, int(math.ceil(ext[0] / self.h2)))
        self.gy = max(1, int(math.ceil(ext[1] / self.h2)))
        tv = v[t]                                                                           # [T,3,3]
        c0 = self._cell2(tv[:, :, :2].min(axis=1))
        c1 = self._cell2(tv[:, :, :2].max(axis=1))
        nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
        cnt = nx * ny
        tid = np.repeat(np.arange(len(t)), cnt)
        k = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cell = (c0[tid, 1] + k // nx[tid]) * self.gx + c0[tid, 0] + k % nx[tid]
        order = np.argsort(cell, kind="stable")
        self.cell_tris = tid[order]
        counts = np.bincount(cell, minlength=self.gx * self.gy)
        self.cell_start = np.concatenate([[0], np.cumsum(counts)])
        self.tv = tv
        self.zmax = tv[:, :, 2].max(axis=1)
        # each triangle's xy box, padded by 1e-7 of the mesh's extent: a ray outside it cannot be counted
        # by the rounded edge tests either (their error is ~1e-16 of the extent; only a sliver with an
        # angle under ~1e-9 rad could be), so pairs outside it are dropped before the edge tests
        pad = 1e-7 * float(ext.max())
        xy_lo, xy_hi = tv[:, :, :2].min(axis=1) - pad, tv[:, :, :2].max(axis=1) + pad
        self.box = (xy_lo[:, 0].copy(), xy_hi[:, 0].copy(), xy_lo[:, 1].copy(), xy_hi[:, 1].copy())

    def _cell2(self, xy: np.ndarray) -> np.ndarray:
        c = np.floor((xy - self.lo[:2]) / self.h2).astype(np.int64)
        return np.stack([np.clip(c[:, 0], 0, self.gx - 1), np.clip(c[:, 1], 0, self.gy - 1)], axis=1)

    def crossings(self, p: np.ndarray, chunk: int = 1 << 20, min_z: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(point index, z) of every crossing of the upward ray from each point [M,3] with the surface
        (``min_z``: only triangles reaching the point's height are tried; else the ray's z is ignored).
        Exact tie rule: the ray is moved by an infinitesimal (eps, eps^2) in x, y (simulation of simplicity),
        so a ray through an edge or a vertex counts exactly one face."""
        inb = ((p[:, 0] >= self.lo[0]) & (p[:, 0] <= self.hi[0]) & (p[:, 1] >= self.lo[1])
               & (p[:, 1] <= self.hi[1]))
        pid = np.flatnonzero(inb)
        cell = self._cell2(p[pid, :2])
        cell = cell[:, 1] * self.gx + cell[:, 0]
        cnt = self.cell_start[cell + 1] - self.cell_start[cell]
        out_i, out_z = [], []
        # pieces of at most ``chunk`` (point, triangle) pairs (a point's pairs stay in one piece)
        csum = np.cumsum(cnt)
        start = 0
        while start < len(pid):
            before = csum[start - 1] if start else 0
            stop = max(int(np.searchsorted(csum, before + chunk, side="right")), start + 1)
            sl = slice(start, stop)
            start = stop
            c, n = cell[sl], cnt[sl]
            pi = np.repeat(pid[sl], n)
            k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
            ti = self.cell_tris[np.repeat(self.cell_start[c], n) + k]
            px, py = p[pi, 0], p[pi, 1]
            x0, x1, y0, y1 = self.box
            keep = (px >= x0[ti]) & (px <= x1[ti]) & (py >= y0[ti]) & (py <= y1[ti])
            if min_z:                                   # triangles wholly below the point: no crossing above
                keep &= self.zmax[ti] >= p[pi, 2]
            pi, ti, px, py = pi[keep], ti[keep], px[keep], py[keep]
            f, bb = self.edge_f[:, ti], self.edge_b[:, ti]              # one gather of each table
            e, side = [], []
            for j in range(3):
                ej = f[4 * j + 2] * (py - f[4 * j + 1]) - f[4 * j + 3] * (px - f[4 * j])
                forward = bb[2 * j + 1]
                pos = (ej > 0) | ((ej == 0) & bb[2 * j])                    # sign at the perturbed point
                side.append(pos == forward)                                  # ... in the triangle's own order
                e.append(np.where(forward, ej, -ej))
            hit = (side[0] & side[1] & side[2]) | ~(side[0] | side[1] | side[2])
            if not hit.any():
                continue
            pi, ti = pi[hit], ti[hit]
            e0, e1, e2 = e[0][hit], e[1][hit], e[2][hit]
            tv = self.tv[ti]
            # barycentric weights: edge (v0,v1) weighs v2, (v1,v2) weighs v0, (v2,v0) weighs v1
            area = ((tv[:, 1, 0] - tv[:, 0, 0]) * (tv[:, 2, 1] - tv[:, 0, 1])
                    - (tv[:, 1, 1] - tv[:, 0, 1]) * (tv[:, 2, 0] - tv[:, 0, 0]))
            z = (e1 * tv[:, 0, 2] + e2 * tv[:, 1, 2] + e0 * tv[:, 2, 2]) / area
            out_i.append(pi)
            out_z.append(z)
        if not out_i:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(out_i), np.concatenate(out_z)

    def contains(self, p: np.ndarray) -> np.ndarray:
        """Exact ray-parity test of points [M,3] (local space)."""
        pi, z = self.crossings(p, min_z=True)
        above = pi[z > p[pi, 2]]
        return (np.bincount(above, minlength=len(p)) & 1).astype(bool)


def inside_mesh(points: np.ndarray | Splats, vertices: np.ndarray, triangles: np.ndarray,
                matrix_world: np.ndarray | None = None, resolution: int = 64) -> np.ndarray:
    """Points inside a closed triangle mesh (``vertices`` [V,3] in object space, ``triangles`` int[T,3],
    e.g. Blender's loop triangles) placed by ``matrix_world`` (any invertible affine map).

    Ray parity along the mesh's local +Z, exact for watertight meshes: coincident vertices are welded,
    every shared edge is evaluated identically on both of its faces, and a ray through an edge or a
    vertex is moved by a symbolic infinitesimal so that it crosses exactly one face there. Points on
    the surface itself may fall either way. A mesh with holes raises ``ValueError``.

    Speed: world bounding-box prefilter; then a voxel grid (``resolution`` cells along the longest
    axis) whose voxels the surface does not touch take the inside/outside state of their centre (one
    ray per grid column); only points in voxels the surface touches get their own ray.
    """
    p = _points(points)
    m = _matrix(matrix_world)
    mesh = _Mesh(vertices, triangles)
    out = np.zeros(len(p), bool)
    lo_w, hi_w = _world_box(mesh.lo, mesh.hi, m)
    inv = np.linalg.inv(m)
    lin, shift = inv[:3, :3].T, inv[:3, 3]
    grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None
    exact_idx, exact_local = [], []
    # the points in row blocks (their float64 temporaries stay in cache): world box, local space, voxel
    for b0 in range(0, len(p), _BLOCK):
        pb = p[b0:b0 + _BLOCK]
        keep = ((pb[:, 0] >= lo_w[0]) & (pb[:, 0] <= hi_w[0]) & (pb[:, 1] >= lo_w[1])
                & (pb[:, 1] <= hi_w[1]) & (pb[:, 2] >= lo_w[2]) & (pb[:, 2] <= hi_w[2]))
        ib = np.flatnonzero(keep)
        if len(ib) == 0:
            continue
        if grid is None:
            grid = _mesh_voxels(mesh, resolution)
        boundary, inside_vox, lo, dims, h = grid
        local = pb[ib].astype(np.float64) @ lin + shift
        ok = np.ones(len(local), bool)
        flat = np.zeros(len(local), np.int64)
        for axis, stride in ((2, int(dims[0] * dims[1])), (1, int(dims[0])), (0, 1)):
            c = np.floor((local[:, axis] - lo[axis]) * (1.0 / h)).astype(np.int64)
            ok &= (c >= 0) & (c < dims[axis])
            flat += c * stride
        flat[~ok] = 0
        out[b0 + ib] = ok & inside_vox[flat]
        exact = np.flatnonzero(ok & boundary[flat])
        exact_idx.append(b0 + ib[exact])
        exact_local.append(local[exact])
    if exact_idx and sum(len(e) for e in exact_idx):
        out[np.concatenate(exact_idx)] = mesh.contains(np.concatenate(exact_local))
    return out


def _mesh_voxels(mesh: _Mesh, resolution: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(boundary bool[cells], inside bool[cells], grid origin f64[3], dims int[3], cell size h) of the
    voxel grid of :func:`inside_mesh` over the mesh's local bounds; flat cell index ix + nx*(iy + ny*iz).
    Boundary: voxels the surface touches; inside: the inside state of each voxel's centre."""
    ext = np.maximum(mesh.hi - mesh.lo, 1e-12)
    h = float(ext.max()) / max(1, int(resolution))
    lo = mesh.lo - 0.5 * h
    dims = np.maximum(1, np.ceil((ext + h) / h).astype(np.int64))
    nx, ny, nz = (int(d) for d in dims)
    boundary = np.zeros(nx * ny * nz, bool)
    tv = mesh.tv
    normal = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
    reach = 0.5 * h * np.abs(normal).sum(axis=1) * (1 + 1e-9) + 1e-12 * np.abs(normal).sum(axis=1)
    c0 = np.floor((tv.min(axis=1) - lo) / h - 1e-9).astype(np.int64).clip(0, dims - 1)
    c1 = np.floor((tv.max(axis=1) - lo) / h + 1e-9).astype(np.int64).clip(0, dims - 1)
    span = c1 - c0 + 1
    cnt = span.prod(axis=1)
    for s in range(0, len(tv), 4096):            # bounded memory for large triangles
        sl = slice(s, s + 4096)
        n = cnt[sl]
        ti = np.repeat(np.arange(s, s + len(n)), n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        sx, sy = span[ti, 0], span[ti, 1]
        ix = c0[ti, 0] + k % sx
        iy = c0[ti, 1] + (k // sx) % sy
        iz = c0[ti, 2] + k // (sx * sy)
        centre = lo + (np.stack([ix, iy, iz], axis=1) + 0.5) * h
        d = np.abs(np.einsum("ij,ij->i", normal[ti], centre - tv[ti, 0]))
        touch = d <= reach[ti]
        boundary[(ix + nx * (iy + ny * iz))[touch]] = True
    # inside state of every voxel centre: one upward ray per column, crossings binned by layer
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    col_xy = lo[:2] + (np.stack([gx.ravel(), gy.ravel()], axis=1) + 0.5) * h          # col = ix*ny + iy
    rays = np.concatenate([col_xy, np.full((len(col_xy), 1), lo[2] - h)], axis=1)
    ci, cz = mesh.crossings(rays)
    layer = np.clip(np.floor((cz - lo[2]) / h).astype(np.int64), -1, nz) + 1          # 0..nz+1
    hist = np.bincount(ci * (nz + 2) + layer, minlength=len(rays) * (nz + 2)).reshape(len(rays), nz + 2)
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]                                  # crossings in layers >= j
    parity = (above[:, 2:nz + 2] & 1).astype(bool)                                     # voxel k: layers > k
    inside_vox = parity.reshape(nx, ny, nz).transpose(2, 1, 0).ravel()                 # flat ix + nx*(iy + ny*iz)
    return boundary, inside_vox, lo, dims, h


# ----------------------------------------------------------------------------------------------
# thresholds and colour
# ----------------------------------------------------------------------------------------------

def _between(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    out = np.ones(len(values), bool)
    if low is not None:
        out &= values >= low
    if high is not None:
        out &= values <= high
    return out


def by_opacity(splats: Splats, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Splats whose opacity (0..1, after the sigmoid) lies in [low, high] (None: unbounded)."""
    return _between(splats.alphas(), low, high)


def splat_sizes(splats: Splats, measure: str = "max") -> np.ndarray:
    """Per-splat size in metres of the splats' own space: the largest standard deviation ("max"), or
    the geometric mean of the three ("mean")."""
    if measure == "max":
        return np.exp(_row_max3(splats.scales))
    if measure == "mean":
        sc = splats.scales
        return np.exp((sc[:, 0] + sc[:, 1] + sc[:, 2]) * np.float32(1.0 / 3.0))
    raise ValueError(f"size measure must be 'max' or 'mean', got {measure!r}")


def by_size(splats: Splats, low: float | None = None, high: float | None = None, measure: str = "max"
            ) -> np.ndarray:
    """Splats whose size (metres, :func:`splat_sizes`) lies in [low, high] (None: unbounded).
    Multiply the bounds by 1/object scale to give them in world units."""
    return _between(splat_sizes(splats, measure), low, high)


def by_color(splats: Splats, color: np.ndarray, tolerance: float) -> np.ndarray:
    """Splats whose base colour (the DC term's linear RGB, clipped to 0..1) is within ``tolerance``
    (Euclidean distance in linear RGB, 0..sqrt(3)) of ``color``."""
    c = np.asarray(color, dtype=np.float32).reshape(3)
    d = splats.base_colors() - c
    return np.einsum("ij,ij->i", d, d) <= np.float32(tolerance) ** 2


def by_color_of(splats: Splats, index: int, tolerance: float) -> np.ndarray:
    """:func:`by_color` with the colour of splat ``index`` (the eyedropper's pick); it is selected itself."""
    if not 0 <= index < len(splats):
        raise IndexError(f"picked splat {index} is not in 0..{len(splats) - 1}")
    return by_color(splats, splats.base_colors()[index], tolerance)


# ----------------------------------------------------------------------------------------------
# voxel neighbourhoods
# ----------------------------------------------------------------------------------------------

class _Grid:
    """Dense voxel indexing of points: cell size ``h`` (grown until the grid has at most
    ``MAX_DENSE_CELLS`` cells) over [lo, hi]."""

    def __init__(self, points: np.ndarray, h: float, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
        p = points
        self.lo = (_col_reduce(p, np.min) if lo is None else lo).astype(np.float64)
        hi = (_col_reduce(p, np.max) if hi is None else hi).astype(np.float64)
        ext = np.maximum(hi - self.lo, 1e-9)
        h = max(float(h), 1e-9)
        while np.prod(np.floor(ext / h) + 1) > MAX_DENSE_CELLS:
            h *= 1.25
        self.h = h
        self.dims = (np.floor(ext / h) + 1).astype(np.int64)
        self.size = int(np.prod(self.dims))

    def cells(self, p: np.ndarray) -> np.ndarray:
        """Flat cell index of each point (points outside the grid are clamped onto its border)."""
        flat = np.zeros(len(p), np.int64)
        stride = 1
        for i in range(3):                       # column by column (see _col_reduce)
            c = ((p[:, i] - p.dtype.type(self.lo[i])) * p.dtype.type(1.0 / self.h)).astype(np.int64)
            np.clip(c, 0, self.dims[i] - 1, out=c)
            flat += c * stride
            stride *= int(self.dims[i])
        return flat

    def neighbours(self, cells: np.ndarray, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(source position, neighbour cell) for each of the 26 (``half``: 13) neighbours of ``cells``
        that lie inside the grid."""
        nx, ny, nz = (int(d) for d in self.dims)
        x, y, z = cells % nx, (cells // nx) % ny, cells // (nx * ny)
        offs = [(i, j, k) for k in (-1, 0, 1) for j in (-1, 0, 1) for i in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
        if half:
            offs = offs[13:]
        src, dst = [], []
        for i, j, k in offs:
            ok = ((x + i >= 0) & (x + i < nx) & (y + j >= 0) & (y + j < ny) & (z + k >= 0) & (z + k < nz))
            pos = np.flatnonzero(ok)
            src.append(pos)
            dst.append(cells[pos] + i + nx * (j + ny * k))
        return np.concatenate(src), np.concatenate(dst)


def _default_radius(splats: Splats, mask: np.ndarray | None = None) -> float:
    sizes = splat_sizes(splats if mask is None or not mask.any() else splats.subset(mask))
    return float(3.0 * np.median(sizes)) if len(sizes) else 1.0


def invert(mask: np.ndarray) -> np.ndarray:
    """The unselected splats."""
    return ~np.asarray(mask, bool)


def grow(splats: Splats | np.ndarray, mask: np.ndarray, radius: float | None = None) -> np.ndarray:
    """``mask`` plus every splat in a voxel next to (26-neighbourhood) or in a voxel holding a selected
    splat. Voxels are ``radius`` metres (default 3x the median largest standard deviation of the
    selected splats), so a step reaches between ``radius`` and ~3.5 ``radius``."""
    mask = np.asarray(mask, bool)
    p = _points(splats)
    if len(mask) != len(p):
        raise ValueError(f"mask has {len(mask)} entries for {len(p)} splats")
    if not mask.any():
        return mask.copy()
    if radius is None:
        radius = _default_radius(splats, mask) if isinstance(splats, Splats) else 0.05
    grid = _Grid(p, radius)
    cells = grid.cells(p)
    marked = np.zeros(grid.size, bool)
    sel = np.unique(cells[mask]) if mask.sum() < len(mask) // 8 else np.flatnonzero(
        np.bincount(cells[mask], minlength=grid.size))
    marked[sel] = True
    marked[grid.neighbours(sel)[1]] = True
    return marked[cells]


def shrink(splats: Splats | np.ndarray, mask: np.ndarray, radius: float | None = None) -> np.ndarray:
    """``mask`` minus the splats that :func:`grow` of the unselected splats would reach (selected
    splats in or next to a voxel holding an unselected splat)."""
    mask = np.asarray(mask, bool)
    if radius is None and isinstance(splats, Splats):
        radius = _default_radius(splats, mask)
    return mask & ~grow(splats, ~mask, radius)


def _components(cells_occupied: np.ndarray, grid: _Grid) -> np.ndarray:
    """Connected-component label (26-connectivity) of each occupied cell; labels are the smallest
    position in ``cells_occupied`` (sorted) of the component."""
    n = len(cells_occupied)
    lookup = np.full(grid.size, -1, np.int64)
    lookup[cells_occupied] = np.arange(n)
    src, dst = grid.neighbours(cells_occupied, half=True)
    node = lookup[dst]
    ok = node >= 0
    u, v = src[ok], node[ok]
    parent = np.arange(n)
    while True:
        pu, pv = parent[u], parent[v]
        diff = pu != pv
        if not diff.any():
            break
        lo_, hi_ = np.minimum(pu[diff], pv[diff]), np.maximum(pu[diff], pv[diff])
        parent[hi_] = lo_                    # hook roots onto smaller roots (any writer wins)
        while True:                          # pointer jumping back to roots
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent


def clusters(points: np.ndarray | Splats, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Connected clusters of points on a voxel grid of ``cell`` metres (26-connectivity).
    Returns (cluster id per point int64[N], splat count per cluster id)."""
    p = _points(points)
    grid = _Grid(p, cell)
    cells = grid.cells(p)
    counts = np.bincount(cells, minlength=grid.size)
    occupied = np.flatnonzero(counts)
    label = _components(occupied, grid)
    cell_label = np.zeros(grid.size, np.int64)
    cell_label[occupied] = label
    comp = cell_label[cells]
    return comp, np.bincount(comp, minlength=len(occupied))


def fill_labels(points: np.ndarray | Splats, labels: np.ndarray, cell: float, unknown: int = -1,
                max_rings: int = 64) -> np.ndarray:
    """``labels`` (int[N]) with the ``unknown`` entries filled from their 3D neighbourhood: on a voxel
    grid of ``cell`` metres, each voxel holding known labels takes their majority; voxels holding only
    unknown points take the majority label of their labelled 26-neighbours, ring after ring (up to
    ``max_rings``). Points farther than that from any known label stay ``unknown``. Known entries are
    never changed."""
    p = _points(points)
    labels = np.asarray(labels)
    if labels.shape != (len(p),):
        raise ValueError(f"labels has shape {labels.shape} for {len(p)} points")
    known = labels != unknown
    out = labels.copy()
    if known.all() or not known.any():
        return out
    grid = _Grid(p, cell)
    cells = grid.cells(p)
    values, code = np.unique(labels[known], return_inverse=True)
    k = len(values)
    occupied, cell_idx = np.unique(cells, return_inverse=True)
    votes = np.bincount(cell_idx[known] * k + code.reshape(-1), minlength=len(occupied) * k).reshape(-1, k)
    lookup = np.full(grid.size, -1, np.int64)
    lookup[occupied] = np.arange(len(occupied))
    src, dst = grid.neighbours(occupied)
    nb = lookup[dst]
    ok = nb >= 0
    src, nb = src[ok], nb[ok]
    has = votes.sum(axis=1) > 0
    for _ in range(max_rings):
        todo = ~has[src] & has[nb]
        if not todo.any():
            break
        gain = np.zeros_like(votes)
        np.add.at(gain, src[todo], votes[nb[todo]])
        votes = votes + gain * ~has[:, None]
        has = votes.sum(axis=1) > 0
    cell_label = np.where(has, values[np.argmax(votes, axis=1)], unknown)
    fill = ~known
    out[fill] = cell_label[cell_idx[fill]]
    return out


def floaters(splats: Splats, strength: float = 0.5, cell: float | None = None) -> np.ndarray:
    """Floaters, the more the higher ``strength`` (0: none, 1: most aggressive):

    * splats in small disconnected clusters: connected components of a voxel grid (``cell`` metres,
      default max(robust scene extent / 128, 2x the median splat size)) with fewer than
      ``strength`` x 4 % of the splats of the largest cluster;
    * low-opacity splats: opacity below 0.01 x ``strength``;
    * huge splats: largest standard deviation above the 99th percentile times 10^(1 - strength)
      (10x near 0, 3.2x at 0.5, 1x at 1).

    Far, isolated splats always form their own clusters; a scene's large disconnected parts (a
    second object, the background) are kept.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in 0..1, got {strength}")
    n = len(splats)
    out = np.zeros(n, bool)
    if n == 0 or strength == 0.0:
        return out
    p = splats.means
    sizes = splat_sizes(splats)
    if cell is None:
        sample = p[:: max(1, n // 100_000)]
        q = np.array([np.percentile(sample[:, i], [1, 99]) for i in range(3)])
        q_lo, q_hi = q[:, 0], q[:, 1]
        extent = float(np.max(q_hi - q_lo))
        cell = max(extent / 128.0, 2.0 * float(np.median(sizes[:: max(1, n // 100_000)])), 1e-6)
    comp, counts = clusters(p, cell)
    out |= counts[comp] < strength * 0.04 * counts.max()
    out |= splats.alphas() < 0.01 * strength
    q99 = float(np.percentile(sizes[:: max(1, n // 100_000)], 99))
    out |= sizes > q99 * 10.0 ** (1.0 - strength)
    return out


__all__ = ["MAX_DENSE_CELLS", "by_color", "by_color_of", "by_opacity", "by_size", "clusters", "fill_labels", "floaters",
           "grow", "inside_box", "inside_mesh", "inside_sphere", "invert", "shrink", "splat_sizes"]
