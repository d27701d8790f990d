"""PlayCanvas SOG ("splat optimized graphics", splat-transform ``write-sog.ts`` / ``read-sog.ts``).

Two layouts of the same content: a ``.sog`` file (a zip holding ``meta.json`` and the images) or
a ``meta.json`` with the images beside it. Every image is a lossless WebP, RGBA, one pixel per
splat in row-major order (width ``ceil(sqrt(N) / 4) * 4``, height ``ceil(N / width / 4) * 4``;
splats in Morton order of their positions). ``meta.json`` version 2:

* ``means`` (``means_l.webp``, ``means_u.webp``): per axis 16 bits (low byte, high byte) of
  ``t = (log_t(p) - mins) / (maxs - mins)`` with ``log_t(p) = sign(p) * ln(|p| + 1)``;
  ``mins``/``maxs`` are of log_t(p). Read back as ``inv_log_t(mins + (maxs - mins) * t16 / 65535)``.
* ``quats`` (``quats.webp``): smallest-three: the normalised quaternion (w, x, y, z) with its
  largest-magnitude component made positive; the other three, in order, as bytes of
  ``255 * (q * sqrt(2) * 0.5 + 0.5)``; alpha = 252 + index of the largest component.
* ``scales`` (``scales.webp``): RGB = indices into a 256-entry ``codebook`` of log scales.
* ``sh0`` (``sh0.webp``): RGB = indices into a 256-entry ``codebook`` of f_dc values; alpha =
  ``sigmoid(opacity) * 255``.
* ``shN`` (optional; ``shN_centroids.webp``, ``shN_labels.webp``): a palette of ``count`` SH
  vectors; ``labels`` RG = 16-bit palette index per splat; ``centroids`` is ``64 * K`` pixels
  wide, palette entry e at row ``e // 64``, pixels ``(e % 64) * K + k`` for coefficient k, RGB =
  indices into a 256-entry ``codebook``. ``bands`` = SH degree.

Version 1 files (no ``version`` key: per-channel ``mins``/``maxs`` instead of codebooks) are read
too. Coordinates are stored as they are (splat-transform keeps the PLY's frame), like our PLY.

Our writer (lossless, deterministic): positions and quaternions rounded to nearest (the
reference truncates); codebooks are 256-entry 1-D k-means over all values of the field, on
count ** 0.5-weighted bins as the reference's (Lloyd iterations where it solves the binned
problem exactly); the SH palette is exact (one entry per splat) up to 65,536 splats and a
two-level k-means (256 x 256 entries) above that.

Round-trip bounds: position within ``(maxs - mins) / 65535 / 2`` in log_t space per axis (about
``|p| + 1`` times that in metres); quaternion components (sign aligned) within 0.008;
log scale, f_dc and (up to 65,536 splats) SH coefficients within half the largest gap between
neighbouring codebook entries that bracket a value (1-D k-means: small where values are dense);
opacity sigmoid within 0.5/255. Above 65,536 splats SH is vector-quantised (no hard bound).

WebP: decoding and encoding go through a codec that can be swapped (:func:`set_webp_codec`):
by default Pillow where it is installed (the backend, tests); the Blender add-on registers
Blender's own image loader for decoding. Decompression is bounded: zip members and images are
refused when their declared sizes exceed what ``count`` splats need.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..splats import Splats, sigmoid
from ._common import PathLike, SplatFormatError, build_splats

WebpDecoder = Callable[[bytes], np.ndarray]   # lossless WebP bytes -> uint8 [H, W, 4] RGBA
WebpEncoder = Callable[[np.ndarray], bytes]   # uint8 [H, W, 4] RGBA -> lossless WebP bytes

_codec: dict[str, Callable | None] = {"decode": None, "encode": None}

#: Most decoded bytes accepted per byte of a WebP file (lossless WebP of real splat data compresses
#: far less than this; it only refuses images whose header promises absurd sizes).
WEBP_MAX_RATIO = 4096
META_MAX_BYTES = 16 << 20
PALETTE_MAX = 65536


def set_webp_codec(decode: WebpDecoder | None = None, encode: WebpEncoder | None = None) -> None:
    """Register the WebP decoder / encoder SOG uses (None: the default, Pillow).

    An encoder whose attribute ``keeps_transparent_rgb`` is False (libwebp's simple lossless API
    changes the colour of alpha-0 pixels) makes the writer store opacity bytes of 0 as 1.
    """
    _codec["decode"] = decode
    _codec["encode"] = encode


def _pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "WEBP":
            raise ValueError(f"not a WebP image ({im.format})")
        return np.asarray(im.convert("RGBA"), dtype=np.uint8)


def _pil_encode(rgba: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    # exact: keep RGB under alpha 0 (sh0.webp stores colour beside opacity 0)
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, "WEBP", lossless=True, quality=75,
                                                             method=4, exact=True)
    return buf.getvalue()


def _decoder(path: PathLike) -> WebpDecoder:
    if _codec["decode"] is not None:
        return _codec["decode"]
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise SplatFormatError(path, "images", "reading .sog needs a WebP decoder: install Pillow (or, in "
                               "Blender, the add-on registers Blender's image loader)") from None
    return _pil_decode


def _encoder() -> WebpEncoder:
    if _codec["encode"] is not None:
        return _codec["encode"]
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise RuntimeError("writing .sog needs a WebP encoder: install Pillow") from None
    return _pil_encode


def webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP file's header (VP8L, VP8X or VP8 chunk), None if not WebP."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 ":
        return (int.from_bytes(data[26:28], "little") & 0x3FFF), (int.from_bytes(data[28:30], "little") & 0x3FFF)
    return None


# -- container: zip or folder -------------------------------------------------------------------

class _Source:
    """The files of one SOG: members of a .sog zip, or files beside meta.json; every read bounded."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.meta_name = "meta.json"
        if Path(path).name.lower().endswith(".sog"):
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise SplatFormatError(path, "zip archive", f"not a .sog (zip) file ({exc})") from None
        else:
            self.meta_name = Path(path).name

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str, limit: int) -> bytes:
        """The file `name`, refused when it is (or declares to be) larger than `limit` bytes."""
        if not isinstance(name, str) or not name or "/" in name.replace("\\", "/") or name.startswith("."):
            raise SplatFormatError(self.path, "meta.json", f"bad file name {name!r} (plain names only)")
        if self.zip is not None:
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise SplatFormatError(self.path, f"member '{name}'", "missing from the archive") from None
            if info.file_size > limit:
                raise SplatFormatError(self.path, f"member '{name}'", f"declares {info.file_size} bytes, more than "
                                       f"the {limit} its content can need; damaged or hostile file")
            try:
                with self.zip.open(info) as f:
                    data = f.read(limit + 1)  # zipfile stops at the declared size
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise SplatFormatError(self.path, f"member '{name}'", f"cannot decompress ({exc})") from None
            return data
        file = Path(self.path).parent / name
        if not file.is_file():
            raise SplatFormatError(self.path, f"file '{name}'", f"missing (expected beside {self.meta_name})")
        size = file.stat().st_size
        if size > limit:
            raise SplatFormatError(self.path, f"file '{name}'", f"{size} bytes, more than the {limit} its "
                                   "content can need")
        return file.read_bytes()


