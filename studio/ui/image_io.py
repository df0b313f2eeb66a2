"""Getting images in and out of the window: files, drops, the clipboard; sizes the engine can take."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif);;All files (*)"
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.ckpt);;All files (*)"
RUN_FILTER = "Diffusion Studio runs (*.safetensors);;All files (*)"
SIZE_MULTIPLE = 8  # SD's VAE factor, for callers that have no ModelInfo yet; pass ModelInfo.size_multiple
MAX_SIDE = 2048

Fit = Literal["crop", "pad"]


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def fitted_size(width: int, height: int, multiple: int, how: Fit) -> tuple[int, int]:
    """(width, height) cropped down, or padded up, to the nearest multiples of `multiple`."""
    if multiple < 1:
        raise ValueError(f"the size multiple must be 1 or more, got {multiple}")
    if how == "crop":
        return width - width % multiple, height - height % multiple
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


def fit_to_multiple(image: np.ndarray, multiple: int, how: Fit) -> np.ndarray:
    """HxW(xC) image → sides that are multiples of `multiple`, the content centred (the odd pixel goes to the
    bottom/right). "crop" cuts the excess off both sides; "pad" adds rows and columns that repeat the edge pixels.

    Padding replicates edges rather than reflecting them: the border is under `multiple` px per side, and repeating
    the edge pixel adds a featureless margin (flat colour continues, an outline that meets the edge just runs on)
    where a mirror would double whatever touches the edge into a symmetric shape the model reads as content and
    builds on. The original pixels stay bit for bit inside the centred box. Sides already fitting: `image` itself."""
    h, w = image.shape[:2]
    new_w, new_h = fitted_size(w, h, multiple, how)
    if (new_h, new_w) == (h, w):
        return image
    if how == "crop":
        if new_h == 0 or new_w == 0:
            raise ValueError(f"the image ({w}×{h}) is smaller than {multiple} px on a side: it can only be padded")
        top, left = (h - new_h) // 2, (w - new_w) // 2
        return np.ascontiguousarray(image[top : top + new_h, left : left + new_w])
    top, left = (new_h - h) // 2, (new_w - w) // 2
    widths = [(top, new_h - h - top), (left, new_w - w - left)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="edge")


def fit_for_model(image: np.ndarray, multiple: int = SIZE_MULTIPLE, how: Fit = "crop") -> tuple[np.ndarray, str]:
    """Scale down images larger than MAX_SIDE, then crop or pad (centred) to sides that are multiples of
    `multiple` (the model's ModelInfo.size_multiple); a note says what changed."""
    h, w = image.shape[:2]
    notes = []
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(multiple, round(w * scale)), max(multiple, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        notes.append(f"scaled from {w}×{h} to {size[0]}×{size[1]}")
        h, w = image.shape[:2]
    if how == "crop" and (h < multiple or w < multiple):
        raise ValueError(f"the image is too small ({w}×{h}); it needs at least {multiple} px per side")
    fitted = fit_to_multiple(image, multiple, how)
    if fitted.shape[:2] != (h, w):
        verb = "cropped" if how == "crop" else "padded"
        notes.append(f"{verb} to {fitted.shape[1]}×{fitted.shape[0]} (a multiple of {multiple} px)")
    return np.ascontiguousarray(fitted), "; ".join(notes)


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """The image as HxWx3 uint8 and its A1111 `parameters` text, if any (engine's readers; imports lazily)."""
    from ..engine import load_rgb, read_parameters

    image = load_rgb(path)
    try:
        parameters = read_parameters(path)
    except OSError:
        parameters = None
    return image, parameters
