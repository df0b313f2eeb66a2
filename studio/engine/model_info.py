"""What the UI needs to know about a loaded model, as the plain `ModelInfo` record of the engine's API."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .api import ModelInfo
from .files import FileProblem, atomic_write
from .model import LatentDiffusion
from .user_cache import cache_dir

BUILT_IN = ("default", "tiny-random")  # the specs `load_model` resolves without a path
HASH_LENGTH = 10  # A1111's short "Model hash": the first 10 hex digits of the whole file's SHA-256

HASH_FILE = "file-hashes.json"  # in user_cache.cache_dir(): {"path|size|mtime_ns": short hash}

_hashes: dict[str, str] = {}  # "resolved path|size|mtime_ns" → short hash, this process's and the disk cache's


def file_hash(spec: str) -> str | None:
    """A1111's short model hash of a checkpoint file, computed once per file version (path, size and mtime) and
    kept on disk, so a later start does not read the whole file again (2 GB took 1.5 s here); None for built-in
    models and diffusers folders (no single file to hash) and for a file that cannot be read."""
    if spec in BUILT_IN:
        return None
    path = Path(spec).expanduser()
    try:
        stat = path.stat()
        if not path.is_file():
            return None
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in _hashes:
            _hashes.update(_read_hash_file())
        if key not in _hashes:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            _hashes[key] = digest.hexdigest()[:HASH_LENGTH]
            _write_hash_file(key, _hashes[key])
    except OSError:
        return None
    return _hashes[key]


def _read_hash_file() -> dict[str, str]:
    """The hashes earlier runs saved; nothing if the file is missing, unreadable or not ours (it is only a cache)."""
    try:
        saved = json.loads((cache_dir() / HASH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    return {k: v for k, v in saved.items() if isinstance(k, str) and isinstance(v, str) and len(v) == HASH_LENGTH}


def _write_hash_file(key: str, value: str) -> None:
    """Add one hash to the file, written whole and renamed into place (`files.atomic_write`); a cache that cannot
    be written is skipped."""
    saved = _read_hash_file()
    saved[key] = value
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(cache_dir() / HASH_FILE, lambda tmp: tmp.write_text(json.dumps(saved, indent=0), encoding="utf-8"))
    except (OSError, FileProblem):
        pass


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
