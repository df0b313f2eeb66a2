"""The engine's choices as the UI names them.

`studio.engine.samplers` holds the same lists but imports torch; the UI thread must not, so they are mirrored
here (tests/ui/test_choices.py checks both stay in sync).
"""

from __future__ import annotations

SAMPLERS: dict[str, str] = {"ddim": "DDIM", "ddpm": "DDPM", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M"}
USES_ETA = frozenset({"ddim", "ddpm", "euler_a"})
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
