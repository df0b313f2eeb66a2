"""What the UI needs to know about a loaded model, as the plain `ModelInfo` record of the engine's API."""

from __future__ import annotations

from pathlib import Path

from .api import ModelInfo
from .model import LatentDiffusion

BUILT_IN = ("default", "tiny-random")  # the specs `load_model` resolves without a path


def model_label(model: LatentDiffusion, spec: str) -> str:
    """The file (or diffusers folder) name for a path; for a built-in model its own name, marked as built in."""
    if spec in BUILT_IN:
        return f"{model.config.name} (built-in)"
    return Path(spec).expanduser().name or spec


def model_info(model: LatentDiffusion, spec: str) -> ModelInfo:
    return ModelInfo(
        spec=spec,
        label=model_label(model, spec),
        default_size=model.config.default_size,
        size_multiple=model.size_multiple,
        default_cfg=model.config.default_cfg,
        prediction=model.config.prediction,
        inpaints_natively=model.is_inpainting,
        latent_channels=model.latent_channels,
        vae_factor=model.downsample_factor,
    )
