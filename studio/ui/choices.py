"""The engine's choices as the UI names them.

Sampler names come from `studio.engine.request`, which (unlike the samplers themselves) imports no torch.
"""

from __future__ import annotations

from ..engine.request import SAMPLER_DISPLAY_NAMES as SAMPLERS
from ..engine.request import SAMPLERS_USING_ETA as USES_ETA
DTYPES: dict[str, str] = {"auto": "Auto", "fp32": "fp32 (full)", "fp16": "fp16 (half)", "bf16": "bf16"}
DEVICES: dict[str, str] = {"auto": "Auto", "cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}
FILLS: dict[str, str] = {"original": "Original", "noise": "Latent noise", "blur": "Blurred original"}
INPAINT_MODES: dict[str, str] = {"auto": "Auto", "blend": "Latent blend", "model": "Inpainting model"}
BUILTIN_MODELS: dict[str, str] = {"default": "Built-in shapes model", "tiny-random": "tiny-random (test)"}
KINDS: dict[str, str] = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint", "invert": "Inversion"}

ETA_TOOLTIP = (
    "η (eta): how much fresh noise each step adds.\n"
    "0 = deterministic DDIM: the same seed always walks the same path.\n"
    "1 = DDPM-like: new random noise at every step (ancestral sampling).\n"
    "Used by DDIM, DDPM and Euler a; DPM++ 2M ignores it."
)


def model_label(spec: str) -> str:
    if spec in BUILTIN_MODELS:
        return BUILTIN_MODELS[spec]
    from pathlib import Path

    return Path(spec).name or spec


def run_title(run, number: int = 0) -> str:
    request = run.request
    kind = KINDS.get(run.kind, run.kind)
    prefix = f"#{number} " if number else ""
    sampler = SAMPLERS.get(request.sampler, request.sampler)
    return f"{prefix}{kind} · {sampler} {request.steps} · seed {request.seed}"
