"""Same weights, prompt, negative prompt and seed: our engine reproduces diffusers' StableDiffusionPipeline.

The checkpoints are tiny random models in the original SD single-file layout, written by the test. The diffusers
side gets the same file through diffusers' own converters (`convert_ldm_*_checkpoint`, the code behind
`from_single_file`), so our key mapping is checked against an independent one; our side opens the file with
`load_model`. Both run DDIM with η = 0, SD's schedule (scaled_linear 0.00085–0.012, leading spacing, offset 1,
final ᾱ = ᾱ_0) and CFG 7.5 from the same CPU-generator noise.

Tolerance: float32 on both sides, the same maths in a different order (attention kernels, matmul blocking,
our schedule in float64 vs diffusers' float32 ᾱ, which differ in the 7th digit). Measured: final latents differ
by 3e-6 (SD1 at 128², 96×64 and 72×56) and 5e-6 (SD2-v) relative to their largest value, decoded pixels by
≤ 6e-6. We allow 1e-4 relative on latents and 1e-4 absolute on decoded pixels in [0, 1] (a 40th of one 8-bit
level), 16× or more above what is measured, so other CPUs' kernels pass; and the 8-bit images must agree to within
one level. A mapping or maths
bug moves these by 1e-2 or more (a prompt with emphasis, which diffusers does not parse, moves latents by 0.3).

Sides that are multiples of 8 but not of the UNet's 8× downsampling (96×64, 72×56: latents 12×8 and 9×7) take
diffusers' `upsample_size` path: each upsampler resamples to its skip's size instead of doubling.

diffusers and transformers are test-only dependencies (the `test` extra, which CI installs); they are imported
directly, so a missing one fails this module instead of skipping it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sd_checkpoint_factory import random_model, sd1_config, sd1_state_dict, sd2_config, sd2_state_dict
from studio.engine.loading import load_model
from studio.engine.pipeline import Engine
from studio.engine.request import GenerationRequest
from studio.engine.tokenizer import CLIPTokenizer as OurTokenizer

CPU = torch.device("cpu")
ATOL = 1e-4
PROMPT = "a red circle on a blue background, masterpiece, best quality"  # no emphasis: diffusers has none
NEGATIVE = "blurry, low quality"
SIZE = 128


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a second OpenMP thread on a busy 2-core machine makes every
    op wait at a barrier for a descheduled peer (measured: 30 ms per UNet call on one thread, 0.5–2 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_tokenizer_files(tmp_path_factory):
    """vocab.json + merges.txt written from our shipped CLIP BPE file (the same data HF ships)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    ours = OurTokenizer()
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(ours.vocab)}))
    merges = ours.vocab[512:-2]  # 48894 merged symbols, in rank order
    pairs = sorted(ours._ranks.items(), key=lambda kv: kv[1])
    assert len(pairs) == len(merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in pairs) + "\n")
    return folder


def hf_tokenizer(folder, pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                         model_max_length=77)


def ddim(prediction: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", prediction_type=prediction,
    )


def diffusers_unet(config, checkpoint) -> UNet2DConditionModel:
    u = config.unet
    levels = len(u.channel_mult)
    widths = [u.model_channels * m for m in u.channel_mult]
    down = ["CrossAttnDownBlock2D" if i in u.attention_levels else "DownBlock2D" for i in range(levels)]
    heads = [w // u.num_head_channels for w in widths] if u.num_head_channels else u.num_heads
    unet = UNet2DConditionModel(
        sample_size=SIZE // 8, in_channels=u.in_channels, out_channels=u.out_channels,
        down_block_types=tuple(down), up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
        block_out_channels=tuple(widths), layers_per_block=u.num_res_blocks, cross_attention_dim=u.context_dim,
        attention_head_dim=heads, use_linear_projection=u.use_linear_projection,
        upcast_attention=u.upcast_attention, norm_num_groups=u.norm_groups,
    )
    converted = convert_ldm_unet_checkpoint(checkpoint, unet.config)
    unet.load_state_dict(converted, strict=True)
    return unet.eval()


def diffusers_vae(config, checkpoint) -> AutoencoderKL:
    v = config.vae
    levels = len(v.ch_mult)
    vae = AutoencoderKL(
        in_channels=v.in_channels, out_channels=v.out_channels, latent_channels=v.z_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(v.ch * m for m in v.ch_mult), layers_per_block=v.num_res_blocks,
        norm_num_groups=v.norm_groups, scaling_factor=v.scaling_factor, sample_size=SIZE,
    )
    vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, vae.config), strict=True)
    return vae.eval()


