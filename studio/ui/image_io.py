"""Getting images in and out of the window: files, drops, the clipboard; sizes the engine can take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif);;All files (*)"
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.ckpt);;All files (*)"
RUN_FILTER = "Diffusion Studio runs (*.safetensors);;All files (*)"
SIZE_MULTIPLE = 8  # latent models work on 8-pixel cells
MAX_SIDE = 2048


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def fit_for_model(image: np.ndarray) -> tuple[np.ndarray, str]:
    """Scale down images larger than MAX_SIDE and crop to a multiple of 8 px (centred); a note says what changed."""
    h, w = image.shape[:2]
    notes = []
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(SIZE_MULTIPLE, round(w * scale)), max(SIZE_MULTIPLE, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        notes.append(f"scaled from {w}×{h} to {size[0]}×{size[1]}")
        h, w = image.shape[:2]
    if h < SIZE_MULTIPLE or w < SIZE_MULTIPLE:
        raise ValueError(f"the image is too small ({w}×{h}); it needs at least {SIZE_MULTIPLE} px per side")
    nh, nw = h - h % SIZE_MULTIPLE, w - w % SIZE_MULTIPLE
    if (nh, nw) != (h, w):
        top, left = (h - nh) // 2, (w - nw) // 2
        image = image[top : top + nh, left : left + nw]
        notes.append(f"cropped to {nw}×{nh} (a multiple of {SIZE_MULTIPLE} px)")
    return np.ascontiguousarray(image), "; ".join(notes)


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """The image as HxWx3 uint8 and its A1111 `parameters` text, if any (engine's readers; imports lazily)."""
    from ..engine.images import load_rgb, read_parameters

    image = load_rgb(path)
    try:
        parameters = read_parameters(path)
    except OSError:
        parameters = None
    return image, parameters
