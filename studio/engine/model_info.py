"""What the UI needs to know about a loaded model, as the plain `ModelInfo` record of the engine's API."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .api import ModelInfo
from .model import LatentDiffusion

BUILT_IN = ("default", "tiny-random")  # the specs `load_model` resolves without a path
HASH_LENGTH = 10  # A1111's short "Model hash": the first 10 hex digits of the whole file's SHA-256

_hashes: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) → short hash


def file_hash(spec: str) -> str | None:
    """A1111's short model hash of a checkpoint file, computed once per file version (path, size and mtime);
    None for built-in models and diffusers folders (no single file to hash) and for a file that cannot be read."""
    if spec in BUILT_IN:
        return None
    path = Path(spec).expanduser()
    try:
        stat = path.stat()
        if not path.is_file():
            return None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _hashes:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            _hashes[key] = digest.hexdigest()[:HASH_LENGTH]
    except OSError:
        return None
    return _hashes[key]


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
        file_hash=file_hash(spec),
    )
