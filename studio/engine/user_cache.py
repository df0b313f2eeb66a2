"""Where the engine keeps what it derives from a user's model files, so that the next start need not derive it
again: OpenVINO's converted UNets (openvino_unet.py), the files' hashes (model_info.py) and the CPU's packed
weights (pack_cache.py)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STUDIO_CACHE_DIR"


def cache_dir() -> Path:
    """$STUDIO_CACHE_DIR, else $XDG_CACHE_HOME/diffusion-studio (~/.cache/diffusion-studio)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffusion-studio"
