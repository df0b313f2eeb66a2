"""The engine's choices as the UI names them.

Sampler facts come from the engine's sampler table (torch-free, so the UI thread may read it before torch loads).
"""

from __future__ import annotations

from ..engine import SAMPLER_TABLE, shipped_cold_models

SAMPLERS: dict[str, str] = {name: spec.display_name for name, spec in SAMPLER_TABLE.items()}
USES_ETA = frozenset(name for name, spec in SAMPLER_TABLE.items() if spec.uses_eta)
SAMPLER_FAMILY = {name: spec.family for name, spec in SAMPLER_TABLE.items()}
LDM_SAMPLERS = tuple(name for name, spec in SAMPLER_TABLE.items() if spec.family == "ldm")  # ModelInfo.samplers = ()


def default_eta(sampler: str) -> float:
    """η = 1 for the ancestral and SDE samplers (fresh noise each step), 0 for the deterministic ones."""
    spec = SAMPLER_TABLE.get(sampler)
    return float(spec.default_eta) if spec is not None else 0.0


def supports_karras(sampler: str) -> bool:
    spec = SAMPLER_TABLE.get(sampler)
    return spec is not None and spec.supports_karras


DTYPES: dict[str, str] = {"auto": "Auto", "fast": "Fast", "fp32": "fp32 (full)", "fp16": "fp16 (half)", "bf16": "bf16"}
DEVICES: dict[str, str] = {"auto": "Auto", "cpu": "CPU", "openvino": "CPU (OpenVINO)", "cuda": "CUDA GPU",
                           "mps": "Apple GPU (MPS)"}
FILLS: dict[str, str] = {"original": "Original", "noise": "Latent noise", "blur": "Blurred original"}
INPAINT_MODES: dict[str, str] = {"auto": "Auto", "blend": "Latent blend", "model": "Inpainting model"}
BUILTIN_MODELS: dict[str, str] = {"default": "Built-in shapes model", "tiny-random": "tiny-random (test)",
                                  **shipped_cold_models()}
KINDS: dict[str, str] = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint", "invert": "Inversion"}


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


ETA_TOOLTIP = (
    "η (eta): how much fresh noise each step adds.\n"
    "0 = deterministic DDIM: the same seed always walks the same path.\n"
    "1 = DDPM-like: new random noise at every step (ancestral sampling).\n"
    f"Used by {_listing(SAMPLERS[name] for name in SAMPLERS if name in USES_ETA)}; "
    f"{_listing(SAMPLERS[name] for name in SAMPLERS if name not in USES_ETA)} ignore it."
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
