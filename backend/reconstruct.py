"""Photos or a video to splats: the ``reconstruct`` job and ``python -m backend reconstruct``.

Stages (each reports ``stage`` + step/total and polls cancel):

1. **inputs**: a folder of photos (every image decodes, else the error names it; larger than
   ``max_image_size`` are scaled down) or a video (``backend.video_frames``: ``frames`` frames
   spread over it, the sharpest of each stretch). Fewer than 3 images, or images that are all
   (nearly) the same picture, are refused before any solving.
2. **features / matching / mapping** in a child process (``backend.colmap_solve``; see there why),
   killed on cancel. Too many images without features is a "textureless" error naming the count.
   Mapping: the global mapper, with the incremental mapper as fallback when it registers < 90 %.
3. **world**: ``backend.world_frame``: Z up, centred, ``scene_size`` metres across; the model is
   transformed into that world.
4. **undistortion** to pinhole cameras (in the child process too).
5. **training** (``backend.trainer.train``) on the undistorted images and solved cameras: opaque
   photos (no random background, so no alpha loss), the sparse points and their colours as the
   initial splats, every ``holdout_every``-th registered view held out for ``eval_psnr``.

Files in the job store (``<store>/<job_id>/reconstruct/``, or the CLI's ``--colmap-out``)::

    images/                 the images the solve used (scaled photos or the picked video frames)
    colmap/database.db      COLMAP database (features, matches)
    colmap/log.txt          COLMAP's log of every stage (kept when the solve fails)
    colmap/sparse/0_raw/    the solved model in COLMAP's own world (binary), plus registered.json
    model/sparse/           the undistorted PINHOLE model in the Blender world (COLMAP binary)
    model/images/           the undistorted images
    model/transforms.json   the same cameras in the transforms.json layout (see below), with
                            "ply_file_path": "points.ply"; ``python -m backend train model/`` and
                            the ``model`` setting of a new reconstruct job read this folder
    model/points.ply        the sparse points (x, y, z float, red, green, blue uchar), Blender world

``transforms.json`` / the CLI's ``cameras.json``: ``camera_angle_x`` (radians), ``w``, ``h`` (the
undistorted images' size), ``fl_x``, ``fl_y``, ``cx``, ``cy`` (pixels), ``frames[i]``:
``file_path`` (transforms.json: ``images/<name>``, the undistorted image; cameras.json: the source
photo's path, or ``<video>#<frame index>``), ``transform_matrix`` (camera-to-world 4x4, Blender
camera convention: looks down -Z, +Y up, in the world of the splats), ``source`` (the source photo's
path, or ``<video>#<frame index>``), ``image`` (its file in images/), for video ``frame_index`` and
``time_s``, and each frame's own ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h``. Top level:
``unregistered`` (the sources of the images that did not register), ``source_kind``
("photos"/"video"), ``fps`` (video).

The result's ``meta["reconstruct"]``: ``source``, ``source_kind``, ``fps``, ``num_images``,
``registered`` (count), ``unregistered`` (the source photos' file names, or ``<video>#<frame>``),
``matcher``, ``mapper``, ``loop_pairs``,
``colmap`` (pycolmap version; ``cuda``: its CUDA build, used for features and matching when installed),
``world`` (``backend.world_frame.WorldFrame.to_meta``: the 4x4 from COLMAP's world to ours),
``stage_seconds``, ``files`` (the paths above, relative to the job folder), ``cameras`` (the
cameras.json dict) and ``points`` (up to 20000 sparse points: ``xyz`` flat f32 list, ``rgb`` flat u8
list). The result's ``metrics`` are the trainer's (``eval_psnr`` on the held-out views) plus
``registered_fraction``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.job_api import JobContext, JobError, JobResult, checked_settings
from backend.video_frames import VIDEO_EXTENSIONS, extract_frames
from backend.world_frame import WorldFrame
from shared.jobkinds.reconstruct import PHOTO_EXTENSIONS
from shared.jobspec import Settings
from shared.splats import Splats

MIN_IMAGES = 3
MIN_FEATURES = 100          # fewer keypoints than this: the image counts as "no features"
EXHAUSTIVE_MAX = 120        # 'auto' matches every pair up to this many photos
PRESETS = {                 # quality -> (SIFT features per image, sequential overlap)
    "fast": (2048, 6),
    "balanced": (8192, 10),
    "best": (16384, 20),
}


class Cancelled(Exception):
    """The job was cancelled while a stage ran."""


@dataclass
class SolveInputs:
    image_dir: Path
    names: list[str]                      # file names in image_dir, in capture order
    sources: list[str]                    # per name: the source photo path or "<video>#<index>"
    kind: str                             # "photos" or "video"
    fps: float | None = None
    frame_index: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)


class _Stages:
    """Per-stage progress and timing: ``ctx.report(step, total, {"stage": text})``."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._t = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t
            self._name = None

    def report(self, text: str, step: int = 0, total: int = 0) -> None:
        self.ctx.report(step, total, {"stage": text})
        self.check()

    def check(self) -> None:
        if self.ctx.should_stop():
            raise Cancelled


