"""Loading diffusion pipelines: one loader for every job, from a Hugging Face id or a local folder.

- ``load_pipeline(model, kind, device)`` builds a diffusers pipeline with ``from_pretrained`` (weights are
  cached by the hub client under ``$HF_HOME``), in fp16 on CUDA and fp32 on the CPU, and keeps it in a
  small in-process cache so that the next job on the same model starts at once.
- ``low_memory=True`` (4-8 GB cards) turns on attention slicing and model CPU offload (accelerate).
- A model that is not in the local cache while the hub cannot be reached (``HF_HUB_OFFLINE=1`` or no
  network) raises ``JobError("model_missing")`` naming the model and the command that fetches it.
- ``available_models()`` says, without touching the network, which default models are cached (for the
  server's ``hello``); ``prefetch_cli`` (``python -m backend prefetch [model ...]``) downloads them.
- ``cuda_oom_guard`` turns a CUDA out-of-memory error into ``JobError("out_of_memory")`` with advice.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from backend.job_api import JobError
from shared.jobkinds.edit import DEFAULT_EDIT_MODEL  # the defaults live in the job specs
from shared.jobkinds.generate import DEFAULT_GUIDANCE_MODEL, DEFAULT_PRIOR_MODEL

# kind -> diffusers pipeline class name
PIPELINE_CLASSES: dict[str, str] = {
    "stable-diffusion": "StableDiffusionPipeline",
    "shap-e": "ShapEPipeline",
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
}
# The defaults the product knows about: (model id, kind, role). `prefetch` with no argument fetches the
# first two (generation); the edit model is fetched by naming it.
KNOWN_MODELS: tuple[tuple[str, str, str], ...] = (
    (DEFAULT_GUIDANCE_MODEL, "stable-diffusion", "guidance"),
    (DEFAULT_PRIOR_MODEL, "shap-e", "prior"),
    (DEFAULT_EDIT_MODEL, "instruct-pix2pix", "edit"),
)
PREFETCH_DEFAULTS: tuple[str, ...] = (DEFAULT_GUIDANCE_MODEL, DEFAULT_PRIOR_MODEL)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")   # used with fullmatch (no final newline)
_CACHE: dict[tuple, Any] = {}
_CACHE_MAX = 3
_LOCK = threading.Lock()


def prefetch_command(model_id: str | None = None) -> str:
    """The exact shell command that downloads ``model_id`` (or the defaults) into the hub cache."""
    return "python -m backend prefetch" + (f" {model_id}" if model_id else "")


def hub_offline() -> bool:
    """True when the hub client is told not to use the network (``HF_HUB_OFFLINE``, read now)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_cached(model_id: str) -> bool:
    """True if ``model_id``'s pipeline index is in the local hub cache (no network is used)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(model_id, "model_index.json")
    except Exception:  # a malformed id, an unreadable cache: treat as absent
        return False
    return isinstance(hit, str)


def available_models() -> list[dict[str, Any]]:
    """The known default models and whether each is in the local cache (checked offline).

    Returns ``[{"id", "kind", "role", "present"}]`` (msgpack-ready), for the server's ``hello``.
    """
    return [{"id": mid, "kind": kind, "role": role, "present": is_cached(mid)}
            for mid, kind, role in KNOWN_MODELS]


def missing_model_message(model_id: str, reason: str = "") -> str:
    """Human text for a model that is neither a local folder nor in the cache, with the fix."""
    where = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the Hugging Face hub could not be reached"
    msg = (f"Model '{model_id}' is not in the local model cache and {where}. "
           f"Fetch it once on a machine with network access: `{prefetch_command(model_id)}` "
           f"(or pass a local diffusers folder instead).")
    if reason:
        msg += f" [{reason}]"
    return msg


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 on the CPU (fp16 kernels are slow or missing)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _pipeline_class(kind: str):
    if kind not in PIPELINE_CLASSES:
        raise JobError("bad_params", f"unknown pipeline kind {kind!r}; expected one of {sorted(PIPELINE_CLASSES)}")
    import diffusers
    return getattr(diffusers, PIPELINE_CLASSES[kind])


def _dtype_kwarg() -> str:
    """from_pretrained's dtype argument: ``dtype`` in new diffusers, ``torch_dtype`` before."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
        return "dtype"
    except ImportError:
        return "torch_dtype"


def _resolve_source(model_id_or_path: str) -> tuple[str, bool]:
    """-> (what to give from_pretrained, is_local_folder). Raises for a missing local folder."""
    text = str(model_id_or_path).strip()
    if not text:
        raise JobError("bad_params", "empty model id or path")
    # "org/name" is a hub id even when a folder of that name happens to exist in the working
    # directory; a local folder is an absolute path or an explicit ./relative one
    hub_shaped = _HUB_ID.fullmatch(text) is not None and not text.startswith((".", "~"))
    path = Path(text).expanduser()
    if not hub_shaped and path.is_dir():
        if not (path / "model_index.json").is_file():
            raise JobError("bad_model", f"{path} is not a diffusers pipeline folder (it has no model_index.json)")
        return str(path), True
    if not hub_shaped:
        raise JobError("model_missing", f"model folder {text!r} does not exist (and it is not a Hugging Face "
                                        f"id of the form 'org/name')")
    return text, False


