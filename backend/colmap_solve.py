"""The COLMAP stages of a camera solve, run in a child process: ``python -m backend.colmap_solve
STAGE CONFIG.json``.

Why a child process: COLMAP's global mapper cannot be interrupted from Python (no cancellation
token), and a crash inside COLMAP (it aborts on some degenerate inputs) must not take the server
down. The parent (``backend.reconstruct``) polls the job's cancel flag while it reads this process's
progress and kills its process group on cancel, so a cancel returns within a fraction of a second
in every stage. COLMAP's log (glog, on stderr) goes to the job's ``colmap/log.txt``.

Stages (one per run):

* ``features``: import the images (one shared camera when all images have one size), SIFT per
  batch of images (progress "extracting features i/n"), then the keypoint count per image;
* ``match``: exhaustive, or sequential (``overlap`` neighbours, quadratic) plus appearance-based
  loop pairs (``loop_pairs``: the most similar far-apart frames by a small grey thumbnail; COLMAP's
  own loop detection needs a vocabulary-tree file, which is not shipped with pycolmap);
* ``map``: the global (GLOMAP) or incremental mapper; the largest model is written to
  ``sparse/0_raw`` (COLMAP binary) with a ``registered.json`` listing its images;
* ``model``: the Blender world (``backend.world_frame``), the model moved into it, undistortion to
  pinhole cameras, ``transforms.json`` and ``points.ply`` (layout: ``backend/reconstruct.py``).

Progress goes to stdout as one JSON object per line: ``{"stage", "step", "total"}``, and finally
``{"done": ...}`` with the stage's result. Needs only pycolmap, numpy, Pillow and ``shared`` (no
torch). The server process never imports pycolmap: glog's signal handlers would turn its clean
SIGTERM shutdown into an abort.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def emit(**obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def thumbnails(image_dir: Path, names: list[str], size: int = 24) -> np.ndarray:
    """Grey thumbnails [N, size*size] (zero mean, unit norm) for image similarity."""
    from PIL import Image
    out = np.zeros((len(names), size * size), np.float32)
    for i, n in enumerate(names):
        with Image.open(image_dir / n) as im:
            g = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR), np.float32).ravel()
        g = g - g.mean()
        out[i] = g / (np.linalg.norm(g) + 1e-6)
    return out


def loop_pairs(thumbs: np.ndarray, min_gap: int, per_image: int = 2,
               min_similarity: float = 0.6) -> list[tuple[int, int]]:
    """Pairs (i, j), j - i >= ``min_gap``, of frames that look alike: for each frame, its
    ``per_image`` most similar frames at least ``min_gap`` away (cosine of the thumbnails)."""
    n = len(thumbs)
    sim = thumbs @ thumbs.T
    pairs = set()
    for i in range(n):
        far = [j for j in range(n) if abs(j - i) >= min_gap]
        if not far:
            continue
        order = sorted(far, key=lambda j: -sim[i, j])[:per_image]
        for j in order:
            if sim[i, j] >= min_similarity:
                pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def stage_features(cfg: dict) -> dict:
    import pycolmap
    db, image_dir, names = Path(cfg["database"]), Path(cfg["image_dir"]), list(cfg["names"])
    mode = pycolmap.CameraMode.SINGLE if cfg.get("single_camera", True) else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.get("camera_model", "SIMPLE_RADIAL")
    pycolmap.Database.open(db).close()          # creates the file with COLMAP's tables
    pycolmap.import_images(db, image_dir, camera_mode=mode, image_names=names, options=reader)
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = int(cfg["max_image_size"])
    ext.sift.max_num_features = int(cfg["max_num_features"])
    ext.num_threads = int(cfg.get("num_threads", -1))
    batch = max(1, int(cfg.get("batch", 8)))
    emit(stage="extracting features", step=0, total=len(names))
    for start in range(0, len(names), batch):
        part = names[start:start + batch]
        pycolmap.extract_features(db, image_dir, image_names=part, camera_mode=mode,
                                  reader_options=reader, extraction_options=ext)
        emit(stage="extracting features", step=min(start + batch, len(names)), total=len(names))
    counts = {}
    with pycolmap.Database.open(db) as d:
        for im in d.read_all_images():
            counts[im.name] = int(d.num_keypoints_for_image(im.image_id))
    # the CUDA build (pycolmap-cuda12 on a GPU backend) extracts and matches on the GPU by itself
    return {"keypoints": counts, "colmap": {"pycolmap": pycolmap.__version__, "cuda": bool(pycolmap.has_cuda)}}


def stage_match(cfg: dict) -> dict:
    import pycolmap
    db = Path(cfg["database"])
    opts = pycolmap.FeatureMatchingOptions()
    opts.num_threads = int(cfg.get("num_threads", -1))
    emit(stage="matching", step=0, total=0)
    if cfg["matcher"] == "exhaustive":
        pycolmap.match_exhaustive(db, matching_options=opts)
        return {"matcher": "exhaustive", "loop_pairs": 0}
    seq = pycolmap.SequentialPairingOptions()
    seq.overlap = int(cfg.get("overlap", 10))
    seq.quadratic_overlap = True
    pycolmap.match_sequential(db, matching_options=opts, pairing_options=seq)
    names = list(cfg["names"])
    pairs = loop_pairs(thumbnails(Path(cfg["image_dir"]), names), min_gap=2 * seq.overlap)
    if pairs:
        emit(stage="matching loop pairs", step=0, total=len(pairs))
        pairs_file = Path(cfg["work_dir"]) / "loop_pairs.txt"
        pairs_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
        imp = pycolmap.ImportedPairingOptions()
        imp.match_list_path = str(pairs_file)
        pycolmap.match_image_pairs(db, matching_options=opts, pairing_options=imp)
    return {"matcher": "sequential", "loop_pairs": len(pairs)}


def stage_map(cfg: dict) -> dict:
    import pycolmap
    db, image_dir = Path(cfg["database"]), Path(cfg["image_dir"])
    out = Path(cfg["work_dir"]) / f"sparse_{cfg['mapper']}"
    out.mkdir(parents=True, exist_ok=True)
    total = len(cfg["names"])
    if cfg["mapper"] == "global":
        emit(stage="mapping (global)", step=0, total=total)
        global_opts = pycolmap.GlobalPipelineOptions()
        global_opts.num_threads = int(cfg.get("num_threads", -1))
        global_opts.random_seed = 0
        recs = pycolmap.global_mapping(db, image_dir, out, global_opts)
    else:
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = int(cfg.get("num_threads", -1))
        opts.random_seed = 0
        count = [0]

        def next_image() -> None:
            count[0] += 1
            emit(stage="mapping: images registered", step=min(count[0] + 1, total), total=total)

        emit(stage="mapping: images registered", step=0, total=total)
        recs = pycolmap.incremental_mapping(db, image_dir, out, opts, next_image_callback=next_image)
    if not recs:
        return {"registered": [], "points": 0}
    best = max(recs.values(), key=lambda r: r.num_reg_images())
    raw = Path(cfg["work_dir"]) / "sparse" / "0_raw"
    raw.mkdir(parents=True, exist_ok=True)
    best.write_binary(str(raw))
    registered = sorted(best.images[i].name for i in best.reg_image_ids())
    (raw / "registered.json").write_text(json.dumps(registered))
    emit(stage="mapping: images registered", step=len(registered), total=total)
    return {"registered": registered, "points": int(best.num_points3D()),
            "mean_reprojection_error": float(best.compute_mean_reprojection_error())}


def transforms_dict(rec, inputs: dict, unregistered: list[str]) -> dict:
    """The transforms.json layout (see ``backend/reconstruct.py``) of an undistorted (PINHOLE)
    pycolmap reconstruction; frames in capture order; camera conversion by ``shared.cameras``."""
    from shared.cameras import Camera, camera_to_blender
    names = inputs["names"]
    index = {n: i for i, n in enumerate(names)}
    frames = []
    first: Camera | None = None
    for iid in rec.reg_image_ids():
        im = rec.images[iid]
        cam = rec.cameras[im.camera_id]
        p = [float(v) for v in cam.params]
        fx, fy, cx, cy = p[:4] if len(p) >= 4 else (p[0], p[0], p[1], p[2])
        w2c = np.eye(4)
        w2c[:3, :] = im.cam_from_world().matrix()
        camera = Camera(w2c, fx, fy, cx, cy, int(cam.width), int(cam.height))
        first = first or camera
        i = index[im.name]
        fr = {"file_path": f"images/{im.name}", "source": inputs["sources"][i], "image": im.name,
              "transform_matrix": np.asarray(camera_to_blender(camera).matrix_world).tolist(),
              "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": camera.width, "h": camera.height}
        if inputs["kind"] == "video":
            fr["frame_index"] = inputs["frame_index"][i]
            fr["time_s"] = inputs["time_s"][i]
        frames.append((i, fr))
    frames.sort(key=lambda x: x[0])
    if first is None:
        raise ValueError("the reconstruction has no registered image to write transforms for")
    out = {"camera_angle_x": float(2 * np.arctan(0.5 * first.width / first.fx)),
           "w": first.width, "h": first.height, "fl_x": first.fx, "fl_y": first.fy, "cx": first.cx,
           "cy": first.cy, "source_kind": inputs["kind"], "frames": [f for _, f in frames],
           "unregistered": [inputs["sources"][index[n]] for n in unregistered]}
    if inputs.get("fps") is not None:
        out["fps"] = inputs["fps"]
    return out


def write_points_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """A binary little-endian point PLY: float x, y, z and uchar red, green, blue."""
    n = len(points)
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                             ("blue", "u1")])
    if n:
        rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
        rec["red"], rec["green"], rec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nend_header\n")
    path.write_bytes(header.encode() + rec.tobytes())


def stage_model(cfg: dict) -> dict:
    """World frame (``backend.world_frame``), the model moved into it (``sparse/aligned``),
    undistorted to pinhole (``model_dir``: images/, sparse/), transforms.json and points.ply."""
    import shutil

    import pycolmap

    from backend.world_frame import world_frame
    work = Path(cfg["work_dir"])
    rec = pycolmap.Reconstruction(str(work / "sparse" / "0_raw"))
    c2w = []
    for iid in rec.reg_image_ids():
        m = np.eye(4)
        m[:3, :] = rec.images[iid].cam_from_world().matrix()
        c2w.append(np.linalg.inv(m))
    pts = np.array([p.xyz for p in rec.points3D.values()], np.float64).reshape(-1, 3)
    world = world_frame(np.stack(c2w), pts, size=float(cfg["scene_size"]))
    m = world.matrix
    rec.transform(pycolmap.Sim3d(world.scale, pycolmap.Rotation3d(m[:3, :3] / world.scale), m[:3, 3]))
    aligned = work / "sparse" / "aligned"
    aligned.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(aligned))
    model_dir = Path(cfg["model_dir"])
    if model_dir.exists():
        shutil.rmtree(model_dir)
    emit(stage="undistorting images", step=0, total=int(rec.num_reg_images()))
    pycolmap.undistort_images(str(model_dir), str(aligned), str(cfg["image_dir"]))
    und = pycolmap.Reconstruction(str(model_dir / "sparse"))
    points = np.array([p.xyz for p in und.points3D.values()], np.float32).reshape(-1, 3)
    colors = np.array([p.color for p in und.points3D.values()], np.uint8).reshape(-1, 3)
    transforms = transforms_dict(und, cfg["inputs"], list(cfg["unregistered"]))
    write_points_ply(model_dir / "points.ply", points, colors)
    transforms["ply_file_path"] = "points.ply"
    (model_dir / "transforms.json").write_text(json.dumps(transforms, indent=1))
    return {"world": world.to_meta()}


STAGES = {"features": stage_features, "match": stage_match, "map": stage_map, "model": stage_model}


def main(argv: list[str]) -> int:
    stage, cfg_path = argv
    cfg = json.loads(Path(cfg_path).read_text())
    result = STAGES[stage](cfg)
    emit(done=True, result=result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