def _image(src: _Source, meta: dict, key: str, index: int, pixels_needed: int, max_pixels: int,
           decode: WebpDecoder) -> np.ndarray:
    """Decoded RGBA [H, W, 4] of meta[key].files[index], with its size checked before decoding."""
    try:
        name = meta[key]["files"][index]
    except (KeyError, IndexError, TypeError):
        raise SplatFormatError(src.path, f"meta.json '{key}'", f"no files[{index}] entry") from None
    data = src.read(name, 4 * max_pixels + (1 << 20))
    size = webp_size(data)
    if size is None:
        raise SplatFormatError(src.path, f"image '{name}'", "not a WebP image (no RIFF/WEBP header)")
    w, h = size
    if w * h < pixels_needed:
        raise SplatFormatError(src.path, f"image '{name}'", f"{w}x{h} pixels is too small for {pixels_needed} "
                               "values")
    if w * h > max_pixels or 4 * w * h > len(data) * WEBP_MAX_RATIO + (1 << 20):
        raise SplatFormatError(src.path, f"image '{name}'", f"{w}x{h} pixels is more than {pixels_needed} values "
                               f"need (from a {len(data)}-byte file); damaged or hostile file")
    try:
        rgba = decode(data)
    except SplatFormatError:
        raise
    except Exception as exc:  # the codec's own error, whatever its type
        raise SplatFormatError(src.path, f"image '{name}'", f"cannot decode WebP ({exc})") from None
    if rgba.shape != (h, w, 4):
        raise SplatFormatError(src.path, f"image '{name}'", f"decoded to shape {rgba.shape}, expected {(h, w, 4)}")
    return np.ascontiguousarray(rgba, dtype=np.uint8)


