"""Wrap a UNet into the one contract samplers know: `denoiser(x_t, level) -> ε̂` (float32 in, float32 out)."""

from __future__ import annotations

from typing import Callable

import torch

from .samplers import Denoiser, eps_from_v
from .schedules import NoiseLevel
from .unet import UNetModel


def guided_denoiser(
    unet: UNetModel,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg: float,
    prediction: str = "epsilon",
    concat: torch.Tensor | None = None,
) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε̂_u + s·(ε̂_c − ε̂_u), one batched UNet call.

    `concat` holds extra input channels (mask + masked-image latent for 9-channel inpainting models, in SD's
    order), the same for both halves. With s = 1 the unconditional pass is skipped.
    """
    dtype = next(unet.parameters()).dtype
    guided = cfg != 1.0
    # unconditional first, as CompVis/diffusers batch it
    context = torch.cat([uncond, cond]) if guided else cond
    extra = None if concat is None else concat.to(dtype)

    def denoise(x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        x_in = x.to(dtype)
        if extra is not None:
            x_in = torch.cat([x_in, extra], dim=1)
        if guided:
            x_in = torch.cat([x_in, x_in])
        t = torch.full((x_in.shape[0],), float(level.timestep), device=x.device, dtype=torch.float32)
        out = unet(x_in, t, context).float()
        if guided:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + cfg * (out_cond - out_uncond)  # also valid for v: both are affine in each other
        if prediction == "v":
            out = eps_from_v(x, out, level.alpha_cumprod)
        return out

    return denoise


DenoiserFactory = Callable[[torch.Tensor, torch.Tensor], Denoiser]
