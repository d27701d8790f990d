"""Load posed photo datasets for training: NeRF-style ``transforms.json`` and COLMAP sparse models.

Both return a :class:`Dataset` in the shared conventions: images u8[C,H,W,4] (straight alpha; 255
where the file has none), OpenCV world-to-camera ``viewmats`` f32[C,4,4], pixel ``Ks`` f32[C,3,3],
optional initial ``points`` f32[P,3] / ``colors`` u8[P,3], and the image ``names``.

``transforms.json`` (NeRF synthetic, BlenderNeRF, nerfstudio): ``transform_matrix`` is a
camera-to-world matrix with OpenGL/Blender camera axes (x right, y up, z backwards); it becomes an
OpenCV world-to-camera with ``shared.cameras.BLENDER_TO_OPENCV``. The world is kept as it is (for
Blender-made datasets that is Blender's Z-up world). Intrinsics: ``fl_x``/``fl_y``/``cx``/``cy``
(per frame or shared), else ``camera_angle_x`` (and ``camera_angle_y``); ``cx``/``cy`` default to
the image centre. ``file_path`` may omit its extension.

COLMAP (``cameras``/``images``/``points3D`` as ``.bin`` or ``.txt``): poses are already OpenCV
world-to-camera; COLMAP's arbitrary world is kept. Camera models: PINHOLE and SIMPLE_PINHOLE;
SIMPLE_RADIAL and RADIAL are accepted with a warning (their radial distortion is ignored, fine for
the mild distortion of undistorted-ish photos); any other model is accepted only when all its
distortion parameters are zero, else it is an error (undistort first: ``colmap image_undistorter``).

Images may differ in size (phone photos in portrait and landscape, COLMAP's undistorted images):
they are then stored top-left on one canvas of the largest width and height, and ``sizes`` says
each view's own (the trainer renders each view at its size; the padding is never looked at).
Errors are :class:`DatasetError` and name the file and the frame.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shared.cameras import BLENDER_TO_OPENCV
from shared.formats._common import SplatFormatError, column, read_ply_elements, read_ply_header
from shared.rotations import quat_to_matrix

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".webp", ".exr")


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message names the file (and frame) at fault."""


class DatasetCancelled(Exception):
    """Reading stopped because ``should_stop()`` became true."""


@dataclass
class Dataset:
    images: np.ndarray                 # u8[C,H,W,4]
    viewmats: np.ndarray               # f32[C,4,4] OpenCV world-to-camera
    Ks: np.ndarray                     # f32[C,3,3] pixels
    points: np.ndarray | None          # f32[P,3] or None
    colors: np.ndarray | None          # u8[P,3] or None
    names: list[str]
    sizes: np.ndarray | None = None    # i4[C,2] (width, height) of each view when they differ, else None

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])


# -- images ---------------------------------------------------------------------------------------

def read_image_rgba(path: Path, downscale: int = 1) -> np.ndarray:
    """u8[H,W,4] of an image file (8- or 16-bit, grey, RGB or RGBA; no alpha -> 255)."""
    from PIL import Image
    try:
        with Image.open(path) as opened:
            im = opened.reduce(downscale) if downscale > 1 else opened
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.float64)
                scale = 257.0 if a.max() > 255 else 1.0
                g = np.clip(a / scale + 0.5, 0, 255).astype(np.uint8)
                return np.dstack([g, g, g, np.full_like(g, 255)])
            return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None


def _stack_images(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """u8[C,H,W,4] of the images, and their (width, height) i4[C,2] when they differ in size (then
    each sits top-left on a canvas of the largest width and height, zeros elsewhere)."""
    sizes = np.array([(img.shape[1], img.shape[0]) for img in images], np.int32)
    if (sizes == sizes[0]).all():
        return np.stack(images), None
    out = np.zeros((len(images), int(sizes[:, 1].max()), int(sizes[:, 0].max()), 4), np.uint8)
    for i, img in enumerate(images):
        out[i, :img.shape[0], :img.shape[1]] = img
    return out, sizes


# -- transforms.json --------------------------------------------------------------------------------

def confined(base: Path, rel: str, what: str, source: Path) -> Path:
    """``base / rel`` for a path a dataset file names (``file_path``, ``ply_file_path``, a COLMAP
    image name): it must stay inside the dataset's folder ``base``. Absolute paths, ``..`` and
    symbolic links that lead out of ``base`` raise ``DatasetError`` (a dataset must not make the
    server read files elsewhere on its disk)."""
    text = str(rel).replace("\\", "/")
    parts = text.split("/")
    if (not text or "\0" in text or Path(text).is_absolute() or text.startswith("/")
            or (len(text) > 1 and text[1] == ":") or ".." in parts):
        raise DatasetError(f"{source}: {what} {rel!r} must be a relative path inside the dataset "
                           "folder (no absolute paths, no '..')")
    p = base / text
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(p))
    if real != real_base and real_base not in real.parents:
        raise DatasetError(f"{source}: {what} {rel!r} leads out of the dataset folder through a "
                           "symbolic link")
    return p


