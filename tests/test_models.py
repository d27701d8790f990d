"""backend.models: the one diffusers loader (tiny random pipelines, no downloads), the offline
"model missing" error, the cache listing for hello, prefetch's offline refusal, and the OOM error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.job_api import JobError
from backend.models import cuda_oom_guard, cudnn_autotune, load_pipeline, prefetch_command
from tiny_models import tiny_models

ROOT = Path(__file__).resolve().parents[1]


def test_load_tiny_sd_round_trip_and_cache():
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    path = tiny_models()["sd"]
    pipe = load_pipeline(str(path), "stable-diffusion", "cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32 and pipe.unet.device.type == "cpu"   # fp32 on the CPU
    saved = load_file(str(next((path / "unet").glob("*.safetensors"))))
    state = pipe.unet.state_dict()
    assert set(saved) == set(state)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert load_pipeline(str(path), "stable-diffusion", "cpu") is pipe      # cached in-process
    cond, uncond = pipe.encode_prompt("a teapot", "cpu", 1, True, negative_prompt="")
    assert cond.shape == uncond.shape == (1, 77, 32) and not torch.equal(cond, uncond)


def test_load_tiny_shap_e():
    from diffusers import ShapEPipeline
    pipe = load_pipeline(str(tiny_models()["shap-e"]), "shap-e", "cpu")
    assert isinstance(pipe, ShapEPipeline)
    assert pipe.prior.config.num_embeddings == 32


def test_bad_sources_and_kind(tmp_path):
    with pytest.raises(JobError) as e:
        load_pipeline(str(tmp_path), "stable-diffusion", "cpu")
    assert e.value.code == "bad_model" and "model_index.json" in e.value.message
    with pytest.raises(JobError) as e:
        load_pipeline(str(tmp_path / "nope"), "stable-diffusion", "cpu")
    assert e.value.code == "model_missing" and "nope" in e.value.message
    with pytest.raises(JobError) as e:
        load_pipeline(str(tiny_models()["sd"]), "text-to-video", "cpu")
    assert e.value.code == "bad_params" and "text-to-video" in e.value.message


def test_cuda_oom_becomes_job_error():
    with pytest.raises(JobError) as e:
        with cuda_oom_guard("testing"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert e.value.code == "out_of_memory"
    assert "low_memory" in e.value.message and "testing" in e.value.message


OFFLINE_SCRIPT = r"""
import json, sys
from backend.job_api import JobError
from backend.models import load_pipeline, available_models, prefetch_cli
out = {"models": available_models()}
try:
    load_pipeline("stabilityai/stable-diffusion-2-1-base", "stable-diffusion", "cpu")
    out["error"] = None
except JobError as exc:
    out["error"] = [exc.code, exc.message]
out["prefetch_rc"] = prefetch_cli([])
print("JSON" + json.dumps(out))
"""


def test_offline_missing_model_names_model_and_command(tmp_path):
    # A fake cache entry for Shap-E (what the hub client writes), nothing for Stable Diffusion.
    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--openai--shap-e" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    (hub / "models--openai--shap-e" / "refs").mkdir()
    (hub / "models--openai--shap-e" / "refs" / "main").write_text("a" * 40)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("JSON"))
    out = json.loads(line[4:])
    code, message = out["error"]
    assert code == "model_missing"
    assert "stabilityai/stable-diffusion-2-1-base" in message
    assert "python -m backend prefetch stabilityai/stable-diffusion-2-1-base" in message
    assert prefetch_command("x/y") == "python -m backend prefetch x/y"
    present = {m["id"]: m["present"] for m in out["models"]}
    assert present == {"stabilityai/stable-diffusion-2-1-base": False, "openai/shap-e": True,
                       "timbrooks/instruct-pix2pix": False}
    assert out["prefetch_rc"] == 2 and "HF_HUB_OFFLINE" in proc.stderr


def test_cudnn_autotune_is_scoped_to_cuda_blocks():
    """Score distillation turns cuDNN autotuning on for its steps only (setting the flag needs no GPU)."""
    import torch
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_autotune("cpu"):
            assert torch.backends.cudnn.benchmark is False
        with cudnn_autotune(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(KeyError):
            with cudnn_autotune("cuda"):
                raise KeyError("a step failed")
        assert torch.backends.cudnn.benchmark is False     # restored on errors too
    finally:
        torch.backends.cudnn.benchmark = before
