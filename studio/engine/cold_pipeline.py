"""Cold diffusion runs (Bansal et al. 2022) on the engine's own Run, timeline and branch machinery.

A cold model ("cold-blur", "cold-mask", "cold-down" from resources/cold/, or a path to such a file) restores
pixels: the timeline's x_t is the degraded image x_s, x̂0 = R(x_s, s), and the ε̂ slot holds the per-step
correction D(x̂0, s) − D(x̂0, s'). A level's timestep is s and its σ is s/T (ᾱ = 1/(1 + (s/T)²)), so the
σ plot shows the degradation level.

Starts (the "plan"):
- generation (no input image): blur and down start from x_T = one colour per channel drawn from the model's
  Gaussian mixture over training images' channel means (§5.1), plus `cold_noise`·N(0, I) to break the symmetry;
  a model file with a low-frequency start prior (cold_model.StartPrior, the shipped cold-blur) starts instead
  from x_{s0} = D(x̃0, s0), x̃0 drawn from that prior, plus the same noise; mask starts from the fully masked
  image, 0 (+ the same noise);
- restoration (an input image): x_s = D(image, s) with s = round(strength·T), no noise;
- cold inpainting (cold-mask, an input image and a mask): the painted region is masked, deepest pixels first,
  from s = T; R's x̂0 outside the region is replaced by the known pixels, so both algorithms keep them exactly.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..resources import resources_dir
from .api import ModelInfo
from .cold import Degradation, mask_order, whole_order
from .cold_model import (ColdConfig, RestorationNet, StartPrior, caption_tokens, guided_x0, load_cold_file,
                         read_cold_header, read_start_prior)
from .devices import resolve_device
from .errors import UserError
from .events import EventKind, RunEvent
from .images import image_to_tensor, tensor_to_image
from .model_info import file_hash
from .request import GenerationRequest, RequestError
from .run import Run
from .samplers import SAMPLER_TABLE, samplers_for
from .schedules import NoiseLevel
from .timeline import LatentPreview, Timeline

COLD_MODELS = {"cold-blur": "blur", "cold-mask": "mask", "cold-down": "down"}  # built-in names → kind


def cold_model_path(spec: str) -> Path | None:
    """The file behind a cold model spec, or None when `spec` names no cold model."""
    if spec in COLD_MODELS:
        return resources_dir() / "cold" / f"{spec}.safetensors"
    path = Path(spec).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        try:
            return path if read_cold_header(path) is not None else None
        except Exception:  # not a safetensors file we can read: the LDM loader will say what is wrong
            return None
    return None


def is_cold_model(spec: str) -> bool:
    return cold_model_path(spec) is not None


def is_cold_run(request: GenerationRequest) -> bool:
    """Whether `request` goes to the cold pipeline; a cold sampler with another model is a user error."""
    cold = cold_model_path(request.model) is not None
    spec = SAMPLER_TABLE.get(request.sampler)
    if not cold and spec is not None and spec.family == "cold":
        raise RequestError(f"{spec.display_name} needs a cold model ({', '.join(COLD_MODELS)})")
    return cold


def cold_model_info(spec: str) -> ModelInfo:
    """What the app needs to know about a cold model: its size, family and samplers."""
    path = cold_model_path(spec)
    if path is None or not path.exists():
        raise UserError(f"cold model not found: {path or spec}; train it with studio train --stage cold")
    header = read_cold_header(path)
    config = header[0]
    label = next((f"Cold diffusion ({kind})" for name, kind in COLD_MODELS.items() if name == spec), path.name)
    return ModelInfo(spec=spec, label=label, default_size=config.size, size_multiple=config.size,
                     default_cfg=config.guidance if config.guidable else 1.0,
                     prediction="x0", inpaints_natively=config.kind == "mask", latent_channels=3, vae_factor=1,
                     file_hash=file_hash(str(path)), family="cold", samplers=tuple(samplers_for("cold")))


@dataclass
class ColdModel:
    net: RestorationNet
    config: ColdConfig
    words: tuple[str, ...]
    path: Path
    device: torch.device
    prior: StartPrior | None = None

    @property
    def degradation(self) -> Degradation:
        return Degradation(self.config.kind, self.config.steps, self.config.size)


def load_cold_model(spec: str, device: str = "auto") -> ColdModel:
    path = cold_model_path(spec)
    if path is None or not path.exists():
        raise UserError(f"cold model not found: {path or spec}; train it with studio train --stage cold")
    torch_device = resolve_device(device)
    try:
        net, words = load_cold_file(path, torch_device, torch.float32)
        prior = read_start_prior(path)  # used only below T (generation_start)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot read the cold model {path.name}: {error}") from error
    return ColdModel(net, net.config, words, path, torch_device, prior)


def level(s: int, steps: int) -> NoiseLevel:
    """s as a grid level: timestep s, σ = s/T."""
    return NoiseLevel(float(s), 1.0 / (1.0 + (s / steps) ** 2))


def cold_grid(start: int, moves: int, steps: int) -> list[NoiseLevel]:
    """`moves` + 1 levels from s = start down to 0, evenly spaced, rounded to whole steps."""
    moves = max(1, min(moves, start))
    return [level(round(start * (1 - i / moves)), steps) for i in range(moves + 1)]


class Restorer:
    """The cold samplers' denoiser: R(x_s, s) → x̂0, and `degrade` = D (samplers.cold_improved). `guidance`: the
    request's CFG scale, applied to x̂0 (cold_model.guided_x0) for a model trained with caption dropout and ignored
    otherwise (without it R(x_s, s, ∅) is untrained: on the pre-dropout cold-mask w = 3 put 6 of 40 objects in
    their holes against 21 at w = 1, model card)."""

    def __init__(self, model: ColdModel, prompt: str, order: torch.Tensor | None, known: torch.Tensor | None,
                 guidance: float = 1.0):
        self.model, self.order, self.known = model, order, known
        self.guidance = guidance if model.config.guidable else 1.0
        self.region = None if known is None else (order < 1.5).to(known.dtype)
        self.tokens = caption_tokens([prompt], model.words) if model.config.vocabulary else (None, None)
        self.tokens = tuple(t.to(model.device) if t is not None else None for t in self.tokens)

    def __call__(self, x: torch.Tensor, at: NoiseLevel) -> torch.Tensor:
        s = torch.full((x.shape[0],), int(at.timestep), dtype=torch.long, device=x.device)
        extra = self.model.degradation.mask(s.cpu(), self._order(x)).to(x) if self.model.config.kind == "mask" else None
        x0 = guided_x0(self.model.net, x, s, extra, *self.tokens, self.guidance)
        if self.known is not None:  # the known pixels are known: R's guess replaces only the region
            x0 = torch.where(self.region > 0, x0, self.known)
        return x0

    def degrade(self, x0: torch.Tensor, at: NoiseLevel) -> torch.Tensor:
        order = self._order(x0) if self.model.config.kind == "mask" else None
        return self.model.degradation(x0, int(at.timestep), order)

    def _order(self, like: torch.Tensor) -> torch.Tensor:
        return self.order if self.order is not None else whole_order(like)


def gmm_start(config: ColdConfig, generator: torch.Generator) -> torch.Tensor:
    """One colour per channel from the model's diagonal Gaussian mixture (§5.1), (1, 3, 1, 1)."""
    weights = torch.tensor(config.gmm_weights, dtype=torch.float64)
    if weights.numel() == 0:
        return torch.zeros(1, 3, 1, 1)
    k = int(torch.multinomial(weights, 1, generator=generator))
    z = torch.randn(3, generator=generator, dtype=torch.float64)
    colour = torch.tensor(config.gmm_means[k], dtype=torch.float64) + torch.tensor(config.gmm_stds[k]) * z
    return colour.clamp(-1, 1).float().reshape(1, 3, 1, 1)


