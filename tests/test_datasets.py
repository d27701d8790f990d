"""Dataset loaders: transforms.json (NeRF / BlenderNeRF / nerfstudio) and COLMAP text + binary.
Each test writes its own small dataset (PNGs with pillow, COLMAP files with struct)."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.datasets import DatasetError, load_colmap, load_dataset, load_transforms
from shared.cameras import look_at
from shared.rotations import matrix_to_quat


def project(viewmat: np.ndarray, K: np.ndarray, point) -> tuple[float, float]:
    pc = viewmat[:3, :3] @ np.asarray(point, dtype=np.float64) + viewmat[:3, 3]
    assert pc[2] > 0
    return K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]


def write_png(path: Path, w: int, h: int, seed: int, mode: str = "RGBA") -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return arr


# A Blender camera at (0, -4, 0) looking along +Y, its up (local +Y) = world +Z: rotation X by 90 deg.
BLENDER_C2W = [[1, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]]
# Seen from there, world point (0.5, 0, 0.25) is 4 m ahead, right of centre (+x) and above it (-v).
POINT = (0.5, 0.0, 0.25)


def test_transforms_json_nerf_synthetic_camera_angle(tmp_path):
    W, H = 40, 30
    angle = 0.69
    img0 = write_png(tmp_path / "train" / "r_0.png", W, H, 0)
    c2w_b = np.array(BLENDER_C2W, float)
    c2w_b[0, 3] = 1.0                            # second camera: 1 m to the right
    write_png(tmp_path / "train" / "r_1.png", W, H, 1)
    meta = {"camera_angle_x": angle, "frames": [
        {"file_path": "./train/r_0", "transform_matrix": BLENDER_C2W},
        {"file_path": "./train/r_1", "transform_matrix": c2w_b.tolist()},
    ]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path)
    assert ds.images.shape == (2, H, W, 4) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[0], img0)
    f = 0.5 * W / math.tan(0.5 * angle)
    np.testing.assert_allclose(ds.Ks[0], [[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], rtol=1e-6)
    u, v = project(ds.viewmats[0], ds.Ks[0], POINT)
    assert (u, v) == pytest.approx((W / 2 + f * 0.5 / 4, H / 2 - f * 0.25 / 4), abs=1e-4)
    u1, v1 = project(ds.viewmats[1], ds.Ks[1], POINT)
    assert (u1, v1) == pytest.approx((W / 2 + f * (0.5 - 1.0) / 4, v), abs=1e-4)
    assert ds.names == ["./train/r_0", "./train/r_1"]
    assert ds.points is None


def test_transforms_json_nerfstudio_intrinsics_and_rgb(tmp_path):
    W, H = 32, 24
    arr = write_png(tmp_path / "images" / "frame_00001.png", W, H, 3, mode="RGB")
    write_png(tmp_path / "images" / "frame_00002.png", W, H, 4, mode="RGB")
    meta = {"fl_x": 30.0, "fl_y": 28.0, "cx": 15.0, "cy": 13.0, "w": W, "h": H, "camera_model": "OPENCV",
            "frames": [{"file_path": "images/frame_00001.png", "transform_matrix": BLENDER_C2W},
                       {"file_path": "images/frame_00002.png", "transform_matrix": BLENDER_C2W,
                        "fl_x": 60.0, "fl_y": 56.0, "cx": 16.0, "cy": 12.0}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = load_transforms(tmp_path / "transforms.json")
    np.testing.assert_array_equal(ds.images[0, ..., :3], arr)
    assert (ds.images[..., 3] == 255).all()
    assert project(ds.viewmats[0], ds.Ks[0], POINT) == pytest.approx((15 + 30 * 0.125, 13 - 28 * 0.0625), abs=1e-4)
    assert project(ds.viewmats[1], ds.Ks[1], POINT) == pytest.approx((16 + 60 * 0.125, 12 - 56 * 0.0625), abs=1e-4)
    # downscaled by 2: same angles, half the pixels
    half = load_dataset(tmp_path, downscale=2)
    assert half.images.shape == (2, H // 2, W // 2, 4)
    np.testing.assert_allclose(half.Ks[0], [[15, 0, 7.5], [0, 14, 6.5], [0, 0, 1]])


def test_transforms_json_errors_name_file_and_frame(tmp_path):
    write_png(tmp_path / "a.png", 16, 16, 0)
    write_png(tmp_path / "b.png", 20, 16, 1)
    base = {"camera_angle_x": 0.7}
    path = tmp_path / "transforms.json"

    path.write_text(json.dumps({**base, "frames": [
        {"file_path": "a.png", "transform_matrix": BLENDER_C2W},
        {"file_path": "missing", "transform_matrix": BLENDER_C2W}]}))
    with pytest.raises(DatasetError, match=r"transforms\.json: frame 1 \(missing\).*not found"):
        load_dataset(tmp_path)

    path.write_text(json.dumps({**base, "frames": [
        {"file_path": "a", "transform_matrix": BLENDER_C2W},
        {"file_path": "b", "transform_matrix": BLENDER_C2W}]}))
    mixed = load_dataset(tmp_path)            # frames of two sizes: one canvas, each view's size kept
    assert mixed.images.shape[1:3] == (16, 20) and mixed.sizes.tolist() == [[16, 16], [20, 16]]

    path.write_text(json.dumps({**base, "w": 32, "h": 32, "frames": [{"file_path": "a", "transform_matrix": BLENDER_C2W}]}))
    with pytest.raises(DatasetError, match=r"frame 0 \(a\): image a.png is 16x16 px but the json says w=32"):
        load_dataset(tmp_path)

    path.write_text(json.dumps({"frames": [{"file_path": "a", "transform_matrix": BLENDER_C2W}]}))
    with pytest.raises(DatasetError, match="no intrinsics"):
        load_dataset(tmp_path)

    path.write_text(json.dumps({**base, "camera_model": "OPENCV_FISHEYE",
                                "frames": [{"file_path": "a", "transform_matrix": BLENDER_C2W}]}))
    with pytest.raises(DatasetError, match="OPENCV_FISHEYE is not a pinhole"):
        load_dataset(tmp_path)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither transforms.json"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "missing")


# -- COLMAP -------------------------------------------------------------------------------------------

W, H = 48, 36
CAMS = {1: ("PINHOLE", [50.0, 52.0, 24.0, 18.0]), 2: ("SIMPLE_PINHOLE", [40.0, 23.5, 17.5])}
MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4}
POINTS = np.array([[0.1, 0.2, 0.3], [-0.4, 0.0, 0.2], [0.0, -0.3, -0.1]], np.float32)
COLORS = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 30]], np.uint8)


def colmap_poses():
    """(name, camera id, w2c) for three images looking at the origin."""
    out = []
    for i, (pos, cid) in enumerate([((3, 0, 1), 1), ((0, 3, 1), 2), ((-2, -2, 2), 1)]):
        out.append((f"img_{i}.png", cid, look_at(np.array(pos, float), np.zeros(3))))
    return out


def write_colmap_txt(d: Path, cams=CAMS, poses=None):
    d.mkdir(parents=True, exist_ok=True)
    poses = poses or colmap_poses()
    lines = ["# Camera list with one line of data per camera:"]
    lines += [f"{cid} {model} {W} {H} " + " ".join(map(str, params)) for cid, (model, params) in cams.items()]
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for i, (name, cid, w2c) in enumerate(poses):
        q = matrix_to_quat(w2c[:3, :3])
        t = w2c[:3, 3]
        lines.append(f"{i + 1} {' '.join(map(repr, q))} {' '.join(map(repr, t))} {cid} {name}")
        lines.append("" if i % 2 else "10.0 12.0 -1 20.5 3.0 1")        # 2D points (may be empty)
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list"]
    for j, (p, c) in enumerate(zip(POINTS, COLORS)):
        lines.append(f"{j + 1} {p[0]} {p[1]} {p[2]} {c[0]} {c[1]} {c[2]} 0.5 1 0 2 1")
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_colmap_bin(d: Path, cams=CAMS, poses=None):
    d.mkdir(parents=True, exist_ok=True)
    poses = poses or colmap_poses()
    with open(d / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for cid, (model, params) in cams.items():
            f.write(struct.pack("<iiQQ", cid, MODEL_IDS[model], W, H))
            f.write(struct.pack(f"<{len(params)}d", *params))
    with open(d / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(poses)))
        for i, (name, cid, w2c) in enumerate(poses):
            f.write(struct.pack("<i7di", i + 1, *matrix_to_quat(w2c[:3, :3]), *w2c[:3, 3], cid))
            f.write(name.encode() + b"\0")
            f.write(struct.pack("<Q", 2))
            f.write(struct.pack("<ddq", 10.0, 12.0, -1) + struct.pack("<ddq", 20.5, 3.0, 1))
    with open(d / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", len(POINTS)))
        for j, (p, c) in enumerate(zip(POINTS, COLORS)):
            f.write(struct.pack("<Q3d3BdQ", j + 1, *map(float, p), *map(int, c), 0.5, 2))
            f.write(struct.pack("<iiii", 1, 0, 2, 1))


def write_colmap_images(root: Path):
    return {name: write_png(root / "images" / name, W, H, i, mode="RGB")
            for i, (name, _, _) in enumerate(colmap_poses())}


@pytest.mark.parametrize("kind", ["txt", "bin"])
def test_colmap_model_reproduces_projections(tmp_path, kind):
    arrays = write_colmap_images(tmp_path)
    (write_colmap_txt if kind == "txt" else write_colmap_bin)(tmp_path / "sparse" / "0")
    ds = load_dataset(tmp_path)
    assert ds.names == ["img_0.png", "img_1.png", "img_2.png"]
    assert ds.images.shape == (3, H, W, 4)
    np.testing.assert_array_equal(ds.images[1, ..., :3], arrays["img_1.png"])
    np.testing.assert_allclose(ds.points, POINTS, atol=1e-6)
    np.testing.assert_array_equal(ds.colors, COLORS)
    for i, (name, cid, w2c) in enumerate(colmap_poses()):
        model, p = CAMS[cid]
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if model == "SIMPLE_PINHOLE" else p
        for point in POINTS:
            pc = w2c[:3, :3] @ point + w2c[:3, 3]
            want = (fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy)
            assert project(ds.viewmats[i], ds.Ks[i], point) == pytest.approx(want, abs=1e-3)
    # the origin, which every camera looks at, lands on the principal point
    assert project(ds.viewmats[1], ds.Ks[1], (0, 0, 0)) == pytest.approx((23.5, 17.5), abs=1e-3)


def test_colmap_text_and_binary_agree(tmp_path):
    write_colmap_images(tmp_path)
    write_colmap_txt(tmp_path / "txt")
    write_colmap_bin(tmp_path / "bin")
    a = load_colmap(tmp_path / "txt", tmp_path / "images")
    b = load_colmap(tmp_path / "bin", tmp_path / "images")
    for field in ("images", "viewmats", "Ks", "points", "colors"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-5)


def test_colmap_camera_models_and_errors(tmp_path):
    write_colmap_images(tmp_path)
    model = tmp_path / "sparse" / "0"
    write_colmap_txt(model, cams={1: ("OPENCV", [50, 52, 24, 18, 0.1, 0.0, 0.0, 0.0]),
                                  2: ("SIMPLE_PINHOLE", [40.0, 23.5, 17.5])})
    with pytest.raises(DatasetError, match=r"cameras.txt: camera 1 uses the OPENCV model with distortion.*undistort"):
        load_dataset(tmp_path)
    # OPENCV with zero distortion is a pinhole camera
    write_colmap_txt(model, cams={1: ("OPENCV", [50, 52, 24, 18, 0, 0, 0, 0]), 2: ("SIMPLE_PINHOLE", [40.0, 23.5, 17.5])})
    assert load_dataset(tmp_path).Ks[0, 0, 0] == 50
    write_colmap_txt(model, cams={1: ("SIMPLE_RADIAL", [50, 24, 18, 0.01]), 2: ("SIMPLE_PINHOLE", [40.0, 23.5, 17.5])})
    with pytest.warns(UserWarning, match="SIMPLE_RADIAL.*ignored"):
        ds = load_dataset(tmp_path)
    np.testing.assert_allclose(ds.Ks[0], [[50, 0, 24], [0, 50, 18], [0, 0, 1]])
    # an image file missing
    write_colmap_txt(model)
    (tmp_path / "images" / "img_2.png").unlink()
    with pytest.raises(DatasetError, match=r"images.txt: image 'img_2.png': file .*img_2.png not found"):
        load_dataset(tmp_path)
    # an image of the wrong size
    write_png(tmp_path / "images" / "img_2.png", W + 2, H, 9, mode="RGB")
    with pytest.raises(DatasetError, match=r"image 'img_2.png' is 50x36 px but camera 1 is 48x36"):
        load_dataset(tmp_path)
    # a truncated binary model
    write_colmap_bin(tmp_path / "trunc")
    data = (tmp_path / "trunc" / "images.bin").read_bytes()
    (tmp_path / "trunc" / "images.bin").write_bytes(data[:40])
    with pytest.raises(DatasetError, match=r"images.bin: file ends early"):
        load_colmap(tmp_path / "trunc", tmp_path / "images")


def test_transforms_json_initial_points_from_a_point_ply(tmp_path):
    write_png(tmp_path / "r_0.png", 8, 6, 0)
    meta = {"camera_angle_x": 0.7, "ply_file_path": "points.ply",
            "frames": [{"file_path": "r_0", "transform_matrix": BLENDER_C2W}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    pts = np.array([[0.5, 0.0, 0.25], [-1.0, 2.0, 3.0], [1e-3, -5.0, 7.5]], np.float32)
    cols = np.array([[255, 0, 10], [1, 2, 3], [200, 100, 50]], np.uint8)
    rec = np.empty(3, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"),
                       ("nz", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, a in enumerate("xyz"):
        rec[a] = pts[:, i]
    rec["nx"] = rec["ny"] = rec["nz"] = 0.0
    for i, c in enumerate(("red", "green", "blue")):
        rec[c] = cols[:, i]
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
              + "".join(f"property float {a}\n" for a in ("x", "y", "z", "nx", "ny", "nz"))
              + "".join(f"property uchar {c}\n" for c in ("red", "green", "blue")) + "end_header\n")
    ply = tmp_path / "points.ply"
    ply.write_bytes(header.encode() + rec.tobytes())
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.points, pts)
    np.testing.assert_array_equal(ds.colors, cols)
    # a truncated file is a DatasetError naming the file, not a numpy error
    ply.write_bytes(header.encode() + rec.tobytes()[:-5])
    with pytest.raises(DatasetError, match=r"points\.ply: element 'vertex': truncated"):
        load_dataset(tmp_path)


def test_blendernerf_points3d_ply_is_found_by_name(tmp_path):
    """BlenderNeRF writes points3d.ply beside transforms.json with no ply_file_path key; like the
    3DGS reference loader, we take it by name. An explicit ply_file_path still wins."""
    write_png(tmp_path / "r_0.png", 8, 6, 0)
    meta = {"camera_angle_x": 0.7, "frames": [{"file_path": "r_0", "transform_matrix": BLENDER_C2W}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    assert load_dataset(tmp_path).points is None
    pts = np.array([[0.5, 0.0, 0.25], [-1.0, 2.0, 3.0]], np.float32)
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 2\n"
              + "".join(f"property float {a}\n" for a in "xyz") + "end_header\n")
    (tmp_path / "points3d.ply").write_bytes(header.encode() + pts.tobytes())
    np.testing.assert_array_equal(load_dataset(tmp_path).points, pts)
    other = pts * 2
    (tmp_path / "other.ply").write_bytes(header.encode() + other.tobytes())
    meta["ply_file_path"] = "other.ply"
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(load_dataset(tmp_path).points, other)