# -- inputs ------------------------------------------------------------------------------------

def _thumb(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float32)


def check_distinct(image_dir: Path, names: list[str]) -> None:
    """Refuse a set whose images are (nearly) all one picture: no camera motion to solve."""
    thumbs = [_thumb(image_dir / n) for n in names]
    distinct: list[np.ndarray] = []
    for t in thumbs:
        if all(float(np.abs(t - d).mean()) > 1.5 for d in distinct):
            distinct.append(t)
            if len(distinct) >= MIN_IMAGES:
                return
    raise JobError("bad_input", f"the {len(names)} images are {len(distinct)} distinct picture(s): "
                                "(nearly) identical images show no camera motion, so their cameras "
                                f"cannot be solved; at least {MIN_IMAGES} different views are needed")


def prepare_photos(folder: Path, out_dir: Path, max_size: int, stages: _Stages) -> SolveInputs:
    """Check and copy (scaled to ``max_size``) the photos of ``folder`` into ``out_dir``."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
    if len(files) < MIN_IMAGES:
        raise JobError("bad_input", f"{folder}: {len(files)} photo(s) (JPEG/PNG) found; at least "
                                    f"{MIN_IMAGES} are needed to solve cameras (30 or more recommended)")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, p in enumerate(files):
        if i % 4 == 0:
            stages.report("reading photos", i, len(files))
        try:
            with Image.open(p) as im:
                im.load()
                img = ImageOps.exif_transpose(im).convert("RGB")    # phones store portrait as EXIF
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise JobError("bad_input", f"{p.name}: unreadable or corrupt image ({exc})") from None
        scale = max_size / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        name = p.stem + (".png" if p.suffix.lower() == ".png" else ".jpg")
        if name in names:
            name = f"{p.stem}_{i}{Path(name).suffix}"
        img.save(out_dir / name, quality=95)
        names.append(name)
    return SolveInputs(out_dir, names, [str(p) for p in files], "photos")


def prepare_video(path: Path, out_dir: Path, frames: int, max_size: int, stages: _Stages) -> SolveInputs:
    try:
        picked, fps = extract_frames(path, frames, out_dir, max_size,
                                     progress=lambda d, t: stages.report("reading video frames", d, t),
                                     should_stop=stages.ctx.should_stop, min_frames=MIN_IMAGES)
    except InterruptedError:            # cancelled while decoding: a cancel, not a failure
        raise Cancelled from None
    if stages.ctx.should_stop():
        raise Cancelled
    if len(picked) < MIN_IMAGES:
        raise JobError("bad_input", f"{path.name}: the video gave {len(picked)} frames; at least "
                                    f"{MIN_IMAGES} are needed")
    return SolveInputs(out_dir, [f.file for f in picked], [f"{path.name}#{f.index}" for f in picked],
                       "video", fps, [f.index for f in picked], [f.time_s for f in picked])


# -- the COLMAP child process --------------------------------------------------------------------

def run_stage(stage: str, cfg: dict, work: Path, stages: _Stages) -> dict:
    """Run ``backend.colmap_solve`` ``stage`` in a child process; progress lines become reports,
    cancel kills its process group (returns within ~0.1 s). Returns the stage's result; a crash is
    ``JobError("solve_failed")`` pointing at the log."""
    cfg_path = work / f"{stage}.json"
    cfg_path.write_text(json.dumps(cfg))
    log_path = work / "log.txt"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        log.write(f"\n===== {stage} =====\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "backend.colmap_solve", stage, str(cfg_path)],
                                stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result: dict | None = None
    seen = 0
    try:
        while True:
            done = proc.poll() is not None
            while seen < len(lines):
                try:
                    msg = json.loads(lines[seen])
                except json.JSONDecodeError:
                    msg = {}
                seen += 1
                if msg.get("done"):
                    result = msg["result"]
                elif "stage" in msg:
                    stages.ctx.report(int(msg.get("step", 0)), int(msg.get("total", 0)), {"stage": msg["stage"]})
            if stages.ctx.should_stop():
                raise Cancelled
            if done:
                reader.join(timeout=5)
                if seen < len(lines):
                    continue
                break
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        raise
    if proc.returncode != 0 or result is None:
        raise JobError("solve_failed", f"COLMAP {stage} stage failed (exit code {proc.returncode}); "
                                       f"see its log {log_path}")
    return result


@dataclass
class Solve:
    model_dir: Path            # undistorted model folder (transforms.json, sparse/, images/, points.ply)
    transforms: dict           # the transforms.json dict (file_path: images/<name>)
    world: WorldFrame
    registered: list[str]
    unregistered: list[str]
    matcher: str
    mapper: str
    loop_pairs: int
    colmap: dict               # {"pycolmap": version, "cuda": whether its CUDA build ran}
    points: np.ndarray         # f32[P,3] Blender world
    colors: np.ndarray | None  # u8[P,3]; None when the point file has no colours


def _textureless_check(keypoints: dict[str, int], names: list[str]) -> list[str]:
    """Names with too few features; raises the "textureless" error when that is half or more."""
    poor = [n for n in names if keypoints.get(n, 0) < MIN_FEATURES]
    if len(poor) * 2 >= len(names):
        listed = ", ".join(poor[:8]) + (", ..." if len(poor) > 8 else "")
        raise JobError("textureless", f"no features found in {len(poor)} of {len(names)} images "
                                      f"({listed}): the scene shows too little texture (plain walls, "
                                      "sky, water, motion blur or darkness); film textured surfaces")
    return poor


def solve(inputs: SolveInputs, root: Path, settings: Any, stages: _Stages) -> Solve:
    """Features, matching, mapping, world frame and undistortion of ``inputs`` into ``root``
    (every COLMAP call in the child process: pycolmap is never imported by the server process, whose
    glog signal handlers would turn the server's clean SIGTERM shutdown into an abort)."""
    work = root / "colmap"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    names = inputs.names
    from PIL import Image
    sizes = {Image.open(inputs.image_dir / n).size for n in names}
    features, overlap = PRESETS[settings.quality]
    threads = int(os.environ.get("SPLATBRIDGE_COLMAP_THREADS", "-1"))
    cfg = {"database": str(work / "database.db"), "image_dir": str(inputs.image_dir), "names": names,
           "work_dir": str(work), "single_camera": len(sizes) == 1, "max_image_size": settings.max_image_size,
           "max_num_features": features, "overlap": overlap, "num_threads": threads}

    stages.start("features")
    stages.report("extracting features", 0, len(names))
    feat = run_stage("features", cfg, work, stages)
    poor = _textureless_check(feat["keypoints"], names)

    stages.start("matching")
    matcher = settings.matcher
    if matcher == "auto":
        matcher = "sequential" if inputs.kind == "video" or len(names) > EXHAUSTIVE_MAX else "exhaustive"
    match = run_stage("match", {**cfg, "matcher": matcher}, work, stages)

    stages.start("mapping")
    order = {"auto": ["global", "incremental"], "global": ["global"], "incremental": ["incremental"]}[settings.mapper]
    best: dict | None = None
    used = order[0]
    for mapper in order:
        try:
            res = run_stage("map", {**cfg, "mapper": mapper}, work, stages)
        except JobError as exc:
            if mapper == order[-1] and best is None:
                raise
            stages.ctx.report(0, 0, {"stage": f"{mapper} mapper failed ({exc}); trying the next"})
            continue
        if best is None or len(res["registered"]) > len(best["registered"]):
            best, used = res, mapper
            shutil.copytree(work / "sparse" / "0_raw", work / "sparse" / "best", dirs_exist_ok=True)
        if len(res["registered"]) >= 0.9 * len(names):
            break
    assert best is not None
    if (work / "sparse" / "best").exists():
        shutil.rmtree(work / "sparse" / "0_raw", ignore_errors=True)
        (work / "sparse" / "best").rename(work / "sparse" / "0_raw")
    registered = best["registered"]
    unregistered = [n for n in names if n not in set(registered)]
    if len(registered) < MIN_IMAGES:
        hint = (f"; {len(poor)} of them have almost no features" if poor else "")
        raise JobError("solve_failed", f"camera solve failed: {len(registered)} of {len(names)} images "
                                       f"registered{hint}. The images need overlap (each scene point "
                                       "seen from several views) and parallax (the camera must move, "
                                       f"not only turn). The log is in {work / 'log.txt'}")
    stages.check()

    stages.start("world+undistortion")
    model_dir = root / "model"
    stages.report("aligning the world (Z up, centred, scaled) and undistorting", 0, len(registered))
    inputs_cfg = {"names": inputs.names, "sources": inputs.sources, "kind": inputs.kind, "fps": inputs.fps,
                  "frame_index": inputs.frame_index, "time_s": inputs.time_s}
    out = run_stage("model", {**cfg, "inputs": inputs_cfg, "unregistered": unregistered,
                              "scene_size": settings.scene_size, "model_dir": str(model_dir)}, work, stages)
    world = WorldFrame(np.array(out["world"]["matrix"]), out["world"]["scale"], out["world"]["up_source"],
                       out["world"]["plane_inliers"])
    transforms = json.loads((model_dir / "transforms.json").read_text())
    from backend.datasets import _read_point_ply
    points, colors = _read_point_ply(model_dir / "points.ply")
    if points is None:
        points, colors = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    stages.stop()
    return Solve(model_dir, transforms, world, registered, unregistered, matcher, used,
                 int(match.get("loop_pairs", 0)), feat.get("colmap", {}), points, colors)


def cameras_json(transforms: dict) -> dict:
    """The CLI's cameras.json: transforms.json with ``file_path`` naming the source photo or
    ``<video>#<frame index>`` instead of the undistorted image."""
    out = json.loads(json.dumps(transforms))
    for fr in out["frames"]:
        fr["file_path"] = fr["source"]
    out.pop("ply_file_path", None)
    return out


# -- training ------------------------------------------------------------------------------------

def train_on_model(model_dir: Path, settings: Any, ctx: JobContext) -> JobResult:
    """Train splats on an undistorted model folder (its transforms.json and points.ply)."""
    from backend.datasets import DatasetError, load_dataset
    from backend.trainer import train
    from shared.jobkinds.train import SPEC as TRAIN

    try:
        data = load_dataset(model_dir / "transforms.json", downscale=settings.train_downscale)
    except DatasetError as exc:
        raise JobError("bad_dataset", str(exc)) from None
    ts = TRAIN.make(steps=max(1, settings.steps), sh_degree=settings.sh_degree,
                    max_gaussians=settings.max_gaussians, holdout_every=settings.holdout_every,
                    seed=settings.seed, random_background=False, preview_every=settings.preview_every)
    images = data.images[..., :3]           # opaque photos: no alpha, no alpha loss
    return train(images, data.viewmats, data.Ks, data.points, data.colors, ts, ctx, data.sizes)


def resolve_model(settings: Any, ctx: JobContext) -> Path:
    """The solved model folder to retrain on: ``from_job`` (a reconstruct job in this job's store) or
    ``model`` (the model folder itself, or a folder holding ``model/`` or ``reconstruct/model``)."""
    if settings.from_job is not None:
        folder = Path(ctx.job_dir).parent / settings.from_job / "reconstruct" / "model"
        if (folder / "transforms.json").is_file():
            return folder
        raise JobError("bad_params", f"from_job {settings.from_job!r}: no solved model of that job in the "
                                     "job store (not a reconstruct job, not finished solving, or freed)")
    p = Path(settings.model)
    for c in (p, p / "model", p / "reconstruct" / "model"):
        if (c / "transforms.json").is_file():
            return c
    raise JobError("bad_params", f"model {settings.model!r}: no transforms.json there (expected a "
                                 "reconstruct job's model folder)")


def reconstruct(settings: Any, ctx: JobContext, root: Path) -> JobResult:
    """The whole job (see the module docstring); ``root`` receives the files."""
    stages = _Stages(ctx)
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    sol: Solve | None = None
    try:
        if settings.source is None:
            model_dir = resolve_model(settings, ctx)
            transforms = json.loads((model_dir / "transforms.json").read_text())
            info.update(reused_model=str(model_dir), source_kind=transforms.get("source_kind"),
                        unregistered=[Path(u).name for u in transforms.get("unregistered", [])],
                        registered=len(transforms["frames"]), cameras=cameras_json(transforms))
        else:
            src = Path(settings.source)
            stages.start("inputs")
            if src.is_dir():
                inputs = prepare_photos(src, root / "images", settings.max_image_size, stages)
            elif src.is_file() and src.suffix.lower() in VIDEO_EXTENSIONS:
                inputs = prepare_video(src, root / "images", settings.frames, settings.max_image_size, stages)
            elif src.is_file():
                raise JobError("bad_input", f"{src.name}: not a photo folder or a video "
                                            f"({', '.join(VIDEO_EXTENSIONS)})")
            else:
                raise JobError("bad_input", f"{src}: no such file or folder")
            check_distinct(inputs.image_dir, inputs.names)
            sol = solve(inputs, root, settings, stages)
            model_dir = sol.model_dir
            info.update(source=str(src), source_kind=inputs.kind, fps=inputs.fps, num_images=len(inputs.names),
                        registered=len(sol.registered), matcher=sol.matcher,
                        unregistered=[Path(inputs.sources[inputs.names.index(n)]).name for n in sol.unregistered],
                        mapper=sol.mapper, loop_pairs=sol.loop_pairs, colmap=sol.colmap, world=sol.world.to_meta(),
                        cameras=cameras_json(sol.transforms))
    except Cancelled:
        stages.stop()
        return JobResult(_empty_splats(), {},
                         {"cancelled": True, "reconstruct": {**info, "stage_seconds": stages.seconds}})
    rel = lambda p: os.path.relpath(p, root.parent) if p.exists() else None  # noqa: E731
    info["files"] = {"images": rel(root / "images"), "database": rel(root / "colmap" / "database.db"),
                     "log": rel(root / "colmap" / "log.txt"), "raw_model": rel(root / "colmap" / "sparse" / "0_raw"),
                     "model": rel(model_dir), "transforms": rel(model_dir / "transforms.json"),
                     "points": rel(model_dir / "points.ply")}
    pts_meta = _points_meta(model_dir)
    if settings.steps == 0:
        info["stage_seconds"] = stages.seconds
        info["points"] = pts_meta
        return JobResult(_empty_splats(), {}, {"cancelled": False, "reconstruct": info})
    stages.start("training")
    result = train_on_model(model_dir, settings, ctx)
    stages.stop()
    info["stage_seconds"] = stages.seconds
    info["points"] = pts_meta
    result.meta["reconstruct"] = info
    result.meta["settings_reconstruct"] = settings.to_meta()
    n_img = info.get("num_images") or (info["registered"] + len(info.get("unregistered", [])))
    result.metrics["registered_fraction"] = info["registered"] / max(1, n_img)
    return result


def _points_meta(model_dir: Path, cap: int = 20000) -> dict:
    from backend.datasets import _read_point_ply
    pts, cols = _read_point_ply(model_dir / "points.ply")
    if pts is None:
        return {"xyz": [], "rgb": []}
    if len(pts) > cap:
        sel = np.random.default_rng(0).choice(len(pts), cap, replace=False)
        pts, cols = pts[sel], cols[sel] if cols is not None else None
    return {"xyz": np.round(pts.astype(np.float32), 5).ravel().tolist(),
            "rgb": (cols.ravel().tolist() if cols is not None else [])}


def _empty_splats() -> Splats:
    return Splats(np.zeros((0, 3), np.float32), np.tile(np.array([[1, 0, 0, 0]], np.float32), (0, 1)),
                  np.zeros((0, 3), np.float32), np.zeros((0,), np.float32), np.zeros((0, 3), np.float32))


def run_reconstruct_job(params: Settings | dict, payload: dict, ctx: JobContext) -> JobResult:
    """The ``reconstruct`` job kind (``shared/jobkinds/reconstruct.py``); files go to
    ``<job folder>/reconstruct/``."""
    settings = checked_settings("reconstruct", params, payload)
    if settings.upload is not None:      # files the client uploaded: read them where they lie
        from backend.uploads import upload_source
        settings = settings.replace(source=str(upload_source(Path(ctx.job_dir).parent, settings.upload)),
                                    upload=None)
    return reconstruct(settings, ctx, Path(ctx.job_dir) / "reconstruct")


# -- command line ----------------------------------------------------------------------------------

def cli(argv: list[str]) -> int:
    """``python -m backend reconstruct PHOTOS_DIR_OR_VIDEO --out scene.ply --cameras-out cameras.json
    [--colmap-out DIR] [--frames N] [--steps N] [...]``; returns the exit status."""
    from shared.jobkinds.reconstruct import SPEC
    d = SPEC.defaults()
    p = argparse.ArgumentParser(prog="python -m backend reconstruct",
                                description="Solve the cameras of photos or a video and train splats on them.")
    p.add_argument("source", help="a folder of photos (JPEG/PNG) or a video file")
    p.add_argument("--out", required=True, help="output splat file (.ply, .compressed.ply, .splat, .spz)")
    p.add_argument("--cameras-out", required=True, help="solved cameras, transforms.json layout")
    p.add_argument("--colmap-out", default=None,
                   help="keep the solve here (images, COLMAP database/log/models, transforms.json); "
                        "default: a temporary folder")
    for s in SPEC.settings:
        if s.name in ("source", "upload", "model", "from_job"):
            continue
        flag = "--" + s.name.replace("_", "-")
        help_text = s.description.replace("%", "%%")    # argparse formats help with %: "90 % of" crashed --help
        kw: dict[str, Any] = {"default": d[s.name], "help": help_text + (" (advanced)" if s.advanced else "")}
        if s.choices:
            kw["choices"] = s.choices
        kw["type"] = {"int": int, "float": float, "str": str}[s.type]
        p.add_argument(flag, **kw)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    params = {s.name: getattr(args, s.name) for s in SPEC.settings
              if s.name not in ("source", "upload", "model", "from_job")}
    params["source"] = str(Path(args.source).resolve())
    try:
        settings = checked_settings("reconstruct", params)
    except JobError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from backend.job_cli import cli_device, report_job_error, run_job_cli
    device = cli_device(args.device)
    if device is None:
        return 2
    tmp = None
    root = Path(args.colmap_out) if args.colmap_out else Path(tmp := tempfile.mkdtemp(prefix="splatbridge-rc-"))
    try:
        result = run_job_cli(lambda _p, _q, ctx: reconstruct(settings, ctx, root), settings, {}, device)
    except JobError as exc:
        return report_job_error(exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    info = result.meta.get("reconstruct", {})
    if result.meta.get("cancelled") and "cameras" not in info:
        print("cancelled before the cameras were solved", file=sys.stderr)
        return 1
    Path(args.cameras_out).write_text(json.dumps(info["cameras"], indent=1))
    from shared.formats import write_splats
    if len(result.splats):
        write_splats(args.out, result.splats)
    m = result.metrics
    print(f"registered {info['registered']} of {info.get('num_images', info['registered'])} images"
          + (f" (not registered: {', '.join(info['unregistered'])})" if info.get("unregistered") else "")
          + f"; wrote {args.cameras_out}"
          + (f" and {len(result.splats)} Gaussians to {args.out}" if len(result.splats) else "")
          + (f"; eval_psnr {m['eval_psnr']:.2f} dB" if "eval_psnr" in m else ""), file=sys.stderr)
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in info.get("stage_seconds", {}).items()),
          file=sys.stderr)
    return 0
