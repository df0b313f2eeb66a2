"""Tiny random Stable Diffusion checkpoints in the original single-file layouts, built in the test itself.

SD1: our state dict is the SD1 layout as is. SD2: the text encoder is written back in OpenCLIP's layout
(`cond_stage_model.model.*`, fused in_proj, one extra final block that SD2 never uses, text_projection) by an
inverse mapping written here independently of the engine's, so a loader bug cannot cancel itself out.
"""

from __future__ import annotations

import torch

from studio.engine.model import LatentDiffusion, ModelConfig
from studio.engine.text_encoder import TextEncoderConfig
from studio.engine.tokenizer import EOS_ID
from studio.engine.unet import UNetConfig
from studio.engine.vae import VAEConfig

TEXT = "cond_stage_model.transformer.text_model."


def sd1_config(in_channels: int = 4) -> ModelConfig:
    """SD1 topology (4 levels, 2 res blocks, attention on 3 levels, conv projections, 8 heads) at 1/10 width."""
    return ModelConfig(
        unet=UNetConfig(model_channels=32, context_dim=64, in_channels=in_channels),
        vae=VAEConfig(ch=32),
        text=TextEncoderConfig(width=64, layers=2, heads=1),
        name="tiny-sd1",
    )


def sd2_config() -> ModelConfig:
    """SD2 conventions (linear projections, 64-wide heads, OpenCLIP gelu text tower, pad 0) on a 2-level UNet."""
    return ModelConfig(
        unet=UNetConfig(
            model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0,), num_heads=None,
            num_head_channels=64, context_dim=64, use_linear_projection=True, upcast_attention=True,
        ),
        vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1),
        text=TextEncoderConfig(width=64, layers=2, heads=1, activation="gelu"),
        pad_id=0,
        name="tiny-sd2",
    )


def random_model(config: ModelConfig, seed: int = 0) -> LatentDiffusion:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentDiffusion(config)
        with torch.no_grad():  # non-trivial norms and biases, so a misplaced tensor cannot go unnoticed
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
    return model.eval().requires_grad_(False)


def schedule_buffers() -> dict[str, torch.Tensor]:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}


def sd1_state_dict(model: LatentDiffusion) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd[TEXT + "embeddings.position_ids"] = torch.arange(model.config.text.max_length)[None]
    sd.update(schedule_buffers())
    return sd


def sd2_state_dict(model: LatentDiffusion, seed: int = 1) -> dict[str, torch.Tensor]:
    """The original SD2 layout: OpenCLIP text tower with one more (unused) block than our encoder runs."""
    ours = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd = {k: v for k, v in ours.items() if not k.startswith(TEXT)}
    oc = "cond_stage_model.model."
    t = {k[len(TEXT):]: v for k, v in ours.items() if k.startswith(TEXT)}
    width, layers = model.config.text.width, model.config.text.layers
    sd[oc + "token_embedding.weight"] = t["embeddings.token_embedding.weight"]
    sd[oc + "positional_embedding"] = t["embeddings.position_embedding.weight"]
    sd[oc + "ln_final.weight"] = t["final_layer_norm.weight"]
    sd[oc + "ln_final.bias"] = t["final_layer_norm.bias"]
    gen = torch.Generator().manual_seed(seed)
    for i in range(layers + 1):
        src = f"encoder.layers.{i}."
        dst = f"{oc}transformer.resblocks.{i}."

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if i < layers:
                return t[src + name]
            return torch.randn(shape, generator=gen) * 0.05  # the block SD2 skips ("penultimate")

        for kind in ("weight", "bias"):
            shape = (width, width) if kind == "weight" else (width,)
            sd[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [get(f"self_attn.{p}_proj.{kind}", shape) for p in ("q", "k", "v")]
            )
            sd[dst + f"attn.out_proj.{kind}"] = get(f"self_attn.out_proj.{kind}", shape)
            sd[dst + f"ln_1.{kind}"] = get(f"layer_norm1.{kind}", (width,))
            sd[dst + f"ln_2.{kind}"] = get(f"layer_norm2.{kind}", (width,))
            mlp = 4 * width
            sd[dst + f"mlp.c_fc.{kind}"] = get(f"mlp.fc1.{kind}", (mlp, width) if kind == "weight" else (mlp,))
            sd[dst + f"mlp.c_proj.{kind}"] = get(f"mlp.fc2.{kind}", (width, mlp) if kind == "weight" else (width,))
    sd[oc + "text_projection"] = torch.randn(width, width, generator=gen)
    sd[oc + "logit_scale"] = torch.tensor(4.6)
    sd.update(schedule_buffers())
    return sd


__all__ = ["EOS_ID", "random_model", "sd1_config", "sd2_config", "sd1_state_dict", "sd2_state_dict"]
