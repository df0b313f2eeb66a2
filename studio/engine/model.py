"""The latent diffusion model as one module whose state dict has the SD single-file layout.

`LatentDiffusion().state_dict()` keys are exactly those of an original Stable Diffusion checkpoint:
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*`
(CLIP text encoder), so an SD1 checkpoint loads by name with no mapping table; the few layouts that need one
(SD2's OpenCLIP text tower, diffusers folders) are mapped in checkpoint_layout.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from . import tiling
from .prompt_weights import chunk_prompt, encode_chunks
from .schedules import NoiseSchedule, ScheduleConfig
from .text_encoder import CLIPTextModel, TextEncoderConfig
from .timeline import LatentPreview
from .tokenizer import EOS_ID, CLIPTokenizer
from .unet import UNetConfig, UNetModel
from .vae import AutoencoderKL, DiagonalGaussian, VAEConfig

Prediction = Literal["epsilon", "v"]


@dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Prediction = "epsilon"  # what the UNet outputs: ε (SD1, SD2-base) or v (SD2-768)
    pad_id: int = EOS_ID  # SD1 pads prompts with <|endoftext|>; SD2 (open_clip) pads with 0
    default_size: int = 512  # pixels; what the model was trained at
    default_cfg: float = 7.5  # the guidance scale the model works best at (SD's customary 7.5 unless measured)
    latent_rgb: tuple[tuple[float, float, float], ...] | None = None  # fitted preview factors, rows + bias row
    latent_rgb_hidden: tuple[tuple[float, ...], ...] | None = None  # the preview's hidden layer: C rows + bias row
    name: str = "stable-diffusion"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw: dict[str, Any] = json.loads(text)
        parts = {"unet": UNetConfig, "vae": VAEConfig, "text": TextEncoderConfig, "schedule": ScheduleConfig}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in parts:
                kwargs[key] = _dataclass_from_dict(parts[key], value)
            elif key in ("latent_rgb", "latent_rgb_hidden") and value is not None:
                kwargs[key] = tuple(tuple(row) for row in value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def tiny(cls) -> "ModelConfig":
        return cls(
            unet=UNetConfig.tiny(),
            vae=VAEConfig.tiny(),
            text=TextEncoderConfig.tiny(),
            default_size=64,
            name="tiny-random",
        )


def _dataclass_from_dict(kind: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(kind)}
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return kind(**converted)


class _UNetHolder(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet


class _TextHolder(nn.Module):
    def __init__(self, text: CLIPTextModel):
        super().__init__()
        self.transformer = text


class LatentDiffusion(nn.Module):
    # the built-in model's prompt reader (prompt_reader.py), attached by loading.load_model; a plain attribute, not a
    # submodule: it is not part of the checkpoint and stays on the CPU
    prompt_reader = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = _UNetHolder(UNetModel(config.unet))
        self.first_stage_model = AutoencoderKL(config.vae)
        self.cond_stage_model = _TextHolder(CLIPTextModel(config.text))
        self.tokenizer = CLIPTokenizer()
        # Tables that are not weights live on the CPU even when the modules are built on the meta device (loading)
        with torch.device("cpu"):
            self.schedule = NoiseSchedule(config.schedule)
            if config.latent_rgb is not None:
                self.preview = LatentPreview.from_rows(config.latent_rgb, config.latent_rgb_hidden)
            else:
                self.preview = LatentPreview.default_for(config.vae.z_channels)

    # -- parts ---------------------------------------------------------------------------------------------------
    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.cond_stage_model.transformer

    @property
    def latent_channels(self) -> int:
        return self.config.vae.z_channels

    @property
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor alone (8 for SD), since the UNet takes any latent
        size (unet.py: each upsampler lands on its skip's size), as in diffusers and A1111."""
        return self.vae.downsample_factor

    @property
    def is_inpainting(self) -> bool:
        # 9-channel UNet: noisy latent (4) + mask (1) + masked-image latent (4), the LDM paper's Sec. 4.5
        return self.config.unet.in_channels == 2 * self.latent_channels + 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        """The autoencoder's own precision: fp32 beside a bf16 UNet on the CPU (loading.py), else the model's."""
        return next(self.first_stage_model.parameters()).dtype

    def with_prediction(self, prediction: Prediction) -> "LatentDiffusion":
        """Take the UNet's output as ε or v from now on (the user's word beats any detection)."""
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")
        self.config = dataclasses.replace(self.config, prediction=prediction)
        return self

    # -- the three conversions a pipeline needs -------------------------------------------------------------------
    @torch.no_grad()  # not inference_mode: guided runs differentiate through the decoder (guidance.py)
    def encode_text(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        """Prompts (A1111 emphasis syntax, any length) → context (B, 77·k, D) in the model's dtype, where k is the
        most 75-token chunks any of them needs (A1111's chunking, prompt_weights.py). Prompts encoded in one call
        always get the same length, so cond and uncond for guidance must be encoded together (`encode_prompts`).
        clip_skip: 1 = the encoder's last layer, 2 = the one before (A1111's convention)."""
        length = self.config.text.max_length
        chunks = [chunk_prompt(self.tokenizer, p, pad_id=self.config.pad_id, context_length=length) for p in prompts]
        return encode_chunks(self.text_encoder, chunks, pad_id=self.config.pad_id, skip_layers=max(0, clip_skip - 1))

    def read_prompt(self, prompt: str, mask=None) -> str:
        """What the text encoder reads for `prompt` (with an inpainting `mask`, HxW, 1 = repaint): the prompt reader's
        rewrite into the model's caption language when the model has one and the reading is complete
        (prompt_reader.py), else the prompt as typed."""
        return prompt if self.prompt_reader is None else self.prompt_reader.rewrite(prompt, mask)

    def attach_prompt_reader(self, reader) -> "LatentDiffusion":
        object.__setattr__(self, "prompt_reader", reader)  # not registered as a submodule (class attribute's note)
        return self

    def encode_prompts(self, prompt: str, negative_prompt: str = "", clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) contexts, each (1, 77·k, D) with the same k, ready for classifier-free guidance."""
        both = self.encode_text([prompt, negative_prompt], clip_skip)
        return both[:1], both[1:]

    @torch.no_grad()  # not inference_mode: guided runs differentiate through the decoder (guidance.py)
    def encode_image(self, image: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [−1, 1] → scaled latent z_s = scaling_factor·mean (float32).

        tiled: None chooses by free memory (and falls back to tiles on out-of-memory); True/False forces it."""
        x = image.to(self.device, self.vae_dtype)
        if tiled is None:
            tiled = tiling.should_tile(tiling.encode_bytes(self.vae, x.shape, self.vae_dtype), self.device)
        moments = self._with_tiling_fallback(
            lambda: self.vae.quant_conv(self.vae.encoder(x)),
            lambda: tiling.encode_moments_tiled(self.vae, x),
            tiled,
            f"encoding a {x.shape[-1]}x{x.shape[-2]} image",
        )
        mean = DiagonalGaussian(moments).mode()
        return mean.float() * self.config.vae.scaling_factor

    @torch.no_grad()  # not inference_mode: guided runs differentiate through the decoder (guidance.py)
    def decode_latent(self, latent: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Scaled latent → (B, 3, H, W) in [−1, 1], float32. Half-precision NaN/inf retries in fp32 (A1111).

        tiled: None chooses by free memory (and falls back to tiles on out-of-memory); True/False forces it."""
        z = latent.float() / self.config.vae.scaling_factor
        if tiled is None:
            tiled = tiling.should_tile(tiling.decode_bytes(self.vae, z.shape, self.vae_dtype), self.device)
        image = self._decode(z, self.vae_dtype, tiled)
        if self.vae_dtype != torch.float32 and not torch.isfinite(image).all():
            dtype = self.vae_dtype
            self.vae.float()
            try:
                image = self._decode(z, torch.float32, tiled)
            finally:
                self.vae.to(dtype)
        if not torch.isfinite(image).all():
            raise FloatingPointError("the model produced NaN values; try fp32 or another seed")
        return image

    def _decode(self, z: torch.Tensor, dtype: torch.dtype, tiled: bool) -> torch.Tensor:
        z = z.to(self.device, dtype)
        size = f"{z.shape[-1] * self.downsample_factor}x{z.shape[-2] * self.downsample_factor}"
        image = self._with_tiling_fallback(
            lambda: self.vae.decode(z), lambda: tiling.decode_tiled(self.vae, z), tiled, f"decoding a {size} image"
        )
        return image.float()

    def _with_tiling_fallback(self, whole, tiles, tiled: bool, what: str) -> torch.Tensor:
        """Run `whole`, or `tiles` if asked to or if `whole` runs out of memory; a clear error if both do."""
        if not tiled:
            try:
                return whole()
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
                if not tiling.is_out_of_memory(exc):
                    raise
            # out of the except block, the failed attempt's tensors are free: try again in tiles
            tiling.release_cached_memory(self.device)
        try:
            return tiles()
        except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
            if not tiling.is_out_of_memory(exc):
                raise
        tiling.release_cached_memory(self.device)
        raise tiling.OutOfMemory(f"out of memory {what}, even in tiles: try a smaller size or fp16")


def build_tiny_random(seed: int = 0) -> LatentDiffusion:
    """A tiny model with seeded random weights, built in memory in milliseconds (tests, smoke runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentDiffusion(ModelConfig.tiny())
        # LDM zero-initialises the UNet's output conv; a small (not zero) output keeps the random model a gentle,
        # smooth "denoiser" whose DDIM inversion is well-posed, while prompts still change its output.
        with torch.no_grad():
            model.unet.out[2].weight.mul_(0.05)
            model.unet.out[2].bias.mul_(0.05)
    return model.eval().requires_grad_(False)
