"""How much memory a generation needs, estimated from the model's structure before anything is allocated.

Linux overcommits memory: a huge allocation usually succeeds and the process is killed later, when the pages are
touched, so "try it and fall back on an out-of-memory error" never sees the error. The engine therefore decides
from estimates: whether the VAE decodes in tiles (tiling.py) and whether a request fits at all (`check_fits`),
against the memory actually available (tiling.available_memory: MemAvailable, the cgroup limit and `ulimit -v`).

Each estimate walks the network's layers at their resolutions and takes the largest working set of one layer,
plus what stays alive across layers (the UNet's skip connections). Per layer, in bytes per pixel at its resolution:

- a 3×3 convolution over C_in channels holds its input, an unfolded copy of it (im2col: 9·C_in; CPU kernels
  for some shapes) and its output;
- GroupNorm runs in float32 (GroupNorm32), so its output costs 4 bytes per value whatever the model's dtype;
- a transformer block over C channels holds x, its norm, q, k, v, the attention output and the GEGLU feed-forward
  (8·C projected, 4·C gated: Shazeer 2020), ~20·C; attention itself goes through
  `scaled_dot_product_attention`'s fused kernels, linear in the number of tokens. Where those kernels are not
  available (MPS), the (HW)² score matrix is counted as well, twice (scores and softmax).

tests/engine/test_memory_estimates.py measures peaks in a child process and checks the estimates cover them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .unet import UNetConfig
from .vae import VAEConfig

GiB = 2**30


def _elt(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def _conv(c_in: int, c_out: int, elt: int) -> int:
    return c_in * 10 * elt + c_out * elt  # input + im2col (9·C_in) + output, per output pixel


def _res(c_in: int, c_out: int, elt: int) -> int:
    first = c_in * elt + c_in * 4 + c_in * elt + _conv(c_in, c_out, elt)  # x, GN (fp32), SiLU, conv
    second = c_in * elt + c_out * (elt + 4 + elt) + _conv(c_out, c_out, elt)  # x kept for the skip, h, GN, SiLU
    return max(first, second)


def _attention_scores(tokens: int, heads: int, device: torch.device | None) -> int:
    if device is not None and device.type == "mps":
        return 2 * heads * tokens * tokens * 4
    return 0


def unet_bytes(config: UNetConfig, latent_hw: Sequence[int], batch: int, dtype: torch.dtype,
               device: torch.device | None = None) -> int:
    """Peak working memory of one UNet call on a (batch, C, h, w) latent."""
    elt = _elt(dtype)
    h, w = latent_hw
    mc, mult = config.model_channels, config.channel_mult
    pixels = [math.ceil(h / 2**level) * math.ceil(w / 2**level) for level in range(len(mult))]
    skips = mc * pixels[0] * elt  # conv_in's output
    peak = _conv(config.in_channels, mc, elt) * pixels[0]
    ch = mc
    skip_channels = [mc]
    for level, m in enumerate(mult):
        width = mc * m
        for _ in range(config.num_res_blocks):
            peak = max(peak, _res(ch, width, elt) * pixels[level])
            if level in config.attention_levels:
                heads = config.head_layout(width)[0]
                peak = max(peak, 20 * width * elt * pixels[level] + _attention_scores(pixels[level], heads, device))
            ch = width
            skips += width * pixels[level] * elt
            skip_channels.append(width)
        if level != len(mult) - 1:
            skips += width * pixels[level + 1] * elt
            skip_channels.append(width)
    for level in reversed(range(len(mult))):
        width = mc * mult[level]
        for _ in range(config.num_res_blocks + 1):
            c_in = ch + skip_channels.pop()
            peak = max(peak, (c_in * elt + _res(c_in, width, elt)) * pixels[level])  # + the concatenation
            if level in config.attention_levels:
                heads = config.head_layout(width)[0]
                peak = max(peak, 20 * width * elt * pixels[level] + _attention_scores(pixels[level], heads, device))
            ch = width
        if level:
            peak = max(peak, (width * elt + _conv(width, width, elt)) * pixels[level - 1])  # upsample + conv
    return batch * (skips + peak)


def decode_bytes(config: VAEConfig, latent_hw: Sequence[int], batch: int, dtype: torch.dtype,
                 device: torch.device | None = None) -> int:
    """Peak working memory of one untiled VAE decode of a (batch, z, h, w) latent."""
    elt = _elt(dtype)
    h, w = latent_hw
    levels = len(config.ch_mult)
    ch = config.ch * config.ch_mult[-1]
    peak = _conv(config.z_channels, ch, elt) * h * w
    peak = max(peak, _res(ch, ch, elt) * h * w)
    if config.mid_attention:
        peak = max(peak, 8 * ch * elt * h * w + _attention_scores(h * w, 1, device))
    for level in reversed(range(levels)):
        scale = 2 ** (levels - 1 - level)
        pixels = h * w * scale * scale
        width = config.ch * config.ch_mult[level]
        for _ in range(config.num_res_blocks + 1):
            peak = max(peak, _res(ch, width, elt) * pixels)
            ch = width
        if level:
            peak = max(peak, (width * elt + _conv(width, width, elt)) * pixels * 4)
    full = h * w * 4**(levels - 1)
    peak = max(peak, (ch * (elt + 4 + elt) + _conv(ch, config.out_channels, elt)) * full)
    return batch * (peak + full * config.out_channels * 4)  # + the float32 image


def encode_bytes(config: VAEConfig, image_hw: Sequence[int], batch: int, dtype: torch.dtype,
                 device: torch.device | None = None) -> int:
    """Peak working memory of one untiled VAE encode of a (batch, 3, H, W) image: the decoder's layers run in
    reverse at the same resolutions, so the decode estimate of the matching latent covers it."""
    factor = 2 ** (len(config.ch_mult) - 1)
    latent = (max(1, math.ceil(image_hw[0] / factor)), max(1, math.ceil(image_hw[1] / factor)))
    return decode_bytes(config, latent, batch, dtype, device)
