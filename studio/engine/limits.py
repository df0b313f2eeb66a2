"""Limits on a request, checked before any work: fixed sane bounds (no model needed), then what the chosen model
and the machine's memory allow. Each failure is one sentence that says what would work.

The fixed bounds are those of the app's controls where it has them (ui/settings_model.py LIMITS: grow and feather
up to 128 px; a test keeps them equal), and ComfyUI's MAX_RESOLUTION for the image side (16384 px). Memory is
estimated from the model's structure (memory.py) and compared with what is available (tiling.available_memory),
so an impossible size is refused with the size that fits instead of being tried: Linux overcommits, and a doomed
allocation often ends in the kernel killing the process rather than in an error.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from . import memory, tiling
from .request import GenerationRequest, RequestError

if TYPE_CHECKING:
    from .model import LatentDiffusion

MAX_SIDE = 16384  # px
MAX_GROW = 128  # px, as the app's Grow control
MAX_FEATHER = 128.0  # px, as the app's Feather control
MAX_PADDING = MAX_SIDE  # px of context around the mask for only-masked inpainting
MAX_CFG = 100.0  # ComfyUI's cap on the guidance scale; SD works at 1–15
MAX_ETA = 10.0  # η scales the noise each step adds (DDIM eq. 16); 1 is DDPM's, far beyond it a run is only noise
MAX_PROMPT_CHARS = 20_000  # ~5,000 CLIP tokens, 70 chunks of 75 (A1111 chunking): far beyond any real prompt
HEADROOM = 0.9  # of the available memory a run may plan to use
TILED_DECODE_HEADROOM = 0.8  # tiling.should_tile's default


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_limits(request: GenerationRequest) -> None:
    """The bounds that need no model: image sides, mask grow/feather/padding, prompt text."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if not _is_int(value):
            raise RequestError(f"{name} must be a whole number, got {value!r}")
        if value > MAX_SIDE:
            raise RequestError(f"{name} must be at most {MAX_SIDE} px, got {value}")
    if _is_number(request.cfg) and request.cfg > MAX_CFG:
        raise RequestError(f"CFG scale must be at most {MAX_CFG:g}, got {request.cfg:g}")
    if _is_number(request.eta) and request.eta > MAX_ETA:
        raise RequestError(f"eta must be at most {MAX_ETA:g}, got {request.eta}")
    if not _is_number(request.feather) or not math.isfinite(request.feather) \
            or not 0 <= request.feather <= MAX_FEATHER:
        raise RequestError(f"feather must be a number of pixels from 0 to {MAX_FEATHER:g}, got {request.feather}")
    if not _is_int(request.grow) or not 0 <= request.grow <= MAX_GROW:
        raise RequestError(f"grow must be a whole number of pixels from 0 to {MAX_GROW}, got {request.grow}")
    if not _is_int(request.padding) or not 0 <= request.padding <= MAX_PADDING:
        raise RequestError(f"padding must be a whole number of pixels from 0 to {MAX_PADDING}, got {request.padding}")
    for label, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
        if not isinstance(text, str):
            raise RequestError(f"the {label} must be text, got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(f"the {label} is {len(text):,} characters long; at most {MAX_PROMPT_CHARS:,} are used")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # a command line's bytes that are not UTF-8 arrive as lone surrogates (PEP 383)
            raise RequestError(f"the {label} is not valid text (bytes that are not UTF-8? set the terminal to "
                               "UTF-8)") from None


def check_for_model(model: "LatentDiffusion", request: GenerationRequest) -> None:
    """What the loaded model allows: steps within its training schedule, CLIP skip within its text encoder, and a
    size whose run fits in the memory available."""
    timesteps = model.config.schedule.num_train_timesteps
    if request.steps > timesteps:
        raise RequestError(f"this model has {timesteps} training timesteps; use at most {timesteps} steps")
    layers = model.config.text.layers
    if request.clip_skip > layers:
        raise RequestError(f"this model's text encoder has {layers} layers; CLIP skip must be at most {layers}")
    check_fits(model, request)


def run_bytes(model: "LatentDiffusion", request: GenerationRequest, width: int, height: int,
              free: int | None = None) -> int:
    """Estimated peak memory of generating `request` at width×height (beyond the loaded weights)."""
    f = model.downsample_factor
    latent = (max(1, height // f), max(1, width // f))
    dtype, device = model.dtype, model.device
    batch = 1 if request.cfg == 1 else 2
    unet = memory.unet_bytes(model.config.unet, latent, batch, dtype, device)
    whole = memory.decode_bytes(model.config.vae, latent, 1, dtype, device)
    tiles = memory.decode_bytes(model.config.vae, (min(latent[0], tiling.DECODE_TILE),
                                                   min(latent[1], tiling.DECODE_TILE)), 1, dtype, device)
    tiles += 4 * 4 * height * width  # the float32 picture and blend weights
    fits_whole = free is not None and whole <= TILED_DECODE_HEADROOM * free
    decode = whole if fits_whole else min(whole, tiles)
    if request.guides:  # gradients through the UNet and an untiled decoder keep every layer's activations
        unet *= 4
        decode = 4 * whole
    steps = request.steps
    per_step = model.latent_channels * latent[0] * latent[1] * (4 + 2 + 4)  # x_t fp32, ε̂ fp16, guidance/x̂0
    pixels = width * height
    images = pixels * (3 + 3 + 4 + 3 * 4 * 2)  # result, input, mask, two float32 image tensors
    return unet + decode + steps * per_step + images


def check_fits(model: "LatentDiffusion", request: GenerationRequest) -> None:
    free = tiling.available_memory(model.device)
    if free is None:
        return
    need = run_bytes(model, request, request.width, request.height, free)
    if need <= HEADROOM * free:
        return
    fit = fitting_size(model, request, free)
    where = "on the GPU" if model.device.type != "cpu" else ""
    advice = f"about {fit[0]}x{fit[1]} would fit" if fit else "close other programs or use a smaller model"
    raise RequestError(f"{request.width}x{request.height} needs about {_gib(need)} of memory but only {_gib(free)} "
                       f"is available{' ' + where if where else ''}; {advice}")


def fitting_size(model: "LatentDiffusion", request: GenerationRequest, free: int) -> tuple[int, int] | None:
    """The largest size with the request's aspect ratio, in multiples of the model's size multiple, whose estimate
    fits in `free`; None if not even the smallest does."""
    step = model.size_multiple
    scale = 1.0
    for _ in range(60):
        scale *= 0.9
        w = max(step, int(request.width * scale) // step * step)
        h = max(step, int(request.height * scale) // step * step)
        if run_bytes(model, request, w, h, free) <= HEADROOM * free:
            return w, h
        if w == step and h == step:
            return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_branch(request: GenerationRequest, parent: GenerationRequest, recorded: tuple[int, ...],
                 planned: tuple[int, ...]) -> None:
    """A branch continues the parent's latent x_t: it cannot change the picture's size, nor switch to a model
    whose latent for that size differs (channels or VAE factor). Refused here, so the written picture and its
    parameters never disagree."""
    size, was = (request.width, request.height), (parent.width, parent.height)
    if size != was:
        raise RequestError(f"a branch keeps its run's size ({was[0]}x{was[1]}); it cannot change to "
                           f"{size[0]}x{size[1]}: generate anew for another size")
    if tuple(recorded) != tuple(planned):
        shape = "x".join(str(d) for d in recorded[1:])
        raise RequestError(f"the run's latents ({shape}) do not fit this model's ({'x'.join(map(str, planned[1:]))} "
                           f"at {size[0]}x{size[1]}); branch with the run's model ({parent.model})")
