"""From a request to a sampling plan: txt2img, img2img (SDEdit) or inpainting, on 4- or 9-channel UNets.

A plan is everything the sampling loop needs and nothing it has to know about: the grid, the starting latent,
the denoiser (guidance, 9-channel conditioning and latent blending already wrapped in) and a `finish` that turns
the decoded picture into the result (paste-back, only-masked un-cropping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image

from .denoisers import guided_denoiser
from .images import image_to_tensor
from .inpaint import Crop, blend_denoiser, blur_fill, latent_mask, masked_crop, paste_back, prepare_mask
from .model import LatentDiffusion
from .request import GenerationRequest, RequestError
from .samplers import SAMPLER_TABLE, Denoiser
from .schedules import NoiseLevel, q_sample, sampling_grid

Kind = Literal["txt2img", "img2img", "inpaint"]


@dataclass
class Plan:
    kind: Kind
    grid: list[NoiseLevel]
    x: torch.Tensor  # starting latent (VP, at grid[0]) on the model's device
    denoiser: Denoiser
    finish: Callable[[np.ndarray], np.ndarray]  # decoded HxWx3 → result HxWx3
    noise: torch.Tensor  # the run's one noise tensor (initial latent; re-noises the kept region)
    latent_mask: torch.Tensor | None = None  # inpainting: where the latent is repainted (1), at latent size


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Generator]:
    """torch.randn from a CPU generator seeded with `seed`, float32: the same latent on every device and the same
    as other SD tools that draw on the CPU. The generator goes on to feed ancestral samplers."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32), generator


def check_size(model: LatentDiffusion, width: int, height: int) -> None:
    """Sides must be whole latent pixels; the UNet takes any latent size (unet.py)."""
    factor = model.size_multiple
    if width % factor or height % factor:
        raise RequestError(f"width and height must be multiples of {factor} for this model, got {width}x{height}")