def diffusers_text(config, checkpoint, open_clip: bool) -> CLIPTextModel:
    t = config.text
    hf = CLIPTextModel(CLIPTextConfig(
        vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_ratio * t.width,
        num_hidden_layers=t.layers, num_attention_heads=t.heads, max_position_embeddings=t.max_length,
        hidden_act=t.activation, layer_norm_eps=t.layer_norm_eps, projection_dim=t.width,
    ))
    if open_clip:
        converted = convert_open_clip_checkpoint(hf, checkpoint)
        # diffusers drops SD2's unused last block by name (resblocks.23); our tiny tower's last block is 2
        converted = {k: v for k, v in converted.items()
                     if not k.startswith(f"text_model.encoder.layers.{t.layers}.") and k != "text_projection.weight"}
    else:
        converted = convert_ldm_clip_checkpoint(checkpoint)
        converted.pop("text_model.embeddings.position_ids", None)
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    hf.load_state_dict(converted, strict=True)
    return hf.eval()


def run_both(tmp_path, tokenizer_dir, config, checkpoint, *, open_clip: bool, prediction: str, steps: int = 4,
             seed: int = 1234, size: int = SIZE, height: int | None = None):
    """Generate with both engines at size (width) × height (default: square)."""
    width, height = size, size if height is None else height
    path = tmp_path / "model.safetensors"
    save_file(checkpoint, str(path))
    pipe = StableDiffusionPipeline(
        vae=diffusers_vae(config, checkpoint), text_encoder=diffusers_text(config, checkpoint, open_clip),
        tokenizer=hf_tokenizer(tokenizer_dir, "!" if open_clip else "<|endoftext|>"),
        unet=diffusers_unet(config, checkpoint), scheduler=ddim("v_prediction" if prediction == "v" else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5, eta=0.0,
                  height=height, width=width)
    theirs_latent = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
    theirs_image = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]

    model = load_model(str(path), CPU, torch.float32, prediction="v" if prediction == "v" else None)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, model=str(path), sampler="ddim",
                                steps=steps, eta=0.0, cfg=7.5, seed=seed, width=width, height=height,
                                device="cpu", dtype="fp32")
    run = Engine(loader=lambda *args: model).run(request)
    ours_image = ((model.decode_latent(run.final_latent) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return model, pipe, run, theirs_latent, theirs_image, ours_image


def assert_match(run, theirs_latent, theirs_image, ours_image):
    latent_err = (run.final_latent - theirs_latent).abs().max().item()
    scale = max(1.0, theirs_latent.abs().max().item())
    assert latent_err < ATOL * scale, f"final latents (scale {scale:.1f}) differ by {latent_err:.2e}"
    image_err = float(np.abs(ours_image - theirs_image).max())
    assert image_err < ATOL, f"decoded images differ by {image_err:.2e}"
    theirs_u8 = (theirs_image * 255).round().astype(np.int16)
    assert np.abs(run.image.astype(np.int16) - theirs_u8).max() <= 1
    assert float(theirs_latent.std()) > 0.05  # a real picture, not a collapsed one


def test_sd1_single_file_matches_diffusers(tmp_path, hf_tokenizer_files):
    config = sd1_config()
    checkpoint = sd1_state_dict(random_model(config, seed=3))
    model, pipe, run, theirs_latent, theirs_image, ours_image = run_both(
        tmp_path, hf_tokenizer_files, config, checkpoint, open_clip=False, prediction="epsilon")
    assert model.config.prediction == "epsilon" and model.config.pad_id == 49407
    assert_match(run, theirs_latent, theirs_image, ours_image)

    # The same pipeline saved as a diffusers folder opens to the very same weights and settings.
    folder = tmp_path / "folder"
    pipe.save_pretrained(folder)
    from_folder = load_model(str(folder), CPU, torch.float32)
    ours = model.state_dict()
    for key, value in from_folder.state_dict().items():
        assert torch.equal(value, ours[key]), key
    assert from_folder.config.unet == model.config.unet
    assert from_folder.config.text == model.config.text
    assert from_folder.config.vae == model.config.vae
    assert from_folder.config.schedule == model.config.schedule
    assert from_folder.config.pad_id == 49407 and from_folder.config.prediction == "epsilon"


@pytest.mark.parametrize("width, height", [(96, 64), (72, 56)])
def test_sd1_sides_that_are_not_multiples_of_64_match_diffusers(tmp_path, hf_tokenizer_files, width, height):
    """Latents 12×8 and 9×7: the UNet's levels go 12 → 6 → 3 → 2 and 9 → 5 → 3 → 2, 7 → 4 → 2 → 1, so upsampling
    2 → 3 (not 4) and 3 → 5 must land on the skips' sizes exactly where diffusers does."""
    config = sd1_config()
    checkpoint = sd1_state_dict(random_model(config, seed=3))
    model, _, run, theirs_latent, theirs_image, ours_image = run_both(
        tmp_path, hf_tokenizer_files, config, checkpoint, open_clip=False, prediction="epsilon",
        size=width, height=height)
    assert model.size_multiple == 8
    assert run.final_latent.shape == theirs_latent.shape == (1, 4, height // 8, width // 8)
    assert run.image.shape == (height, width, 3)
    assert_match(run, theirs_latent, theirs_image, ours_image)


def test_sd2_v_single_file_matches_diffusers(tmp_path, hf_tokenizer_files):
    config = sd2_config()
    checkpoint = sd2_state_dict(random_model(config, seed=5))
    model, pipe, run, theirs_latent, theirs_image, ours_image = run_both(
        tmp_path, hf_tokenizer_files, config, checkpoint, open_clip=True, prediction="v", size=64)
    assert model.config.prediction == "v" and model.config.pad_id == 0
    assert model.config.text.activation == "gelu" and model.config.text.layers == 2
    assert model.config.unet.use_linear_projection and model.config.unet.num_head_channels == 64
    assert_match(run, theirs_latent, theirs_image, ours_image)

    # As a diffusers folder with legacy .bin weights: v-prediction and pad id come from its configs.
    folder = tmp_path / "folder"
    pipe.save_pretrained(folder, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").exists()
    from_folder = load_model(str(folder), CPU, torch.float32)
    assert from_folder.config.prediction == "v" and from_folder.config.pad_id == 0
    ours = model.state_dict()
    for key, value in from_folder.state_dict().items():
        assert torch.equal(value, ours[key]), key


def test_long_prompt_chunks_match_diffusers_embeddings_per_chunk(hf_tokenizer_files):
    """Each 75-token chunk is encoded like a prompt of its own: chunk k equals diffusers' encoding of the text
    of that chunk (bos + its tokens + eos + padding)."""
    config = sd1_config()
    model = random_model(config, seed=7)
    checkpoint = sd1_state_dict(model)
    text = diffusers_text(config, checkpoint, open_clip=False)
    tok = hf_tokenizer(hf_tokenizer_files, "<|endoftext|>")
    words = " ".join(f"word{i}" for i in range(40))  # 40 × 3 tokens: two chunks
    ids = tok(words, truncation=False).input_ids[1:-1]
    assert 75 < len(ids) <= 150
    ours = model.encode_text([words])
    assert ours.shape == (1, 154, 64)
    for k, piece in enumerate((ids[:75], ids[75:])):
        row = [49406, *piece, 49407] + [49407] * (75 - len(piece))
        with torch.no_grad():
            expected = text(torch.tensor([row])).last_hidden_state
        assert torch.allclose(ours[:, 77 * k : 77 * (k + 1)], expected, atol=1e-5)
