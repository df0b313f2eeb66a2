"""Mask previews on the UI thread (numpy + Pillow, no torch): grow, Gaussian feather, bounding box.

These mirror what the engine does to the mask before sampling (`studio/engine/inpaint.py`: binarise at 0.5,
dilate by `grow` px, then a Gaussian of σ = feather/2 that reaches `feather` px) so the canvas can show the mask
the model will actually see. The preview grows by a square rather than the engine's disk: close, and cheap.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageFilter


def grow(gray: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a uint8 mask by `pixels` with a square structuring element (separable running max)."""
    if pixels <= 0:
        return gray
    size = 2 * pixels + 1
    padded = np.pad(gray, ((0, 0), (pixels, pixels)))
    rows = sliding_window_view(padded, size, axis=1).max(axis=-1)
    padded = np.pad(rows, ((pixels, pixels), (0, 0)))
    return sliding_window_view(padded, size, axis=0).max(axis=-1)


def feather(gray: np.ndarray, pixels: float) -> np.ndarray:
    """Gaussian blur of a uint8 mask reaching `pixels` px: σ = pixels / 2 (Pillow's `radius` is σ)."""
    if pixels <= 0:
        return gray
    return np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius=float(pixels) / 2)))


def effective_mask(gray: np.ndarray, grow_px: int, feather_px: float) -> np.ndarray:
    binary = np.where(gray >= 128, 255, 0).astype(np.uint8)
    return feather(grow(binary, grow_px), feather_px)


def bounding_box(gray: np.ndarray, padding: int = 0) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero area plus `padding`, clipped to the image; None for an empty mask."""
    ys, xs = np.nonzero(gray)
    if len(xs) == 0:
        return None
    h, w = gray.shape
    return (
        max(0, int(xs.min()) - padding),
        max(0, int(ys.min()) - padding),
        min(w, int(xs.max()) + 1 + padding),
        min(h, int(ys.max()) + 1 + padding),
    )