def load_pipeline(model_id_or_path: str, kind: str, device: str | torch.device,
                  dtype: torch.dtype | None = None, low_memory: bool = False):
    """Load (or reuse) a diffusers pipeline.

    ``model_id_or_path``: a Hugging Face id ("org/name") or a local folder written by ``save_pretrained``.
    ``kind``: one of ``PIPELINE_CLASSES`` ("stable-diffusion", "shap-e", "instruct-pix2pix").
    ``device``: "cuda" / "cpu"; ``dtype`` defaults to fp16 on CUDA, fp32 on the CPU.
    ``low_memory``: attention slicing + model CPU offload (CUDA only; the modules live on the CPU and move
    to the GPU one at a time while they run).
    Raises ``JobError`` with code ``model_missing`` (with the prefetch command), ``bad_model`` or
    ``out_of_memory``.
    """
    cls = _pipeline_class(kind)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    source, local = _resolve_source(model_id_or_path)
    key = (source, kind, str(device), dtype, bool(low_memory))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    if kind != "shap-e":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    offline = hub_offline()
    if not local and offline and not is_cached(source):
        raise JobError("model_missing", missing_model_message(source))
    try:
        pipe = cls.from_pretrained(source, local_files_only=local or offline, **kwargs)
    except JobError:
        raise
    except Exception as exc:  # hub/network/file errors come in many classes across hub versions
        if not local and not is_cached(source):
            raise JobError("model_missing", missing_model_message(source, f"{type(exc).__name__}: {exc}")) from exc
        raise JobError("bad_model", f"could not load {kind} pipeline from {source!r}: "
                                    f"{type(exc).__name__}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    with cuda_oom_guard(f"loading {source}"):
        if low_memory and device.type == "cuda":
            pipe.enable_attention_slicing()
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    with _LOCK:
        while len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = pipe
    return pipe


def clear_cache() -> None:
    """Forget the cached pipelines (frees their memory once no job holds them)."""
    with _LOCK:
        _CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def cuda_oom_guard(what: str) -> Iterator[None]:
    """Re-raise a CUDA out-of-memory error as ``JobError("out_of_memory")`` that says what to change."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        detail = ""
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            detail = f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
            torch.cuda.empty_cache()
        raise JobError("out_of_memory",
                       f"the GPU ran out of memory while {what}{detail}. Try low_memory=true (attention slicing "
                       f"and model CPU offload), a smaller resolution or batch size, or close other programs "
                       f"using the GPU.") from exc


@contextlib.contextmanager
def cudnn_autotune(device: torch.device | str) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution algorithms for each new shape (``cudnn.benchmark``) while
    the block runs, then restore the process's setting. Worth it where the same shapes repeat many times,
    as in score distillation (the VAE encoder and UNet see one shape for all 1200 steps); not set globally,
    because the trainer's image sizes vary between jobs. A no-op on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def prefetch_cli(argv: list[str] | None = None) -> int:
    """``python -m backend prefetch [model ...]``: download pipelines into the hub cache, with progress.

    With no model named, fetches the generation defaults (Stable Diffusion 2.1 base, Shap-E).
    Returns the process exit code (0 = all present afterwards).
    """
    ap = argparse.ArgumentParser(prog="python -m backend prefetch",
                                 description="Download diffusion models into the Hugging Face cache.")
    ap.add_argument("models", nargs="*", help=f"Hugging Face ids (default: {' '.join(PREFETCH_DEFAULTS)})")
    ap.add_argument("--all", action="store_true", help="also the edit model " + DEFAULT_EDIT_MODEL)
    ap.add_argument("--list", action="store_true", help="only list the known models and whether they are cached")
    args = ap.parse_args(argv)
    if args.list:
        for m in available_models():
            print(f"{'present' if m['present'] else 'missing':8s} {m['role']:9s} {m['id']}")
        return 0
    models = list(args.models) or list(PREFETCH_DEFAULTS) + ([DEFAULT_EDIT_MODEL] if args.all else [])
    if hub_offline():
        print("HF_HUB_OFFLINE is set: unset it to download models.", file=sys.stderr)
        return 2
    from diffusers import DiffusionPipeline
    failed = 0
    for mid in models:
        print(f"fetching {mid} ...", flush=True)
        try:
            path = DiffusionPipeline.download(mid)   # hub client shows per-file progress bars
        except Exception as exc:
            failed += 1
            print(f"failed to fetch {mid}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"ok: {mid} -> {path}", flush=True)
    return 1 if failed else 0