def generation_start(config: ColdConfig, prior: StartPrior | None, n: int, generator: torch.Generator,
                     noise: float) -> tuple[int, torch.Tensor]:
    """(s0, x_{s0}) for n generations: D(x̃0, s0) with x̃0 from the low-frequency prior when the model has one,
    else the flat colour of §5.1 at s = T (mask: 0, the fully masked image); plus `noise`·N(0, I), §5.1's
    perturbation. The draws come from `generator` in a fixed order, so a seed gives the same start every time."""
    size = config.size
    if prior is not None and config.generation_step < config.steps:
        start = config.generation_step
        x = Degradation(config.kind, config.steps, size)(prior.sample(n, size, generator), start)
    else:
        start = config.steps
        colours = [gmm_start(config, generator) if config.kind != "mask" else torch.zeros(1, 3, 1, 1) for _ in range(n)]
        x = torch.cat(colours).expand(n, 3, size, size)
    return start, x + noise * torch.randn((n, 3, size, size), generator=generator)


def validate_cold(request: GenerationRequest, model: ColdModel) -> None:
    spec = SAMPLER_TABLE.get(request.sampler)
    if spec is None or spec.family != "cold":
        raise RequestError(f"{request.model} is a cold model: choose the sampler {' or '.join(samplers_for('cold'))}")
    if not 1 <= request.steps <= 1000:
        raise RequestError(f"steps must be between 1 and 1000, got {request.steps}")
    if not 0 < request.strength <= 1:
        raise RequestError(f"strength must be in (0, 1], got {request.strength}")
    if not (math.isfinite(request.cold_noise) and 0 <= request.cold_noise <= 1):
        raise RequestError(f"the cold start's noise must be between 0 and 1, got {request.cold_noise}")
    size = model.config.size
    if request.init_image is not None and np.asarray(request.init_image).shape[:2] != (size, size):
        shape = np.asarray(request.init_image).shape
        raise RequestError(f"{request.model} restores {size}x{size} pictures; the input is {shape[1]}x{shape[0]}")
    if request.mask is not None:
        if model.config.kind != "mask":
            raise RequestError(f"{request.model} cannot inpaint: use cold-mask for a painted mask")
        if request.init_image is None:
            raise RequestError("cold inpainting needs the input image the mask is painted on")
        if np.asarray(request.mask).shape[:2] != (size, size):
            raise RequestError(f"the mask must be {size}x{size} like the picture")
        if not (np.asarray(request.mask) > 0.5).any():
            raise RequestError("the mask is empty: paint the region to restore")