def _resize(image: np.ndarray, size: tuple[int, int], resample=Image.LANCZOS) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, resample))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def plan(model: LatentDiffusion, request: GenerationRequest, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[Plan, torch.Generator]:
    check_size(model, request.width, request.height)
    device = model.device
    f = model.downsample_factor
    shape = (1, model.latent_channels, request.height // f, request.width // f)
    noise, generator = initial_noise(request.seed, shape)
    noise = noise.to(device)
    grid = sampling_grid(model.schedule, request.steps, karras=request.karras,
                         final=SAMPLER_TABLE[request.sampler].grid_end)
    size = (request.width, request.height)

    def guided(concat: torch.Tensor | None) -> Denoiser:
        prediction = model.config.prediction if request.prediction == "auto" else request.prediction
        return guided_denoiser(model.unet, cond, uncond, request.cfg, prediction, concat)

    def encode(image: np.ndarray) -> torch.Tensor:
        return model.encode_image(image_to_tensor(image)).to(device)

    def inpaint_concat(mask: np.ndarray, image: np.ndarray) -> torch.Tensor:
        # SD inpainting UNets take [mask (nearest-downsampled, binary), VAE latent of image·(mask < 0.5)] (LDM paper
        # Sec. 4.5's concatenation; binarised at 0.5 as runwayml's inpaint_st.py and diffusers' inpaint pipeline do)
        m = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
        m_lat = torch.nn.functional.interpolate(m, size=shape[2:], mode="nearest").to(device)
        masked = image_to_tensor(image) * (1 - m.round())
        return torch.cat([m_lat, model.encode_image(masked).to(device)], dim=1)

    def start_from(grid_: list[NoiseLevel], z_init: torch.Tensor | None) -> tuple[list[NoiseLevel], torch.Tensor]:
        steps = len(grid_) - 1
        if request.strength >= 1 or z_init is None:
            return grid_, noise.clone()
        # SDEdit (Meng et al. 2022, Algorithm 1): noise the image latent by q(x_t | x_0) (DDPM eq. 4) to t₀, the
        # first of the last int(N·s) levels (the count diffusers' img2img keeps), and denoise from there
        kept = min(int(steps * request.strength), steps)
        if kept < 1:
            raise RequestError(f"strength {request.strength} re-runs no step out of {steps}; raise strength or steps")
        grid_ = grid_[steps - kept :]
        return grid_, q_sample(z_init, noise, grid_[0].alpha_cumprod)

    if request.mask is None:
        z_init = None
        if request.init_image is not None:
            image = np.asarray(request.init_image)
            if image.shape[:2] != (request.height, request.width):
                raise RequestError(
                    f"the input image is {image.shape[1]}x{image.shape[0]} but the request is {request.width}x{request.height}"
                )
            z_init = encode(image)
        concat = None
        if model.is_inpainting:  # a 9-channel model generating freely: everything masked, nothing known
            everything = np.ones((request.height, request.width), np.float32)
            concat = inpaint_concat(everything, np.zeros((request.height, request.width, 3), np.uint8))
        grid_, x = start_from(grid, z_init)
        kind: Kind = "img2img" if z_init is not None and request.strength < 1 else "txt2img"
        return Plan(kind, grid_, x, guided(concat), lambda decoded: decoded, noise), generator

    # -- inpainting ------------------------------------------------------------------------------------------------
    if request.init_image is None:
        raise RequestError("inpainting needs an image to paint into")
    original = np.asarray(request.init_image)
    prepared = prepare_mask(request.mask, original.shape[:2], request.grow, request.feather)
    crop: Crop | None = None
    if request.only_masked:
        crop = masked_crop(prepared.edit, request.padding, request.width / request.height)
        x0, y0, x1, y1 = crop.box
        work = _resize(original[y0:y1, x0:x1], size)
        edit = (_resize_mask(prepared.edit[y0:y1, x0:x1], size) >= 0.5).astype(np.float32)
        blend = _resize_mask(prepared.blend[y0:y1, x0:x1], size)
    else:
        if original.shape[:2] != (request.height, request.width):
            raise RequestError(
                f"the image is {original.shape[1]}x{original.shape[0]} but the request is {request.width}x{request.height};"
                " use only-masked inpainting or match the size"
            )
        work, edit, blend = original, prepared.edit, prepared.blend

    mode = request.inpaint_mode
    if mode == "auto":
        mode = "model" if model.is_inpainting else "blend"
    if mode == "model" and not model.is_inpainting:
        raise RequestError("this model has no inpainting UNet (4 input channels); use inpaint mode 'blend'")

    z0 = encode(work)
    fill_image = blur_fill(work, edit) if request.fill == "blur" else work
    z_init = encode(fill_image) if request.fill == "blur" else z0
    m_lat = latent_mask(blend, shape[2:], device)
    if request.fill == "noise":  # "latent noise": the hole starts from noise instead of the old content
        z_init = m_lat * noise + (1 - m_lat) * z0
    concat = inpaint_concat(edit, work) if model.is_inpainting else None
    denoiser = guided(concat)
    grid_, x = start_from(grid, z_init)
    if mode == "blend":
        denoiser = blend_denoiser(denoiser, z0, noise, m_lat)
        x = m_lat * x + (1 - m_lat) * q_sample(z0, noise, grid_[0].alpha_cumprod)

    def finish(decoded: np.ndarray) -> np.ndarray:
        if crop is None:
            return paste_back(original, decoded, prepared.blend) if request.paste_back else decoded
        x0_, y0_, x1_, y1_ = crop.box
        patch = _resize(decoded, crop.size)
        result = original.copy()
        region = original[y0_:y1_, x0_:x1_]
        weights = prepared.blend[y0_:y1_, x0_:x1_] if request.paste_back else np.ones(region.shape[:2], np.float32)
        result[y0_:y1_, x0_:x1_] = paste_back(region, patch, weights)
        return result

    return Plan("inpaint", grid_, x, denoiser, finish, noise, latent_mask(edit, shape[2:], device)), generator