def _resolve_image(base: Path, file_path: str, source: Path) -> Path | None:
    p = confined(base, file_path, "file_path", source)
    if p.suffix and p.is_file():
        return p
    for ext in IMAGE_EXTENSIONS:
        q = p.with_name(p.name + ext)
        if q.is_file():
            return confined(base, f"{file_path}{ext}", "file_path", source)
    return p if p.is_file() else None


def _poll(should_stop: Callable[[], bool] | None) -> None:
    """Raise ``DatasetCancelled`` once ``should_stop()`` is true (polled per image)."""
    if should_stop is not None and should_stop():
        raise DatasetCancelled("cancelled while reading the dataset")


def load_transforms(path: str | Path, downscale: int = 1,
                    should_stop: Callable[[], bool] | None = None) -> Dataset:
    """Load a ``transforms.json`` file (see the module docstring). ``should_stop`` is polled
    before each image (``DatasetCancelled``)."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{path}: no 'frames' list")
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if "FISHEYE" in model or model == "EQUIRECTANGULAR":
        raise DatasetError(f"{path}: camera_model {model} is not a pinhole camera; only pinhole "
                           "(OPENCV/PINHOLE, undistorted) datasets are supported")
    base = path.parent
    warned = False
    images, viewmats, Ks, names = [], [], [], []
    for i, fr in enumerate(frames):
        _poll(should_stop)
        label = f"frame {i} ({fr.get('file_path', '?')})"
        if "file_path" not in fr or "transform_matrix" not in fr:
            raise DatasetError(f"{path}: {label} lacks file_path or transform_matrix")
        img_path = _resolve_image(base, str(fr["file_path"]), path)
        if img_path is None:
            raise DatasetError(f"{path}: {label}: image {base / fr['file_path']} not found "
                               f"(also tried the extensions {', '.join(IMAGE_EXTENSIONS[:4])})")
        img = read_image_rgba(img_path, downscale)
        h, w = img.shape[:2]

        def get(key: str, frame: dict = fr) -> Any:     # the frame's own value, else the file's
            return frame.get(key, meta.get(key))

        fw, fh = get("w"), get("h")
        if fw is not None and fh is not None and not (
                abs(w * downscale - int(fw)) < downscale and abs(h * downscale - int(fh)) < downscale):
            raise DatasetError(f"{path}: {label}: image {img_path.name} is {w * downscale}x{h * downscale} px "
                               f"but the json says w={fw}, h={fh}")
        s = 1.0 / downscale
        full_w = int(fw) if fw is not None else w * downscale
        full_h = int(fh) if fh is not None else h * downscale
        if get("fl_x") is not None:
            fx = float(get("fl_x"))
            fy = float(get("fl_y")) if get("fl_y") is not None else fx
        elif get("camera_angle_x") is not None:
            fx = 0.5 * full_w / np.tan(0.5 * float(get("camera_angle_x")))
            fy = (0.5 * full_h / np.tan(0.5 * float(get("camera_angle_y")))
                  if get("camera_angle_y") is not None else fx)
        else:
            raise DatasetError(f"{path}: {label}: no intrinsics (fl_x/fl_y or camera_angle_x)")
        cx = float(get("cx")) if get("cx") is not None else 0.5 * full_w
        cy = float(get("cy")) if get("cy") is not None else 0.5 * full_h
        dist = {k: float(get(k) or 0.0) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
        if any(dist.values()) and not warned:
            warned = True
            warnings.warn(f"{path}: distortion coefficients {dict((k, v) for k, v in dist.items() if v)} "
                          "are ignored (trained as a pinhole camera)", stacklevel=2)
        K = np.array([[fx * s, 0, cx * s], [0, fy * s, cy * s], [0, 0, 1]], dtype=np.float64)
        c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise DatasetError(f"{path}: {label}: transform_matrix is not a finite 4x4 matrix")
        try:
            w2c = BLENDER_TO_OPENCV @ np.linalg.inv(c2w)
        except np.linalg.LinAlgError:
            raise DatasetError(f"{path}: {label}: transform_matrix is singular") from None
        images.append(img)
        viewmats.append(w2c)
        Ks.append(K)
        names.append(str(fr["file_path"]))
    imgs, sizes = _stack_images(images)
    points = colors = None
    ply = meta.get("ply_file_path")
    if ply:
        points, colors = _read_point_ply(confined(base, str(ply), "ply_file_path", path))
    elif (base / BLENDERNERF_POINTS).is_file():
        # BlenderNeRF (and the 3DGS reference loader) put the initial points beside transforms.json
        # under this name, without a ply_file_path key
        points, colors = _read_point_ply(confined(base, BLENDERNERF_POINTS, "points file", path))
    return Dataset(imgs, np.stack(viewmats).astype(np.float32), np.stack(Ks).astype(np.float32),
                   points, colors, names, sizes)


#: initial point cloud found by name beside transforms.json when there is no ply_file_path
BLENDERNERF_POINTS = "points3d.ply"


def _read_point_ply(path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """x/y/z (+ uchar red/green/blue) of the vertex element of a point PLY (nerfstudio's
    ``ply_file_path``), read with the shared PLY reader; (None, None) when the file is missing."""
    if not path.is_file():
        warnings.warn(f"{path}: ply_file_path not found; starting from random points", stacklevel=3)
        return None, None
    try:
        header = read_ply_header(path)
        vertex = header.element("vertex")
        if vertex is None:
            raise DatasetError(f"{path}: the point PLY has no vertex element")
        data = read_ply_elements(path, header, {"vertex"})["vertex"]
        pts = np.stack([column(path, header, vertex, data, a) for a in "xyz"], 1).astype(np.float32)
        cols = None
        rgb = [vertex.find(c) for c in ("red", "green", "blue")]
        rgb_u1 = [p for p in rgb if p is not None and p.code == "u1"]
        if len(rgb_u1) == 3:
            cols = np.stack([column(path, header, vertex, data, p.name, ("u1",)) for p in rgb_u1], 1)
        elif any(p is not None for p in rgb):
            warnings.warn(f"{path}: point colours are not uchar red/green/blue; starting from "
                          "random colours", stacklevel=3)
    except SplatFormatError as exc:
        raise DatasetError(str(exc)) from None
    return pts, cols


# -- COLMAP ---------------------------------------------------------------------------------------

# model id -> (name, number of parameters)
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
_MODEL_IDS = {name: (i, n) for i, (name, n) in COLMAP_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray      # w, x, y, z (world-to-camera rotation)
    tvec: np.ndarray
    camera_id: int
    name: str


def _read(f: BinaryIO, fmt: str, path: Path):
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise DatasetError(f"{path}: file ends early (truncated binary COLMAP model)")
    return struct.unpack(fmt, buf)


def read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    with open(path, "rb") as f:
        (n,) = _read(f, "<Q", path)
        for _ in range(n):
            cid, model_id, w, h = _read(f, "<iiQQ", path)
            if model_id not in COLMAP_MODELS:
                raise DatasetError(f"{path}: camera {cid} has unknown model id {model_id}")
            name, k = COLMAP_MODELS[model_id]
            cams[cid] = ColmapCamera(cid, name, int(w), int(h), np.array(_read(f, f"<{k}d", path)))
    return cams


def read_images_bin(path: Path) -> list[ColmapImage]:
    out = []
    with open(path, "rb") as f:
        (n,) = _read(f, "<Q", path)
        for _ in range(n):
            vals = _read(f, "<i7di", path)
            name = bytearray()
            while True:
                c = f.read(1)
                if not c:
                    raise DatasetError(f"{path}: file ends inside an image name")
                if c == b"\0":
                    break
                name += c
            (n2d,) = _read(f, "<Q", path)
            f.seek(24 * n2d, 1)            # x, y (double) and point3D id (int64) per 2D point
            out.append(ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name.decode()))
    return out


def read_points3d_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pts, cols = [], []
    with open(path, "rb") as f:
        (n,) = _read(f, "<Q", path)
        for _ in range(n):
            vals = _read(f, "<Q3d3BdQ", path)
            pts.append(vals[1:4])
            cols.append(vals[4:7])
            f.seek(8 * vals[8], 1)         # track: image id (int32) + point2D index (int32)
    return (np.array(pts, dtype=np.float32).reshape(-1, 3), np.array(cols, dtype=np.uint8).reshape(-1, 3))


def _data_lines(path: Path) -> list[str]:
    try:
        return [line.rstrip("\n") for line in path.read_text().splitlines() if not line.startswith("#")]
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None


def read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for line in _data_lines(path):
        parts = line.split()
        if not parts:
            continue
        try:
            cid, model, w, h = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: cannot parse camera line {line!r}") from None
        if model not in _MODEL_IDS:
            raise DatasetError(f"{path}: camera {cid} has unknown model {model!r}")
        if len(params) != _MODEL_IDS[model][1]:
            raise DatasetError(f"{path}: camera {cid} ({model}) has {len(params)} parameters, "
                               f"expected {_MODEL_IDS[model][1]}")
        cams[cid] = ColmapCamera(cid, model, w, h, params)
    return cams


def read_images_txt(path: Path) -> list[ColmapImage]:
    lines = _data_lines(path)
    # two lines per image; the second (its 2D points) may be empty
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i in range(0, len(lines), 2):
        parts = lines[i].split()
        if not parts:
            continue
        try:
            iid = int(parts[0])
            q = np.array([float(v) for v in parts[1:5]])
            t = np.array([float(v) for v in parts[5:8]])
            cid = int(parts[8])
            name = " ".join(parts[9:])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: cannot parse image line {lines[i]!r}") from None
        if not name:
            raise DatasetError(f"{path}: image {iid} has no file name")
        out.append(ColmapImage(iid, q, t, cid, name))
    return out


def read_points3d_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pts, cols = [], []
    for line in _data_lines(path):
        parts = line.split()
        if not parts:
            continue
        try:
            pts.append([float(v) for v in parts[1:4]])
            cols.append([int(v) for v in parts[4:7]])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: cannot parse point line {line!r}") from None
    return (np.array(pts, dtype=np.float32).reshape(-1, 3), np.array(cols, dtype=np.uint8).reshape(-1, 3))


def _colmap_intrinsics(cam: ColmapCamera, source: Path) -> tuple[float, float, float, float]:
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2]
    if cam.model == "PINHOLE":
        return p[0], p[1], p[2], p[3]
    if cam.model in ("SIMPLE_RADIAL", "RADIAL"):
        if np.any(p[3:] != 0):
            warnings.warn(f"{source}: camera {cam.id} is {cam.model} with k={list(p[3:])}; the radial "
                          "distortion is ignored (trained as a pinhole camera)", stacklevel=3)
        return p[0], p[0], p[1], p[2]
    one_focal = cam.model in ("SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
    n_intr = 3 if one_focal else 4
    if np.any(p[n_intr:] != 0) or "FISHEYE" in cam.model:
        raise DatasetError(f"{source}: camera {cam.id} uses the {cam.model} model with distortion "
                           f"{list(p[n_intr:])}; only PINHOLE / SIMPLE_PINHOLE (or SIMPLE_RADIAL / RADIAL) "
                           "are supported: undistort the images first (colmap image_undistorter)")
    return (p[0], p[0], p[1], p[2]) if one_focal else (p[0], p[1], p[2], p[3])


def find_colmap_model(root: Path) -> Path | None:
    """The folder holding cameras.{bin,txt} under ``root`` (root, sparse/0, sparse, colmap/sparse/0)."""
    for d in (root, root / "sparse" / "0", root / "sparse", root / "colmap" / "sparse" / "0"):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def load_colmap(model_dir: str | Path, images_dir: str | Path | None = None, downscale: int = 1,
                should_stop: Callable[[], bool] | None = None) -> Dataset:
    """Load a COLMAP sparse model (binary preferred when both exist) and its images
    (``should_stop`` is polled before each image: ``DatasetCancelled``).

    ``images_dir`` defaults to ``<dataset root>/images``, the root being the folder above
    ``sparse/``."""
    model_dir = Path(model_dir)
    kind = "bin" if (model_dir / "cameras.bin").is_file() else "txt"
    cam_path = model_dir / f"cameras.{kind}"
    img_path = model_dir / f"images.{kind}"
    pts_path = model_dir / f"points3D.{kind}"
    for p in (cam_path, img_path):
        if not p.is_file():
            raise DatasetError(f"{p}: file not found (COLMAP model in {model_dir})")
    cams = read_cameras_bin(cam_path) if kind == "bin" else read_cameras_txt(cam_path)
    imgs = read_images_bin(img_path) if kind == "bin" else read_images_txt(img_path)
    if not imgs:
        raise DatasetError(f"{img_path}: no registered images")
    if images_dir is None:
        root = model_dir
        for parent in [model_dir, *model_dir.parents]:
            if parent.name == "sparse":
                root = parent.parent
                break
        images_dir = confined(root, "images", "image folder", model_dir)
    images_dir = Path(images_dir)
    imgs.sort(key=lambda im: im.name)
    images, viewmats, Ks, names = [], [], [], []
    for im in imgs:
        _poll(should_stop)
        if im.camera_id not in cams:
            raise DatasetError(f"{img_path}: image {im.name!r} refers to camera {im.camera_id}, "
                               f"which {cam_path.name} does not define")
        cam = cams[im.camera_id]
        fx, fy, cx, cy = _colmap_intrinsics(cam, cam_path)
        file = confined(images_dir, im.name, "image name", img_path)
        if not file.is_file():
            raise DatasetError(f"{img_path}: image {im.name!r}: file {file} not found")
        rgba = read_image_rgba(file, downscale)
        h, w = rgba.shape[:2]
        if not (abs(w * downscale - cam.width) < downscale and abs(h * downscale - cam.height) < downscale):
            raise DatasetError(f"{img_path}: image {im.name!r} is {w * downscale}x{h * downscale} px but "
                               f"camera {cam.id} is {cam.width}x{cam.height} px")
        sx, sy = w / cam.width, h / cam.height
        K = np.array([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]])
        w2c = np.eye(4)
        w2c[:3, :3] = quat_to_matrix(im.qvec)
        w2c[:3, 3] = im.tvec
        images.append(rgba)
        viewmats.append(w2c)
        Ks.append(K)
        names.append(im.name)
    stacked, sizes = _stack_images(images)
    points = colors = None
    if pts_path.is_file():
        points, colors = read_points3d_bin(pts_path) if kind == "bin" else read_points3d_txt(pts_path)
        if len(points) == 0:
            points = colors = None
    return Dataset(stacked, np.stack(viewmats).astype(np.float32), np.stack(Ks).astype(np.float32),
                   points, colors, names, sizes)


def load_dataset(path: str | Path, images_dir: str | Path | None = None, downscale: int = 1,
                 split: str = "train", should_stop: Callable[[], bool] | None = None) -> Dataset:
    """Load whatever ``path`` is: a transforms json file, a folder with ``transforms.json`` (or
    ``transforms_<split>.json``, as NeRF synthetic has), or a COLMAP dataset / model folder.
    ``should_stop`` (polled before each image) ends the reading with ``DatasetCancelled``."""
    path = Path(path)
    if downscale < 1:
        raise DatasetError(f"downscale must be >= 1, got {downscale}")
    if path.is_file():
        if path.suffix == ".json":
            return load_transforms(path, downscale, should_stop)
        raise DatasetError(f"{path}: not a transforms .json file or a dataset folder")
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    for name in ("transforms.json", f"transforms_{split}.json"):
        if (path / name).is_file():
            return load_transforms(confined(path, name, "file", path), downscale, should_stop)
    model = find_colmap_model(path)
    if model is not None:
        confined(path, os.path.relpath(model, path), "COLMAP model folder", path)
        return load_colmap(model, images_dir, downscale, should_stop)
    raise DatasetError(f"{path}: found neither transforms.json / transforms_{split}.json nor a COLMAP "
                       "model (cameras.bin or cameras.txt in the folder, sparse/0 or sparse)")
