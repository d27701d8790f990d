"""Pure-torch reference rasterizer: the same projection, cut-offs and outputs as gsplat 1.5.3's CUDA
path, differentiable through autograd, runs on the CPU (and on CUDA, for cross-checks).

Conventions (all as ``gsplat.rasterization``):

- ``means`` [N,3] world, ``quats`` [N,4] w,x,y,z (any norm), ``scales`` [N,3] *activated* (not log),
  ``opacities`` [N] *activated* (not logit); ``viewmats`` [C,4,4] world-to-camera, OpenCV axes;
  ``Ks`` [C,3,3] pinhole in pixels; pixel (i, j) has its centre at (i + 0.5, j + 0.5).
- Projection: EWA with the Jacobian evaluated at the mean clamped to 1.3x the field of view
  (gsplat's ``persp_proj``), then ``eps2d`` (0.3 px^2) added to the 2D covariance's diagonal;
  culled when depth < near or > far, when det <= 0, when the opacity is < 1/255, or when the
  opacity-aware bounding box (at most 3.33 sigma) misses the image.
- Compositing: gsplat's 16x16 tiles; per tile, the Gaussians whose box overlaps it, front to back
  by depth; alpha = min(0.999, o * exp(-sigma)), skipped when alpha < 1/255 or sigma < 0; a pixel
  stops before the Gaussian that would bring its transmittance to <= 1e-4.
- ``backgrounds``: colour + T * background. ``render_mode`` "D"/"ED"/"RGB+D"/"RGB+ED" append depth
  (z in camera space); "ED" divides the accumulated depth by the accumulated alpha.

Memory is bounded by processing tiles in batches of at most ``max_elements`` (pixel, Gaussian)
pairs; everything else is O(C*N).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from gsplat.cuda._torch_impl import (
    _persp_proj,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
    _world_to_cam,
)
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0   # gsplat's ALPHA_THRESHOLD: contributions below it are skipped
ALPHA_MAX = 0.999               # gsplat clamps per-Gaussian alpha to this
T_STOP = 1e-4                   # a pixel is done once its transmittance would drop to <= this
TILE_SIZE = 16
RADIUS_SIGMAS = 3.33            # gsplat's bounding-box extent (before the opacity-aware bound)

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    antialiased: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Project N Gaussians into C cameras, as gsplat's fused EWA projection kernel does.

    Returns ``radii`` i32[C,N,2] (pixels, 0 = culled), ``means2d`` [C,N,2] (pixels),
    ``depths`` [C,N] (camera z), ``conics`` [C,N,3] (inverse 2D covariance a, b, c: the exponent is
    0.5*(a dx^2 + c dy^2) + b dx dy) and ``opacities`` [C,N] (times the anti-aliasing compensation
    when ``antialiased``).
    """
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    means_c, covars_c = _world_to_cam(means, covars, viewmats)          # [C,N,3], [C,N,3,3]
    depths = means_c[..., 2]
    in_depth = (depths >= near_plane) & (depths <= far_plane)
    # culled Gaussians get a harmless stand-in position so that no inf/nan enters the graph
    safe_c = torch.where(in_depth[..., None], means_c, torch.ones_like(means_c))
    means2d, cov2d = _persp_proj(safe_c, covars_c, Ks, width, height)   # [C,N,2], [C,N,2,2]
    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + torch.eye(2, device=means.device, dtype=means.dtype) * eps2d
    det = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    valid = (det > 0) & in_depth
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack(
        [cov2d[..., 1, 1] / det_safe,
         -(cov2d[..., 0, 1] + cov2d[..., 1, 0]) / 2.0 / det_safe,
         cov2d[..., 0, 0] / det_safe],
        dim=-1,
    )
    opac = torch.broadcast_to(opacities[None, :], depths.shape)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))

    with torch.no_grad():
        o = opac.detach()
        valid = valid & (o >= ALPHA_THRESHOLD)
        extend = torch.clamp(
            torch.sqrt(2.0 * torch.log(torch.clamp(o, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)),
            max=RADIUS_SIGMAS,
        )
        rx = torch.ceil(extend * torch.sqrt(torch.clamp(cov2d[..., 0, 0].detach(), min=0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp(cov2d[..., 1, 1].detach(), min=0)))
        valid &= (rx > 0) | (ry > 0)
        m = means2d.detach()
        valid &= (m[..., 0] + rx > 0) & (m[..., 0] - rx < width)
        valid &= (m[..., 1] + ry > 0) & (m[..., 1] - ry < height)
        radii = torch.stack([rx, ry], dim=-1)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return radii, means2d, depths, conics, opac


def project_and_shade(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmats: Tensor,
    Ks: Tensor, width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01,
    far_plane: float = 1e10, antialiased: bool = False, sh_degree: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``project_gaussians`` plus the per-camera colours [C,N,D]: ``colors`` as given ([N,D] is
    broadcast) when ``sh_degree`` is None, else the SH coefficients ([N,K,3] or [C,N,K,3])
    evaluated along camera centre -> mean, max(0, sh + 0.5). Returns (radii, means2d, depths,
    conics, opacities, colors)."""
    C, N = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, opac = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, antialiased=antialiased)
    if sh_degree is None:
        cols = torch.broadcast_to(colors[None], (C, N, colors.shape[-1])) if colors.dim() == 2 else colors
    else:
        shs = torch.broadcast_to(colors[None], (C,) + tuple(colors.shape)) if colors.dim() == 3 else colors
        campos = torch.inverse(viewmats)[:, :3, 3]                                  # [C,3]
        dirs = means[None, :, :] - campos[:, None, :]                               # [C,N,3]
        cols = torch.clamp_min(_spherical_harmonics(sh_degree, dirs, shs) + 0.5, 0.0)
    return radii, means2d, depths, conics, opac, cols


def _tile_intersections(
    means2d: Tensor, radii: Tensor, depths: Tensor, tile_w: int, tile_h: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For one camera: (gaussian id, tile id) pairs sorted by tile then depth, per-tile offsets
    and counts, and tiles_per_gauss. Mirrors gsplat's ``isect_tiles`` box arithmetic."""
    device = means2d.device
    n = means2d.shape[0]
    ok = (radii > 0).all(dim=-1)
    t_xy = means2d.detach() / TILE_SIZE
    t_r = radii.to(means2d.dtype) / TILE_SIZE
    lo = torch.floor(t_xy - t_r)
    hi = torch.ceil(t_xy + t_r)
    x0 = lo[:, 0].clamp(0, tile_w).long()
    y0 = lo[:, 1].clamp(0, tile_h).long()
    x1 = hi[:, 0].clamp(0, tile_w).long()
    y1 = hi[:, 1].clamp(0, tile_h).long()
    w = (x1 - x0).clamp(min=0)
    counts = w * (y1 - y0).clamp(min=0) * ok
    total = int(counts.sum())
    gid = torch.repeat_interleave(torch.arange(n, device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=device) - first[gid]
    wg = w[gid]
    tile = (y0[gid] + k // wg) * tile_w + (x0[gid] + k % wg)
    # sort by depth, then (stably) by tile: tile-major, front-to-back within a tile
    order = torch.argsort(depths.detach()[gid], stable=True)
    gid, tile = gid[order], tile[order]
    order = torch.argsort(tile, stable=True)
    gid, tile = gid[order], tile[order]
    tile_counts = torch.bincount(tile, minlength=tile_w * tile_h)
    tile_offsets = torch.cumsum(tile_counts, 0) - tile_counts
    return gid, tile_offsets, tile_counts, counts.to(torch.int32)


def _composite_camera(
    means2d: Tensor,     # [N,2]
    conics: Tensor,      # [N,3]
    colors: Tensor,      # [N,D]
    opacities: Tensor,   # [N]
    radii: Tensor,       # [N,2]
    depths: Tensor,      # [N]
    width: int,
    height: int,
    max_elements: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of one camera's Gaussians; returns colour [H,W,D] (no background),
    alpha [H,W,1] and tiles_per_gauss [N]."""
    device, dtype = means2d.device, means2d.dtype
    D = colors.shape[-1]
    tile_w = math.ceil(width / TILE_SIZE)
    tile_h = math.ceil(height / TILE_SIZE)
    n_tiles = tile_w * tile_h
    P = TILE_SIZE * TILE_SIZE
    gid_sorted, tile_offsets, tile_counts, tiles_per_gauss = _tile_intersections(
        means2d, radii, depths, tile_w, tile_h)

    # pixel centres of a tile, as the monomials of a quadratic form:
    # the Gaussian exponent at pixel (x, y) is feats(x, y) . coeffs(gaussian), one batched matmul
    iy, ix = torch.meshgrid(torch.arange(TILE_SIZE, device=device, dtype=dtype),
                            torch.arange(TILE_SIZE, device=device, dtype=dtype), indexing="ij")
    half = TILE_SIZE / 2      # coordinates relative to the tile's centre keep the terms small
    x = ix.reshape(-1) + 0.5 - half
    y = iy.reshape(-1) + 0.5 - half
    feats = torch.stack([x * x, y * y, x * y, x, y, torch.ones_like(x)], dim=-1)       # [P,6]
    log_opac = torch.log(opacities.clamp_min(1e-30))

    out_rgb = torch.zeros(n_tiles, P, D, device=device, dtype=dtype)
    out_a = torch.zeros(n_tiles, P, 1, device=device, dtype=dtype)
    busy = torch.nonzero(tile_counts > 0).flatten()
    if len(busy) > 0:
        # group tiles of similar load (sorted, then cut when the load drops below 2/3 of the
        # batch's first) so that padding to the batch maximum wastes little
        busy = busy[torch.argsort(tile_counts[busy], descending=True, stable=True)]
        cnt = tile_counts[busy].tolist()
        i = 0
        pieces_rgb, pieces_a, pieces_ids = [], [], []
        while i < len(busy):
            m = cnt[i]
            nb = 1
            limit = max(1, max_elements // max(1, P * m))
            while i + nb < len(busy) and nb < limit and 3 * cnt[i + nb] >= 2 * m:
                nb += 1
            tiles = busy[i:i + nb]
            i += nb
            slot = torch.arange(m, device=device)
            in_range = slot[None, :] < tile_counts[tiles][:, None]                 # [B,M]
            idx = (tile_offsets[tiles][:, None] + slot[None, :]).clamp(max=len(gid_sorted) - 1)
            g = gid_sorted[idx]                                                     # [B,M]
            centre = torch.stack([tiles % tile_w, tiles // tile_w], dim=-1).to(dtype) * TILE_SIZE + half
            mu = means2d[g] - centre[:, None, :]                                    # [B,M,2] tile-local
            cn = conics[g]                                                          # [B,M,3]
            a, b, c = cn[..., 0], cn[..., 1], cn[..., 2]
            mx, my = mu[..., 0], mu[..., 1]
            const = 0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my
            lo = log_opac[g]
            coeffs = torch.stack([0.5 * a, 0.5 * c, b, -(a * mx + b * my), -(c * my + b * mx),
                                  const - lo], dim=1)                               # [B,6,M]
            # log alpha (before the clamp) = log(opacity) - sigma
            neg_log_alpha = torch.matmul(feats, coeffs)                             # [B,P,M]
            alpha = torch.exp(-neg_log_alpha).clamp(max=ALPHA_MAX)
            with torch.no_grad():
                # sigma >= 0 (gsplat's guard against a bad conic), with slack for the rounding
                # of the expanded quadratic form near a Gaussian's centre
                sigma_ok = neg_log_alpha + lo[:, None, :] >= -1e-3
                keep = sigma_ok & (alpha >= ALPHA_THRESHOLD) & in_range[:, None, :]
            alpha = alpha * keep
            log_1ma = torch.log1p(-alpha)
            log_t_incl = torch.cumsum(log_1ma, dim=-1)
            t_excl = torch.exp(log_t_incl - log_1ma)
            with torch.no_grad():
                alive = torch.exp(log_t_incl) > T_STOP      # prefix mask: the pixel is not done
            weights = alpha * t_excl * alive                                        # [B,P,M]
            pieces_rgb.append(torch.matmul(weights, colors[g]))
            pieces_a.append(weights.sum(dim=-1, keepdim=True))
            pieces_ids.append(tiles)
        ids = torch.cat(pieces_ids)
        out_rgb = out_rgb.index_copy(0, ids, torch.cat(pieces_rgb))
        out_a = out_a.index_copy(0, ids, torch.cat(pieces_a))

    def untile(x: Tensor) -> Tensor:
        c = x.shape[-1]
        x = x.reshape(tile_h, tile_w, TILE_SIZE, TILE_SIZE, c).permute(0, 2, 1, 3, 4)
        return x.reshape(tile_h * TILE_SIZE, tile_w * TILE_SIZE, c)[:height, :width]

    return untile(out_rgb), untile(out_a), tiles_per_gauss


CompositeFn = Callable[..., tuple[Tensor, Tensor, Tensor]]
ProjectFn = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]


def rasterize_reference(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    packed: bool = False,
    absgrad: bool = False,
    max_elements: int = 1 << 22,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render C views of N Gaussians; same arguments and outputs as ``gsplat.rasterization``.

    ``colors``: [N,D] or [C,N,D] post-activation values when ``sh_degree`` is None, else SH
    coefficients [N,K,3] or [C,N,K,3] (gsplat's basis and sign convention; the view direction is
    from the camera centre to the mean; the result is max(0, sh + 0.5)).
    Returns ``render_colors`` [C,H,W,D(+1 for depth)], ``render_alphas`` [C,H,W,1] and ``info``
    with gsplat's unpacked keys: radii i32[C,N,2], means2d [C,N,2] (a non-leaf: call
    ``retain_grad()`` on it before backward to read screen-space gradients), depths [C,N],
    conics [C,N,3], opacities [C,N], gaussian_ids None, width, height, n_cameras, tile_size ...
    """
    if absgrad:
        raise ValueError("absgrad needs gsplat's CUDA backward or the fast CPU rasterizer; "
                         "the reference rasterizer does not support it")

    def composite(means2d, conics, cols, opac, radii, depths, width, height, camera, background):
        rgb, a, tpg = _composite_camera(means2d, conics, cols, opac, radii, depths, width, height, max_elements)
        return (rgb if background is None else rgb + (1.0 - a) * background), a, tpg

    return rasterize_with(project_and_shade, composite, "reference", means, quats, scales, opacities, colors,
                          viewmats, Ks, width, height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d,
                          sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
                          rasterize_mode=rasterize_mode, packed=packed)


def rasterize_with(
    project: ProjectFn,
    composite: CompositeFn,
    backend_name: str,
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    packed: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``rasterize_reference`` with the projection and the compositing supplied by the caller.

    Input checks, render modes, backgrounds and ``info`` are this module's. ``project`` has
    ``project_and_shade``'s arguments and results (validated inputs). ``composite(means2d[c], conics[c],
    colors[c], opacities[c], radii[c], depths[c], width, height, camera=(c, means2d), background=bg[c] or
    None)`` differs between rasterizers. It returns colour [H,W,D] (colour + (1 - alpha) background
    where a background is given), alpha [H,W,1] and tiles_per_gauss i32[N], differentiable in its
    first four arguments and the background.
    """
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N,3] (batch dimensions are not supported), got {tuple(means.shape)}")
    N = means.shape[0]
    if viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must be [C,4,4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must be [C,3,3] with C={C}, got {tuple(Ks.shape)}")
    for name, t, shape in (("quats", quats, (N, 4)), ("scales", scales, (N, 3)), ("opacities", opacities, (N,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)}, got {list(t.shape)}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    if packed:
        raise ValueError(f"the {backend_name} rasterizer has no packed mode: call it with packed=False")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")

    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))):
            raise ValueError(f"colors must be [N,D] or [C,N,D] (N={N}, C={C}), got {list(colors.shape)}")
    else:
        if not ((colors.dim() == 3 and colors.shape[0] == N and colors.shape[-1] == 3)
                or (colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[-1] == 3)):
            raise ValueError(f"SH colors must be [N,K,3] or [C,N,K,3] (N={N}, C={C}), got {list(colors.shape)}")
        if (sh_degree + 1) ** 2 > colors.shape[-2]:
            raise ValueError(f"sh_degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, "
                             f"colors has {colors.shape[-2]}")
    radii, means2d, depths, conics, opac, cols = project(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, eps2d=eps2d,
        near_plane=near_plane, far_plane=far_plane, antialiased=(rasterize_mode == "antialiased"),
        sh_degree=sh_degree)

    bgs = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        cols = torch.cat([cols, depths[..., None]], dim=-1)
        if bgs is not None:
            bgs = torch.cat([bgs, torch.zeros(C, 1, device=bgs.device, dtype=bgs.dtype)], dim=-1)
    elif render_mode in ("D", "ED"):
        cols = depths[..., None]
        if bgs is not None:
            bgs = torch.zeros(C, 1, device=bgs.device, dtype=bgs.dtype)
    if bgs is not None and tuple(bgs.shape) != (C, cols.shape[-1]):
        raise ValueError(f"backgrounds must be [C,D] = [{C},{cols.shape[-1]}], got {list(bgs.shape)}")

    rgbs, alphas, tpg = [], [], []
    for c in range(C):
        rgb, a, t = composite(means2d[c], conics[c], cols[c], opac[c], radii[c], depths[c],
                              width, height, camera=(c, means2d), background=None if bgs is None else bgs[c])
        rgbs.append(rgb)
        alphas.append(a)
        tpg.append(t)
    render_colors = torch.stack(rgbs)
    render_alphas = torch.stack(alphas)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1)

    info: dict[str, Any] = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "tile_width": math.ceil(width / TILE_SIZE),
        "tile_height": math.ceil(height / TILE_SIZE),
        "tiles_per_gauss": torch.stack(tpg),
        "width": width,
        "height": height,
        "tile_size": TILE_SIZE,
        "n_batches": 1,
        "n_cameras": C,
        "backend": backend_name,
    }
    return render_colors, render_alphas, info
