"""Mask previews on the UI thread: the mask the model will actually see, grown and feathered.

Growing is the engine's own dilation by a disk (`grow_mask`, studio/engine/masks.py), so the preview and the run
agree pixel for pixel; the engine then feathers with a Gaussian of σ = feather/2 truncated at `feather` px
(studio/engine/inpaint.py), which Pillow's Gaussian blur of the same σ approximates closely enough for a preview.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ..engine import grow_mask


def feather(gray: np.ndarray, pixels: float) -> np.ndarray:
    """Gaussian blur of a uint8 mask reaching `pixels` px: σ = pixels / 2 (Pillow's `radius` is σ)."""
    if pixels <= 0:
        return gray
    return np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius=float(pixels) / 2)))


def effective_mask(gray: np.ndarray, grow_px: int, feather_px: float) -> np.ndarray:
    """The uint8 mask as the engine prepares it: binarised at the middle grey, grown by `grow_px`, feathered."""
    grown = grow_mask(gray >= 128, grow_px)
    return feather(np.where(grown, 255, 0).astype(np.uint8), feather_px)
