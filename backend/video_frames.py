"""Pick frames from a video for camera solving (PyAV): N frames spread over the video, each the
sharpest of its stretch.

The video is decoded once, front to back. Its frames are cut into ``count`` equal stretches by
frame index; within each, the frame with the highest variance of the Laplacian (on a grey image
scaled to at most 320 px, so the measure does not depend on the video's size) is kept. Kept frames
are written as JPEG (quality 95) named ``frame_<index:06d>.jpg`` at most ``max_size`` px on their
longest side.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backend.job_api import JobError
from shared.jobkinds.reconstruct import VIDEO_EXTENSIONS  # noqa: F401  (one list, shared with the add-on)

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class VideoFrame:
    index: int        # frame number in the video (0-based, decode order = display order)
    time_s: float     # presentation time in seconds
    file: str         # file name of the written frame
    sharpness: float  # variance of the Laplacian (grey 0..255, at most 320 px)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image (float); higher is sharper."""
    g = np.asarray(grey, dtype=np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1])
    return float(lap.var())


def _grey_small(rgb: np.ndarray, limit: int = 320) -> np.ndarray:
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / limit)))
    small = rgb[::step, ::step].astype(np.float32)
    return small @ np.array([0.299, 0.587, 0.114], np.float32)


def _fit(rgb: np.ndarray, max_size: int) -> Image.Image:
    """A PIL image of ``rgb`` with its longest side at most ``max_size`` px (Lanczos)."""
    from PIL import Image
    img = Image.fromarray(rgb)
    scale = max_size / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    return img


def probe(path: Path) -> tuple[int, float, int, int]:
    """(frame count estimate, frames per second, width, height) of the first video stream."""
    import av
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise JobError("bad_input", f"{path.name}: has no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 30.0
            n = int(s.frames or 0)
            if n <= 0 and s.duration and s.time_base:
                n = int(round(float(s.duration * s.time_base) * fps))
            if n <= 0 and c.duration:
                n = int(round(c.duration / 1e6 * fps))
            return n, fps, int(s.codec_context.width), int(s.codec_context.height)
    except av.error.FFmpegError as exc:
        raise JobError("bad_input", f"{path.name}: unreadable video: corrupt, truncated or not a "
                                    f"video ({exc})") from None


def extract_frames(path: Path, count: int, out_dir: Path, max_size: int,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   min_frames: int = 3) -> tuple[list[VideoFrame], float]:
    """Decode ``path`` and write the sharpest frame of each of ``count`` stretches to ``out_dir``.

    Returns (frames, fps). ``progress(done, total)`` is called as frames decode (total is the
    container's frame count estimate). Raises ``JobError("bad_input")`` for an unreadable or
    corrupt video, and for one with fewer than ``min_frames`` decodable frames. A corrupt tail (a
    truncated file) is an error too: the frames past the damage are missing, so the picks would not
    cover the video.
    """
    import av

    path = Path(path)
    total_est, fps, _, _ = probe(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Stretch boundaries need the frame count; containers usually know it. Without it, keep the
    # sharpest frame per ~1/count of the estimated duration, refined after decoding.
    best: dict[int, tuple[float, int, float, Image.Image]] = {}
    decoded = 0
    n_for_bins = max(total_est, count)
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in c.decode(stream):
                if should_stop is not None and decoded % 16 == 0 and should_stop():
                    raise InterruptedError
                rgb = frame.to_ndarray(format="rgb24")
                sharp = laplacian_variance(_grey_small(rgb))
                b = min(count - 1, decoded * count // n_for_bins)
                t = float(frame.time) if frame.time is not None else decoded / fps
                if b not in best or sharp > best[b][0]:
                    best[b] = (sharp, decoded, t, _fit(rgb, max_size))   # kept small: N frames in memory
                decoded += 1
                if progress is not None and decoded % 8 == 0:
                    progress(decoded, max(total_est, decoded))
    except av.error.FFmpegError as exc:
        raise JobError("bad_input", f"{path.name}: the video is corrupt or truncated after "
                                    f"{decoded} frames ({exc})") from None
    if total_est and decoded < 0.9 * total_est:
        raise JobError("bad_input", f"{path.name}: the video is corrupt or truncated: only {decoded} "
                                    f"of its {total_est} frames could be decoded")
    if decoded < min_frames:
        raise JobError("bad_input", f"{path.name}: the video has {decoded} frames; at least "
                                    f"{min_frames} are needed")
    frames = []
    for b in sorted(best):
        sharp, idx, t, img = best[b]
        name = f"frame_{idx:06d}.jpg"
        img.save(out_dir / name, quality=95)
        frames.append(VideoFrame(idx, t, name, sharp))
    return frames, fps
