"""What gets trained and how: the shipped model's architecture and the training settings, as frozen dataclasses.

The shipped model ("studio-shapes") is a small latent diffusion model in the SD layout (model.py):

- VAE: f = 4 (64×64×3 ↔ 16×16×4), thin at full resolution (16 channels) and wide at 16×16 (128), where
  convolutions are cheap, with single-head attention in the middle: ~2.4 M parameters;
- text: CLIP's tokenizer and a 3-layer, 64-wide causal transformer; its 49408×64 token table alone is 3.2 M
  parameters, so the width stays small (the caption language has ~60 words);
- UNet: 9 input channels (noisy latent 4 + mask 1 + masked-image latent 4, SD inpainting order), levels 16/8/4 px
  at widths 48/96/96, cross-attention at 8×8, 4×4 and the middle: ~3.7 M parameters.

Schedule: cosine (Nichol & Dhariwal 2021) with v-prediction and trailing timesteps. With the cosine schedule
ᾱ_999 ≈ 2e-9, i.e. (almost) zero terminal SNR: SD's scaled_linear schedule leaves √ᾱ_T ≈ 0.07 of the signal at
t = T, and on a 16×16 latent that residue is as large as the noise's own mean, so a model learns to read the flat
background colour from the noise instead of the caption (Lin et al. 2024, "Common diffusion noise schedules and
sample steps are flawed"). Zero terminal SNR makes ε-prediction ill-posed at t = T, hence v-prediction; trailing
spacing makes sampling start at t = 999 where training does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.model import ModelConfig
from ..engine.schedules import ScheduleConfig
from ..engine.text_encoder import TextEncoderConfig
from ..engine.tokenizer import EOS_ID
from ..engine.unet import UNetConfig
from ..engine.vae import VAEConfig

Stage = Literal["vae", "unet"]
MODEL_NAME = "studio-shapes"


def shapes_model_config() -> ModelConfig:
    """The architecture of the shipped model (resources/model/studio-shapes.safetensors)."""
    return ModelConfig(
        unet=UNetConfig(
            in_channels=9,  # noisy latent + mask + masked-image latent
            out_channels=4,
            model_channels=48,
            channel_mult=(1, 2, 2),  # 16×16 → 8×8 → 4×4 latent levels, widths 48, 96, 96
            num_res_blocks=1,
            attention_levels=(1, 2),  # 8×8 and 4×4, plus the middle block
            num_heads=4,
            context_dim=64,
            norm_groups=16,
        ),
        vae=VAEConfig(
            ch=16,
            ch_mult=(1, 2, 8),  # 16, 32, 128 channels at 64, 32, 16 px: f = 4
            num_res_blocks=1,
            z_channels=4,
            scaling_factor=1.0,  # measured (1/std of the latents) when the UNet stage starts
            norm_groups=8,
            mid_attention=True,
        ),
        text=TextEncoderConfig(width=64, layers=3, heads=4, activation="gelu"),
        schedule=ScheduleConfig(kind="cosine", spacing="trailing", steps_offset=0),
        prediction="v",
        pad_id=EOS_ID,
        default_size=64,
        default_cfg=3.0,  # studio evaluate at 40 + 40 prompts: CFG 2 and 4 beat 7.5 on every object attribute
        name=MODEL_NAME,
    )


def tiny_model_config() -> ModelConfig:
    """A few hundred thousand parameters of the same kind (9-channel UNet), for smoke tests."""
    return ModelConfig(
        unet=dataclasses.replace(UNetConfig.tiny(), in_channels=9),
        vae=dataclasses.replace(VAEConfig.tiny(), ch=8, norm_groups=4, scaling_factor=1.0),
        text=TextEncoderConfig(width=32, layers=1, heads=2, max_length=77),
        schedule=ScheduleConfig(kind="cosine", spacing="trailing", steps_offset=0),
        prediction="v",
        default_size=64,
        name="tiny-train",
    )


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage = "unet"
    batch_size: int = 64  # samples per optimiser step (cond and uncond together, via caption dropout)
    lr: float = 5e-4  # peak AdamW learning rate
    warmup_steps: int = 300  # linear warmup from 0
    total_steps: int = 200_000  # cosine decay to min_lr_ratio·lr over this many steps; a resume may raise it
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # none: most token-table rows never see a gradient, decay would only shrink them
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # the EMA weights are what gets shipped
    dataset_size: int = 24_000  # scenes rendered once into RAM (and, for the UNet, encoded once into a cache)
    data_seed: int = 1  # training scenes; evaluation uses other seeds (evaluate.py)
    seed: int = 0
    # UNet stage
    caption_dropout: float = 0.1  # share of empty captions: classifier-free guidance learns ε(x, ∅) from these
    min_snr_gamma: float = 5.0  # caps easy low-noise steps' weight (Min-SNR-γ, Hang et al. 2023); 0 = off
    full_mask: float = 0.5  # share of text-to-image samples (mask = 1, grey image); the rest inpaint
    # issue #20: scenes of up to max_objects objects in the latent cache (2 keeps older caches' scenes), busy-scene
    # inpainting holes (data.busy_inpaint_mask), and the share of captions from the free grammar (grammar.py)
    max_objects: int = 2
    busy_masks: bool = False
    grammar_share: float = 0.0
    # VAE stage
    kl_weight: float = 1e-4  # per-element KL to N(0, I): keeps the latent tame, small enough not to blur
    edge_weight: float = 1.0  # L1 on image gradients: keeps small rings and star points sharp
    # extra loss weight around each object, normalised by the object's area (data.object_emphasis); 0 = plain loss.
    # VAE stage: per pixel of the L1 losses; decoder fine-tuning at 1, 2, then 3 kept small stars' points (detector
    # on reconstructions 89 → 99.25%). UNet stage: per latent cell of the diffusion MSE; 1 took held-out inpainting
    # from 87.5 to 97.5% (small stars had come out as blobs).
    object_weight: float = 0.0
    decoder_only: bool = False  # fine-tune the decoder alone (checkpoint vae-decoder.pt): the latents stay put
    masked_share: float = 0.25  # share of VAE inputs with a grey hole (the inpainting conditioning encodes those)
    channels_last: bool = True  # UNet + text step, batch 64, 1 CPU thread: 71 vs 65 samples/s (interleaved runs)
    checkpoint_minutes: float = 5.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
