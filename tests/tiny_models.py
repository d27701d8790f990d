"""Builders of tiny random-weight diffusers pipelines, saved with ``save_pretrained``.

The real models (Stable Diffusion 2.1 base, Shap-E) cannot be downloaded here, so tests build the same
pipeline classes from tiny configs (a few thousand parameters, random weights), save them to a folder
and load them back through ``backend.models.load_pipeline``: the loading, the pipeline plumbing and the
tensor shapes are real; only the weights (and hence the pictures) are meaningless.

The CLIP tokenizer needs ``vocab.json`` and ``merges.txt``; we write a byte-level vocabulary of our own
(every byte character, alone and word-final, plus the two special tokens) and no merges, so a word is
tokenised character by character.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_HIDDEN = 32        # width of the tiny text encoder = the UNet's cross-attention width
SHAP_E_WIDTH = 16       # Shap-E prior embedding width (= renderer d_latent)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character map (the table byte-level BPE uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """Write a CLIPTokenizer (vocab.json, merges.txt, configs) with a 514-token byte vocabulary."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return folder


def _tokenizer(tmp: Path):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer(tmp / "_tokenizer")))


def _text_config(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig
    kw = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=37,
              layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=600,
              max_position_embeddings=77)
    if projection is not None:
        kw["projection_dim"] = projection
    return CLIPTextConfig(**kw)


def _tiny_unet_vae(in_channels: int):
    """The tiny UNet (``in_channels`` inputs, 4 outputs, 8x8 latents) and VAE (2x downsampling, 16 px)
    the tiny Stable Diffusion and InstructPix2Pix pipelines share."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=4, use_linear_projection=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16)
    return unet, vae


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionPipeline (UNet, VAE with 2x downsampling, CLIP text encoder, DDPM schedule of
    SD: scaled_linear 0.00085..0.012 over 1000 steps). Native image size 16 px, latents 4x8x8."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet, vae = _tiny_unet_vae(4)
    text_encoder = CLIPTextModel(_text_config(TEXT_HIDDEN))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(folder), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder / "tiny-sd"))
    return folder / "tiny-sd"


def build_tiny_shap_e(folder: Path, seed: int = 0) -> Path:
    """A tiny ShapEPipeline: PriorTransformer (1 layer, 32 latent tokens of width 16), CLIP text encoder
    with projection, ShapERenderer (NeRSTF MLP of width 8) and Shap-E's Heun/Karras schedule."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=8, embedding_dim=SHAP_E_WIDTH, num_embeddings=32,
        embedding_proj_dim=SHAP_E_WIDTH, time_embed_dim=SHAP_E_WIDTH * 4, num_layers=1,
        clip_embed_dim=SHAP_E_WIDTH * 2, additional_embeddings=0, time_embed_act_fn="gelu",
        norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None)
    text_encoder = CLIPTextModelWithProjection(_text_config(SHAP_E_WIDTH, projection=SHAP_E_WIDTH))
    renderer = ShapERenderer(
        param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=SHAP_E_WIDTH, d_hidden=8, n_output=12,
        background=(0.1, 0.1, 0.1))
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    pipe = ShapEPipeline(prior=prior, text_encoder=text_encoder, tokenizer=_tokenizer(folder),
                         scheduler=scheduler, shap_e_renderer=renderer)
    pipe.save_pretrained(str(folder / "tiny-shap-e"))
    return folder / "tiny-shap-e"


_BUILT: dict[str, Path] = {}


def tiny_models() -> dict[str, Path]:
    """Build both tiny pipelines once per process (in a temporary folder) -> {"sd": path, "shap-e": path}."""
    if not _BUILT:
        import tempfile
        base = Path(tempfile.mkdtemp(prefix="splatbridge-tiny-models-"))
        _BUILT["sd"] = build_tiny_sd(base)
        _BUILT["shap-e"] = build_tiny_shap_e(base)
    return dict(_BUILT)


def build_tiny_ip2p(folder: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionInstructPix2PixPipeline: the tiny SD parts, but the UNet takes 8 input channels
    (4 noisy latents + 4 latents of the image to edit), and InstructPix2Pix's Euler-ancestral schedule
    (SD's scaled_linear betas). Native image size 16 px, latents 4x8x8."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet, vae = _tiny_unet_vae(8)
    text_encoder = CLIPTextModel(_text_config(TEXT_HIDDEN))
    scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(folder), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder / "tiny-ip2p"))
    return folder / "tiny-ip2p"


def tiny_ip2p() -> Path:
    """Build the tiny InstructPix2Pix pipeline once per process (in a temporary folder) -> its folder."""
    if "ip2p" not in _BUILT_EDIT:
        import tempfile
        _BUILT_EDIT["ip2p"] = build_tiny_ip2p(Path(tempfile.mkdtemp(prefix="splatbridge-tiny-ip2p-")))
    return _BUILT_EDIT["ip2p"]


_BUILT_EDIT: dict[str, Path] = {}
