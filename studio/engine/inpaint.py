"""Inpainting: mask preparation, the two ways of conditioning on the kept region, paste-back and only-masked crops.

Masks are HxW float32 in [0, 1], 1 (white) = repaint. The "edit mask" is the binarised, grown mask; the "blend
mask" is that mask feathered with a Gaussian truncated at `feather` pixels, so a pixel farther than grow + feather
from the painted region has blend weight exactly 0 and comes back bit-identical after paste-back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .masks import feather_inward, grow_mask
from .request import RequestError
from .samplers import Denoiser, predict_eps, predict_x0
from .schedules import NoiseLevel, q_sample


def binarise(mask: np.ndarray) -> np.ndarray:
    return (np.asarray(mask, dtype=np.float32) >= 0.5).astype(np.float32)


def gaussian_kernel(radius: int) -> torch.Tensor:
    """1-D Gaussian with σ = radius/2, truncated at ±radius (2σ) so its reach is exactly `radius` pixels."""
    sigma = max(radius / 2, 1e-6)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


@dataclass(frozen=True)
class PreparedMask:
    edit: np.ndarray  # binarised + grown, HxW in {0, 1}
    blend: np.ndarray  # edit, feathered inward: the paste-back weights, 0 on every pixel outside `edit`


def prepare_mask(mask: np.ndarray, shape: tuple[int, int], grow: int, feather: float) -> PreparedMask:
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim != 2:
        raise RequestError(f"the mask must be a single-channel HxW array, got shape {mask.shape}")
    if mask.shape != shape:
        raise RequestError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}")
    edit = grow_mask(binarise(mask), grow).astype(np.float32)  # masks.py: dilation by a disk
    if edit.max() <= 0:
        raise RequestError("the mask is empty: paint the area to repaint (white = repaint)")
    # the soft edge lies inside what was painted: every unpainted pixel keeps weight 0 (masks.feather_inward)
    return PreparedMask(edit, feather_inward(edit, feather))


def latent_mask(
    mask: np.ndarray | torch.Tensor,
    latent_hw: tuple[int, int],
    device: torch.device | None = None,
    *,
    mode: Literal["area", "nearest"] = "area",
) -> torch.Tensor:
    """Pixel mask(s), HxW or NxHxW → (N, 1, h, w) float32 at latent size.

    "area" averages each latent cell's pixels and keeps a feathered edge: the weights of latent blending.
    "nearest" takes one pixel per cell, which is how SD's 9-channel inpainting UNets were trained to see their mask
    channel (docs/checkpoints.md, "Inpainting UNets"); training our own inpainting model uses the same."""
    t = torch.from_numpy(np.array(mask, dtype=np.float32)) if isinstance(mask, np.ndarray) else mask.float()
    if t.dim() == 2:
        t = t[None]
    out = F.interpolate(t[:, None], size=tuple(latent_hw), mode=mode)
    return out if device is None else out.to(device)


def blend_denoiser(denoiser: Denoiser, z0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> Denoiser:
    """Latent blending for ordinary 4-channel models (A1111 / ComfyUI KSamplerX0Inpaint / diffusers).

    Before each call the kept region (mask 0) is the original latent re-noised to the current level with the ONE
    noise tensor of the run, q(x_t | z0) with ε = `noise` (DDPM eq. 4); the predicted x̂0 is blended the same
    way, x̂0 ← m·x̂0 + (1−m)·z0, and returned as the ε̂ consistent with the sampler's own x_t.
    """

    def denoise(x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        a = level.alpha_cumprod
        kept = q_sample(z0, noise, a)
        x_in = mask * x + (1 - mask) * kept
        x0 = predict_x0(x_in, denoiser(x_in, level), a)
        x0 = mask * x0 + (1 - mask) * z0
        return predict_eps(x, x0, a)

    return denoise


def paste_back(original: np.ndarray, generated: np.ndarray, blend: np.ndarray) -> np.ndarray:
    """Composite through the feathered mask; where the weight is 0 the original bytes come back unchanged."""
    w = blend[..., None].astype(np.float32)
    out = original.astype(np.float32) * (1 - w) + generated.astype(np.float32) * w
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    keep = blend <= 0
    out[keep] = original[keep]
    return out


def blur_fill(image: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """"Blur" masked content: fill the hole with a heavy blur of the surrounding pixels (normalised convolution)."""
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    known = torch.from_numpy(1 - edit)[None, None]
    radius = max(8, int(max(image.shape[:2]) / 8))
    k = gaussian_kernel(radius)
    def blur(v: torch.Tensor) -> torch.Tensor:
        c = v.shape[1]
        v = F.conv2d(F.pad(v, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(F.pad(v, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    filled = blur(t * known) / blur(known).clamp_min(1e-6)
    out = torch.where(known.bool(), t, filled)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class Crop:
    """A region of the full image (x0, y0, x1, y1) that only-masked inpainting works on at full size."""

    box: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return x1 - x0, y1 - y0


def masked_crop(edit: np.ndarray, padding: int, aspect: float) -> Crop:
    """Bounding box of the mask plus `padding`, widened to the output aspect (width/height), clamped to the image."""
    ys, xs = np.nonzero(edit)
    h, w = edit.shape
    x0, x1 = max(0, xs.min() - padding), min(w, xs.max() + 1 + padding)
    y0, y1 = max(0, ys.min() - padding), min(h, ys.max() + 1 + padding)
    bw, bh = x1 - x0, y1 - y0
    if bw / bh < aspect:  # too tall: widen
        bw = min(w, int(math.ceil(bh * aspect)))
    else:  # too wide: heighten
        bh = min(h, int(math.ceil(bw / aspect)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    x0 = int(min(max(0, round(cx - bw / 2)), w - bw))
    y0 = int(min(max(0, round(cy - bh / 2)), h - bh))
    return Crop((x0, y0, x0 + bw, y0 + bh))