def _floats(path: PathLike, meta: dict, key: str, sub: str, length: int | None) -> np.ndarray:
    try:
        arr = np.asarray(meta[key][sub], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise SplatFormatError(path, f"meta.json '{key}.{sub}'", "missing or not a list of numbers") from None
    if arr.ndim != 1 or (length is not None and arr.shape != (length,)):
        raise SplatFormatError(path, f"meta.json '{key}.{sub}'", f"expected {length} numbers, found shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SplatFormatError(path, f"meta.json '{key}.{sub}'", "contains NaN or Inf")
    return arr


def _inv_log_t(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.expm1(np.abs(v))


def _log_t(p: np.ndarray) -> np.ndarray:
    return np.sign(p) * np.log1p(np.abs(p))


def _unpack_quats(px: np.ndarray) -> np.ndarray:
    """(w, x, y, z) [N, 4] from RGBA bytes; an invalid tag gives the identity (as the reference)."""
    n = len(px)
    tag = px[:, 3].astype(np.int64)
    valid = (tag >= 252) & (tag <= 255)
    largest = np.where(valid, tag - 252, 0)
    abc = (px[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / np.sqrt(2.0)
    q = np.zeros((n, 4))
    rows = np.arange(n)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        q[rows, others[:, j]] = abc[:, j]
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    q[~valid] = (1.0, 0.0, 0.0, 0.0)
    return q


def read_sog(path: PathLike) -> Splats:
    """Read a .sog (zip) or a SOG meta.json (images beside it); SplatFormatError names the problem."""
    src = _Source(path)
    try:
        return _read(src)
    finally:
        src.close()


def _read(src: _Source) -> Splats:
    path = src.path
    raw = src.read(src.meta_name if src.zip is None else "meta.json", META_MAX_BYTES)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplatFormatError(path, "meta.json", f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise SplatFormatError(path, "meta.json", "not a JSON object")
    version = meta.get("version")
    if version not in (None, 2):
        raise SplatFormatError(path, "meta.json 'version'", f"SOG version {version!r} is not supported (1 or 2)")
    try:
        count = int(meta["count"] if version == 2 else meta["means"]["shape"][0])
    except (KeyError, TypeError, ValueError, IndexError):
        raise SplatFormatError(path, "meta.json 'count'", "missing or not an integer") from None
    if count < 0 or count > 16383 * 16383:
        raise SplatFormatError(path, "meta.json 'count'", f"{count} splats is out of range")
    decode = _decoder(path)
    max_px = 2 * count + 4096
    n = count

    lo = _image(src, meta, "means", 0, n, max_px, decode).reshape(-1, 4)[:n]
    hi = _image(src, meta, "means", 1, n, max_px, decode).reshape(-1, 4)[:n]
    t16 = lo[:, :3].astype(np.float64) + 256.0 * hi[:, :3].astype(np.float64)
    mins, maxs = _floats(path, meta, "means", "mins", 3), _floats(path, meta, "means", "maxs", 3)
    span = np.where(maxs - mins != 0, maxs - mins, 1.0)
    with np.errstate(over="ignore"):
        means = _inv_log_t(mins + span * (t16 / 65535.0))

    quats = _unpack_quats(_image(src, meta, "quats", 0, n, max_px, decode).reshape(-1, 4)[:n])
    sl = _image(src, meta, "scales", 0, n, max_px, decode).reshape(-1, 4)[:n]
    c0 = _image(src, meta, "sh0", 0, n, max_px, decode).reshape(-1, 4)[:n]
    if version == 2:
        s_code = _floats(path, meta, "scales", "codebook", 256)
        c_code = _floats(path, meta, "sh0", "codebook", 256)
        scales = s_code[sl[:, :3]]
        sh0 = c_code[c0[:, :3]]
        alpha = np.clip(c0[:, 3] / 255.0, 1e-6, 1 - 1e-6)
        opacities = np.log(alpha / (1 - alpha))
    else:
        s_lo, s_hi = _floats(path, meta, "scales", "mins", 3), _floats(path, meta, "scales", "maxs", 3)
        scales = s_lo + (s_hi - s_lo) * (sl[:, :3] / 255.0)
        c_lo, c_hi = _floats(path, meta, "sh0", "mins", 4), _floats(path, meta, "sh0", "maxs", 4)
        v = c_lo + (c_hi - c_lo) * (c0 / 255.0)
        sh0, opacities = v[:, :3], v[:, 3]

    shN = np.zeros((n, 0, 3))
    sh_meta = meta.get("shN")
    if sh_meta is not None:
        shN = _read_shn(src, meta, sh_meta, version, n, max_px, decode)
    return build_splats(path, dict(means=means, quats=quats, scales=scales, opacities=opacities, sh0=sh0,
                                   shN=np.ascontiguousarray(shN)),
                        {"means": [f"meta.json 'means' ({a})" for a in "xyz"],
                         "scales": ["meta.json 'scales'"] * 3, "sh0": ["meta.json 'sh0'"] * 3,
                         "opacities": ["meta.json 'sh0' (opacity)"]})


def _read_shn(src: _Source, meta: dict, sh_meta: dict, version: int | None, n: int, max_px: int,
              decode: WebpDecoder) -> np.ndarray:
    path = src.path
    if not isinstance(sh_meta, dict):
        raise SplatFormatError(path, "meta.json 'shN'", "not a JSON object")
    labels_px = _image(src, meta, "shN", 1, n, max_px, decode).reshape(-1, 4)[:n]
    labels = labels_px[:, 0].astype(np.int64) | (labels_px[:, 1].astype(np.int64) << 8)
    cent = _image(src, meta, "shN", 0, 1, 15 * (PALETTE_MAX + 64), decode)
    h, w = cent.shape[:2]
    if version == 2:
        try:
            bands, palette = int(sh_meta["bands"]), int(sh_meta["count"])
        except (KeyError, TypeError, ValueError):
            raise SplatFormatError(path, "meta.json 'shN'", "missing 'bands' or 'count'") from None
        if bands not in (1, 2, 3):
            raise SplatFormatError(path, "meta.json 'shN.bands'", f"{bands} is not an SH degree 1-3")
        k = (0, 3, 8, 15)[bands]
        if w != 64 * k:
            raise SplatFormatError(path, "image 'shN centroids'", f"width {w} does not match {64 * k} for "
                                   f"{bands} bands")
        codebook = _floats(path, meta, "shN", "codebook", 256)
        dequant = codebook
    else:
        k = {192: 3, 512: 8, 960: 15}.get(w, 0)
        if not k:
            raise SplatFormatError(path, "image 'shN centroids'", f"width {w} is not 192, 512 or 960")
        palette = (w // k) * h
        lo_v, hi_v = float(sh_meta.get("mins", 0.0)), float(sh_meta.get("maxs", 0.0))
        dequant = lo_v + (hi_v - lo_v) * (np.arange(256) / 255.0)
    cent = cent.reshape(h, 64, k, 4)[..., :3].reshape(h * 64, k, 3)  # [entry, coefficient, RGB]
    valid = (labels < palette) & (labels < len(cent))
    shN = np.zeros((n, k, 3))
    shN[valid] = dequant[cent[labels[valid]]]
    return shN


# -- writer ---------------------------------------------------------------------------------------

def quantize_1d(values: np.ndarray, k: int = 256, iterations: int = 30, alpha: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    """(codebook float32 [k] ascending, labels uint8 like values): 1-D k-means of all values.

    As splat-transform's quantize1d: the values go into 1024 bins placed between their quantiles
    and a uniform split (so sparse tails keep bins), each bin weighted by count ** alpha (so dense
    regions do not take every entry); Lloyd iterations on the weighted bin centres, started at
    weighted quantiles. Fewer distinct values than k: each gets its own entry (exact). Labels pick
    the entry nearest to each value.
    """
    flat = np.asarray(values, np.float64).reshape(-1)
    if flat.size == 0:
        return np.zeros(k, np.float32), np.zeros(np.shape(values), np.uint8)
    uniq = np.unique(flat)
    if len(uniq) <= k:
        code = np.concatenate([uniq, np.full(k - len(uniq), uniq[-1])])
    else:
        srt = np.sort(flat)
        n, lo, hi = len(srt), srt[0], srt[-1]
        bins = min(1024, n)
        iqr = srt[int(n * 0.75)] - srt[int(n * 0.25)]
        beta = max(0.5, min(0.999, 1.0 - iqr / (hi - lo)))
        pos = beta * (np.arange(n) / n) + (1 - beta) * (srt - lo) / (hi - lo)
        b = np.minimum(bins - 1, (pos * bins).astype(np.int64))
        counts = np.bincount(b, minlength=bins)
        keep = counts > 0
        centres = (np.bincount(b, weights=srt, minlength=bins)[keep] / counts[keep])
        weights = counts[keep].astype(np.float64) ** alpha
        cum = np.cumsum(weights) / weights.sum()
        code = np.unique(centres[np.minimum(np.searchsorted(cum, (np.arange(k) + 0.5) / k), len(centres) - 1)])
        for _ in range(iterations):
            edges = (code[1:] + code[:-1]) / 2
            lab = np.searchsorted(edges, centres)
            w = np.bincount(lab, weights=weights, minlength=len(code))
            wx = np.bincount(lab, weights=weights * centres, minlength=len(code))
            new = np.unique(np.where(w > 0, wx / np.maximum(w, 1e-300), code))
            if len(new) == len(code) and np.array_equal(new, code):
                break
            code = new
        code = np.concatenate([code, np.full(k - len(code), code[-1])])
    code = code.astype(np.float32)
    c64 = code.astype(np.float64)
    idx = np.clip(np.searchsorted(c64, flat), 1, k - 1)
    left, right = c64[idx - 1], c64[idx]
    labels = np.where(np.abs(flat - left) <= np.abs(right - flat), idx - 1, idx)
    # several equal pad entries at the end: point to the first of them
    first = np.searchsorted(c64, c64, side="left")
    labels = first[labels]
    return code, labels.astype(np.uint8).reshape(np.shape(values))


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means of rows of x [M, D] into <= k centroids (labels int64 [M])."""
    m = len(x)
    if m <= k:
        return x.copy(), np.arange(m)
    cent = x[rng.choice(m, k, replace=False)].copy()
    labels = np.zeros(m, np.int64)
    for _ in range(iterations):
        labels = _nearest(x, cent)
        counts = np.bincount(labels, minlength=len(cent))
        sums = np.stack([np.bincount(labels, weights=x[:, d], minlength=len(cent)) for d in range(x.shape[1])], 1)
        cent = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], cent)
    return cent, _nearest(x, cent)


def _nearest(x: np.ndarray, cent: np.ndarray, block: int = 8192) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    c2 = (cent * cent).sum(axis=1)
    for s in range(0, len(x), block):
        xb = x[s: s + block]
        out[s: s + block] = np.argmin(c2[None, :] - 2.0 * xb @ cent.T, axis=1)
    return out


def _palette(shn: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(palette [P, 3K] float32, labels [N]) for SH rest vectors [N, 3K] (channel-major)."""
    n = len(shn)
    if n <= PALETTE_MAX:
        return shn.astype(np.float32), np.arange(n)
    rng = np.random.default_rng(seed)
    x = shn.astype(np.float32)
    coarse, top = _kmeans(x[rng.choice(n, min(n, 65536), replace=False)], 256, 8, rng)
    top = _nearest(x, coarse)
    palette: list[np.ndarray] = []
    labels = np.empty(n, np.int64)
    for c in range(len(coarse)):
        members = np.flatnonzero(top == c)
        if not len(members):
            continue
        cent, lab = _kmeans(x[members], 256, 6, rng)
        labels[members] = lab + sum(len(p) for p in palette)
        palette.append(cent)
    return np.concatenate(palette).astype(np.float32), labels


def _grid(n: int) -> tuple[int, int]:
    width = max(4, int(np.ceil(np.sqrt(n) / 4)) * 4)
    height = max(4, int(np.ceil(n / width / 4)) * 4)
    return width, height


def encode_sog(splats: Splats, sort: bool = True) -> dict[str, bytes]:
    """The files of a SOG (``meta.json`` and the ``.webp`` images) for `splats`, by name."""
    from .compressed_ply import morton_order
    encode = _encoder()
    n = len(splats)
    s = splats.subset(morton_order(splats.means)) if sort and n else splats
    width, height = _grid(n)

    def image(values: np.ndarray, fill_alpha: int = 255) -> bytes:
        px = np.zeros((width * height, 4), np.uint8)
        px[:, 3] = fill_alpha
        px[:n, : values.shape[1]] = values
        return encode(px.reshape(height, width, 4))

    files: dict[str, bytes] = {}
    lt = _log_t(s.means.astype(np.float64))
    mins = lt.min(axis=0) if n else np.zeros(3)
    maxs = lt.max(axis=0) if n else np.zeros(3)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    t16 = np.clip(np.rint((lt - mins) / span * 65535.0), 0, 65535).astype(np.uint32)
    files["means_l.webp"] = image((t16 & 0xFF).astype(np.uint8))
    files["means_u.webp"] = image((t16 >> 8).astype(np.uint8))

    q = s.unit_quats().astype(np.float64)
    rows = np.arange(n)
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    qpx = np.empty((n, 4), np.uint8)
    for j in range(3):
        qpx[:, j] = np.clip(np.rint(255.0 * (q[rows, others[:, j]] * np.sqrt(2.0) * 0.5 + 0.5)), 0, 255)
    qpx[:, 3] = 252 + largest
    files["quats.webp"] = image(qpx)

    s_code, s_lab = quantize_1d(s.scales)
    files["scales.webp"] = image(s_lab)
    c_code, c_lab = quantize_1d(s.sh0)
    alpha = np.clip(np.rint(sigmoid(s.opacities).astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if not getattr(encode, "keeps_transparent_rgb", True):
        alpha = np.maximum(alpha, 1)  # the encoder would drop the colour of alpha-0 pixels
    files["sh0.webp"] = image(np.concatenate([c_lab, alpha[:, None]], axis=1))

    meta: dict = {"version": 2, "asset": {"generator": "SplatBridge"}, "count": n,
                  "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
                  "scales": {"codebook": s_code.tolist(), "files": ["scales.webp"]},
                  "quats": {"files": ["quats.webp"]},
                  "sh0": {"codebook": c_code.tolist(), "files": ["sh0.webp"]}}
    k = s.shN.shape[1]
    if k and n:
        palette, labels = _palette(s.shN.reshape(n, 3 * k))
        p = len(palette)
        sh_code, sh_lab = quantize_1d(palette)          # [P, K*3] -> bytes, same layout
        rows_c = -(-p // 64)
        cent = np.zeros((rows_c * 64, k, 4), np.uint8)
        cent[..., 3] = 255
        cent[:p, :, :3] = sh_lab.reshape(p, k, 3)
        files["shN_centroids.webp"] = encode(cent.reshape(rows_c, 64 * k, 4))
        lab = np.zeros((n, 3), np.uint8)
        lab[:, 0], lab[:, 1] = labels & 0xFF, labels >> 8
        files["shN_labels.webp"] = image(lab)
        meta["shN"] = {"count": p, "bands": s.sh_degree, "codebook": sh_code.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    files["meta.json"] = json.dumps(meta).encode("utf-8")
    return files


def write_sog(path: PathLike, splats: Splats, sort: bool = True, bundle: bool | None = None) -> None:
    """Write a SOG: a zip (``bundle``; default: when the name ends in ``.sog``), or the meta file
    (typically ``meta.json``) with the images beside it (existing images of those names are replaced)."""
    files = encode_sog(splats, sort=sort)
    if bundle is None:
        bundle = Path(path).name.lower().endswith(".sog")
    if bundle:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for name in ["meta.json"] + [f for f in files if f != "meta.json"]:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, files[name])
        return
    folder = Path(path).parent
    for name, data in files.items():
        if name != "meta.json":
            (folder / name).write_bytes(data)
    with open(path, "wb") as f:
        f.write(files["meta.json"])