def plan(model: ColdModel, request: GenerationRequest):
    """(grid, x at grid[0], restorer, kind) for a fresh run."""
    config, device = model.config, model.device
    generator = torch.Generator().manual_seed(request.seed)
    known = order = None
    if request.init_image is None:
        kind = "txt2img"
        start, x = generation_start(config, model.prior, 1, generator, request.cold_noise)
    else:
        image = image_to_tensor(np.asarray(request.init_image)[..., :3])
        if request.mask is not None:
            region = torch.from_numpy((np.asarray(request.mask, np.float32) > 0.5).astype(np.float32))[None, None]
            order, known, start, kind = mask_order(region).to(device), image.to(device), config.steps, "inpaint"
        else:
            start, kind = max(1, round(request.strength * config.steps)), "img2img"
        x = Degradation(config.kind, config.steps, config.size)(image, start, order.cpu() if order is not None else None)
    grid = cold_grid(start, request.steps, config.steps)
    return grid, x.to(device), Restorer(model, request.prompt, order, known, request.cfg), kind


def _model(engine, spec: str, device: str) -> ColdModel:
    """The engine's cold model cache: one at a time, reloaded when its file changed."""
    path = cold_model_path(spec)
    key = (str(path), path.stat().st_mtime_ns if path is not None and path.exists() else 0, device)
    cached = getattr(engine, "_cold_model", None)
    if cached is None or cached[0] != key:
        engine._cold_model = None
        engine._cold_model = (key, load_cold_model(spec, device))
    return engine._cold_model[1]


def cold_generate(engine, request: GenerationRequest, job_id: int, cancel: threading.Event | None,
                  parent: Run | None, from_step: int) -> Iterator[RunEvent]:
    """Engine._generate for a cold model: STARTED, STEP…, FINISHED on an ordinary Run."""
    model = _model(engine, request.model, request.device)
    size = model.config.size
    request = request.replace(width=size, height=size)
    validate_cold(request, model)
    with torch.inference_mode():
        grid, x, restorer, kind = plan(model, request)
        if parent is not None:
            if not 0 <= from_step < len(parent.timeline):
                raise RequestError(f"cannot branch from step {from_step}: the run has steps 0–{len(parent.timeline) - 1}")
            if cold_model_path(parent.request.model) != model.path:
                raise RequestError("a branch of a cold run keeps its model")
            at = parent.timeline[from_step]
            s_k = at.level.timestep
            if request.steps == parent.request.steps and request.strength == parent.request.strength:
                grid = list(parent.grid)
            else:  # the parent's levels up to step k, then the new spacing below s_k
                grid = list(parent.grid[: from_step + 1]) + cold_grid(int(s_k), request.steps, model.config.steps)[1:]
            run = Run(request, grid, Timeline(parent.timeline, from_step), kind=parent.kind, parent=parent,
                      from_step=from_step)
            x = at.x_t.to(model.device).clone()
        else:
            run = Run(request, grid, Timeline(), kind=kind)
        run.preview = LatentPreview(torch.eye(3), torch.zeros(3))  # pixels are their own preview
        run.model_hash = file_hash(str(model.path))
        run.cheap_decode = True
        spec = SAMPLER_TABLE[request.sampler]
        start = len(run.timeline)
        yield RunEvent(EventKind.STARTED, job_id, step=start, total=run.steps, run=run)
        began = time.perf_counter()
        steps = spec.sample(restorer, x, run.grid, eta=0.0, generator=None, start=start)
        decode = (lambda x0: tensor_to_image(x0)) if engine.decode_steps else None
        x = yield from engine._sample(run, steps, x, job_id, cancel, began, None, decode=decode, keep_x0=True)
        if x is None:
            return
        run.final_latent = x.detach().float().cpu()
        run.image = tensor_to_image(x)
        run.status = "finished"
        yield RunEvent(EventKind.FINISHED, job_id, run.steps, run.steps, time.perf_counter() - began, run=run)
